"""RFC 6120 §11.6 ("XMPP ... MUST be encoded in UTF-8"): invalid UTF-8 is refused by the
framer the moment the first invalid byte arrives, whatever follows or does not."""

from __future__ import annotations

import pytest

from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StanzaReceived, StreamFramer, StreamOpened

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
)


def opened() -> StreamFramer:
    framer = StreamFramer()
    assert isinstance(framer.feed(HEADER)[0], StreamOpened)
    return framer


@pytest.mark.parametrize("bad", [
    b"\xff",  # never valid in UTF-8
    b"\xc0\x80",  # overlong NUL
    b"<message>\xe0\x80",  # overlong three-byte start
    b"<message><body>\xed\xa0\x80",  # an encoded surrogate
    b"<message><body>\xc3(",  # a lead byte without its continuation
    b"\xf5\x80\x80\x80",  # past U+10FFFF
], ids=["ff", "overlong-nul", "overlong-3", "surrogate", "broken-pair", "too-high"])
def test_an_invalid_byte_after_the_header_is_refused_at_once(bad):
    framer = opened()
    with pytest.raises(StreamError) as caught:
        framer.feed(bad)
    assert caught.value.condition == "not-well-formed"


def test_an_invalid_byte_before_the_header_is_refused_at_once():
    with pytest.raises(StreamError) as caught:
        StreamFramer().feed(b"\xff")
    assert caught.value.condition == "not-well-formed"


def test_a_character_split_over_reads_is_accepted():
    framer = opened()
    text = "<message><body>é 😀 ✓</body></message>".encode()
    events = []
    for i in range(len(text)):
        events += framer.feed(text[i:i + 1])
    assert len(events) == 1 and isinstance(events[0], StanzaReceived)
    assert events[0].element.findtext("{jabber:client}body") == "é 😀 ✓"


def test_a_split_character_completed_wrongly_is_refused():
    framer = opened()
    framer.feed(b"<message><body>\xe2\x9c")  # the first two bytes of a check mark
    with pytest.raises(StreamError) as caught:
        framer.feed(b"A</body></message>")
    assert caught.value.condition == "not-well-formed"


def test_the_check_restarts_with_the_stream():
    framer = opened()
    framer.feed(b"<message><body>\xc3")
    framer.reset()  # STARTTLS or SASL success: the bytes before are forgotten
    assert isinstance(framer.feed(HEADER)[0], StreamOpened)
