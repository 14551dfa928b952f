"""The framer's exact edges, against mutants that survived its first mutation run
(mutation/RESULTS.md): limits at and one past their value, every StreamError's condition
and text word for word, the second line of defence against a DTD, and what reset() and a
failure leave behind. Expected values are written out from RFC 6120 and XML 1.0 and fixed
inputs, never computed by the framer."""

from __future__ import annotations

import pytest

from raftxmpp.xml import framer as framer_module
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StanzaReceived, StreamFramer, StreamOpened
from raftxmpp.xml.ns import CLIENT

HEADER = (
    b"<stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


def error(framer: StreamFramer, *chunks: bytes) -> tuple[str, str | None]:
    with pytest.raises(StreamError) as raised:
        for chunk in chunks:
            framer.feed(chunk)
    return raised.value.condition, raised.value.text


def opened(**options: int | str) -> StreamFramer:
    framer = StreamFramer(**options)
    assert framer.feed(HEADER) == [StreamOpened({"version": "1.0"}, CLIENT)]
    return framer


# --- construction --------------------------------------------------------------------


def test_defaults_are_the_configs() -> None:
    # raftxmpp/config.py: max_stanza_size 262144, max_idle_whitespace 1048576; depth 64.
    framer = StreamFramer()
    assert framer.max_stanza_size == 262144
    assert framer.max_depth == 64
    assert framer.max_idle_whitespace == 1048576
    assert framer.stream_ns == "jabber:client"


@pytest.mark.parametrize(
    "options",
    [
        {"max_stanza_size": 0},
        {"max_depth": 0},
        {"max_idle_whitespace": 0},
        {"max_stanza_size": 0, "max_depth": 0, "max_idle_whitespace": 0},
    ],
)
def test_a_limit_below_one_is_refused_word_for_word(options: dict) -> None:
    with pytest.raises(ValueError) as raised:
        StreamFramer(**options)
    assert str(raised.value) == (
        "max_stanza_size, max_depth and max_idle_whitespace must be positive"
    )


def test_limits_of_one_are_accepted() -> None:
    framer = StreamFramer(max_stanza_size=1, max_depth=1, max_idle_whitespace=1)
    assert (framer.max_stanza_size, framer.max_depth, framer.max_idle_whitespace) == (1, 1, 1)


# --- the prologue: DTDs and the encoding (RFC 6120 §11.1, §11.6) ----------------------

DTD_TEXT = "DTDs are not allowed (RFC 6120 §11.1)"


@pytest.mark.parametrize("prefix", [b"", b"<?xml version='1.0'?>\n"])
def test_doctype_trickled_byte_by_byte_is_refused_at_its_ninth_byte(prefix: bytes) -> None:
    # Refused by the bytes, before libxml2 sees a DTD: the feed that completes
    # "<!DOCTYPE" raises, whatever came before it in other feeds.
    framer = StreamFramer()
    for byte in prefix + b"<!DOCTYP":
        assert framer.feed(bytes([byte])) == []
    assert error(framer, b"E") == ("restricted-xml", DTD_TEXT)


def test_doctype_in_one_feed_is_refused_word_for_word() -> None:
    data = b"<!DOCTYPE stream:stream>" + HEADER
    assert error(StreamFramer(), data) == ("restricted-xml", DTD_TEXT)


def test_doctype_without_internal_subset_is_refused_by_the_second_check(monkeypatch) -> None:
    # RFC 6120 §11.1: no DTD at all, not only none with entity declarations. With the
    # byte check out of the way, the parsed document's docinfo still refuses it.
    monkeypatch.setattr(StreamFramer, "_check_prologue", lambda self, data: None)
    assert error(StreamFramer(), b"<!DOCTYPE stream:stream>" + HEADER) == (
        "restricted-xml",
        DTD_TEXT,
    )


def test_doctype_with_internal_subset_is_refused_by_the_second_check(monkeypatch) -> None:
    monkeypatch.setattr(StreamFramer, "_check_prologue", lambda self, data: None)
    data = b"<!DOCTYPE stream:stream [<!ELEMENT a ANY>]>" + HEADER
    assert error(StreamFramer(), data) == ("restricted-xml", DTD_TEXT)


ENCODING_TEXT = "streams are UTF-8 (RFC 6120 §11.6)"


def test_non_utf8_declaration_trickled_byte_by_byte_is_unsupported_encoding() -> None:
    framer = StreamFramer()
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?>"
    with pytest.raises(StreamError) as raised:
        for byte in data + HEADER:
            framer.feed(bytes([byte]))
    assert (raised.value.condition, raised.value.text) == ("unsupported-encoding", ENCODING_TEXT)


@pytest.mark.parametrize("name", [b"UTF-8", b"utf-8", b"UTF8", b"utf8", b"Utf-8"])
def test_utf8_declarations_in_any_case_are_accepted(name: bytes) -> None:
    data = b"<?xml version='1.0' encoding='" + name + b"'?>" + HEADER
    assert StreamFramer().feed(data) == [StreamOpened({"version": "1.0"}, CLIENT)]


def test_a_declaration_longer_than_256_bytes_is_not_read() -> None:
    # Documented limit (_DECLARATION_MAX): only the first 256 bytes are looked at; the
    # parser is forced to UTF-8 whatever a longer declaration says.
    declaration = b"<?xml version='1.0'" + b" " * (256 - 19) + b"encoding='ISO-8859-1'?>"
    framer = StreamFramer()
    assert framer.feed(declaration[:256]) == []
    assert framer.feed(declaration[256:] + HEADER) == [StreamOpened({"version": "1.0"}, CLIENT)]


# --- UTF-8 (RFC 6120 §11.6; RFC 3629 §3) ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "invalid start byte"),  # never a UTF-8 byte (RFC 3629 §1)
        (b"\x80", "invalid start byte"),  # a continuation byte without a lead
        (b"\xc3(", "invalid continuation byte"),  # a lead byte followed by ASCII
    ],
)
def test_invalid_utf8_is_not_well_formed_with_the_codecs_reason(data: bytes, reason: str) -> None:
    framer = opened()
    assert error(framer, b"<message><body>" + data) == (
        "not-well-formed",
        f"invalid UTF-8: {reason}",
    )


def test_a_lead_byte_then_ascii_in_the_next_feed_is_refused_at_once() -> None:
    # The held-back lead byte is checked with the next feed, even an ASCII one.
    framer = opened()
    assert framer.feed(b"<message><body>\xc3") == []
    assert error(framer, b"(") == ("not-well-formed", "invalid UTF-8: invalid continuation byte")


# --- size limits and their texts (the documented max_stanza_size) --------------------


def test_a_stanza_over_the_limit_says_so_word_for_word() -> None:
    framer = opened(max_stanza_size=100)
    assert error(framer, b"<message><body>" + b"x" * 200) == (
        "policy-violation",
        "stanza over 100 bytes",
    )


def test_a_stream_header_over_the_limit_says_so_word_for_word() -> None:
    framer = StreamFramer(max_stanza_size=100)
    data = b"<stream:stream xmlns='jabber:client' to='" + b"a" * 200
    assert error(framer, data) == ("policy-violation", "stream header over 100 bytes")


def test_stanza_measured_exactly_at_the_limit_is_accepted_one_byte_more_is_not() -> None:
    # A stanza that began in the header's feed is measured by serialising it, with the
    # content namespace it inherits declared (RFC 6120 §4.8.3).
    body = b"x" * 946
    fed = b"<message><body>" + body + b"</body></message>"
    as_measured = b"<message xmlns=\"jabber:client\"><body>" + body + b"</body></message>"
    limit = len(as_measured)
    assert limit == 1000
    framer = StreamFramer(max_stanza_size=limit)
    assert framer.feed(HEADER + fed[:10]) == [StreamOpened({"version": "1.0"}, CLIENT)]
    [event] = framer.feed(fed[10:])
    assert isinstance(event, StanzaReceived)
    assert event.size == limit
    assert event.element.tag == "{jabber:client}message"
    assert event.element[0].text == "x" * 946
    # After a measured stanza, the next one's share starts from nothing.
    [ping] = framer.feed(b"<presence/>")
    assert ping.size == len(b"<presence/>")
    framer = StreamFramer(max_stanza_size=limit - 1)
    framer.feed(HEADER + fed[:10])
    assert error(framer, fed[10:]) == ("policy-violation", "stanza over 999 bytes")


def test_idle_whitespace_exactly_at_the_limit_is_accepted_one_byte_more_is_not() -> None:
    framer = opened(max_idle_whitespace=10)
    for _ in range(10):
        assert framer.feed(b" ") == []
    assert error(framer, b" ") == ("policy-violation", "nothing but whitespace for too long")


def test_idle_whitespace_in_one_feed_over_the_limit_is_policy_violation() -> None:
    framer = opened(max_idle_whitespace=10)
    assert framer.feed(b"\n" * 10) == []
    assert error(framer, b"\t") == ("policy-violation", "nothing but whitespace for too long")


def test_a_stanza_starts_the_idle_count_again() -> None:
    framer = opened(max_idle_whitespace=10)
    assert framer.feed(b" " * 10) == []
    assert len(framer.feed(b"<presence/>")) == 1
    assert framer.feed(b" " * 10) == []
    assert error(framer, b" ") == ("policy-violation", "nothing but whitespace for too long")


def test_stanza_sizes_of_one_feed_are_whole_bytes_and_the_rest_carries_over() -> None:
    # 2 stanzas in 23 bytes: 11 each, 1 byte carried to the next stanza's share.
    framer = opened()
    first = framer.feed(b"<presence/><presence/> ")
    assert [event.size for event in first] == [11, 11]
    assert all(type(event.size) is int for event in first)
    [third] = framer.feed(b"<presence/>")
    assert third.size == 12
    assert type(third.size) is int


# --- texts of the other refusals --------------------------------------------------------


def test_text_between_stanzas_is_bad_format_word_for_word() -> None:
    framer = opened()
    assert error(framer, b"<presence/>hello<presence/>") == (
        "bad-format",
        "character data between stanzas",
    )


@pytest.mark.parametrize("space", [b" ", b"\t", b"\r\n"])
def test_xml_whitespace_between_stanzas_is_accepted(space: bytes) -> None:
    # XML 1.0 §2.3 S ::= (#x20 | #x9 | #xD | #xA)+
    framer = opened()
    assert len(framer.feed(b"<presence/>" + space + b"<presence/>" + space)) == 2


def test_non_xml_whitespace_between_stanzas_is_bad_format() -> None:
    # U+00A0 and U+3000 are whitespace to str.strip() but not XML's S (XML 1.0 §2.3).
    framer = opened()
    assert error(framer, "<presence/>\u00a0<presence/>".encode()) == (
        "bad-format",
        "character data between stanzas",
    )


def test_version_2_is_refused_word_for_word() -> None:
    data = HEADER.replace(b"version='1.0'", b"version='2.0'")
    assert error(StreamFramer(), data) == ("unsupported-version", "version '2.0' is not 1.x")


def test_nesting_past_the_limit_says_so() -> None:
    framer = opened(max_depth=2)
    assert error(framer, b"<message><a><b>") == ("policy-violation", "stanza nested too deeply")


def test_a_failed_framer_repeats_its_condition() -> None:
    framer = opened(max_depth=1)
    assert error(framer, b"<message><a>") == ("policy-violation", "stanza nested too deeply")
    assert error(framer, b"</a></message>") == ("policy-violation", "stream already failed")


def test_the_root_must_be_stream_stream_word_for_word() -> None:
    # RFC 6120 §4.9.3.10: a root other than <stream/> in the streams namespace.
    assert error(StreamFramer(), b"<message xmlns='jabber:client'>") == (
        "invalid-namespace",
        "the root must be <stream:stream/>",
    )


def test_a_foreign_content_namespace_names_the_listeners() -> None:
    data = HEADER.replace(b"jabber:client", b"jabber:server")
    assert error(StreamFramer(), data) == (
        "invalid-namespace",
        "content namespace must be jabber:client",
    )


@pytest.mark.parametrize(
    ("data", "kind"), [(b"<!-- c -->", "comment"), (b"<?target data?>", "pi")]
)
def test_comments_and_pis_name_themselves(data: bytes, kind: str) -> None:
    # RFC 6120 §11.1: no comments, no processing instructions.
    assert error(opened(), data) == ("restricted-xml", f"no {kind} allowed (RFC 6120 §11.1)")


def test_a_parser_error_after_a_warning_carries_the_errors_own_message() -> None:
    # A relative namespace URI is only a libxml2 warning (vcard-temp, XEP-0054); the
    # later undeclared entity (XML 1.0 §4.1 WFC: Entity Declared) is the error reported.
    framer = opened()
    assert len(framer.feed(b"<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>")) == 1
    condition, text = error(framer, b"<message><body>&nosuch;</body></message>")
    assert condition == "restricted-xml"
    assert text is not None and "nosuch" in text and "vcard-temp" not in text


def test_a_feed_of_many_slices_frames_every_stanza_once() -> None:
    # max_stanza_size 100 cuts one feed into slices of at most 101 bytes; 10 stanzas of
    # 31 bytes are 310 bytes, four slices or more.
    framer = opened(max_stanza_size=100)
    stanzas = [f"<message id='{i:02}'><b/></message>".encode() for i in range(10)]
    assert {len(stanza) for stanza in stanzas} == {31}
    events = framer.feed(b"".join(stanzas))
    assert [event.element.get("id") for event in events] == [f"{i:02}" for i in range(10)]
    assert framer.feed(b"</stream:stream>") != []


def test_a_stanza_comes_out_without_the_whitespace_that_followed_it() -> None:
    framer = opened()
    first, second = framer.feed(b"<presence/>\n <presence/>\n")
    assert first.element.tail is None
    assert second.element.tail is None


def test_the_parser_decodes_utf8_whatever_an_unread_declaration_says() -> None:
    # RFC 6120 §11.6: UTF-8 only. A declaration too long to be read (over 256 bytes)
    # names ISO-8859-1, but U+00E9 arrives as its UTF-8 bytes C3 A9 and stays U+00E9.
    declaration = b"<?xml version='1.0'" + b" " * 300 + b"encoding='ISO-8859-1'?>"
    framer = StreamFramer()
    framer.feed(declaration + HEADER)
    [event] = framer.feed(b"<message><body>\xc3\xa9</body></message>")
    assert event.element[0].text == "\u00e9"


def test_whitespace_inside_a_stanza_counts_against_the_stanza_not_the_idle_limit() -> None:
    framer = opened(max_stanza_size=100, max_idle_whitespace=1000)
    assert framer.feed(b"<message>") == []
    assert error(framer, b" " * 2000) == ("policy-violation", "stanza over 100 bytes")


class _CountingParser:
    """The framer's parser, recording how many bytes each feed hands to libxml2."""

    fed: list[int] = []

    def __init__(self) -> None:
        self._parser = _REAL_NEW_PARSER()

    def feed(self, data: bytes) -> None:
        _CountingParser.fed.append(len(data))
        self._parser.feed(data)

    def __getattr__(self, name: str):
        return getattr(self._parser, name)


_REAL_NEW_PARSER = framer_module._new_parser


@pytest.mark.parametrize("rest", [b"x" * 485, b""])
def test_libxml2_gets_at_most_one_byte_past_what_the_stanza_may_still_grow(
    monkeypatch, rest: bytes
) -> None:
    # Module docstring: input is handed over "never more than one byte past what the
    # stanza in progress may still grow". Limit 1000, 515 bytes counted: 1000 - 515 + 1
    # = 486 bytes, then refused; with 1000 counted (485 more), 1 byte, then refused.
    monkeypatch.setattr(framer_module, "_new_parser", _CountingParser)
    _CountingParser.fed = []
    framer = opened(max_stanza_size=1000)
    start = b"<message><body>" + b"x" * 500
    assert len(start) == 515
    assert framer.feed(start) == []
    if rest:
        assert framer.feed(rest) == []
    assert error(framer, b"x" * 5000) == ("policy-violation", "stanza over 1000 bytes")
    expected = [len(HEADER), 515, 485, 1] if rest else [len(HEADER), 515, 486]
    assert _CountingParser.fed == expected


def test_a_stream_header_gets_the_same_byte_budget(monkeypatch) -> None:
    # The header is bounded like a stanza (max_stanza_size): 515 bytes fed, then
    # 1000 - 515 + 1 = 486 more, and refused.
    monkeypatch.setattr(framer_module, "_new_parser", _CountingParser)
    _CountingParser.fed = []
    framer = StreamFramer(max_stanza_size=1000)
    start = b"<stream:stream xmlns='jabber:client' to='" + b"a" * 474
    assert len(start) == 515
    assert framer.feed(start) == []
    assert error(framer, b"a" * 5000) == ("policy-violation", "stream header over 1000 bytes")
    assert _CountingParser.fed == [515, 486]


def test_whitespace_before_the_header_is_free_up_to_4096_bytes(monkeypatch) -> None:
    # XML 1.0 §2.8 allows whitespace (Misc) before the root. Up to _BLANK_SLACK (4096)
    # unproven whitespace bytes count nothing: the stanza budget afterwards is whole
    # (1000 - 515 + 1 = 486 bytes handed over, then refused).
    monkeypatch.setattr(framer_module, "_new_parser", _CountingParser)
    framer = StreamFramer(max_stanza_size=1000)
    assert framer.feed(b" " * 4096) == []
    assert framer.feed(HEADER) == [StreamOpened({"version": "1.0"}, CLIENT)]
    _CountingParser.fed = []
    assert framer.feed(b"<message><body>" + b"x" * 500) == []
    assert error(framer, b"x" * 5000) == ("policy-violation", "stanza over 1000 bytes")
    assert _CountingParser.fed == [515, 486]
