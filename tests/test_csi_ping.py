"""Client State Indication (XEP-0352) and the server's pings (XEP-0199): raw XML against
a node in the test's nursery, pinging after one silent second."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.c2s import csi
from raftxmpp.jid import JID
from raftxmpp.node import Node
from tests.harness import free_ports, listener_sections
from tests.test_c2s_raw import PASSWORD, authenticated
from tests.test_sm_raw import attr, enabled, logged_in, send_chat


async def start_node(tmp_path, nursery, **options) -> Node:
    raft, link, c2s, tls = free_ports(4)
    base = config_mod.embedded_default(tmp_path / "data")
    cfg = dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, raft=config_mod.Address("127.0.0.1", raft),
                                    link=config_mod.Address("127.0.0.1", link)),
        **{name: dataclasses.replace(getattr(base, name), listen=config_mod.Address("127.0.0.1", 0))
           for name in listener_sections()},
        c2s=dataclasses.replace(base.c2s, listen=config_mod.Address("127.0.0.1", c2s),
                                tls_listen=config_mod.Address("127.0.0.1", tls),
                                plaintext_auth_on_loopback=True, **options),
    )
    node = await nursery.start(Node(cfg).run)
    with trio.fail_after(10):
        while not node.raft.status().get("leader"):
            await trio.sleep(0.02)
    for user in ("alice", "bob", "carol"):
        await node.store.register(f"{user}@localhost", PASSWORD)
    return node


@pytest.fixture
async def node(tmp_path, nursery):
    node = await start_node(tmp_path, nursery, csi_max_held=5)
    yield node
    node.request_stop()


@pytest.fixture
async def pinging_node(tmp_path, nursery):
    node = await start_node(tmp_path, nursery, ping_interval=1.0, ping_timeout=1.0)
    yield node
    node.request_stop()


def test_presence_is_held_and_collapsed_bodies_and_iqs_are_not():
    state = csi.ClientState(max_held=10, inactive=True)
    p1 = b'<presence from="a@x/1"><show>away</show></presence>'
    p2 = b'<presence from="a@x/1"/>'
    typing = b'<message from="b@x/1" type="chat"><composing xmlns="http://jabber.org/protocol/chatstates"/></message>'
    assert state.take([p1, typing, p2]) == []
    assert list(state.held.values()) == [typing, p2]  # p2 replaced p1
    body = b'<message from="b@x/1" type="chat"><body>hi</body></message>'
    assert state.take([body]) == [typing, p2, body]  # the held go first, in order
    iq = b'<iq type="get" id="1"/>'
    assert state.take([iq]) == [iq]
    subscribe = b'<presence type="subscribe" from="c@x"/>'
    assert state.take([subscribe]) == [subscribe]


def test_the_held_queue_is_bounded():
    state = csi.ClientState(max_held=3, inactive=True)
    chunks = [f'<presence from="u{i}@x/r"/>'.encode() for i in range(4)]
    assert state.take(chunks) == chunks  # past the bound: flushed
    assert not state.held


async def test_an_inactive_client_gets_presence_late_and_messages_at_once(node):
    watcher = await authenticated(node, "alice", "phone")
    await watcher.send(b"<presence/>")
    await watcher.until(b"<presence")
    await watcher.send(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    session = node.router.sessions.local_session(JID.parse("alice@localhost/phone"))
    with trio.fail_after(20):  # <inactive/> has no answer: wait until the server took it
        while session.csi is None:
            await trio.sleep(0.02)
    desk = await authenticated(node, "alice", "desk")
    await desk.send(b"<presence><status>one</status></presence>")
    await desk.send(b"<presence><status>two</status></presence>")
    await desk.send(b"<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    await desk.until(b'id="sync"')
    with trio.fail_after(20):
        while not (session.csi and session.csi.held):
            await trio.sleep(0.02)
    assert len(session.csi.held) == 1  # collapsed: only "two" waits
    await send_chat(node, "bob", "alice@localhost/phone", ["urgent"])
    data = await watcher.until(b"urgent</body>")
    assert b"<status>two</status>" in data and b"<status>one</status>" not in data
    assert data.index(b"two") < data.index(b"urgent")
    await watcher.send(b"<active xmlns='urn:xmpp:csi:0'/>")


async def test_active_flushes_what_was_held(node):
    watcher = await authenticated(node, "carol", "phone")
    await watcher.send(b"<presence/>")
    await watcher.until(b"<presence")
    await watcher.send(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    desk = await authenticated(node, "carol", "desk")
    await desk.send(b"<presence><status>later</status></presence>")
    session = node.router.sessions.local_session(JID.parse("carol@localhost/phone"))
    with trio.fail_after(20):
        while not (session.csi and session.csi.held):
            await trio.sleep(0.02)
    await watcher.send(b"<active xmlns='urn:xmpp:csi:0'/>")
    await watcher.until(b"<status>later</status>")


async def test_a_client_that_stops_answering_is_pinged_then_detached(pinging_node):
    """A half-open connection: the socket stays, the client is gone. The server's ping
    goes unanswered; the session is detached and can be resumed."""
    raw, answer = await enabled(pinging_node, "bob", "tunnel")
    with trio.fail_after(10):
        ping = await raw.until(b"urn:xmpp:ping")
    assert b'type="get"' in ping
    session = pinging_node.router.sessions.local_session(JID.parse("bob@localhost/tunnel"))
    with trio.fail_after(10):
        while not session.detached:
            await trio.sleep(0.05)
    again = await logged_in(pinging_node, "bob")
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{attr(answer, 'id')}' h='0'/>"
                     .encode())
    assert (await again.until(b"/>")).startswith(b"<resumed")


async def test_a_client_that_answers_pings_stays(pinging_node):
    raw = await authenticated(pinging_node, "alice", "awake")
    for _ in range(2):
        with trio.fail_after(10):
            ping = await raw.until(b"</iq>")
        ping_id = attr(ping, "id")
        await raw.send(f"<iq type='result' id='{ping_id}' to='localhost'/>".encode())
    session = pinging_node.router.sessions.local_session(JID.parse("alice@localhost/awake"))
    assert session is not None and session.closing is None
