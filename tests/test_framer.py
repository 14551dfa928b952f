"""The stream framer: RFC 6120 §4 framing and the §11 XML restrictions, byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from raftxmpp.xml import framer as framer_module
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import (
    StanzaReceived,
    StreamClosed,
    StreamFramer,
    StreamOpened,
)
from raftxmpp.xml.ns import CLIENT, SERVER, STREAM
from raftxmpp.xml.stanza import STREAM_CLOSE, make, serialize, stream_header

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' to='example.com'"
    b" version='1.0' xml:lang='en'>"
)
MESSAGE = b"<message to='romeo@example.net' id='m1'><body>Art thou not Romeo?</body></message>"
PING = b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
CLOSE = b"</stream:stream>"
THOUSAND_BYTES = b"<message><body>" + b"x" * (1000 - 32) + b"</body></message>"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'
 version='1.0'><message><body>&lol9;</body></message>"""


def opened(**options: int | str) -> StreamFramer:
    framer = StreamFramer(**options)
    framer.feed(HEADER)
    return framer


def stanzas(events: list) -> list[bytes]:
    return [serialize(event.element) for event in events if isinstance(event, StanzaReceived)]


def condition(framer: StreamFramer, *chunks: bytes) -> str:
    with pytest.raises(StreamError) as raised:
        for chunk in chunks:
            framer.feed(chunk)
    return raised.value.condition


def header(**attrs: str) -> bytes:
    rendered = "".join(f" {name.replace('_', ':')}='{value}'" for name, value in attrs.items())
    return f"<stream:stream xmlns:stream='{STREAM}'{rendered}>".encode()


def client_header(**attrs: str) -> bytes:
    return header(xmlns=CLIENT, **attrs)


# --- parser configuration ------------------------------------------------------------


def test_parser_is_built_with_entity_network_and_size_protections(monkeypatch) -> None:
    seen: dict = {}
    real = etree.XMLPullParser

    def spy(**options):
        seen.update(options)
        return real(**options)

    monkeypatch.setattr(framer_module.etree, "XMLPullParser", spy)
    StreamFramer()
    assert seen["resolve_entities"] is False
    assert seen["no_network"] is True
    assert seen["load_dtd"] is False
    assert seen["huge_tree"] is False
    assert set(seen["events"]) == {"start", "end", "comment", "pi", "start-ns"}


# --- the stream header ---------------------------------------------------------------


def test_stream_header_is_reported_with_its_attributes() -> None:
    events = StreamFramer().feed(HEADER)
    assert events == [StreamOpened({"to": "example.com", "version": "1.0", "lang": "en"}, CLIENT)]


def test_all_rfc_header_attributes_are_reported() -> None:
    data = client_header(to="a", **{"from": "b"}, id="c", version="1.0", xml_lang="de")
    (event,) = StreamFramer().feed(data)
    assert event.attrs == {"to": "a", "from": "b", "id": "c", "version": "1.0", "lang": "de"}


def test_missing_version_is_reported_not_refused() -> None:
    # RFC 6120 §4.7.5: no version means 0.9; the negotiation layer decides.
    (event,) = StreamFramer().feed(client_header(to="example.com"))
    assert "version" not in event.attrs


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.10"])
def test_version_1_x_is_accepted(version: str) -> None:
    (event,) = StreamFramer().feed(client_header(version=version))
    assert event.attrs["version"] == version


@pytest.mark.parametrize("version", ["2.0", "0.9", "1", "one.zero", "1.0.0", ""])
def test_version_other_than_1_x_is_unsupported_version(version: str) -> None:
    assert condition(StreamFramer(), client_header(version=version)) == "unsupported-version"


def test_header_split_byte_by_byte_is_reported_once() -> None:
    framer = StreamFramer()
    events = [event for byte in HEADER for event in framer.feed(bytes([byte]))]
    assert events == [StreamOpened({"to": "example.com", "version": "1.0", "lang": "en"}, CLIENT)]


@pytest.mark.parametrize(
    "data",
    [
        b"<stream xmlns='jabber:client'>",
        b"<stream:stream xmlns:stream='urn:not-streams' xmlns='jabber:client'>",
        b"<message xmlns='jabber:client'>",
    ],
)
def test_root_other_than_stream_stream_is_invalid_namespace(data: bytes) -> None:
    assert condition(StreamFramer(), data) == "invalid-namespace"


def test_undeclared_stream_prefix_is_not_well_formed() -> None:
    assert condition(StreamFramer(), b"<stream:stream xmlns='jabber:client'>") == "not-well-formed"


def test_default_namespace_other_than_the_listeners_is_invalid_namespace() -> None:
    assert condition(StreamFramer(), header(xmlns=SERVER)) == "invalid-namespace"


def test_server_listener_accepts_jabber_server() -> None:
    (event,) = StreamFramer(stream_ns=SERVER).feed(header(xmlns=SERVER))
    assert event.default_ns == SERVER


def test_header_without_default_namespace_is_reported_as_such() -> None:
    # RFC 6120 §4.8.2 allows prefix-qualified content instead of a default namespace.
    (event,) = StreamFramer().feed(header(version="1.0"))
    assert event.default_ns == ""


# --- restricted XML (RFC 6120 §11.1) -------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE stream>" + HEADER[21:],
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a 'b'>]>" + HEADER[21:],
        b"<!DOCTYPE s SYSTEM 'http://example.com/evil.dtd'>" + HEADER[21:],
    ],
)
def test_doctype_is_restricted_xml(data: bytes) -> None:
    assert condition(StreamFramer(), data) == "restricted-xml"


def test_doctype_split_across_feeds_is_restricted_xml() -> None:
    data = b"<!DOCTYPE s [<!ENTITY a 'b'>]>" + HEADER[21:]
    assert condition(StreamFramer(), *[bytes([byte]) for byte in data]) == "restricted-xml"


@pytest.mark.timeout(10)
def test_billion_laughs_is_restricted_xml_without_expansion() -> None:
    framer = StreamFramer()
    with pytest.raises(StreamError) as raised:
        events = framer.feed(BILLION_LAUGHS)
        pytest.fail(f"accepted: {events}")
    assert raised.value.condition == "restricted-xml"


@pytest.mark.parametrize(
    "chunks",
    [
        (b"<!-- hello -->" + HEADER[21:],),
        (HEADER, b"<!-- between stanzas -->"),
        (HEADER, b"<message><body>hi<!-- inside --></body></message>"),
        (HEADER, b"<message/>", CLOSE, b"<!-- after the close -->"),
    ],
    ids=["prologue", "between-stanzas", "inside-stanza", "after-close"],
)
def test_comment_anywhere_is_restricted_xml(chunks: tuple[bytes, ...]) -> None:
    assert condition(StreamFramer(), *chunks) == "restricted-xml"


@pytest.mark.parametrize(
    "chunks",
    [
        (b"<?xml version='1.0'?><?evil instruction?>" + HEADER[21:],),
        (HEADER, b"<?evil instruction?>"),
        (HEADER, b"<message><?evil instruction?></message>"),
    ],
    ids=["prologue", "between-stanzas", "inside-stanza"],
)
def test_processing_instruction_anywhere_is_restricted_xml(chunks: tuple[bytes, ...]) -> None:
    assert condition(StreamFramer(), *chunks) == "restricted-xml"


@pytest.mark.parametrize("reference", [b"&foo;", b"&nbsp;", b"&lol9;"])
def test_undeclared_entity_reference_is_restricted_xml(reference: bytes) -> None:
    data = b"<message><body>" + reference + b"</body></message>"
    assert condition(opened(), data) == "restricted-xml"


def test_entity_reference_split_across_feeds_is_restricted_xml() -> None:
    data = b"<message><body>&fo", b"o;</body></message>"
    assert condition(opened(), *data) == "restricted-xml"


def test_predefined_entities_and_character_references_are_accepted() -> None:
    data = b"<message><body>&amp;&lt;&gt;&quot;&apos;&#60;&#x3C;</body></message>"
    (event,) = opened().feed(data)
    assert event.element[0].text == "&<>\"'<<"


def test_cdata_section_is_accepted_as_text() -> None:
    (event,) = opened().feed(b"<message><body><![CDATA[<b>&]]></body></message>")
    assert event.element[0].text == "<b>&"


# --- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"<message></presence>",
        b"<message to='a' to='b'/>",
        b"<message to=a/>",
        b"<message><</message>",
        b"<foo:bar/>",
        b"<message foo:to='a'/>",
        b"</message>",
    ],
)
def test_malformed_xml_is_not_well_formed(data: bytes) -> None:
    assert condition(opened(), data) == "not-well-formed"


@pytest.mark.parametrize(
    "data",
    [
        b"<message><body>\xff\xfe</body></message>",
        b"<message><body>\xc3\x28</body></message>",
        b"<message><body>\xed\xa0\x80</body></message>",  # an encoded surrogate
        b"<message><body>\x00</body></message>",
    ],
)
def test_invalid_utf8_or_xml_character_is_not_well_formed(data: bytes) -> None:
    assert condition(opened(), data) == "not-well-formed"


def test_non_utf8_encoding_declaration_is_unsupported_encoding() -> None:
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER[21:]
    assert condition(StreamFramer(), data) == "unsupported-encoding"


def test_utf8_encoding_declaration_is_accepted() -> None:
    data = b"<?xml version='1.0' encoding='UTF-8'?>" + HEADER[21:]
    assert isinstance(StreamFramer().feed(data)[0], StreamOpened)


def test_multibyte_text_split_inside_a_character_is_reassembled() -> None:
    data = "<message><body>Ωmega ✓</body></message>".encode()
    framer = opened()
    events = [event for byte in data for event in framer.feed(bytes([byte]))]
    assert events[0].element[0].text == "Ωmega ✓"


def test_text_between_stanzas_is_bad_format() -> None:
    assert condition(opened(), b"<message/>hello<message/>") == "bad-format"


def test_text_before_the_first_stanza_is_bad_format() -> None:
    # libxml2 holds character data back until markup follows it.
    assert condition(opened(), b"hello", b"<message/>") == "bad-format"


def test_text_after_the_stream_close_is_not_well_formed() -> None:
    assert condition(opened(), CLOSE, b"hello") == "not-well-formed"


def test_relative_namespace_names_like_vcard_temp_are_accepted() -> None:
    (event,) = opened().feed(b"<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>")
    assert event.element[0].tag == "{vcard-temp}vCard"


def test_many_namespace_warnings_do_not_hide_a_later_error() -> None:
    # libxml2 logs at most 100 warnings; errors are counted apart from them.
    framer = opened()
    framer.feed(b"<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>" * 150)
    assert condition(framer, b"<foo:bar/>") == "not-well-formed"


# --- limits ----------------------------------------------------------------------------


def test_stanza_over_the_size_limit_is_policy_violation() -> None:
    framer = opened(max_stanza_size=1000)
    body = b"x" * 3000
    data = b"<message><body>" + body + b"</body></message>"
    assert condition(framer, *[data[i : i + 500] for i in range(0, len(data), 500)]) == (
        "policy-violation"
    )


def test_stanza_over_the_limit_in_the_same_feed_as_the_header_is_policy_violation() -> None:
    data = HEADER + b"<message><body>" + b"x" * 10000 + b"</body></message>"
    assert condition(StreamFramer(max_stanza_size=4096), data) == "policy-violation"


def test_stanza_over_the_limit_that_ends_within_a_feed_is_policy_violation() -> None:
    framer = opened(max_stanza_size=1000)
    framer.feed(b"<message><body>" + b"x" * 900)
    assert condition(framer, b"x" * 200 + b"</body></message>" + PING) == "policy-violation"


def test_stanza_exactly_at_the_size_limit_is_accepted_even_byte_by_byte() -> None:
    framer = opened(max_stanza_size=len(THOUSAND_BYTES))
    events = [event for byte in THOUSAND_BYTES for event in framer.feed(bytes([byte]))]
    assert stanzas(events) == stanzas(opened().feed(THOUSAND_BYTES))


def test_endless_stanza_is_refused_soon_after_the_limit() -> None:
    limit = 262144
    chunk = 65536
    framer = opened(max_stanza_size=limit)
    framer.feed(b"<message><body>")
    fed = 0
    with pytest.raises(StreamError) as raised:
        while fed < 10 * 2**20:
            framer.feed(b"a" * chunk)
            fed += chunk
    assert raised.value.condition == "policy-violation"
    assert fed <= limit + chunk


def test_one_huge_feed_is_parsed_in_slices_and_refused_early(monkeypatch) -> None:
    parsed: list[int] = []
    real = framer_module._new_parser

    class CountingParser:
        def __init__(self) -> None:
            self._parser = real()

        def feed(self, data: bytes) -> None:
            parsed.append(len(data))
            self._parser.feed(data)

        def __getattr__(self, name: str):
            return getattr(self._parser, name)

    monkeypatch.setattr(framer_module, "_new_parser", CountingParser)
    framer = opened(max_stanza_size=262144)
    assert condition(framer, b"<message><body>" + b"a" * (10 * 2**20)) == "policy-violation"
    assert sum(parsed) < 262144 + 2 * 65536 + len(HEADER)


def test_stream_header_over_the_size_limit_is_policy_violation() -> None:
    data = b"<stream:stream xmlns='jabber:client' to='" + b"a" * 5000
    assert condition(StreamFramer(max_stanza_size=1000), data) == "policy-violation"


def test_whitespace_inside_an_unfinished_tag_counts_against_the_limit() -> None:
    framer = opened(max_stanza_size=1000)
    framer.feed(b"<message to='")
    assert condition(framer, *[b" " * 100] * 200) == "policy-violation"


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    data = b"<a>" * 5 + b"</a>" * 5  # the stanza and four levels inside it
    assert len(opened(max_depth=5).feed(data)) == 1


def test_nesting_deeper_than_the_limit_is_policy_violation() -> None:
    data = b"<a>" * 6 + b"</a>" * 6
    assert condition(opened(max_depth=5), data) == "policy-violation"


def test_nesting_past_libxml2s_own_cap_in_one_feed_is_policy_violation() -> None:
    assert condition(opened(), b"<a>" * 1000) == "policy-violation"


# --- framing -------------------------------------------------------------------------


def test_whitespace_keepalives_produce_no_events() -> None:
    framer = opened()
    assert [framer.feed(b" ") for _ in range(3)] + [framer.feed(b"\r\n\t")] == [[]] * 4


def test_keepalives_do_not_count_against_the_next_stanza() -> None:
    framer = opened(max_stanza_size=len(THOUSAND_BYTES))
    for _ in range(20000):
        framer.feed(b" ")
    assert stanzas(framer.feed(THOUSAND_BYTES)) == stanzas(opened().feed(THOUSAND_BYTES))


def test_stream_close_gives_stream_closed() -> None:
    assert opened().feed(CLOSE) == [StreamClosed()]


def test_whitespace_after_the_close_is_ignored() -> None:
    framer = opened()
    framer.feed(CLOSE)
    assert framer.feed(b"\r\n") == []


def test_several_stanzas_in_one_feed_come_out_in_order() -> None:
    events = opened().feed(MESSAGE + b"\n" + PING + MESSAGE)
    assert [etree.QName(e.element).localname for e in events] == ["message", "iq", "message"]


def test_header_stanzas_and_close_in_one_feed() -> None:
    events = StreamFramer().feed(HEADER + MESSAGE + PING + CLOSE)
    kinds = [type(event) for event in events]
    assert kinds == [StreamOpened, StanzaReceived, StanzaReceived, StreamClosed]


def test_stanza_split_byte_by_byte_frames_like_one_feed() -> None:
    framer = opened()
    events = [event for byte in MESSAGE + PING for event in framer.feed(bytes([byte]))]
    assert stanzas(events) == stanzas(opened().feed(MESSAGE + PING))


def test_stanza_comes_out_detached_in_its_own_document() -> None:
    (event,) = opened().feed(MESSAGE)
    assert event.element.getparent() is None
    assert event.element.getroottree().getroot() is event.element


def test_stanza_keeps_the_content_namespace_without_a_prefix() -> None:
    (event,) = opened().feed(MESSAGE)
    assert event.element.tag == f"{{{CLIENT}}}message"
    assert serialize(event.element) == (
        b'<message to="romeo@example.net" id="m1"><body>Art thou not Romeo?</body></message>'
    )


def test_stream_root_keeps_neither_stanzas_nor_whitespace() -> None:
    framer = opened()
    for _ in range(100):
        framer.feed(MESSAGE + b"\n  ")
    root = framer._root
    assert root is not None and len(root) == 0 and not (root.text or "").strip()


def test_stanza_size_is_its_byte_count_when_fed_alone() -> None:
    (event,) = opened().feed(MESSAGE)
    assert event.size == len(MESSAGE)


def test_stanza_sizes_share_a_feed_evenly() -> None:
    events = opened().feed(MESSAGE + MESSAGE)
    assert [event.size for event in events] == [len(MESSAGE)] * 2


def test_feeding_after_an_error_keeps_raising() -> None:
    framer = opened()
    condition(framer, b"<!-- no -->")
    assert condition(framer, MESSAGE) == "restricted-xml"
    assert condition(framer, MESSAGE) == "restricted-xml"


def test_reset_expects_a_fresh_stream_header() -> None:
    framer = opened()
    framer.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    framer.reset()
    assert isinstance(framer.feed(HEADER)[0], StreamOpened)
    assert len(framer.feed(MESSAGE)) == 1


def test_stanza_right_after_reset_is_not_a_stream_header() -> None:
    framer = opened()
    framer.reset()
    assert condition(framer, MESSAGE) == "invalid-namespace"


def test_reset_does_not_revive_a_failed_framer() -> None:
    framer = opened()
    condition(framer, b"<!-- no -->")
    framer.reset()
    assert condition(framer, HEADER) == "restricted-xml"


# --- writing the other direction (raftxmpp.xml.stanza) ------------------------------


def test_serialize_leaves_out_the_namespace_the_stream_header_declared() -> None:
    message = make("message", {"to": "juliet@example.com"})
    body = etree.SubElement(message, f"{{{CLIENT}}}body")
    body.text = "a < b & c"
    assert (
        serialize(message)
        == b'<message to="juliet@example.com"><body>a &lt; b &amp; c</body></message>'
    )


def test_make_leaves_out_attributes_whose_value_is_none() -> None:
    assert serialize(make("iq", {"type": "result", "id": None})) == b'<iq type="result"/>'


def test_serialize_keeps_other_namespaces() -> None:
    assert serialize(make("proceed", ns="urn:ietf:params:xml:ns:xmpp-tls")) == (
        b'<proceed xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'
    )


def test_stream_namespace_elements_use_the_stream_prefix() -> None:
    features = make("features", ns=STREAM)
    etree.SubElement(
        features,
        "{urn:ietf:params:xml:ns:xmpp-bind}bind",
        nsmap={None: "urn:ietf:params:xml:ns:xmpp-bind"},
    )
    assert serialize(features) == (
        b'<stream:features><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></stream:features>'
    )


def test_serialize_never_cuts_namespace_text_inside_an_attribute() -> None:
    tricky = ' xmlns="jabber:client"'
    message = make("message", {"id": tricky})
    (event,) = opened().feed(serialize(message))
    assert event.element.get("id") == tricky


def test_serialized_stanzas_reparse_to_the_same_tree() -> None:
    originals = opened().feed(MESSAGE + PING + b"<presence><x xmlns='urn:x'><y/></x></presence>")
    again = opened().feed(b"".join(serialize(event.element) for event in originals))
    assert [etree.tostring(e.element) for e in again] == [
        etree.tostring(e.element) for e in originals
    ]


def test_stream_header_opens_a_stream_our_own_framer_accepts() -> None:
    data = stream_header("example.com", "id'1", "juliet@example.com", lang="de")
    (event,) = StreamFramer().feed(data)
    assert event == StreamOpened(
        {
            "from": "example.com",
            "id": "id'1",
            "to": "juliet@example.com",
            "version": "1.0",
            "lang": "de",
        },
        CLIENT,
    )


def test_stream_header_without_to_and_the_close_frame_an_empty_stream() -> None:
    events = StreamFramer().feed(stream_header("example.com", "s1", None) + STREAM_CLOSE)
    assert "to" not in events[0].attrs and events[1:] == [StreamClosed()]


# --- properties ----------------------------------------------------------------------

VALID_STANZAS = [
    MESSAGE,
    PING,
    b"<presence/>",
    b"<presence type='unavailable'><status>gone &amp; back</status></presence>",
    "<message to='ω@example.com'><body>héllo ✓</body></message>".encode(),
    b"<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>",
    b"<message><body><![CDATA[x<y]]></body><x xmlns='urn:x' a='1'/></message>",
]


# Fragments that reach deeper into the parser than uniformly random bytes do.
XML_FRAGMENTS = [
    b"<", b">", b"/", b"</", b"/>", b"'", b'"', b"=", b" ", b"\n", b"&", b";", b"&amp;",
    b"&#60;", b"&#0;", b"message", b"body", b"stream:stream", b"xmlns", b"xmlns:x", b"x:",
    b"'jabber:client'", b"<!--", b"-->", b"<?", b"?>", b"<![CDATA[", b"]]>", b"<!DOCTYPE",
    b"<!ENTITY", b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", HEADER, CLOSE, MESSAGE,
]  # fmt: skip
xml_ish = st.lists(st.sampled_from(XML_FRAGMENTS), max_size=60).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(st.binary(max_size=400), xml_ish),
    with_header=st.booleans(),
    cut=st.integers(min_value=0, max_value=400),
)
def test_arbitrary_bytes_raise_nothing_but_stream_error(
    data: bytes, with_header: bool, cut: int
) -> None:
    framer = StreamFramer(max_stanza_size=200, max_depth=8)
    try:
        if with_header:
            framer.feed(HEADER)
        framer.feed(data[:cut])
        framer.feed(data[cut:])
        framer.feed(data)
    except StreamError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(VALID_STANZAS), min_size=1, max_size=6),
    whitespace=st.sampled_from([b"", b" ", b"\n", b"\r\n\t "]),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_valid_stanzas_split_anywhere_frame_identically(
    chosen: list[bytes], whitespace: bytes, cuts: list[int]
) -> None:
    stream = HEADER + whitespace.join(chosen) + whitespace + CLOSE
    expected = StreamFramer().feed(stream)
    framer = StreamFramer()
    positions = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    events = []
    for start, end in zip(positions, positions[1:], strict=False):
        events += framer.feed(stream[start:end])
    assert [type(event) for event in events] == [type(event) for event in expected]
    assert stanzas(events) == stanzas(expected)
    assert events[0] == expected[0]
