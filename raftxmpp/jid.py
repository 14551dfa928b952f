"""XMPP addresses (JIDs) as RFC 7622 defines them: `[localpart@]domainpart[/resourcepart]`.

Every JID that enters from the network goes through `JID.parse`, which splits it the
RFC's way and enforces each part's PRECIS profile, so two spellings of one address
compare equal and an invalid one never reaches routing or the state machine. Parsing
runs for every stanza's to/from, so it is cached; PRECIS alone costs ~10 µs a part.

The constructor trusts its arguments: call it only with parts that were already
prepared (taken from another JID). Anything else goes through `parse` or `from_parts`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import precis_i18n

_LOCALPART = precis_i18n.get_profile("UsernameCaseMapped")  # RFC 7622 §3.3
_RESOURCEPART = precis_i18n.get_profile("OpaqueString")  # RFC 7622 §3.4
_MAX_PART_BYTES = 1023  # RFC 7622 §3.2, §3.3, §3.4
_MAX_JID_CHARS = 3 * _MAX_PART_BYTES + 2  # anything longer cannot be valid: skip PRECIS
_MAX_LABEL_BYTES = 63  # RFC 1034, in A-label form
_CACHE_SIZE = 65536

# RFC 7622 §3.3.1: excluded from localparts on top of the PRECIS profile.
_LOCALPART_FORBIDDEN = re.compile("[\"&'/:<>@]")
# Not in a domain name: whitespace, controls and the address delimiters. IP literals in
# brackets are handled before this check.
_DOMAIN_FORBIDDEN = re.compile("[\\s\x00-\x1f\x7f-\x9f\"&'/:<>@\\[\\]\\\\%]")


class InvalidJID(ValueError):
    """The text is not a valid XMPP address (stanza error: jid-malformed)."""


@dataclass(frozen=True, slots=True)
class JID:
    local: str | None
    domain: str
    resource: str | None

    @classmethod
    def parse(cls, text: str) -> JID:
        """The JID written as `text`, with every part prepared. Raises InvalidJID."""
        if len(text) > _CACHED_CHARS:  # a client can invent endless long JIDs: never pin them
            return _parse.__wrapped__(text)
        return _parse(text)

    @classmethod
    def from_parts(cls, local: str | None, domain: str, resource: str | None = None) -> JID:
        """A JID from separate, unprepared parts (e.g. a resource a client asked for)."""
        if len(local or "") + len(domain) + len(resource or "") > _CACHED_CHARS:
            return _from_parts.__wrapped__(local, domain, resource)
        return _from_parts(local, domain, resource)

    @property
    def bare(self) -> JID:
        """This JID without its resource."""
        return self if self.resource is None else JID(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"


# Real JIDs are short; caching only those bounds the cache at ~65536 × 3 short strings.
_CACHED_CHARS = 256


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(text: str) -> JID:
    if len(text) > _MAX_JID_CHARS:
        raise InvalidJID("address too long")
    # RFC 7622 §3.2: split before any preparation, because preparation may turn other
    # characters into '@' or '/'. The first '/' starts the resource; then the first
    # '@' ends the localpart. A resource may itself contain '@' and '/'.
    rest, slash, resource = text.partition("/")
    local: str | None
    local, at, domain = rest.partition("@")
    if not at:  # no localpart: partition left the whole rest in `local`
        local, domain = None, rest
    return JID.from_parts(local, domain, resource if slash else None)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _from_parts(local: str | None, domain: str, resource: str | None) -> JID:
    return JID(
        None if local is None else _prepare_localpart(local),
        _prepare_domainpart(domain),
        None if resource is None else _prepare_resourcepart(resource),
    )


def _prepare_localpart(local: str) -> str:
    if not local:
        raise InvalidJID("empty localpart")
    prepared = _enforce(_LOCALPART, local, "localpart")
    if _LOCALPART_FORBIDDEN.search(prepared):
        raise InvalidJID("localpart contains one of \"&'/:<>@ (RFC 7622 §3.3.1)")
    return prepared


def _prepare_resourcepart(resource: str) -> str:
    if not resource:
        raise InvalidJID("empty resourcepart")
    return _enforce(_RESOURCEPART, resource, "resourcepart")


def _enforce(profile: precis_i18n.profile.Profile, part: str, name: str) -> str:
    try:
        prepared: str = profile.enforce(part)
    except UnicodeEncodeError as exc:  # how precis_i18n reports a disallowed part
        raise InvalidJID(f"{name} refused by PRECIS: {exc.reason}") from None
    _check_length(prepared, name)
    return prepared


def _prepare_domainpart(domain: str) -> str:
    # RFC 7622 §3.2: a trailing label separator is not part of the domain.
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidJID("empty domainpart")
    if domain.startswith("["):
        return _ip_literal(domain)
    domain = unicodedata.normalize("NFC", domain.lower())
    if _DOMAIN_FORBIDDEN.search(domain):
        raise InvalidJID("domainpart contains a character no domain name may hold")
    prepared = ".".join(_prepare_label(label) for label in domain.split("."))
    _check_length(prepared, "domainpart")
    return prepared


def _prepare_label(label: str) -> str:
    """One DNS label in U-label form, so 'xn--' and Unicode spellings compare equal."""
    if not label:
        raise InvalidJID("empty label in domainpart")
    if label.startswith("xn--"):
        try:
            decoded = label[4:].encode("ascii").decode("punycode")
            label = unicodedata.normalize("NFC", decoded.lower())
        except UnicodeError:
            raise InvalidJID("domainpart holds an invalid A-label") from None
        if not label or _DOMAIN_FORBIDDEN.search(label):
            raise InvalidJID("domainpart holds an invalid A-label")
    if len(_a_label(label)) > _MAX_LABEL_BYTES:
        raise InvalidJID("label in domainpart longer than 63 octets")
    return label


def _a_label(label: str) -> bytes:
    return label.encode() if label.isascii() else b"xn--" + label.encode("punycode")


def _ip_literal(domain: str) -> str:
    if not domain.endswith("]"):
        raise InvalidJID("unterminated IPv6 literal")
    try:
        address = ipaddress.IPv6Address(domain[1:-1])
    except ValueError:
        raise InvalidJID("invalid IPv6 literal") from None
    if address.scope_id is not None:
        raise InvalidJID("IPv6 zone identifiers are not allowed in a JID")
    return f"[{address.compressed}]"


def _check_length(part: str, name: str) -> None:
    if len(part.encode()) > _MAX_PART_BYTES:
        raise InvalidJID(f"{name} longer than {_MAX_PART_BYTES} bytes")
