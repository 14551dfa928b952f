"""Stanza errors pinned byte for byte: application conditions (RFC 6120 §8.3.4), texts
that XML cannot carry, and the messages of refused constructions. Written against the
mutants of raftxmpp.xml.errors that the first mutation run left alive
(mutation/RESULTS.md); expected values are literal."""

from __future__ import annotations

import pytest
from lxml import etree

from raftxmpp.xml.errors import StanzaError, StreamError, error_reply
from raftxmpp.xml.stanza import serialize

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# serialize() writes a stanza as it goes on the wire: in the stream's default namespace.


def test_an_application_condition_follows_the_defined_one_in_its_own_namespace():
    error = StanzaError("not-acceptable", app_condition="{urn:xmpp:blocking:errors}blocked")
    assert serialize(error.element()) == (
        b'<error type="modify">'
        b'<not-acceptable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        b'<blocked xmlns="urn:xmpp:blocking:errors"/></error>')
    # The element is copied into each reply: the error can be sent twice.
    assert serialize(error.element()) == serialize(error.element())


def test_an_error_text_loses_the_characters_xml_cannot_carry_and_nothing_else():
    error = StanzaError("bad-request", text="a\x00b\x1fc\td")
    assert serialize(error.element()) == (
        b'<error type="modify">'
        b'<bad-request xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        b'<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas" xml:lang="en">abc\td</text></error>')


def test_the_exception_message_names_condition_type_and_text():
    assert str(StanzaError("item-not-found")) == "item-not-found (cancel)"
    assert str(StanzaError("item-not-found", text="no such node")) == \
        "item-not-found (cancel): no such node"


def test_unknown_conditions_and_types_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown stanza error condition 'teapot'"):
        StanzaError("teapot")
    with pytest.raises(ValueError, match="unknown stanza error type 'later'"):
        StanzaError("bad-request", type="later")


def test_an_error_or_result_is_never_answered_with_an_error():
    result = etree.fromstring(b"<iq xmlns='jabber:client' type='result' id='1'/>")
    with pytest.raises(ValueError, match="refusing to answer an error or result stanza"):
        error_reply(result, StanzaError("bad-request"))


def test_the_reply_keeps_the_payload_without_the_original_whitespace():
    stanza = etree.fromstring(b"<message xmlns='jabber:client' to='b@x' from='a@x/r' id='m'>"
                              b"\n  <body>hi</body>\n  <thread>t</thread>\n</message>")
    assert serialize(error_reply(stanza, StanzaError("service-unavailable"))) == (
        b'<message to="a@x/r" from="b@x" type="error" id="m">'
        b'<body>hi</body><thread>t</thread><error type="cancel">'
        b'<service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></message>')


def test_a_stream_error_reads_as_its_condition_then_its_text():
    assert str(StreamError("reset")) == "reset"
    assert str(StreamError("reset", "the stream restarts")) == "reset: the stream restarts"
    with pytest.raises(ValueError, match="^unknown stream error condition 'nope'$"):
        StreamError("nope")


def test_answering_an_error_with_an_error_is_refused_word_for_word():
    stanza = etree.fromstring("<message xmlns='jabber:client' type='error'/>")
    with pytest.raises(ValueError,
                       match="^refusing to answer an error or result stanza with an error$"):
        error_reply(stanza, StanzaError("bad-request"))


def test_the_payload_copied_into_an_error_reply_has_no_tail_at_all():
    stanza = etree.fromstring("<iq xmlns='jabber:client' type='get' id='1'>\n  <query/>\n</iq>")
    reply = error_reply(stanza, StanzaError("item-not-found"))
    assert [child.tail for child in reply] == [None, None]
