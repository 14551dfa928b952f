"""Resource limits, each shown against a running node over real connections: per-address
connection count, unauthenticated count and rate; per-session read rate (backpressure,
not disconnection); per-account resources, roster size, offline queue; and the
slow-consumer policy for a client that stops reading."""

from __future__ import annotations

import time

import pytest
import trio

from raftxmpp.jid import JID
from tests.security.conftest import (
    HEADER,
    authenticated,
    c2s_port,
    connect,
    expect_stream_error,
    opened,
    plain_auth,
)


async def test_unauthenticated_connections_per_address_are_capped_lower(make_node):
    node = await make_node(limits={"connections_per_ip": 10, "pre_auth_connections_per_ip": 2})
    port = c2s_port(node)
    waiting = [await opened(port), await opened(port)]
    refused = await connect(port)
    await expect_stream_error(refused, "policy-violation")  # refused before it says a word
    await waiting[0].send(plain_auth("alice"))  # authenticating frees its pre-auth slot
    await waiting[0].until(b"<success")
    await opened(port)


async def test_connections_per_address_are_capped(make_node):
    node = await make_node(limits={"connections_per_ip": 3, "pre_auth_connections_per_ip": 3})
    port = c2s_port(node)
    sessions = [await authenticated(port, "alice", f"r{i}") for i in range(3)]
    await expect_stream_error(await connect(port), "policy-violation")
    await sessions[0].send(b"</stream:stream>")
    await sessions[0].closed()
    with trio.fail_after(5):  # the slot is released once the node has cleaned up
        while True:
            raw = await connect(port)
            await raw.send(HEADER)
            if b"<stream:features" in await raw.until(b">", timeout=5) + await _more(raw):
                break
            await trio.sleep(0.05)


async def _more(raw) -> bytes:
    with trio.move_on_after(1):
        await raw.until(b"</stream:features>")
        return b"<stream:features"
    return raw.buffer


async def test_connection_rate_per_address_closes_the_excess_at_once(make_node):
    node = await make_node(limits={"connection_rate_per_ip": 1.0, "connection_burst_per_ip": 5})
    port = c2s_port(node)
    admitted = [await opened(port) for _ in range(5)]
    excess = await connect(port)
    assert await excess.closed() == b""  # nothing spent on it: no stream, just closed
    await trio.sleep(1.1)  # one token back
    admitted.append(await opened(port))


async def test_read_rate_pauses_a_fast_sender_without_disconnecting_it(make_node):
    rate, burst = 40_000, 8_000
    node = await make_node(limits={"c2s_read_rate": rate, "c2s_read_burst": burst})
    raw = await authenticated(c2s_port(node), "alice", "fast")
    body = b"z" * 900
    count = 100  # about 100 KB in all
    stanza = b"<message to='alice@localhost/fast'><body>" + body + b"</body></message>"
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        async def send_all() -> None:
            for _ in range(count):
                await raw.send(stanza)
        nursery.start_soon(send_all)
        with trio.fail_after(20):
            received = 0
            while received < count:  # every message comes back to us: none was dropped
                await raw.until(b"</message>")
                received += 1
    elapsed = time.monotonic() - started
    expected = (count * len(stanza) - burst - 65536) / rate  # one read may overshoot
    assert elapsed >= expected * 0.9, f"{count * len(stanza)} bytes read in {elapsed:.2f}s"
    assert node.router.sessions.session(JID.parse("alice@localhost/fast")) is not None


async def test_resources_per_account_are_capped_with_resource_constraint(make_node):
    node = await make_node(limits={"resources_per_account": 2})
    port = c2s_port(node)
    bound = [await authenticated(port, "alice", r) for r in ("one", "two")]  # kept open
    raw = await opened(port)
    await raw.send(plain_auth("alice"))
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   b"<resource>three</resource></bind></iq>")
    reply = await raw.until(b"</iq>")
    assert b"<resource-constraint" in reply and b"type=\"wait\"" in reply, reply
    assert node.router.sessions.resource_count("alice@localhost") == len(bound)


async def test_roster_size_is_capped(make_node):
    node = await make_node(limits={"roster_size": 3})
    raw = await authenticated(c2s_port(node))
    for i in range(4):
        await raw.send(f"<iq type='set' id='r{i}'><query xmlns='jabber:iq:roster'>"
                       f"<item jid='c{i}@localhost'/></query></iq>".encode())
        reply = await raw.until(f"id=\"r{i}\"".encode())
    reply += await raw.until(b"</iq>")
    assert b"type=\"error\"" in reply and b"<resource-constraint" in reply, reply
    assert node.store.roster_item("alice@localhost", "c3@localhost") is None
    assert node.store.roster_item("alice@localhost", "c2@localhost") is not None


async def test_offline_queue_is_capped_and_the_excess_bounces(make_node):
    node = await make_node(limits={"offline_queue": 2})
    raw = await authenticated(c2s_port(node))
    for i in range(3):
        await raw.send(f"<message to='bob@localhost' id='o{i}' type='chat'>"
                       f"<body>note {i}</body></message>".encode())
    bounce = await raw.until(b"</message>", timeout=10)
    assert b"id=\"o2\"" in bounce and b"<service-unavailable" in bounce, bounce
    assert node.store.offline_count("bob@localhost") == 2


async def test_a_client_that_stops_reading_is_closed_and_its_queue_stays_bounded(make_node):
    from raftxmpp.routing import sessions as sessions_module

    node = await make_node(c2s={"send_timeout": 1.0, "max_stanza_size": 65536},
                           limits={"c2s_read_rate": 0})
    port = c2s_port(node)
    slow = await authenticated(port, "bob", "slow", rcvbuf=4096)  # then never reads again
    slow_jid = JID.parse("bob@localhost/slow")
    flooder = await authenticated(port, "alice", "flood")
    stanza = b"<message to='bob@localhost/slow'><body>" + b"f" * 16000 + b"</body></message>"
    largest = 0
    with trio.fail_after(20):
        for _ in range(400):  # up to 6.4 MB; the slow session goes long before that
            session = node.router.sessions.session(slow_jid)
            if session is None:
                break
            largest = max(largest, session.outbox_bytes)
            await flooder.send(stanza)
            await trio.sleep(0)
        while node.router.sessions.session(slow_jid) is not None:
            await trio.sleep(0.05)
    assert largest <= sessions_module.MAX_OUTBOX_BYTES + len(stanza)
    await flooder.send(b"<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"id=\"alive\"" in await flooder.until(b"id=\"alive\"", timeout=10)
    await slow.aclose()  # held open (unread) until here


@pytest.mark.parametrize("direct_tls", [False])
async def test_refusal_of_a_full_address_names_no_other_client(make_node, direct_tls):
    node = await make_node(limits={"connections_per_ip": 1, "pre_auth_connections_per_ip": 1})
    port = c2s_port(node)
    holder = await opened(port)
    data = await expect_stream_error(await connect(port), "policy-violation")
    assert b"alice" not in data and b"bob" not in data
    await holder.aclose()


async def test_a_client_that_never_authenticates_is_cut_off(make_node):
    node = await make_node(c2s={"pre_auth_timeout": 0.5})
    raw = await opened(c2s_port(node))
    for _ in range(5):  # keepalives do not buy it more time (the Openfire pre-auth DoS)
        await raw.send(b" ")
        await trio.sleep(0.05)
    await expect_stream_error(raw, "connection-timeout")


async def test_in_band_registrations_are_paced_per_address(make_node):
    node = await make_node(limits={"registrations_per_ip": 2, "registration_window": 3600})
    raw = await opened(c2s_port(node))
    replies = []
    for i in range(3):
        await raw.send(f"<iq type='set' id='reg{i}'><query xmlns='jabber:iq:register'>"
                       f"<username>new{i}</username><password>pw-{i}-long-enough</password>"
                       f"</query></iq>".encode())
        replies.append(await raw.until(f"id=\"reg{i}\"".encode(), timeout=10)
                       + await raw.until(b">"))
    assert [b"type=\"result\"" in reply for reply in replies] == [True, True, False]
    assert b"<resource-constraint" in replies[2] + await raw.until(b"</iq>")
    assert "new2@localhost" not in node.store.accounts("localhost")
