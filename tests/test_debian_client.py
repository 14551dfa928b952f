"""A command-line XMPP client from Debian (go-sendxmpp) delivers a message through a node."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.xmpp_client import Client, run, unique

PASSWORD = "debian-client-password"


@pytest.fixture(scope="module")
def go_sendxmpp() -> str:
    """The Debian package, installed here if missing (tests run as root, apt reachable)."""
    path = shutil.which("go-sendxmpp")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300,
                       capture_output=True)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", "go-sendxmpp"], env=env,
                                timeout=600, capture_output=True, text=True)
        path = shutil.which("go-sendxmpp")
        assert path is not None, f"cannot install go-sendxmpp: {result.stderr[-500:]}"
    return path


def test_go_sendxmpp_delivers_a_message_over_starttls(node, ca_file, go_sendxmpp):
    sender = f"{unique('cli')}@localhost"
    rcpt = f"{unique('cli-rcpt')}@localhost"
    for jid in (sender, rcpt):
        node.admin("user.add", jid=jid, password=PASSWORD)

    async def scenario():
        c = Client(rcpt, PASSWORD, node.c2s_port, ca_file / "ca.pem")
        assert await c.start()
        command = [go_sendxmpp, "-u", sender, "-p", PASSWORD, "-j", f"localhost:{node.c2s_port}",
                   rcpt]
        # Go reads extra trust anchors from SSL_CERT_FILE: the test CA, no verification skipped.
        env = {**os.environ, "SSL_CERT_FILE": str(ca_file / "ca.pem")}
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env)
        out, err = await process.communicate(b"hello from the command line\n")
        assert process.returncode == 0, err.decode()
        msg = await c.next_message()
        assert msg["body"].strip() == "hello from the command line"
        assert msg["from"].bare == sender
        await c.stop()

    run(scenario())
