"""Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3) as the wire shows them."""

from __future__ import annotations

import pytest
from lxml import etree

from raftxmpp.xml import ns
from raftxmpp.xml.errors import (
    STANZA_CONDITION_TYPES,
    STREAM_CONDITIONS,
    StanzaError,
    StreamError,
    can_reply_with_error,
    error_reply,
)
from raftxmpp.xml.stanza import serialize

STREAM_OPEN = f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'>".encode()

# RFC 6120 §4.9.3, in the RFC's order.
RFC_STREAM_CONDITIONS = [
    "bad-format",
    "bad-namespace-prefix",
    "conflict",
    "connection-timeout",
    "host-gone",
    "host-unknown",
    "improper-addressing",
    "internal-server-error",
    "invalid-from",
    "invalid-namespace",
    "invalid-xml",
    "not-authorized",
    "not-well-formed",
    "policy-violation",
    "remote-connection-failed",
    "reset",
    "resource-constraint",
    "restricted-xml",
    "see-other-host",
    "system-shutdown",
    "undefined-condition",
    "unsupported-encoding",
    "unsupported-feature",
    "unsupported-stanza-type",
    "unsupported-version",
]

# RFC 6120 §8.3.3: each condition with the type its example uses.
RFC_STANZA_DEFAULT_TYPES = [
    ("bad-request", "modify"),
    ("conflict", "cancel"),
    ("feature-not-implemented", "cancel"),
    ("forbidden", "auth"),
    ("gone", "cancel"),
    ("internal-server-error", "cancel"),
    ("item-not-found", "cancel"),
    ("jid-malformed", "modify"),
    ("not-acceptable", "modify"),
    ("not-allowed", "cancel"),
    ("not-authorized", "auth"),
    ("policy-violation", "modify"),
    ("recipient-unavailable", "wait"),
    ("redirect", "modify"),
    ("registration-required", "auth"),
    ("remote-server-not-found", "cancel"),
    ("remote-server-timeout", "wait"),
    ("resource-constraint", "wait"),
    ("service-unavailable", "cancel"),
    ("subscription-required", "auth"),
    ("undefined-condition", "modify"),
    ("unexpected-request", "wait"),
]


def parse_stream_error(data: bytes) -> etree._Element:
    """The <stream:error/> as a peer would parse it, inside a stream header."""
    root = etree.fromstring(STREAM_OPEN + data + b"</stream:stream>")
    return root[0]


def iq_get() -> etree._Element:
    # RFC 6120 §8.3.1-style request: a get the recipient cannot answer.
    return etree.fromstring(
        f"<iq xmlns='{ns.CLIENT}' from='juliet@im.example.com/balcony' id='ur72b9f6'"
        " to='romeo@example.net' type='get' xml:lang='en'>"
        "<query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>"
    )


# --- stream errors -------------------------------------------------------------------


def test_stream_conditions_are_exactly_the_rfc_list() -> None:
    assert set(RFC_STREAM_CONDITIONS) == STREAM_CONDITIONS


@pytest.mark.parametrize("condition", RFC_STREAM_CONDITIONS)
def test_every_rfc_stream_condition_serialises_in_the_streams_namespace(condition: str) -> None:
    error = parse_stream_error(StreamError(condition).to_bytes())
    assert error.tag == f"{{{ns.STREAM}}}error"
    assert [child.tag for child in error] == [f"{{{ns.STREAMS_ERR}}}{condition}"]


def test_unknown_stream_condition_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        StreamError("not-a-condition")


def test_stream_error_bytes_match_the_rfc_shape() -> None:
    assert StreamError("not-well-formed").to_bytes() == (
        b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"</stream:error>"
    )


def test_stream_error_text_is_english_and_escaped() -> None:
    text = "bad <tag> & 'quotes'"
    error = parse_stream_error(StreamError("policy-violation", text).to_bytes())
    text_element = error[1]
    assert text_element.tag == f"{{{ns.STREAMS_ERR}}}text"
    assert text_element.get(f"{{{ns.XML}}}lang") == "en"
    assert text_element.text == text


def test_stream_error_text_drops_characters_xml_cannot_carry() -> None:
    error = parse_stream_error(StreamError("bad-format", "nul\x00 here").to_bytes())
    assert error[1].text == "nul here"


def test_stream_error_carries_condition_and_text_as_attributes() -> None:
    error = StreamError("host-unknown", "no such host")
    assert (error.condition, error.text) == ("host-unknown", "no such host")


# --- stanza errors -------------------------------------------------------------------


def test_stanza_conditions_are_exactly_the_rfc_list() -> None:
    assert dict(RFC_STANZA_DEFAULT_TYPES) == STANZA_CONDITION_TYPES


@pytest.mark.parametrize(("condition", "default_type"), RFC_STANZA_DEFAULT_TYPES)
def test_stanza_error_type_defaults_to_the_rfc_example(condition: str, default_type: str) -> None:
    assert StanzaError(condition).type == default_type


def test_explicit_stanza_error_type_wins_over_the_default() -> None:
    assert StanzaError("item-not-found", "wait").type == "wait"


def test_unknown_stanza_condition_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        StanzaError("no-such-condition")


def test_unknown_stanza_error_type_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        StanzaError("bad-request", "later")


def test_stanza_error_element_has_type_condition_text_and_by() -> None:
    element = StanzaError("forbidden", text="go away", by="example.com").element()
    assert element.tag == f"{{{ns.CLIENT}}}error"
    assert (element.get("type"), element.get("by")) == ("auth", "example.com")
    condition, text = element
    assert condition.tag == f"{{{ns.STANZAS_ERR}}}forbidden"
    assert text.tag == f"{{{ns.STANZAS_ERR}}}text"
    assert (text.text, text.get(f"{{{ns.XML}}}lang")) == ("go away", "en")


def test_stanza_error_element_omits_absent_text_and_by() -> None:
    element = StanzaError("bad-request").element()
    assert element.get("by") is None
    assert [child.tag for child in element] == [f"{{{ns.STANZAS_ERR}}}bad-request"]


def test_stanza_error_element_serialises_like_the_rfc_example() -> None:
    assert serialize(StanzaError("service-unavailable").element()) == (
        b'<error type="cancel">'
        b'<service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error>'
    )


# --- error replies -------------------------------------------------------------------


def test_error_reply_swaps_addresses_and_keeps_kind_and_id() -> None:
    reply = error_reply(iq_get(), StanzaError("service-unavailable"))
    assert reply.tag == f"{{{ns.CLIENT}}}iq"
    assert reply.get("from") == "romeo@example.net"
    assert reply.get("to") == "juliet@im.example.com/balcony"
    assert (reply.get("id"), reply.get("type")) == ("ur72b9f6", "error")


def test_error_reply_to_iq_carries_the_original_payload_then_the_error() -> None:
    reply = error_reply(iq_get(), StanzaError("feature-not-implemented"))
    query, error = reply
    assert query.tag == "{jabber:iq:roster}query"
    assert query[0].get("jid") == "a@b"
    assert error.tag == f"{{{ns.CLIENT}}}error"
    assert error[0].tag == f"{{{ns.STANZAS_ERR}}}feature-not-implemented"


def test_error_reply_to_message_carries_the_original_body() -> None:
    message = etree.fromstring(
        f"<message xmlns='{ns.CLIENT}' from='a@b/c' to='nobody@b'><body>hi</body></message>"
    )
    reply = error_reply(message, StanzaError("item-not-found"))
    assert [etree.QName(child).localname for child in reply] == ["body", "error"]
    assert reply.get("id") is None


def test_error_reply_leaves_the_original_untouched() -> None:
    original = iq_get()
    before = etree.tostring(original)
    error_reply(original, StanzaError("bad-request"))
    assert etree.tostring(original) == before


def test_error_reply_keeps_the_language() -> None:
    reply = error_reply(iq_get(), StanzaError("bad-request"))
    assert reply.get(f"{{{ns.XML}}}lang") == "en"


def test_error_reply_uses_the_stanza_namespace_for_the_error() -> None:
    stanza = etree.fromstring(
        f"<presence xmlns='{ns.SERVER}' from='a@x' to='b@y' type='subscribe'/>"
    )
    reply = error_reply(stanza, StanzaError("remote-server-not-found"))
    assert reply.tag == f"{{{ns.SERVER}}}presence"
    assert reply[-1].tag == f"{{{ns.SERVER}}}error"


def test_error_reply_serialises_without_namespace_prefixes() -> None:
    reply = error_reply(iq_get(), StanzaError("service-unavailable"))
    assert serialize(reply) == (
        b'<iq to="juliet@im.example.com/balcony" from="romeo@example.net" type="error"'
        b' id="ur72b9f6" xml:lang="en"><query xmlns="jabber:iq:roster"><item jid="a@b"/></query>'
        b'<error type="cancel"><service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        b"</error></iq>"
    )


@pytest.mark.parametrize(
    ("stanza", "answerable"),
    [
        ("<message type='chat'/>", True),
        ("<message/>", True),
        ("<presence type='subscribe'/>", True),
        ("<iq type='get'/>", True),
        ("<iq type='set'/>", True),
        ("<message type='error'/>", False),
        ("<presence type='error'/>", False),
        ("<iq type='error'/>", False),
        ("<iq type='result'/>", False),
    ],
)
def test_errors_and_iq_results_are_never_answered_with_an_error(
    stanza: str, answerable: bool
) -> None:
    element = etree.fromstring(stanza.replace("/>", f" xmlns='{ns.CLIENT}'/>"))
    assert can_reply_with_error(element) is answerable


def test_error_reply_refuses_to_answer_an_error() -> None:
    error = etree.fromstring(f"<message xmlns='{ns.CLIENT}' type='error'/>")
    with pytest.raises(ValueError):
        error_reply(error, StanzaError("bad-request"))
