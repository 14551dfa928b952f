"""XMPP over WebSocket (RFC 7395) against one node in this trio run, with a raw client."""

from __future__ import annotations

import re

import pytest
import trio

from tests.web_client import (
    FRAMING,
    WSClient,
    arequest,
    open_frame,
    plain_auth,
    start_node,
    ws_login,
)


@pytest.fixture
async def node(nursery, tmp_path):
    node = await start_node(nursery, tmp_path, websocket_ping_interval=0.5)
    yield node
    node.request_stop()


async def opened(node) -> WSClient:
    """A client whose stream is open and whose features arrived, not yet authenticated."""
    client = await WSClient.connect(node.http_port)
    await client.send(open_frame())
    await client.receive_until("features")
    return client


async def test_the_xmpp_subprotocol_is_required(node):
    """RFC 7395 §3.1: the client offers 'xmpp' in Sec-WebSocket-Protocol; the server
    answers with it, and refuses a handshake without it."""
    client = await WSClient.connect(node.http_port)
    assert client.subprotocol == "xmpp"
    with pytest.raises(ConnectionRefusedError, match="400"):
        await WSClient.connect(node.http_port, subprotocols=("chat",))


async def test_the_handshake_is_checked(node):
    """RFC 6455 §4.2.1: GET with Upgrade, Connection, a 16-byte key and version 13."""
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "xmpp"}
    status, headers, _ = await arequest(node.http_port, "GET", "/xmpp-websocket",
                                        headers={**base, "Sec-WebSocket-Version": "8"})
    assert status == 426 and headers["sec-websocket-version"] == "13"
    status, _, _ = await arequest(node.http_port, "GET", "/xmpp-websocket",
                                  headers={**base, "Sec-WebSocket-Key": "short"})
    assert status == 400
    status, _, _ = await arequest(node.http_port, "GET", "/xmpp-websocket")
    assert status == 426
    status, headers, _ = await arequest(node.http_port, "POST", "/xmpp-websocket", b"x")
    assert status == 405


async def test_open_is_answered_with_open_and_features_in_separate_messages(node):
    """RFC 7395 §3.3.2 and §3.4: <open/> in the framing namespace, then the features as
    their own message, each a complete document declaring its namespaces."""
    client = await WSClient.connect(node.http_port)
    await client.send(open_frame())
    opened = await client.receive()
    assert opened.startswith(f"<open xmlns='{FRAMING}'") and "from=\"localhost\"" in opened
    assert re.search(r'id="[^"]+"', opened) and 'version="1.0"' in opened
    features = await client.receive()
    assert features.startswith("<stream:features xmlns:stream=")
    assert "SCRAM-SHA-1" in features


async def test_login_restart_bind_and_a_message_between_two_clients(node):
    """RFC 7395 §3.5: after SASL success the client sends a new <open/>; the whole c2s
    stack (SASL, bind, routing) works; stanzas carry xmlns='jabber:client' (§3.3.3)."""
    alice = await ws_login(node.http_port, "alice")
    bob = await ws_login(node.http_port, "bob")
    await alice.send("<message xmlns='jabber:client' to='bob@localhost/web' type='chat'>"
                     "<body>hello bob</body></message>")
    message = await bob.receive_until("hello bob")
    assert message.startswith('<message xmlns="jabber:client"')
    assert 'from="alice@localhost/web"' in message


async def test_close_is_answered_with_close(node):
    """RFC 7395 §3.6: the client's <close/> ends the stream; the server answers
    <close/> and then closes the WebSocket."""
    alice = await ws_login(node.http_port, "alice")
    await alice.send(f"<close xmlns='{FRAMING}'/>")
    assert (await alice.receive()).startswith(f"<close xmlns='{FRAMING}'")
    with pytest.raises(EOFError):
        await alice.receive()
    assert alice.closed.code == 1000
    with trio.fail_after(5):
        while node.router.sessions.resource_count("alice@localhost"):
            await trio.sleep(0.02)


async def test_two_elements_in_one_message_are_a_stream_error(node):
    """RFC 7395 §3.3.3: each message holds exactly one complete element."""
    alice = await ws_login(node.http_port, "alice")
    await alice.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>")
    error = await alice.receive_until("stream:error")
    assert "bad-format" in error
    assert (await alice.receive()).startswith("<close")


async def test_a_binary_message_is_a_stream_error(node):
    """RFC 7395 §3.2: XMPP over WebSocket uses text frames."""
    from wsproto.events import BytesMessage

    client = await opened(node)
    await client._send(client.ws.send(BytesMessage(data=b"<presence/>")))
    assert "bad-format" in await client.receive_until("stream:error")


async def test_restricted_xml_is_refused(node):
    """RFC 6120 §11.1 applies to each message: no comments, PIs, DTDs or entities."""
    client = await opened(node)
    await client.send("<message xmlns='jabber:client'><!-- hidden --></message>")
    assert "restricted-xml" in await client.receive_until("stream:error")


async def test_an_oversized_message_is_a_policy_violation(node):
    """The c2s stanza size limit ([c2s] max_stanza_size) holds per message."""
    client = await opened(node)
    size = node.config.c2s.max_stanza_size
    await client.send("<message xmlns='jabber:client'><body>" + "x" * size + "</body></message>")
    assert "policy-violation" in await client.receive_until("stream:error")


async def test_authentication_is_required_before_stanzas(node):
    client = await opened(node)
    await client.send("<message xmlns='jabber:client' to='bob@localhost'/>")
    assert "not-authorized" in await client.receive_until("stream:error")


async def test_a_wrong_password_fails_and_a_right_one_succeeds(node):
    client = await opened(node)
    await client.send(plain_auth("alice", "wrong"))
    assert "not-authorized" in await client.receive_until("failure")
    await client.send(plain_auth("alice"))
    await client.receive_until("success")


async def test_pings_keep_a_live_client_and_end_a_silent_one(node):
    """RFC 7395 §3.4 (keepalive via WebSocket ping/pong): an idle client that answers
    pings stays; one that stops answering is closed within two intervals."""
    alice = await ws_login(node.http_port, "alice", "pings")
    with pytest.raises(trio.TooSlowError):
        await alice.receive(timeout=1.6)  # three intervals, reading: pings are answered
    assert node.router.sessions.resource_count("alice@localhost") == 1
    silent = await ws_login(node.http_port, "bob", "silent")
    with trio.fail_after(5):
        while node.router.sessions.resource_count("bob@localhost"):
            await trio.sleep(0.05)
    await silent.aclose()


async def test_an_origin_outside_the_allowed_list_is_refused(nursery, tmp_path):
    node = await start_node(nursery, tmp_path, cors_origins=("https://chat.example",))
    try:
        with pytest.raises(ConnectionRefusedError, match="403"):
            await WSClient.connect(node.http_port,
                                   extra_headers=[(b"Origin", b"https://evil.example")])
        client = await WSClient.connect(node.http_port,
                                        extra_headers=[(b"Origin", b"https://chat.example")])
        await client.aclose()
    finally:
        node.request_stop()
