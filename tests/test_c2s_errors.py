"""Every request a client can make gets an answer, never silence: raw XML against a node
in the test's nursery (the fixtures of test_c2s_raw.py)."""

from __future__ import annotations

import base64

import trio

from tests import test_c2s_raw
from tests.test_c2s_raw import HEADER, PASSWORD, authenticated, connect, expect_stream_error

node = test_c2s_raw.node  # the fixture: a node running in the test's nursery

STANZAS = b"urn:ietf:params:xml:ns:xmpp-stanzas"


async def test_a_lone_invalid_byte_after_the_header_ends_the_stream_at_once(node):
    """RFC 6120 §11.6 and §4.9.3.13: invalid UTF-8 is <not-well-formed/>; before the fix
    the node waited for more bytes that a broken client never sends."""
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"\xff")
    with trio.fail_after(3):
        await expect_stream_error(raw, "not-well-formed")


async def test_an_unknown_first_level_element_is_unsupported_stanza_type(node):
    """RFC 6120 §4.9.3.24: "The initiating entity has sent a first-level child of the stream
    that is not supported by the server" — before the fix it got an <error/> reply built
    around the unknown element."""
    raw = await authenticated(node)
    await raw.send(b"<hello xmlns='urn:example:nothing'/>")
    await expect_stream_error(raw, "unsupported-stanza-type")


async def test_a_stanza_in_another_namespace_is_unsupported_stanza_type(node):
    raw = await authenticated(node)
    await raw.send(b"<message xmlns='jabber:server' to='bob@localhost'><body>x</body></message>")
    await expect_stream_error(raw, "unsupported-stanza-type")


async def test_stream_management_is_answered_and_the_stream_goes_on(node):
    """XEP-0198 is offered now (tests/test_sm_raw.py covers it): an <enable/> is answered,
    never met with silence, and the stream goes on."""
    raw = await authenticated(node)
    await raw.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    enabled = await raw.until(b"/>")
    assert b"<enabled" in enabled and b"urn:xmpp:sm:3" in enabled
    await raw.send(b"<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b'type="result"' in await raw.until(b'id="p1"')


async def test_enabling_stream_management_before_bind_is_an_unexpected_request(node):
    """XEP-0198 §3: before resource binding "The server SHALL ... return a <failed/>
    element" with <unexpected-request/>."""
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
                   "</auth>".encode())
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
    assert b"<unexpected-request" in await raw.until(b"</failed>")


async def test_starttls_offered_next_to_sasl_is_honoured(node):
    """RFC 6120 §5.4.2.1: a <starttls/> the features offered is answered with <proceed/>,
    also when TLS is offered but not required (before the fix: <not-authorized/>)."""
    raw = await connect(node)
    await raw.send(HEADER)
    features = await raw.until(b"</stream:features>")
    assert b"<starttls" in features
    await raw.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"<proceed" in await raw.until(b"/>")


async def test_starttls_not_offered_fails_and_closes(node):
    """RFC 6120 §5.4.2.2: the <failure/> case; after authentication TLS is no longer offered."""
    raw = await authenticated(node)
    await raw.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    data = await raw.closed()
    assert b"<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>" in data
    assert data.rstrip().endswith(b"</stream:stream>")


async def test_a_message_to_the_server_itself_is_answered_with_service_unavailable(node):
    """RFC 6120 §8.3.3.19 <service-unavailable/>: no service here reads messages."""
    raw = await authenticated(node)
    await raw.send(b"<message to='localhost' id='m1' type='chat'><body>hello?</body></message>")
    reply = await raw.until(b"</message>")
    assert b'type="error"' in reply and b"<service-unavailable" in reply


async def test_an_iq_from_a_blocked_jid_to_the_account_is_service_unavailable(node):
    """XEP-0191 §3.3: "For IQ stanzas of type "get" or "set", the server MUST return an
    error, which SHOULD be <service-unavailable/>" — also for IQs the server answers on
    the blocking user's behalf (their vCard), which were answered before the fix."""
    await node.store.block("alice@localhost", ["bob@localhost"])
    try:
        raw = await authenticated(node, "bob", "blocked")
        await raw.send(b"<iq type='get' id='v1' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
        reply = await raw.until(b"</iq>")
        assert b'type="error"' in reply and b"<service-unavailable" in reply
    finally:
        await node.store.unblock("alice@localhost", ["bob@localhost"])


async def test_block_pushes_go_only_to_resources_that_requested_the_block_list(node):
    """XEP-0191 §3.3: "The server MUST also send an IQ-set to all of the user's resources
    that have requested the blocklist" — before the fix every resource got it, and a
    client that knows nothing of blocking answered an IQ it never asked for."""
    asked = await authenticated(node, "alice", "asked")
    other = await authenticated(node, "alice", "other")
    await asked.send(b"<iq type='get' id='l1'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
    await asked.until(b'id="l1"')
    await asked.send(b"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>"
                     b"<item jid='spam@example.net'/></block></iq>")
    pushed = await asked.until(b'id="b1"')  # the push goes out before the result
    assert b"<block" in pushed and b"spam@example.net" in pushed
    # Anything for `other` was queued before this ping's result.
    await other.send(b"<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    received = await other.until(b'id="p1"')
    assert b"urn:xmpp:blocking" not in received
    await node.store.unblock("alice@localhost", [])


async def test_a_message_of_an_unknown_type_is_handled_as_normal(node):
    """RFC 6121 §5.2.2: "if the application does not understand the value of the 'type'
    attribute provided, it MUST consider the message to be of type "normal"" — so it is
    stored for an offline contact (§8.5.3.2.1: a normal message to a full JID with no such
    resource is handled as if sent to the bare JID); before the fix it was dropped."""
    raw = await authenticated(node)
    await raw.send(b"<message to='bob@localhost/gone' type='shout' id='u1'><body>HI</body></message>"
                   b"<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    await raw.until(b'id="p2"')  # processed after the message, on the same stream
    assert node.store.offline_count("bob@localhost") == 1
    queued = node.store.offline_messages("bob@localhost")
    await node.store.offline_remove("bob@localhost", [m["id"] for m in queued])


async def _online(node, user: str, resource: str):
    raw = await authenticated(node, user, resource)
    await raw.send(b"<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq><presence/>")
    await raw.until(b'id="r0"')
    return raw


async def test_a_subscription_approval_comes_before_its_roster_push(node):
    """RFC 6121 §3.1.6: the user's server MUST "Deliver the inbound subscription approval
    to all of the user's interested resources ... This MUST occur before sending the
    roster push described in the next step." (Before the fix the push came first.)"""
    alice = await _online(node, "alice", "asker")
    bob = await _online(node, "bob", "approver")
    await alice.send(b"<presence to='bob@localhost' type='subscribe'/>")
    await bob.until(b'type="subscribe"')
    await bob.send(b"<presence to='alice@localhost' type='subscribed'/>")
    seen = await alice.until(b'subscription="to"')
    assert b'type="subscribed"' in seen, seen
