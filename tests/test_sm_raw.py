"""Stream management (XEP-0198) byte for byte: raw XML against a node in the test's
nursery (the fixtures of test_c2s_raw.py). The slixmpp and cluster tests are in
test_sm_clients.py."""

from __future__ import annotations

import base64
import re

import trio

from tests import test_c2s_raw
from tests.test_c2s_raw import HEADER, PASSWORD, Raw, authenticated, connect

node = test_c2s_raw.node  # the fixture: a node running in the test's nursery

PING = b"<iq type='get' id='%s' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


def attr(data: bytes, name: str) -> str:
    found = re.search(rb"\b" + name.encode() + rb"=['\"]([^'\"]*)['\"]", data)
    assert found, f"no {name} in {data!r}"
    return found.group(1).decode()


async def logged_in(node, user: str = "alice") -> Raw:
    """Authenticated, not bound: where a <resume/> is sent."""
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
                   "</auth>".encode())
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    return raw


async def enabled(node, user: str = "alice", resource: str = "phone", resume: bool = True,
                  extra: str = "") -> tuple[Raw, bytes]:
    raw = await authenticated(node, user, resource)
    flag = " resume='true'" if resume else ""
    await raw.send(f"<enable xmlns='urn:xmpp:sm:3'{flag}{extra}/>".encode())
    return raw, await raw.until(b"/>")  # <enabled …/>


async def acked(raw: Raw, h_wanted: int) -> None:
    await raw.send(b"<r xmlns='urn:xmpp:sm:3'/>")
    await raw.until(b"<a xmlns='urn:xmpp:sm:3' h=")
    answer = await raw.until(b"/>")
    assert answer == f"'{h_wanted}'/>".encode(), answer


async def send_chat(node, sender: str, to: str, bodies: list[str]) -> None:
    raw = await authenticated(node, sender, "sender")
    for body in bodies:
        await raw.send(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body>"
                       "</message>".encode())
    await raw.send(PING % b"done")
    await raw.until(b'id="done"')
    await raw.stream.aclose()


async def test_the_feature_is_offered_after_authentication_only(node):
    raw = await connect(node)
    await raw.send(HEADER)
    before = await raw.until(b"</stream:features>")
    assert b"urn:xmpp:sm:3" not in before
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
                   "</auth>".encode())
    await raw.until(b"<success")
    await raw.send(HEADER)
    after = await raw.until(b"</stream:features>")
    assert b"<sm xmlns=\"urn:xmpp:sm:3\"/>" in after


async def test_enable_without_resume_counts_both_ways(node):
    raw, answer = await enabled(node, resume=False)
    assert answer.startswith(b"<enabled") and b"id=" not in answer and b"resume" not in answer
    await acked(raw, 0)
    for i in range(3):
        await raw.send(PING % str(i).encode())
        await raw.until(f'id="{i}"'.encode())
    await acked(raw, 3)


async def test_enable_with_resume_gives_an_id_and_max(node):
    raw, answer = await enabled(node, extra=" max='120'")
    assert attr(answer, "resume") == "true" and attr(answer, "id")
    assert attr(answer, "max") == "120"  # the client asked for less than the server allows
    assert b"location" not in answer  # any node will do


async def test_enable_twice_and_resume_when_bound_are_unexpected_requests(node):
    raw, _ = await enabled(node)
    await raw.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
    assert b"<unexpected-request" in await raw.until(b"</failed>")
    await raw.send(b"<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>")
    assert b"<unexpected-request" in await raw.until(b"</failed>")
    await raw.send(PING % b"still")
    await raw.until(b'id="still"')


async def test_r_and_a_before_enable_are_a_stream_error(node):
    raw = await authenticated(node)
    await raw.send(b"<r xmlns='urn:xmpp:sm:3'/>")
    await test_c2s_raw.expect_stream_error(raw, "unsupported-stanza-type")


async def test_the_server_asks_for_acks_every_few_stanzas(node):
    raw, _ = await enabled(node)
    every = node.config.stream_management.ack_every
    for i in range(every):
        await raw.send(PING % str(i).encode())
    data = await raw.until(b"<r xmlns='urn:xmpp:sm:3'/>")
    assert data.count(b'type="result"') == every
    await raw.send(f"<a xmlns='urn:xmpp:sm:3' h='{every}'/>".encode())
    session = node.router.sessions.local_session(_jid("alice@localhost/phone"))
    with trio.fail_after(5):
        while session.sm.unacked:
            await trio.sleep(0.02)


async def test_an_ack_for_more_than_was_sent_ends_the_stream(node):
    raw, _ = await enabled(node)
    await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
    data = await raw.closed()
    assert b"<undefined-condition" in data and b"<handled-count-too-high" in data
    assert b"h='5'" in data and b"send-count='0'" in data


async def test_a_malformed_h_is_bad_format(node):
    raw, _ = await enabled(node)
    await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='-1'/>")
    await test_c2s_raw.expect_stream_error(raw, "bad-format")


async def test_resume_after_an_abrupt_disconnect_sends_exactly_what_was_not_acked(node):
    raw, answer = await enabled(node)
    previd = attr(answer, "id")
    await raw.send(b"<presence/>")
    await send_chat(node, "bob", "alice@localhost/phone", ["m1", "m2"])
    first = await raw.until(b"m2</body></message>")
    assert b"m1" in first
    sent_before = node.router.sessions.local_session(_jid("alice@localhost/phone")).sm.sent
    await raw.stream.aclose()  # abrupt: no </stream:stream>
    session = node.router.sessions.local_session(_jid("alice@localhost/phone"))
    with trio.fail_after(5):
        while not session.detached:
            await trio.sleep(0.02)
    await send_chat(node, "bob", "alice@localhost/phone", ["m3"])  # while detached
    # The client handled everything up to m1 (counted: its own presence echo and m1).
    handled = sent_before - 1
    again = await logged_in(node)
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{handled}'/>".encode())
    resumed = await again.until(b"/>")
    assert resumed.startswith(b"<resumed") and attr(resumed, "previd") == previd
    assert attr(resumed, "h") == "1"  # the server handled the client's one presence
    # m2 and m3 were parked in offline storage while detached: they come from there.
    data = await again.until(b"m3</body>", timeout=30) + await again.until(b"</message>")
    assert b"m1" not in data and data.count(b"m2</body>") == 1
    await acked(again, 1)
    # The client acknowledges m2 and m3: their stored copies may go now (custody: not
    # before, so that a node dying with them unacknowledged leaves them stored).
    await again.send(f"<a xmlns='urn:xmpp:sm:3' h='{handled + 2}'/>".encode())
    await again.send(PING % b"settled")
    assert b"m1</body>" not in await again.until(b'id="settled"', timeout=30)
    with trio.fail_after(30):  # delivered, then removed by id
        while node.store.offline_count("alice@localhost"):
            await trio.sleep(0.05)
    assert node.router.sessions.local_session(_jid("alice@localhost/phone")) is session
    assert not session.detached


async def test_resume_takes_over_a_connection_that_is_still_open(node):
    """A half-open connection: the client gave up on it, the server has not noticed."""
    raw, answer = await enabled(node, resource="halfopen")
    again = await logged_in(node)
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{attr(answer, 'id')}' h='0'/>"
                     .encode())
    assert (await again.until(b"/>")).startswith(b"<resumed")
    await raw.closed()  # the old connection is ended
    await again.send(PING % b"after")
    await again.until(b'id="after"')


async def test_resume_of_an_unknown_or_foreign_session_fails_with_item_not_found(node):
    raw, answer = await enabled(node, user="bob", resource="mine")
    bob_id = attr(answer, "id")
    alice = await logged_in(node)
    await alice.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{bob_id}' h='0'/>".encode())
    failed = await alice.until(b"</failed>")
    assert b"<item-not-found" in failed and b" h=" not in failed
    await alice.send(b"<resume xmlns='urn:xmpp:sm:3' previd='nonsense' h='0'/>")
    assert b"<item-not-found" in await alice.until(b"</failed>")
    # The stream goes on: the client binds a new session.
    await alice.send(b"<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert b"<jid>" in await alice.until(b"</iq>")


async def test_resume_after_a_clean_close_fails_with_the_handled_count(node):
    raw, answer = await enabled(node, resource="closed")
    for i in range(2):
        await raw.send(PING % str(i).encode())
        await raw.until(f'id="{i}"'.encode())
    await raw.send(b"</stream:stream>")
    await raw.closed()
    again = await logged_in(node)
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{attr(answer, 'id')}' h='0'/>"
                     .encode())
    failed = await again.until(b"</failed>")
    assert b"<item-not-found" in failed and attr(failed, "h") == "2"


async def test_unacked_messages_of_an_ended_session_go_offline_with_a_delay(node):
    """§4 without resumption: the session ends with the connection; its unacked messages
    are handled as if it had never been there: offline storage, delivered at next login."""
    raw, _ = await enabled(node, resume=False, resource="gone")
    await raw.send(b"<presence/>")
    await send_chat(node, "bob", "alice@localhost/gone", ["lost1", "lost2"])
    await raw.until(b"lost2</body></message>")
    await raw.stream.aclose()
    with trio.fail_after(30):
        while node.store.offline_count("alice@localhost") < 2:
            await trio.sleep(0.05)
    later = await authenticated(node, "alice", "later")
    await later.send(b"<presence/>")
    data = await later.until(b"lost2</body>", timeout=30)
    assert b"lost1" in data and b"urn:xmpp:delay" in data


async def test_unacked_messages_go_to_another_resource_when_there_is_one(node):
    desk = await authenticated(node, "alice", "desk")
    await desk.send(b"<presence><priority>-1</priority></presence>")  # gets nothing to the bare JID
    await desk.until(b"</presence>")
    raw, _ = await enabled(node, resume=False, resource="mobile")
    await raw.send(b"<presence/>")
    await send_chat(node, "bob", "alice@localhost/mobile", ["moved"])
    await raw.until(b"moved</body></message>")
    await desk.send(b"<presence/>")  # now available with priority 0
    await raw.stream.aclose()
    data = await desk.until(b"moved</body>", timeout=30) + await desk.until(b"</message>")
    assert b"urn:xmpp:delay" in data and b"Resent" in data


async def test_an_unacked_iq_request_is_answered_with_an_error(node):
    raw, _ = await enabled(node, resume=False, resource="iqgone")
    bob = await authenticated(node, "bob", "asker")
    await bob.send(b"<iq type='get' id='v1' to='alice@localhost/iqgone'>"
                   b"<query xmlns='jabber:iq:version'/></iq>")
    await raw.until(b"jabber:iq:version")
    await raw.stream.aclose()
    reply = await bob.until(b"</iq>", timeout=30)
    assert b'type="error"' in reply and b"service-unavailable" in reply


async def test_a_detached_session_that_times_out_sends_its_messages_offline(node):
    raw, answer = await enabled(node, resource="timeout", extra=" max='1'")
    assert attr(answer, "max") == "1"
    await raw.send(b"<presence/>")
    await raw.stream.aclose()
    session = node.router.sessions.local_session(_jid("alice@localhost/timeout"))
    with trio.fail_after(5):
        while not session.detached:
            await trio.sleep(0.02)
    await send_chat(node, "bob", "alice@localhost/timeout", ["queued"])
    with trio.fail_after(30):
        while node.router.sessions.local_session(_jid("alice@localhost/timeout")) is not None \
                or node.store.offline_count("alice@localhost") < 1:
            await trio.sleep(0.05)
    again = await logged_in(node)
    await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{attr(answer, 'id')}' h='0'/>"
                     .encode())
    assert b"<item-not-found" in await again.until(b"</failed>")


def _jid(text: str):
    from raftxmpp.jid import JID
    return JID.parse(text)


# -- custody: the sender's ack covers a message once it is safe (issue 16) ---------------------


async def test_the_senders_ack_follows_the_recipients_ack_on_the_same_node(node):
    """bob (stream management) writes to alice's phone (stream management, not acking
    yet): bob's <r/> gets an h that does not cover the message, since alice's node could
    still die with it; when alice acks it, bob gets an unsolicited <a/> that does."""
    alice, _ = await enabled(node, "alice", "phone")
    await alice.send(b"<presence/>")
    bob, _ = await enabled(node, "bob", "desk")
    await bob.send(b"<message to='alice@localhost/phone' type='chat' id='c1'>"
                   b"<body>kept</body></message>")
    await alice.until(b"kept</body></message>")
    await acked(bob, 0)  # handled, not settled: alice has not acknowledged it
    await alice.send(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")  # her presence echo and the message
    await bob.until(b"<a xmlns='urn:xmpp:sm:3' h=")
    assert await bob.until(b"/>") == b"'1'/>"  # unsolicited (XEP-0198 §4), no <r/> sent
    await acked(bob, 1)


async def test_what_is_not_worth_keeping_settles_when_handled(node):
    """Presence, IQs and bodiless messages keep the old meaning of an ack: handled."""
    await enabled(node, "alice", "phone")
    bob, _ = await enabled(node, "bob", "desk")
    await bob.send(b"<message to='alice@localhost/phone' type='chat' id='s1'>"
                   b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await bob.send(PING % b"p1")
    await bob.until(b'id="p1"')
    await acked(bob, 2)


async def test_a_message_to_a_session_without_stream_management_settles_when_queued(node):
    alice = await authenticated(node, "alice", "plain")
    await alice.send(b"<presence/>")
    bob, _ = await enabled(node, "bob", "desk")
    await bob.send(b"<message to='alice@localhost/plain' type='chat' id='c2'>"
                   b"<body>plain</body></message>")
    await acked(bob, 1)


async def test_a_recipient_that_detaches_without_acking_settles_by_parking(node):
    """alice's phone loses its connection with bob's message unacknowledged: parked in
    offline storage (committed), so bob's ack covers it then."""
    alice, _ = await enabled(node, "alice", "phone")
    await alice.send(b"<presence/>")
    bob, _ = await enabled(node, "bob", "desk")
    await bob.send(b"<message to='alice@localhost/phone' type='chat' id='c3'>"
                   b"<body>parked</body></message>")
    await alice.until(b"parked</body></message>")
    await acked(bob, 0)
    await alice.stream.aclose()  # abrupt: the session detaches, its unacked queue is parked
    await bob.until(b"<a xmlns='urn:xmpp:sm:3' h=", timeout=15)
    assert await bob.until(b"/>") == b"'1'/>"


async def test_offline_messages_stay_stored_until_a_client_with_stream_management_acks(node):
    """No destructive read: offline messages delivered to a session with stream
    management are removed once its client acknowledged them, so a node that dies
    with them in the session's queue leaves them stored for the next session."""
    await send_chat(node, "bob", "alice@localhost", ["o1"])
    with trio.fail_after(10):
        while node.store.offline_count("alice@localhost") != 1:
            await trio.sleep(0.05)
    alice, _ = await enabled(node, "alice", "phone")
    await alice.send(b"<presence/>")
    await alice.until(b"o1</body>", timeout=15)
    await alice.send(PING % b"between")
    await alice.until(b'id="between"')
    assert node.store.offline_count("alice@localhost") == 1  # delivered, not acknowledged
    await alice.send(b"<a xmlns='urn:xmpp:sm:3' h='3'/>")  # presence echo, o1, the pong
    with trio.fail_after(10):
        while node.store.offline_count("alice@localhost"):
            await trio.sleep(0.05)
