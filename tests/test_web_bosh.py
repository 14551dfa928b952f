"""BOSH (XEP-0124, XEP-0206) against one node in this trio run, with a raw client."""

from __future__ import annotations

import re

import pytest
import trio

from tests.web_client import (
    HTTPBIND,
    BoshClient,
    arequest,
    bosh,
    plain_auth,
    start_node,
    ws_login,
)


@pytest.fixture
async def node(nursery, tmp_path):
    node = await start_node(nursery, tmp_path, bosh_inactivity=3.0)
    yield node
    node.request_stop()


def attr(body: str, name: str) -> str | None:
    match = re.search(rf"\s{name}='([^']*)'", body.split(">", 1)[0])
    return match.group(1) if match else None


async def test_session_creation_response_carries_the_negotiated_attributes(node):
    """XEP-0124 §7.1 and XEP-0206 §3: sid, wait, requests = hold + 1, inactivity,
    polling, ver, from, authid, xmpp:version, xmpp:restartlogic; the stream features come
    in the creation response."""
    client = BoshClient(node.http_port)
    answer = await client.create(wait="99999", hold="5")
    assert attr(answer, "sid") and len(attr(answer, "sid")) == 32
    assert attr(answer, "wait") == "60"  # capped at [http] bosh_max_wait
    assert (attr(answer, "hold"), attr(answer, "requests")) == ("1", "2")
    assert attr(answer, "from") == "localhost" and attr(answer, "authid")
    assert attr(answer, "xmpp:version") == "1.0" and attr(answer, "xmpp:restartlogic") == "true"
    assert attr(answer, "inactivity") and attr(answer, "polling") and attr(answer, "maxpause")
    assert "<mechanism>SCRAM-SHA-1</mechanism>" in answer


async def test_login_restart_bind_and_chat_with_a_websocket_user(node):
    """XEP-0206 §5: after SASL success the client asks for a restart with
    xmpp:restart='true' and gets the new features; stanzas travel in both directions."""
    client = BoshClient(node.http_port)
    assert await client.login("alice") == "alice@localhost/bosh"
    await client.send("<presence xmlns='jabber:client'/>")
    bob = await ws_login(node.http_port, "bob")
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/bosh' type='chat'>"
                   "<body>over websocket</body></message>")
    answer = await client.send_until("over websocket")
    assert "<message xmlns=\"jabber:client\"" in answer  # XEP-0206: stanzas in a <body/> carry jabber:client
    await client.send("<message xmlns='jabber:client' to='bob@localhost/web' type='chat'>"
                      "<body>over bosh</body></message>")
    assert "over bosh" in await bob.receive_until("over bosh")


async def test_a_held_request_is_answered_empty_after_wait(node):
    """XEP-0124 §7.1 'wait': the longest time the connection manager holds a request."""
    client = BoshClient(node.http_port)
    await client.create(wait="1")
    started = trio.current_time()
    answer = await client.send()
    assert answer.endswith("/>") and "terminate" not in answer
    assert trio.current_time() - started >= 0.9


async def test_a_new_request_releases_the_held_one(node):
    """XEP-0124 §11: with hold=1, when a second request arrives the first one held is
    answered at once (the second is then held up to 'wait', 2 s here)."""
    client = BoshClient(node.http_port)
    await client.login("alice", "hold")
    answered: dict[str, float] = {}

    async def post(name: str, rid: int) -> None:
        await bosh(node.http_port, client.body(rid=rid))
        answered[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, "first", client.rid + 1)
        await trio.sleep(0.5)
        assert "first" not in answered  # held: nothing to say yet
        sent_second = trio.current_time()
        nursery.start_soon(post, "second", client.rid + 2)
    assert answered["first"] - sent_second < 2.0
    assert answered["second"] - sent_second > 1.5


async def test_requests_out_of_order_are_processed_in_rid_order(node):
    """XEP-0124 §14.1: the connection manager MUST process requests in rid order; a
    request that arrives early waits for the gap to be filled."""
    client = BoshClient(node.http_port)
    await client.login("alice", "order")
    base = client.rid
    results: dict[int, str] = {}

    async def post(rid: int, children: str) -> None:
        results[rid] = await bosh(node.http_port, client.body(children, rid=rid))

    bob = await ws_login(node.http_port, "bob", "order")
    message = ("<message xmlns='jabber:client' to='bob@localhost/order' type='chat'>"
               "<body>{}</body></message>")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, base + 2, message.format("second"))
        await trio.sleep(0.3)
        nursery.start_soon(post, base + 1, message.format("first"))
    first = await bob.receive_until("<body>")
    second = await bob.receive_until("<body>")
    assert "first" in first and "second" in second


async def test_a_repeated_rid_gets_the_same_answer(node):
    """XEP-0124 §14.3: a client that lost an answer sends the request again with the
    same rid, and the connection manager answers with the same response."""
    client = BoshClient(node.http_port)
    await client.create()
    client.rid += 1
    body = client.body(plain_auth("alice"))
    first = await bosh(node.http_port, body)
    while "<success" not in first:
        client.rid += 1
        body = client.body()
        first = await bosh(node.http_port, body)
    assert await bosh(node.http_port, body) == first


async def test_a_rid_outside_the_window_ends_the_session(node):
    """XEP-0124 §14.1: a rid beyond the window of 'requests' is item-not-found."""
    client = BoshClient(node.http_port)
    await client.login("alice", "window")
    client.rid += 5
    answer = await client.send()
    assert attr(answer, "type") == "terminate" and attr(answer, "condition") == "item-not-found"
    with trio.fail_after(5):  # and the session is over, its resource gone
        while node.router.sessions.resource_count("alice@localhost"):
            await trio.sleep(0.02)


async def test_an_unknown_sid_is_item_not_found_with_http_200(node):
    """XEP-0124 §17.2: terminal binding conditions come with HTTP 200."""
    answer = await bosh(node.http_port, f"<body xmlns='{HTTPBIND}' rid='5' sid='{'0' * 32}'/>")
    assert attr(answer, "type") == "terminate" and attr(answer, "condition") == "item-not-found"


async def test_terminate_ends_the_session_and_its_resource(node):
    """XEP-0124 §13: type='terminate' (with a last payload) ends the session."""
    client = BoshClient(node.http_port)
    await client.login("alice", "bye")
    answer = await client.send("<presence xmlns='jabber:client' type='unavailable'/>",
                               type="terminate")
    assert attr(answer, "type") == "terminate"
    with trio.fail_after(5):
        while node.router.sessions.resource_count("alice@localhost"):
            await trio.sleep(0.02)
    answer = await client.send()
    assert attr(answer, "condition") == "item-not-found"


async def test_pause_answers_held_requests_and_extends_inactivity(node):
    """XEP-0124 §10: a pause request is answered at once and the session survives a
    silence longer than 'inactivity' (3 s here), up to the pause."""
    client = BoshClient(node.http_port)
    await client.login("alice", "pause")
    answer = await client.send(pause="6")
    assert "terminate" not in answer
    await trio.sleep(4)
    assert node.router.sessions.resource_count("alice@localhost") == 1
    assert "terminate" not in await client.send()


async def test_an_inactive_session_ends(node):
    """XEP-0124 §7.1 'inactivity': no request for longer than that ends the session."""
    client = BoshClient(node.http_port)
    await client.login("alice", "idle")
    with trio.fail_after(10):
        while node.router.sessions.resource_count("alice@localhost"):
            await trio.sleep(0.1)
    assert attr(await client.send(), "condition") == "item-not-found"


async def test_acks_report_the_highest_rid_when_answering_an_older_request(node):
    """XEP-0124 §9.1-9.2: with ack='1' at creation the answer acks the creation rid;
    an answer to a lower rid than the highest received carries ack."""
    client = BoshClient(node.http_port)
    answer = await client.create(ack="1")
    assert attr(answer, "ack") == str(client.rid)
    await client.send_until("<success", plain_auth("alice"))
    base = client.rid
    answers: dict[int, str] = {}

    async def post(rid: int) -> None:
        answers[rid] = await bosh(node.http_port, client.body(rid=rid))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, base + 1)
        await trio.sleep(0.3)
        nursery.start_soon(post, base + 2)
    assert attr(answers[base + 1], "ack") == str(base + 2)


async def test_broken_xml_is_http_400_and_a_get_is_405(node):
    """XEP-0124 §17.1: a body that is not one <body/> element is a bad request."""
    status, _, _ = await arequest(node.http_port, "POST", "/http-bind", b"<body xmlns='x'>")
    assert status == 400
    status, headers, _ = await arequest(node.http_port, "POST", "/http-bind",
                                        b"<!DOCTYPE body [<!ENTITY a 'b'>]><body/>")
    assert status == 400
    status, headers, _ = await arequest(node.http_port, "GET", "/http-bind")
    assert status == 405 and "POST" in headers["allow"]


async def test_an_unserved_host_is_host_unknown(node):
    client = BoshClient(node.http_port)
    answer = await client.create(to="elsewhere.example")
    assert attr(answer, "condition") == "host-unknown"


async def test_a_session_that_stops_polling_is_ended_past_its_output_cap(node):
    """The c2s slow-consumer rule over BOSH: output waiting for a request is capped
    (1 MiB); past it the session ends instead of growing our memory."""
    client = BoshClient(node.http_port)
    await client.login("alice", "stalled")
    await client.send("<presence xmlns='jabber:client'/>")
    bob = await ws_login(node.http_port, "bob", "flood")
    body = "x" * 4000
    for n in range(400):
        await bob.send(f"<message xmlns='jabber:client' to='alice@localhost/stalled' "
                       f"type='chat' id='m{n}'><body>{body}</body></message>")
    with trio.fail_after(10):
        while node.router.sessions.resource_count("alice@localhost"):
            await trio.sleep(0.05)
