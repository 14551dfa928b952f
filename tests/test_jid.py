"""XMPP addresses, table-driven from RFC 7622 §3.5 and the rules of §3.1-§3.4."""

from __future__ import annotations

import dataclasses

import pytest

from raftxmpp.jid import JID, InvalidJID

# RFC 7622 §3.5.1 "Examples of Valid JIDs", with the parts each must prepare to.
RFC_VALID = [
    ("juliet@example.com", ("juliet", "example.com", None)),
    ("juliet@example.com/foo", ("juliet", "example.com", "foo")),
    ("juliet@example.com/foo bar", ("juliet", "example.com", "foo bar")),
    ("juliet@example.com/foo@bar", ("juliet", "example.com", "foo@bar")),
    ("foo\\20bar@example.com", ("foo\\20bar", "example.com", None)),
    ("fussball@example.com", ("fussball", "example.com", None)),
    ("fußball@example.com", ("fußball", "example.com", None)),
    ("π@example.com", ("π", "example.com", None)),
    ("Σ@example.com/foo", ("σ", "example.com", "foo")),
    ("σ@example.com/foo", ("σ", "example.com", "foo")),
    ("ς@example.com/foo", ("ς", "example.com", "foo")),
    ("king@example.com/♚", ("king", "example.com", "♚")),
    ("example.com", (None, "example.com", None)),
    ("example.com/foobar", (None, "example.com", "foobar")),
    ("a.example.com/b@example.net", (None, "a.example.com", "b@example.net")),
]

# RFC 7622 §3.5.2 "Examples of Invalid JIDs", less "juliet@example.com/ foo": a leading
# space is valid in an OpaqueString resourcepart (RFC Errata ID 4560).
RFC_INVALID = [
    '"juliet"@example.com',  # quotes are excluded from localparts
    "foo bar@example.com",  # spaces are excluded from localparts
    "@example.com/",  # empty localpart and resourcepart
    "henryⅣ@example.com",  # compatibility character
    "♚@example.com",  # symbol in a localpart
    "juliet@",  # empty domainpart
    "/foobar",  # empty domainpart
]


@pytest.mark.parametrize(("text", "parts"), RFC_VALID)
def test_rfc_valid_examples_parse_to_prepared_parts(text: str, parts: tuple) -> None:
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == parts


@pytest.mark.parametrize("text", RFC_INVALID)
def test_rfc_invalid_examples_are_refused(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_leading_space_in_resourcepart_is_valid_per_errata_4560() -> None:
    assert JID.parse("juliet@example.com/ foo").resource == " foo"


def test_invalid_jid_is_a_value_error() -> None:
    assert issubclass(InvalidJID, ValueError)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        # §3.1/§3.2: the first '/' starts the resource, which may hold '/' and '@'.
        ("juliet@example.com/a/b", ("juliet", "example.com", "a/b")),
        ("juliet@example.com/a@b/c", ("juliet", "example.com", "a@b/c")),
        # A '/' before any '@' leaves no localpart: the '@' belongs to the resource.
        ("example.com/juliet@example.net", (None, "example.com", "juliet@example.net")),
    ],
)
def test_split_follows_rfc7622_section_3_2(text: str, parts: tuple) -> None:
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == parts


def test_second_at_sign_makes_the_domain_invalid() -> None:
    # §3.2 step 2 cuts at the first '@', so "b@c" would be the domain, which no domain is.
    with pytest.raises(InvalidJID):
        JID.parse("a@b@c")


@pytest.mark.parametrize("character", ['"', "&", "'", "/", ":", "<", ">", "@"])
def test_localpart_excludes_rfc7622_characters(character: str) -> None:
    with pytest.raises(InvalidJID):
        JID.from_parts(f"a{character}b", "example.com")


def test_fullwidth_at_sign_in_localpart_is_refused_after_preparation() -> None:
    # Width mapping turns U+FF20 into '@': preparation happens after the split (§3.1).
    with pytest.raises(InvalidJID):
        JID.parse("a＠b@example.com")


def test_localpart_is_case_folded_and_width_mapped() -> None:
    assert JID.parse("ＪＵＬＩＥＴ@example.com") == JID.parse("juliet@example.com")


def test_resourcepart_keeps_case() -> None:
    assert JID.parse("juliet@example.com/Balcony").resource == "Balcony"


def test_resourcepart_with_control_character_is_refused() -> None:
    with pytest.raises(InvalidJID):
        JID.parse("juliet@example.com/bell\x07")


def test_domainpart_is_lowercased_and_loses_one_trailing_dot() -> None:
    assert JID.parse("juliet@EXAMPLE.com.").domain == "example.com"


@pytest.mark.parametrize(
    "domain",
    ["example.com..", "exa..mple.com", ".example.com", "exa mple.com", "exa<mple.com", "a\x00b"],
)
def test_malformed_domainpart_is_refused(domain: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(f"juliet@{domain}")


def test_domainpart_a_label_and_u_label_are_the_same_domain() -> None:
    assert JID.parse("juliet@xn--caf-dma.example") == JID.parse("juliet@CAFÉ.example")


def test_domainpart_label_longer_than_63_octets_is_refused() -> None:
    with pytest.raises(InvalidJID):
        JID.parse(f"juliet@{'a' * 64}.example")


def test_ipv6_literal_domain_is_normalised() -> None:
    assert JID.parse("juliet@[2001:DB8:0::1]/r").domain == "[2001:db8::1]"


@pytest.mark.parametrize("literal", ["[::1", "[not-an-address]", "[fe80::1%eth0]"])
def test_bad_ipv6_literal_is_refused(literal: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(f"juliet@{literal}")


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1024 + "@example.com",
        "juliet@" + ".".join(["a" * 63] * 17),
        "juliet@example.com/" + "r" * 1024,
    ],
)
def test_part_longer_than_1023_bytes_is_refused(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_parts_of_exactly_1023_bytes_are_accepted() -> None:
    jid = JID.parse("a" * 1023 + "@example.com/" + "é" * 511 + "r")
    assert len(jid.local.encode()) == len(jid.resource.encode()) == 1023


def test_megabyte_address_is_refused_without_preparing_it() -> None:
    with pytest.raises(InvalidJID):
        JID.parse("a" * 1_000_000)


def test_parse_is_cached() -> None:
    assert JID.parse("cached@example.com/r") is JID.parse("cached@example.com/r")


def test_bare_drops_only_the_resource() -> None:
    full = JID.parse("juliet@example.com/balcony")
    assert full.bare == JID.parse("juliet@example.com")
    assert full.bare.is_bare and not full.is_bare


def test_bare_of_a_bare_jid_is_itself() -> None:
    bare = JID.parse("juliet@example.com")
    assert bare.bare is bare


@pytest.mark.parametrize(
    "text", ["juliet@example.com/balcony", "juliet@example.com", "example.com", "example.com/r"]
)
def test_str_writes_the_address_back(text: str) -> None:
    assert str(JID.parse(text)) == text


def test_str_writes_the_prepared_form() -> None:
    assert str(JID.parse("Juliet@Example.COM./Balcony")) == "juliet@example.com/Balcony"


def test_jids_are_immutable_and_hashable() -> None:
    jid = JID.parse("juliet@example.com/balcony")
    with pytest.raises(dataclasses.FrozenInstanceError):
        jid.resource = "other"
    assert {jid: 1}[JID.parse("JULIET@example.com/balcony")] == 1


def test_from_parts_prepares_each_part() -> None:
    assert JID.from_parts("Juliet", "Example.com", "r") == JID("juliet", "example.com", "r")


def test_from_parts_refuses_an_empty_resource() -> None:
    with pytest.raises(InvalidJID):
        JID.from_parts("juliet", "example.com", "")
