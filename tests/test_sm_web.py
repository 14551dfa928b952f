"""Stream management over WebSocket (RFC 7395): the same connection code as TCP, so a
session enabled over one WebSocket resumes over another after the first one was lost."""

from __future__ import annotations

import re

import pytest
import trio

from raftxmpp.jid import JID
from tests.web_client import (
    BoshClient,
    WSClient,
    bosh,
    open_frame,
    plain_auth,
    start_node,
    ws_login,
)


@pytest.fixture
async def node(nursery, tmp_path):
    node = await start_node(nursery, tmp_path)
    yield node
    node.request_stop()


async def test_a_websocket_session_resumes_over_a_new_websocket(node):
    alice = await ws_login(node.http_port, "alice", "ws")
    await alice.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    enabled = await alice.receive_until("<enabled")
    previd = re.search(r'id="([^"]+)"', enabled).group(1)
    await alice.send("<presence xmlns='jabber:client'/>")
    await alice.receive_until("<presence")
    bob = await ws_login(node.http_port, "bob", "ws")
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/ws' type='chat'>"
                   "<body>first</body></message>")
    await alice.receive_until("first")
    await alice.aclose()  # the WebSocket is lost: no <close/>
    session = node.router.sessions.local_session(JID.parse("alice@localhost/ws"))
    with trio.fail_after(10):
        while not session.detached:
            await trio.sleep(0.05)
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/ws' type='chat'>"
                   "<body>second</body></message>")
    again = await WSClient.connect(node.http_port)
    await again.send(open_frame())
    await again.receive_until("mechanisms")
    await again.send(plain_auth("alice"))
    await again.receive_until("<success")
    await again.send(open_frame())
    await again.receive_until("urn:xmpp:sm:3")  # the features after SASL offer it
    # The client handled its presence echo and "first": h = 2.
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='2'/>")
    resumed = await again.receive_until("<resumed")
    assert 'h="1"' in resumed  # the server handled alice's presence
    message = await again.receive_until("second", timeout=30)
    assert "first" not in message
    assert node.router.sessions.local_session(JID.parse("alice@localhost/ws")) is session


@pytest.fixture
async def bosh_node(nursery, tmp_path):
    node = await start_node(nursery, tmp_path, bosh_inactivity=2.0)
    yield node
    node.request_stop()


async def test_a_bosh_session_that_goes_quiet_resumes_in_a_new_bosh_session(bosh_node):
    node = bosh_node
    alice = BoshClient(node.http_port)
    await alice.login("alice", "bosh")
    enabled = await alice.send_until("<enabled", "<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    previd = re.search(r'id="([^"]+)"', enabled).group(1)
    await alice.send_until("<presence", "<presence xmlns='jabber:client'/>")
    bob = await ws_login(node.http_port, "bob", "ws")
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/bosh' type='chat'>"
                   "<body>first</body></message>")
    await alice.send_until("first")
    # No more requests: the BOSH session ends after [http] bosh_inactivity; the XMPP
    # session is detached, not ended.
    session = node.router.sessions.local_session(JID.parse("alice@localhost/bosh"))
    with trio.fail_after(20):
        while not session.detached:
            await trio.sleep(0.1)
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/bosh' type='chat'>"
                   "<body>second</body></message>")
    again = BoshClient(node.http_port)
    await again.create()
    await again.send_until("<success", plain_auth("alice"))
    again.rid += 1
    features = await bosh(node.http_port, again.body(xmpp__restart="true", to="localhost"))
    assert "urn:xmpp:sm:3" in features
    resumed = await again.send_until(
        "<resumed", f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='2'/>")
    assert 'h="1"' in resumed
    answer = resumed if "second" in resumed else await again.send_until("second", timeout=30)
    assert "first" not in answer
