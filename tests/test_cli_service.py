"""The CLI twins of the XEP-0133 commands (raftxmpp.admin.accounts serves both): online
users, announcements, the message of the day, and removing an account that is online."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_cli import assert_one_line_error, raftxmpp
from tests.xmpp_client import TIMEOUT, Client, run, unique

pytestmark = pytest.mark.cluster

PASSWORD = "cli-service-password"


def test_online_users_announce_motd_and_removal_from_the_cli(node, ca_file):
    jid = f"{unique('cli')}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    config = ["--config", str(node.config_path)]

    async def scenario():
        c = Client(jid, PASSWORD, node.c2s_port, ca_file / "ca.pem")
        assert await c.start()
        headlines: asyncio.Queue = asyncio.Queue()
        c.add_event_handler("message", lambda m: m["type"] == "headline" and headlines.put_nowait(m))
        loop = asyncio.get_running_loop()

        online = await loop.run_in_executor(None, lambda: raftxmpp("user", "online", *config))
        assert jid in online.stdout.split(), online.stderr
        sent = await loop.run_in_executor(None, lambda: raftxmpp("announce", "Going down at 5.", *config))
        assert sent.returncode == 0 and "sent to" in sent.stdout, sent.stderr
        assert (await asyncio.wait_for(headlines.get(), TIMEOUT))["body"] == "Going down at 5."

        motd = await loop.run_in_executor(None, lambda: raftxmpp("motd", "set", "-", *config,
                                                                  stdin="Line one\nLine two"))
        assert motd.returncode == 0, motd.stderr
        shown = await c.next_message()
        assert (shown["subject"], shown["body"]) == ("Message of the day", "Line one\nLine two")
        assert raftxmpp("motd", "show", *config).stdout.strip() == "Line one\nLine two"
        assert raftxmpp("motd", "delete", *config).stdout.strip() == "message of the day deleted"
        assert raftxmpp("motd", "show", *config).stdout.strip() == "no message of the day"
        assert_one_line_error(raftxmpp("motd", "set", " ", *config), "must not be empty")

        ended = loop.create_future()
        c.add_event_handler("stream_error", lambda e: ended.done() or ended.set_result(e["condition"]))
        removed = await loop.run_in_executor(None, lambda: raftxmpp("user", "remove", jid, *config))
        assert removed.returncode == 0, removed.stderr
        assert await asyncio.wait_for(ended, TIMEOUT) == "not-authorized"  # like XEP-0133 §4.2
        c.abort()

    run(scenario())
