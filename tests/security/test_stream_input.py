"""Hostile stream input against a running node: every case ends in a defined stream
or stanza error, the node keeps serving, and nothing a client sends grows memory."""

from __future__ import annotations

import pytest
import trio

from tests.security.conftest import (
    HEADER,
    authenticated,
    connect,
    expect_stream_error,
    opened,
    plain_auth,
)

BIG_BODY = b"<message to='bob@localhost'><body>" + b"x" * 10000 + b"</body></message>"
PING = b"<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


async def pinged(raw) -> None:
    """The session still answers: a ping gets its result."""
    await raw.send(PING)
    reply = await raw.until(b"id=\"p\"")
    assert reply.endswith(b"<iq type=\"result\" id=\"p\""), reply[-300:]


@pytest.fixture
def port(shared_node):
    return shared_node.c2s_port


async def test_oversized_stanza_in_one_read_after_a_small_one_is_policy_violation(port):
    raw = await authenticated(port)
    await raw.send(PING + BIG_BODY)  # one TCP chunk: the big stanza starts mid-read
    await expect_stream_error(raw, "policy-violation")


async def test_oversized_stanza_trickled_in_small_reads_is_policy_violation(port):
    raw = await authenticated(port)
    with pytest.raises(trio.BrokenResourceError):  # refused before we finish sending
        for start in range(0, len(BIG_BODY), 500):
            await raw.send(BIG_BODY[start:start + 500])
            await trio.sleep(0.001)
    await expect_stream_error(raw, "policy-violation")


async def test_stanza_just_under_the_limit_is_delivered(port):
    bob = await authenticated(port, "bob", "here")
    alice = await authenticated(port)
    body = b"y" * 3800
    await alice.send(b"<message to='bob@localhost/here'><body>" + body + b"</body></message>")
    assert body in await bob.until(b"</message>")


async def test_nesting_deeper_than_the_limit_is_policy_violation(port):
    raw = await authenticated(port)
    await raw.send(b"<message>" + b"<x>" * 40 + b"</x>" * 40 + b"</message>")
    await expect_stream_error(raw, "policy-violation")


async def test_billion_laughs_is_restricted_xml_without_expansion(port):
    entities = b"".join(
        b"<!ENTITY l%d '%s'>" % (i, b"&l%d;" % (i - 1) * 10) for i in range(1, 10))
    raw = await connect(port)
    await raw.send(b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY l0 'lol'>" + entities + b"]>"
                   + HEADER[21:] + b"<message><body>&l9;</body></message>")
    await expect_stream_error(raw, "restricted-xml")


async def test_external_entity_is_restricted_xml(port):
    raw = await connect(port)
    await raw.send(b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                   + HEADER[21:] + b"<message><body>&x;</body></message>")
    data = await expect_stream_error(raw, "restricted-xml")
    assert b"root:" not in data


@pytest.mark.parametrize("payload", [
    b"<message><body>\xc3\x28</body></message>",  # invalid continuation byte
    b"<message><body>\xed\xa0\x80</body></message>",  # a UTF-16 surrogate in UTF-8
    b"<message><body>\xf8\x88\x80\x80\x80</body></message>",  # 5-byte form
    b"<message><body>\x00</body></message>",  # not an XML character
], ids=["bad-continuation", "surrogate", "five-bytes", "nul"])
async def test_invalid_utf8_after_auth_is_not_well_formed(port, payload):
    raw = await authenticated(port)
    await raw.send(payload)
    await expect_stream_error(raw, "not-well-formed")


async def test_unsupported_encoding_declaration_is_refused(port):
    raw = await connect(port)
    await raw.send(HEADER.replace(b"version='1.0'?>", b"version='1.0' encoding='UTF-16'?>", 1))
    await expect_stream_error(raw, "unsupported-encoding")


@pytest.mark.parametrize("header", [
    HEADER.replace(b"version='1.0'", b"version='2.0'"),  # declaration and stream both 2.0
    HEADER.replace(b"version='1.0'>", b"version='2.0'>"),  # only the stream header
], ids=["xml-and-stream", "stream-only"])
async def test_version_2_is_unsupported_version(port, header):
    raw = await connect(port)
    await raw.send(header)
    await expect_stream_error(raw, "unsupported-version")


async def test_whitespace_flood_ends_with_policy_violation(port):
    raw = await authenticated(port)
    with pytest.raises(trio.BrokenResourceError), trio.fail_after(10):
        for _ in range(200):  # 200 × 4 KiB, far past the 64 KiB configured
            await raw.send(b" \n\t\r" * 1024)
    await expect_stream_error(raw, "policy-violation")


async def test_whitespace_keepalives_below_the_limit_keep_the_session(port):
    raw = await authenticated(port)
    for _ in range(30):
        await raw.send(b" " * 1000)  # 30 KB in all, under 64 KiB, then a stanza resets it
    await pinged(raw)
    for _ in range(30):
        await raw.send(b"\n" * 1000)
    await pinged(raw)


async def test_stanza_before_authentication_is_not_authorized(port):
    raw = await opened(port)
    await raw.send(b"<message to='bob@localhost'><body>spam</body></message>")
    await expect_stream_error(raw, "not-authorized")


async def test_iq_before_bind_is_refused(port):
    raw = await opened(port)
    await raw.send(b"<iq type='get' id='r' to='localhost'><query xmlns='jabber:iq:roster'/></iq>")
    await expect_stream_error(raw, "not-authorized")


@pytest.mark.parametrize("to", [
    "a" * 1024 + "@localhost",  # localpart over 1023 bytes (RFC 7622 §3.3)
    "bob@" + "d" * 64 + ".example",  # a DNS label over 63 bytes
    "bob@localhost/" + "r" * 1024,  # resourcepart over 1023 bytes
    "é" * 600 + "@localhost",  # 600 characters, 1200 bytes: counted in bytes
    "bob@localhost/\u202e",  # a bidi control: PRECIS refuses it
    "bo b@localhost",  # a space in a localpart
    "@localhost",  # empty localpart
    "bob@",  # empty domainpart
], ids=["long-local", "long-label", "long-resource", "long-multibyte", "bidi", "space",
        "empty-local", "empty-domain"])
async def test_bad_jid_is_jid_malformed_and_the_stream_stays(port, to):
    raw = await authenticated(port)
    await raw.send(f"<message to='{to}' id='m1' type='chat'><body>x</body></message>".encode())
    reply = await raw.until(b"</message>")
    assert b"<jid-malformed" in reply and b"type=\"error\"" in reply, reply
    await pinged(raw)


async def test_overlong_resource_at_bind_is_bad_request(port):
    raw = await opened(port)
    await raw.send(plain_auth("alice"))
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   b"<resource>" + b"r" * 2000 + b"</resource></bind></iq>")
    assert b"<bad-request" in await raw.until(b"</iq>")


async def test_unknown_namespace_iq_gets_service_unavailable(port):
    raw = await authenticated(port)
    await raw.send(b"<iq type='get' id='u' to='localhost'><x xmlns='urn:nobody:knows'/></iq>")
    assert b"<service-unavailable" in await raw.until(b"</iq>")


async def test_hostile_clients_leave_other_sessions_served(port):
    bob = await authenticated(port, "bob", "stay")
    for payload in (b"<!-- c -->", b"<message>\xff</message>", PING + BIG_BODY, b"<a>" * 300):
        hostile = await authenticated(port, "alice", "hostile")
        await hostile.send(payload)
        await hostile.closed()
    alice = await authenticated(port, "alice", "fine")
    await alice.send(b"<message to='bob@localhost/stay'><body>still here</body></message>")
    assert b"still here" in await bob.until(b"</message>")



async def test_unsolicited_iq_result_before_bind_is_ignored(port):
    # Found by the long hypothesis run: an error reply to a result crashed the connection.
    raw = await opened(port)
    await raw.send(plain_auth("alice"))
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"<iq type='result' id='x'/><iq type='error' id='y'/>"
                   b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   b"<resource>after-result</resource></bind></iq>")
    assert b"<jid>alice@localhost/after-result</jid>" in await raw.until(b"</iq>")


@pytest.mark.parametrize("kind", ["result", "error"])
async def test_unsolicited_register_result_before_auth_is_ignored(port, kind):
    raw = await opened(port)
    await raw.send(f"<iq type='{kind}' id='x'><query xmlns='jabber:iq:register'/></iq>".encode()
                   + b"<iq type='get' id='form'><query xmlns='jabber:iq:register'/></iq>")
    reply = await raw.until(b"</iq>")
    assert b"id=\"form\"" in reply and b"id=\"x\"" not in reply, reply


def test_no_hostile_input_above_crashed_a_connection_or_logged_a_traceback(shared_node):
    # Runs after the module's other tests, against the node they all attacked.
    assert shared_node.alive()
    log = shared_node.log()
    assert "Traceback" not in log and "crashed" not in log, log[-3000:]
