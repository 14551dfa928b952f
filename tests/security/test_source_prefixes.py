"""Issue 13, finding 6: per-address limits count a source (an IPv4 address or network,
an IPv6 /64), so rotating addresses inside it escapes nothing; and each listener caps
its unauthenticated connections over all sources together, saying so in the log."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import trio

from tests.security.conftest import (
    ROOT_DIR,
    c2s_port,
    connect,
    expect_stream_error,
    first_answer,
    opened,
    plain_auth,
)
from tests.security.test_auth_abuse import login


def test_rotating_ipv6_addresses_within_a_slash_64_shares_one_limit():
    """In a network namespace of its own, a node on IPv6 and clients from five addresses
    of one /64 (pre-auth limit 3 per source), then one from the next /64."""
    assert shutil.which("unshare") and shutil.which("ip"), "needs util-linux and iproute2"
    probe = subprocess.run(["unshare", "-rn", sys.executable, "-m",
                            "tests.security.ipv6_source_probe"], cwd=ROOT_DIR,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    results = json.loads(probe.stdout.strip().splitlines()[-1])
    assert results == {"same_64": ["features"] * 3 + ["policy-violation"] * 2,
                       "other_64": "features"}, results


async def test_an_ipv4_prefix_can_be_configured_and_rotation_inside_it_escapes_nothing(make_node):
    node = await make_node(limits={"ipv4_prefix": 24, "pre_auth_connections_per_ip": 3,
                                   "auth_failures_per_ip": 3, "connection_rate_per_ip": 0})
    port = c2s_port(node)
    held = [await opened(port, source=f"127.0.0.{i}") for i in (2, 3, 4)]
    await expect_stream_error(await connect(port, source="127.0.0.5"), "policy-violation")
    held.append(await opened(port, source="127.0.1.2"))  # the next /24 is someone else
    for raw in held:
        await raw.aclose()
    for i in (10, 11, 12):  # three guesses from three addresses of one /24
        assert await login(port, "alice", "guess", f"127.0.0.{i}") == b"not-authorized"
    assert await login(port, "bob", "s3cret-Passw0rd-for-tests", "127.0.0.13") == \
        b"temporary-auth-failure"
    assert await login(port, "bob", "s3cret-Passw0rd-for-tests", "127.0.1.13") == b"success"


async def test_a_listener_caps_unauthenticated_connections_from_all_sources(make_node, caplog):
    caplog.set_level(logging.WARNING, "raftxmpp.c2s.limits")
    node = await make_node(limits={"pre_auth_connections_per_listener": 4,
                                   "connection_rate_per_ip": 0})
    port = c2s_port(node)
    held = [await opened(port, source=f"127.0.0.{i}") for i in range(2, 6)]  # four sources
    for source in ("127.0.0.6", "127.0.0.7"):
        await expect_stream_error(await connect(port, source=source), "resource-constraint")
    hit = [r.getMessage() for r in caplog.records if "pre_auth_connections_per_listener" in
           r.getMessage()]
    assert len(hit) == 1 and f":{port}" in hit[0], hit  # once, naming the listener
    await held[0].send(plain_auth("alice"))  # authenticating frees its place …
    await held[0].until(b"<success")
    assert await first_answer(port, "127.0.0.8", held) == "features"
    await held[1].aclose()  # … and so does leaving, once the node has cleaned up
    with trio.fail_after(5):
        while await first_answer(port, "127.0.0.9", held) != "features":
            await trio.sleep(0.05)
    for raw in held:
        await raw.aclose()

