"""The XEP-0114 component stream, sans-IO: framer events in, actions out.

Everything about accepting a component lives here; the trio edge
(raftxmpp.component.connection) performs the actions and knows nothing of the protocol.

Theory of operation (XEP-0114 §3):

    HEADER ──header to=DOMAIN──▶ HANDSHAKE ──<handshake>hex</handshake>──▶ ACCEPTED
      │ no such component           │ anything else, or a wrong digest      │
      ▼ <host-unknown/>             ▼ <not-authorized/>                      ▼ stanzas

- The component opens a stream in 'jabber:component:accept' whose 'to' is its domain;
  we answer with our header carrying a fresh stream id, and <host-unknown/> if that
  domain is not a registered component.
- It proves the shared secret with the lowercase hex SHA-1 of (stream id + secret);
  we compute the same and compare in constant time (hmac.compare_digest). The secret
  and the digests are never logged.
- Once accepted, every stanza must carry 'to' and 'from' (RFC 6120 §4.9.3.14
  <improper-addressing/>), and 'from' must be in the component's own domain
  (<invalid-from/>): a component speaks for its domain, never for anyone else.
  Stanzas leave here in 'jabber:client', the namespace the router works in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from lxml import etree

from raftxmpp.jid import JID, InvalidJID
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StanzaReceived, StreamClosed, StreamOpened
from raftxmpp.xml.ns import CLIENT, COMPONENT, STREAM
from raftxmpp.xml.stanza import rebind_to_client

HANDSHAKE = f"{{{COMPONENT}}}handshake"
_STANZA_NAMES = frozenset({"message", "presence", "iq"})
# Components may qualify stanzas with either namespace (slixmpp's use_jc_ns sends jabber:client).
_STANZA_NAMESPACES = (COMPONENT, CLIENT)
_ATTR_ENTITIES = {"'": "&apos;", '"': "&quot;"}

HANDSHAKE_OK = f"<handshake xmlns='{COMPONENT}'/>".encode()

# The component's shared secret for a domain, or None when no such component is
# registered. May raise StreamError (e.g. a secret sealed with another cluster secret).
SecretLookup = Callable[[str], "str | None"]


class State(enum.Enum):
    HEADER = "header"
    HANDSHAKE = "handshake"
    ACCEPTED = "accepted"
    CLOSED = "closed"


@dataclass(frozen=True)
class Send:
    """Bytes to write to the component, before it is accepted."""

    data: bytes


@dataclass(frozen=True)
class Accepted:
    """The handshake succeeded: the component speaks for `domain` from now on."""

    domain: str


@dataclass(frozen=True)
class Stanza:
    """A stanza from the accepted component, in jabber:client, ready for the router."""

    element: etree._Element


@dataclass(frozen=True)
class Close:
    """End the stream, with `error` first if there is one."""

    error: StreamError | None


Action = Send | Accepted | Stanza | Close


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: lowercase hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


def response_header(domain: str, stream_id: str) -> bytes:
    """Our stream header; XEP-0114 streams carry no version (there are no features)."""
    attrs = "".join(f" {name}='{escape(value, _ATTR_ENTITIES)}'"
                    for name, value in (("from", domain), ("id", stream_id)))
    return (f"<?xml version='1.0'?><stream:stream xmlns='{COMPONENT}' "
            f"xmlns:stream='{STREAM}'{attrs}>").encode()


class ComponentStream:
    def __init__(self, lookup_secret: SecretLookup, stream_id: str | None = None) -> None:
        self.lookup_secret = lookup_secret
        self.stream_id = stream_id or secrets.token_hex(16)
        self.state = State.HEADER
        self.domain: str | None = None
        self._secret: str | None = None

    def receive(self, event: StreamOpened | StanzaReceived | StreamClosed) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        try:
            if isinstance(event, StreamClosed):
                self.state = State.CLOSED
                return [Close(None)]
            if self.state is State.HEADER:
                return self._header(event)
            if not isinstance(event, StanzaReceived):
                raise StreamError("bad-format", "a second stream header")
            if self.state is State.HANDSHAKE:
                return self._handshake(event.element)
            return [Stanza(self._stanza(event.element))]
        except StreamError as exc:
            return self.fail(exc)

    def fail(self, error: StreamError) -> list[Action]:
        """The actions that end the stream with `error` (e.g. one the framer raised)."""
        actions: list[Action] = []
        if self.state is State.HEADER:  # RFC 6120 §4.9.1.1: open a stream to carry the error
            actions.append(Send(response_header(self.domain or "", self.stream_id)))
        self.state = State.CLOSED
        self._secret = None
        actions.append(Close(error))
        return actions

    # -- states --------------------------------------------------------------------------------

    def _header(self, event) -> list[Action]:
        if not isinstance(event, StreamOpened):
            raise StreamError("bad-format", "expected a stream header")
        to = event.attrs.get("to", "")
        self.domain = to
        if event.default_ns != COMPONENT:
            raise StreamError("invalid-namespace", f"a component stream is in {COMPONENT}")
        try:
            jid = JID.parse(to)
        except InvalidJID:
            raise StreamError("host-unknown", "'to' must name the component's domain") from None
        if jid.local is not None or jid.resource is not None:
            raise StreamError("host-unknown", "'to' must name the component's domain")
        self.domain = jid.domain
        secret = self.lookup_secret(jid.domain)
        if secret is None:
            raise StreamError("host-unknown", f"no component {jid.domain} is registered")
        self._secret = secret
        self.state = State.HANDSHAKE
        return [Send(response_header(jid.domain, self.stream_id))]

    def _handshake(self, element: etree._Element) -> list[Action]:
        if element.tag != HANDSHAKE:
            raise StreamError("not-authorized", "send the handshake first")
        offered = (element.text or "").strip().lower().encode()
        expected = handshake_digest(self.stream_id, self._secret or "").encode()
        self._secret = None  # needed once; keep it no longer than that
        if not hmac.compare_digest(offered, expected):
            raise StreamError("not-authorized", "handshake failed")
        self.state = State.ACCEPTED
        return [Send(HANDSHAKE_OK), Accepted(self.domain or "")]

    def _stanza(self, element: etree._Element) -> etree._Element:
        qname = etree.QName(element)
        if qname.namespace not in _STANZA_NAMESPACES or qname.localname not in _STANZA_NAMES:
            raise StreamError("unsupported-stanza-type", f"<{qname.localname}/> is not a stanza")
        sender, to = element.get("from"), element.get("to")
        if not sender or not to:
            raise StreamError("improper-addressing", "a component's stanza carries 'to' and 'from'")
        try:
            domain = JID.parse(sender).domain
        except InvalidJID:
            raise StreamError("invalid-from", f"'from' is not a JID: {sender!r}") from None
        if domain != self.domain:
            raise StreamError("invalid-from", f"'from' must be in {self.domain}")
        return to_client_namespace(element) if qname.namespace == COMPONENT else element


def to_client_namespace(element: etree._Element) -> etree._Element:
    """`element` with every jabber:component:accept element moved to jabber:client."""
    return rebind_to_client(element, COMPONENT)
