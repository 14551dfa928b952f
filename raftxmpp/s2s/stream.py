"""Server-to-server stream negotiation (RFC 6120 §4-§6, XEP-0220, XEP-0178), sans-IO.

Framer events in, actions out, as in raftxmpp.c2s.stream: no socket, clock or routing
table here, so every rule below is tested without a network.

Incoming streams (a peer's Originating Server connects to us; we are its Receiving
Server, and the Authoritative Server for our own keys):

    HEADER ─▶ PRE_TLS ─(starttls)─▶ HEADER ─▶ OPEN ─(SASL EXTERNAL success)─▶ HEADER ─▶ OPEN
                                                │ <db:result/> ─▶ VerifyDialback ─▶ verified()
                                                │ <db:verify/> ─▶ answered here (our key?)
                                                └ stanzas, for validated (local, remote) pairs only

- A stanza is accepted only when its 'from' domain was authenticated *on this stream*,
  for its 'to' domain: by SASL EXTERNAL with a certificate valid for it, by dialback
  verified with that domain's authoritative server, or by a dialback request whose
  stream carries a certificate valid for it. Anything else ends the stream with
  <invalid-from/> (or <not-authorized/> before any authentication), which is what
  closes the dialback-spoofing class of bugs (CVE-2021-32919 and kin).
- Several domain pairs may be authenticated on one stream (piggybacking, XEP-0220
  §2.4); dialback errors are reported as <db:result type='error'/> because we
  announce the `dialback errors` feature.

Outgoing streams (we are the Originating Server): HEADER ─▶ FEATURES ─(starttls)─▶ …
─▶ SASL EXTERNAL when offered, else <db:result/>, ─▶ READY; or, for a verification
(we are a Receiving Server checking a key), <db:verify/> ─▶ VERIFIED.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from xml.sax.saxutils import escape

from lxml import etree

# The stream actions c2s already defines mean the same here (bytes to send, TLS now,
# a stream restart, a stanza for the router, the end of the stream).
from raftxmpp.c2s.stream import Close, ResetFramer, Send, Stanza, StartTLS
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.s2s import dialback
from raftxmpp.s2s.certs import NO_CERTIFICATE, PeerCertificate
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StanzaReceived, StreamClosed, StreamOpened
from raftxmpp.xml.stanza import rebind_to_client, serialize

DIALBACK = "jabber:server:dialback"  # XEP-0220 §2
DIALBACK_FEATURE = "urn:xmpp:features:dialback"  # XEP-0220 §2.3
DB_RESULT = f"{{{DIALBACK}}}result"
DB_VERIFY = f"{{{DIALBACK}}}verify"
_STANZAS = frozenset(f"{{{ns.SERVER}}}{name}" for name in ("message", "presence", "iq"))
_ATTR_ENTITIES = {"'": "&apos;", '"': "&quot;"}
# Dialback requests waiting for the authoritative server, per stream: each one makes us
# open a connection, so a peer must not be able to ask for thousands (XEP-0220 §5).
MAX_PENDING_DIALBACK = 10
# Dialback error conditions (XEP-0220 §2.4) we send, all stanza error conditions.
DIALBACK_ERROR_TYPES = {"item-not-found": "cancel", "forbidden": "cancel",
                        "remote-server-not-found": "cancel", "remote-server-timeout": "wait",
                        "policy-violation": "cancel", "internal-server-error": "cancel",
                        "not-allowed": "cancel"}


def stream_header(from_domain: str | None, to: str | None, stream_id: str | None) -> bytes:
    """An s2s stream header; it declares the dialback namespace, which is how pre-1.0
    servers learn we speak dialback (XEP-0220 §2.1.1)."""
    attrs = [(k, v) for k, v in (("from", from_domain), ("to", to), ("id", stream_id)) if v]
    attrs.append(("version", "1.0"))
    rendered = "".join(f" {k}='{escape(v, _ATTR_ENTITIES)}'" for k, v in attrs)
    return (f"<?xml version='1.0'?><stream:stream xmlns='{ns.SERVER}' "
            f"xmlns:stream='{ns.STREAM}' xmlns:db='{DIALBACK}'{rendered}>").encode()


def _element(tag: str, namespace: str, attrs: dict | None = None,
             text: str | None = None) -> etree._Element:
    prefix = "db" if namespace == DIALBACK else None
    element = etree.Element(f"{{{namespace}}}{tag}", {k: v for k, v in (attrs or {}).items()
                                                      if v is not None},
                            nsmap={prefix: namespace})
    element.text = text
    return element


def _bytes(element: etree._Element) -> bytes:
    return etree.tostring(element)


def dialback_error(tag: str, local: str, remote: str, condition: str,
                   stream_id: str | None = None) -> bytes:
    """<db:result type='error'/> or <db:verify type='error'/> (XEP-0220 §2.4)."""
    element = _element(tag, DIALBACK, {"from": local, "to": remote, "id": stream_id,
                                       "type": "error"})
    error = etree.SubElement(element, f"{{{ns.SERVER}}}error", nsmap={None: ns.SERVER})
    error.set("type", DIALBACK_ERROR_TYPES.get(condition, "cancel"))
    etree.SubElement(error, f"{{{ns.STANZAS_ERR}}}{condition}", nsmap={None: ns.STANZAS_ERR})
    return _bytes(element)


def domain_of(text: str | None) -> str | None:
    """The domain of a JID; None when it is not a valid JID."""
    if not text:
        return None
    try:
        return JID.parse(text).domain
    except InvalidJID:
        return None


def bare_domain(text: str | None) -> str | None:
    """A valid domain standing alone (no local part, no resource), or None."""
    if not text:
        return None
    try:
        jid = JID.parse(text)
    except InvalidJID:
        return None
    return jid.domain if jid.local is None and jid.resource is None else None


# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyDialback:
    """Ask `remote`'s authoritative server whether `key` is its key for this stream."""

    local: str
    remote: str
    stream_id: str
    key: str


@dataclass(frozen=True)
class Authenticated:
    """`remote` may now send stanzas to `local` on this stream."""

    local: str
    remote: str
    method: str  # "external", "dialback", "dialback+certificate"


@dataclass(frozen=True)
class Ready:
    """Our outgoing stream is authenticated: stanzas may go out."""

    method: str


@dataclass(frozen=True)
class Verified:
    """The answer to our <db:verify/>: True, False, or a dialback error condition."""

    valid: bool | str


@dataclass(frozen=True)
class Failed:
    """The outgoing stream cannot be used; stanzas waiting for it bounce with `condition`."""

    condition: str
    reason: str


Action = (Send | StartTLS | ResetFramer | VerifyDialback | Authenticated | Stanza | Ready
          | Verified | Failed | Close)


# -- incoming --------------------------------------------------------------------------------


class InState(Enum):
    HEADER = auto()
    PRE_TLS = auto()
    OPEN = auto()
    CLOSED = auto()


@dataclass
class IncomingSettings:
    is_local: Callable[[str], bool]  # a served host or a component domain
    dialback_secret: str
    allowed: Callable[[str], bool] = lambda domain: True  # allow/deny lists
    tls_available: bool = True
    require_tls: bool = True
    dialback: bool = True  # False: valid certificates only ([s2s] require_valid_certificates)


class IncomingStream:
    def __init__(self, settings: IncomingSettings, tls_active: bool = False) -> None:
        self.settings = settings
        self.state = InState.HEADER
        self.tls_active = tls_active
        self.certificate: PeerCertificate = NO_CERTIFICATE
        self.stream_id = ""
        self.local: str | None = None  # the header's 'to'
        self.claimed: str | None = None  # the header's 'from': a claim, never trusted
        self.validated: set[tuple[str, str]] = set()  # (local, remote)
        self.remotes: set[str] = set()
        self.methods: dict[str, str] = {}  # remote → how it authenticated
        self.pending: set[tuple[str, str]] = set()
        self._external_done = False
        self._header_sent = False

    # -- events in, actions out ----------------------------------------------------------------

    def receive(self, event: object) -> list[Action]:
        if self.state is InState.CLOSED:
            return []
        try:
            if isinstance(event, StreamOpened):
                return self._on_header(event)
            if isinstance(event, StreamClosed):
                self.state = InState.CLOSED
                return [Close()]
            if isinstance(event, StanzaReceived):
                return self._on_element(event.element)
        except StreamError as exc:
            return self.fail(exc)
        return []

    def fail(self, error: StreamError) -> list[Action]:
        """RFC 6120 §4.9.1.1: a stream error opens our stream first if it was not."""
        self.state = InState.CLOSED
        out = b"" if self._header_sent else self._header()
        return [Send(out + error.to_bytes()), Close(error)]

    @property
    def header_sent(self) -> bool:
        """Whether our stream header went out (an error then needs no header first)."""
        return self._header_sent

    def tls_started(self, certificate: PeerCertificate) -> None:
        """The edge finished the TLS handshake: a new stream header follows."""
        self.tls_active = True
        self.certificate = certificate
        self.state = InState.HEADER

    def verified(self, local: str, remote: str, outcome: bool | str) -> list[Action]:
        """The authoritative server's answer to a VerifyDialback (XEP-0220 §2.1.4)."""
        if (local, remote) not in self.pending or self.state is InState.CLOSED:
            return []
        self.pending.discard((local, remote))
        if outcome is True:
            return self._validate(local, remote, "dialback") + [Send(_bytes(_element(
                "result", DIALBACK, {"from": local, "to": remote, "type": "valid"})))]
        if outcome is False:
            # XEP-0220 §2.1.4: an invalid key ends the stream after the answer.
            answer = _element("result", DIALBACK, {"from": local, "to": remote,
                                                   "type": "invalid"})
            return [Send(_bytes(answer))] + self.fail(StreamError(
                "not-authorized", f"{remote} did not confirm the dialback key"))
        return [Send(dialback_error("result", local, remote, str(outcome)))]

    # -- header and features -------------------------------------------------------------------

    def _on_header(self, opened: StreamOpened) -> list[Action]:
        if self.state is not InState.HEADER:
            raise StreamError("bad-format", "unexpected stream header")
        to = bare_domain(opened.attrs.get("to"))
        if to is not None and not self.settings.is_local(to):
            self.local = to
            raise StreamError("host-unknown", f"{to} is not served here")
        if self.local is not None and to is not None and to != self.local:
            raise StreamError("host-unknown", "the domain changed on stream restart")
        self.local = to or self.local
        self.claimed = bare_domain(opened.attrs.get("from")) or self.claimed
        out = self._header()
        if not opened.attrs.get("version", "").startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 server streams only")
        self.state = InState.PRE_TLS if self._tls_needed() else InState.OPEN
        return [Send(out + serialize(self._features()))]

    def _header(self) -> bytes:
        self.stream_id = secrets.token_hex(16)  # dialback keys bind it: never reused
        self._header_sent = True
        return stream_header(self.local, self.claimed, self.stream_id)

    def _tls_needed(self) -> bool:
        s = self.settings
        return not self.tls_active and s.tls_available and s.require_tls

    def _features(self) -> etree._Element:
        features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
        s = self.settings
        if not self.tls_active and s.tls_available:
            tls = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap={None: ns.TLS})
            if s.require_tls:
                etree.SubElement(tls, f"{{{ns.TLS}}}required")
                return features
        if self._external_offered():
            mechanisms = etree.SubElement(features, f"{{{ns.SASL}}}mechanisms",
                                          nsmap={None: ns.SASL})
            etree.SubElement(mechanisms, f"{{{ns.SASL}}}mechanism").text = "EXTERNAL"
        if s.dialback:
            db = etree.SubElement(features, f"{{{DIALBACK_FEATURE}}}dialback",
                                  nsmap={None: DIALBACK_FEATURE})
            etree.SubElement(db, f"{{{DIALBACK_FEATURE}}}errors")
        return features

    def _external_offered(self) -> bool:
        """XEP-0178 §3 (step 6): EXTERNAL only when the certificate proves the domain the
        header claims, and once per stream."""
        return (self.tls_active and not self._external_done and self.claimed is not None
                and self.certificate.valid_for(self.claimed))

    # -- elements -----------------------------------------------------------------------------

    def _on_element(self, element: etree._Element) -> list[Action]:
        tag = element.tag
        if self.state is InState.PRE_TLS:
            if tag == f"{{{ns.TLS}}}starttls":
                self.state = InState.HEADER
                return [Send(_bytes(_element("proceed", ns.TLS))), StartTLS()]
            raise StreamError("policy-violation", "use STARTTLS first")
        if self.state is not InState.OPEN:
            raise StreamError("bad-format", "an element before the stream header")
        if tag in _STANZAS:
            return [Stanza(self._accept_stanza(element))]
        if tag == DB_RESULT:
            return self._on_db_result(element)
        if tag == DB_VERIFY:
            return self._on_db_verify(element)
        if tag == f"{{{ns.SASL}}}auth":
            return self._on_sasl_auth(element)
        if tag == f"{{{ns.TLS}}}starttls":
            raise StreamError("policy-violation", "TLS is already in place or not offered")
        raise StreamError("unsupported-stanza-type", f"<{etree.QName(element).localname}/> "
                          "is not expected on a server stream")

    def _accept_stanza(self, element: etree._Element) -> etree._Element:
        """RFC 6120 §4.9.3.9, §13.7.1.3: only authenticated (to, from) domain pairs."""
        sender, to = domain_of(element.get("from")), domain_of(element.get("to"))
        if sender is None or to is None:
            raise StreamError("improper-addressing", "a server stanza carries a valid "
                              "'to' and 'from'")
        if (to, sender) in self.validated:
            return rebind_to_client(element, ns.SERVER)
        if not self.validated:
            raise StreamError("not-authorized", "authenticate before sending stanzas")
        if sender not in self.remotes:
            raise StreamError("invalid-from", f"{sender} was not authenticated on this stream")
        raise StreamError("host-unknown", f"{sender} was not authenticated for {to}")

    def _validate(self, local: str, remote: str, method: str) -> list[Action]:
        self.validated.add((local, remote))
        self.remotes.add(remote)
        self.methods.setdefault(remote, method)
        return [Authenticated(local, remote, method)]

    def _on_sasl_auth(self, element: etree._Element) -> list[Action]:
        if element.get("mechanism") != "EXTERNAL" or not self._external_offered():
            return [Send(_sasl_failure("invalid-mechanism"))]
        self._external_done = True
        try:
            authzid = _decode(element.text) or self.claimed or ""
        except ValueError:
            return [Send(_sasl_failure("incorrect-encoding"))]
        # XEP-0178 §3 step 8: the authorization identity must be the header's 'from',
        # and the certificate must prove it.
        if authzid != self.claimed or self.local is None or not self.certificate.valid_for(authzid):
            return [Send(_sasl_failure("not-authorized"))]
        if not self.settings.allowed(authzid):
            return [Send(_sasl_failure("not-authorized"))] + self.fail(StreamError(
                "policy-violation", f"federation with {authzid} is not allowed"))
        self.state = InState.HEADER
        success = _bytes(_element("success", ns.SASL))
        return self._validate(self.local, authzid, "external") + [Send(success), ResetFramer()]

    def _on_db_result(self, element: etree._Element) -> list[Action]:
        """XEP-0220 §2.1.2: a request to verify (from remote, to local, key)."""
        if not self.settings.dialback:
            raise StreamError("not-authorized", "dialback is off: authenticate with a "
                              "certificate (SASL EXTERNAL)")
        remote, local = bare_domain(element.get("from")), bare_domain(element.get("to"))
        if element.get("type") is not None:
            raise StreamError("bad-format", "a dialback result is not expected here")
        if remote is None or local is None:
            raise StreamError("improper-addressing", "<db:result/> needs 'from' and 'to' domains")
        if not self.settings.is_local(local):
            return [Send(dialback_error("result", local, remote, "item-not-found"))]
        if not self.settings.allowed(remote):
            return [Send(dialback_error("result", local, remote, "forbidden"))]
        key = (element.text or "").strip()
        if not key:
            raise StreamError("bad-format", "a dialback key is empty")
        if self.certificate.valid_for(remote):
            # XEP-0344 §2.4: the certificate already proves the domain; no callback.
            return self._validate(local, remote, "dialback+certificate") + [Send(_bytes(
                _element("result", DIALBACK, {"from": local, "to": remote, "type": "valid"})))]
        if (local, remote) in self.pending:
            return []  # the answer to the first request will do
        if len(self.pending) >= MAX_PENDING_DIALBACK:
            raise StreamError("policy-violation", "too many dialback requests at once")
        self.pending.add((local, remote))
        return [VerifyDialback(local, remote, self.stream_id, key)]

    def _on_db_verify(self, element: etree._Element) -> list[Action]:
        """XEP-0220 §2.1.3: we are the authoritative server; is this key ours?"""
        receiving, originating = bare_domain(element.get("from")), bare_domain(element.get("to"))
        stream_id = element.get("id")
        if receiving is None or originating is None or not stream_id:
            raise StreamError("improper-addressing", "<db:verify/> needs 'from', 'to' and 'id'")
        if not self.settings.is_local(originating):
            return [Send(dialback_error("verify", originating, receiving, "item-not-found",
                                        stream_id))]
        valid = dialback.key_is_valid(self.settings.dialback_secret, receiving, originating,
                                      stream_id, element.text or "")
        answer = _element("verify", DIALBACK, {"from": originating, "to": receiving,
                                               "id": stream_id,
                                               "type": "valid" if valid else "invalid"})
        return [Send(_bytes(answer))]


def _decode(text: str | None) -> str:
    if text is None or text.strip() in ("", "="):
        return ""
    try:
        return base64.b64decode(text.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not base64") from None


def _sasl_failure(condition: str) -> bytes:
    failure = _element("failure", ns.SASL)
    etree.SubElement(failure, f"{{{ns.SASL}}}{condition}")
    return _bytes(failure)


# -- outgoing --------------------------------------------------------------------------------


class OutState(Enum):
    HEADER = auto()
    FEATURES = auto()
    STARTTLS = auto()
    SASL = auto()
    DIALBACK = auto()
    VERIFY = auto()
    READY = auto()
    CLOSED = auto()


@dataclass
class VerifyRequest:
    """What a verification connection asks the authoritative server (XEP-0220 §2.1.3)."""

    stream_id: str
    key: str


@dataclass
class OutgoingStream:
    local: str
    remote: str
    dialback_secret: str
    require_tls: bool = True
    tls_active: bool = False  # direct TLS (XEP-0368): already encrypted
    dialback: bool = True
    verify: VerifyRequest | None = None  # set: a verification connection, not a route
    state: OutState = OutState.HEADER
    stream_id: str = ""
    method: str = ""
    _offers: dict = field(default_factory=dict)
    _external_tried: bool = False
    _restarted_after_sasl: bool = False

    def start(self) -> list[Action]:
        return [Send(stream_header(self.local, self.remote, None))]

    def tls_started(self) -> list[Action]:
        self.tls_active = True
        self.state = OutState.HEADER
        return [ResetFramer(), Send(stream_header(self.local, self.remote, None))]

    def receive(self, event: object) -> list[Action]:
        if self.state is OutState.CLOSED:
            return []
        try:
            if isinstance(event, StreamOpened):
                return self._on_header(event)
            if isinstance(event, StreamClosed):
                return self._fail("remote-server-not-found", "the peer closed the stream")
            if isinstance(event, StanzaReceived):
                return self._on_element(event.element)
        except StreamError as exc:
            self.state = OutState.CLOSED
            return [Send(exc.to_bytes()), Failed("remote-server-not-found", str(exc)),
                    Close(exc)]
        return []

    def _fail(self, condition: str, reason: str, error: StreamError | None = None) -> list[Action]:
        self.state = OutState.CLOSED
        actions: list[Action] = [Failed(condition, reason)]
        if error is not None:
            actions.insert(0, Send(error.to_bytes()))
        return actions + [Close(error)]

    def _on_header(self, opened: StreamOpened) -> list[Action]:
        if self.state is not OutState.HEADER:
            raise StreamError("bad-format", "unexpected stream header")
        if not opened.attrs.get("version", "").startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 server streams only")
        self.stream_id = opened.attrs.get("id", "")
        self.state = OutState.FEATURES
        return []

    def _on_element(self, element: etree._Element) -> list[Action]:
        tag = element.tag
        if tag == f"{{{ns.STREAM}}}error":
            condition = next((etree.QName(c).localname for c in element
                              if etree.QName(c).namespace == ns.STREAMS_ERR
                              and etree.QName(c).localname != "text"), "undefined-condition")
            return self._fail("remote-server-not-found", f"stream error from the peer: {condition}")
        if self.state is OutState.FEATURES and tag == f"{{{ns.STREAM}}}features":
            return self._on_features(element)
        if self.state is OutState.STARTTLS:
            if tag == f"{{{ns.TLS}}}proceed":
                return [StartTLS()]
            return self._fail("remote-server-not-found", "STARTTLS refused",
                              StreamError("undefined-condition"))
        if self.state is OutState.SASL:
            return self._on_sasl(element)
        if self.state is OutState.DIALBACK and tag == DB_RESULT:
            return self._on_db_result(element)
        if self.state is OutState.VERIFY and tag == DB_VERIFY:
            return self._on_db_verify(element)
        if self.state is OutState.READY:
            return []  # not a bidirectional stream (XEP-0288): nothing may come back
        raise StreamError("unsupported-stanza-type", f"unexpected <{etree.QName(element).localname}/>")

    def _on_features(self, features: etree._Element) -> list[Action]:
        if self._restarted_after_sasl:
            self.state, self.method = OutState.READY, "external"
            return [Ready("external")]
        starttls = features.find(f"{{{ns.TLS}}}starttls")
        if not self.tls_active and starttls is not None:
            self.state = OutState.STARTTLS
            return [Send(_bytes(_element("starttls", ns.TLS)))]
        if not self.tls_active and self.require_tls:
            return self._fail("remote-server-not-found", f"{self.remote} offers no TLS",
                              StreamError("policy-violation", "TLS is required"))
        mechanisms = [m.text for m in features.iter(f"{{{ns.SASL}}}mechanism")]
        self._offers = {"external": "EXTERNAL" in mechanisms,
                        "dialback": features.find(f"{{{DIALBACK_FEATURE}}}dialback") is not None}
        if self.verify is not None:
            self.state = OutState.VERIFY
            return [Send(_bytes(_element("verify", DIALBACK, {
                "from": self.local, "to": self.remote, "id": self.verify.stream_id},
                self.verify.key)))]
        if self._offers["external"]:
            self._external_tried = True
            self.state = OutState.SASL
            auth = _element("auth", ns.SASL, {"mechanism": "EXTERNAL"},
                            base64.b64encode(self.local.encode()).decode())
            return [Send(_bytes(auth))]
        return self._start_dialback()

    def _start_dialback(self) -> list[Action]:
        # Servers that predate the feature still declare xmlns:db; we speak dialback to
        # any peer that did not offer something better, as Prosody and ejabberd do.
        if not self.dialback:
            return self._fail("remote-server-not-found", f"{self.remote} did not accept our "
                              "certificate and dialback is off", StreamError("not-authorized"))
        key = dialback.dialback_key(self.dialback_secret, self.remote, self.local, self.stream_id)
        self.state = OutState.DIALBACK
        return [Send(_bytes(_element("result", DIALBACK,
                                     {"from": self.local, "to": self.remote}, key)))]

    def _on_sasl(self, element: etree._Element) -> list[Action]:
        if element.tag == f"{{{ns.SASL}}}success":
            self._restarted_after_sasl = True
            self.state = OutState.HEADER
            return [ResetFramer(), Send(stream_header(self.local, self.remote, None))]
        if element.tag == f"{{{ns.SASL}}}failure":
            return self._start_dialback()
        raise StreamError("bad-format", "expected a SASL success or failure")

    def _on_db_result(self, element: etree._Element) -> list[Action]:
        if bare_domain(element.get("from")) != self.remote or \
                bare_domain(element.get("to")) != self.local:
            return []  # an answer for another pair (piggybacking) is not ours
        kind = element.get("type")
        if kind == "valid":
            self.state, self.method = OutState.READY, "dialback"
            return [Ready("dialback")]
        if kind == "error":
            condition = _error_condition(element) or "remote-server-not-found"
            return self._fail(condition if condition in ("remote-server-timeout",)
                              else "remote-server-not-found",
                              f"{self.remote} refused dialback: {condition}",
                              StreamError("undefined-condition"))
        return self._fail("remote-server-not-found", f"{self.remote} did not accept our "
                          "dialback key", StreamError("not-authorized"))

    def _on_db_verify(self, element: etree._Element) -> list[Action]:
        if (self.verify is None or element.get("id") != self.verify.stream_id
                or bare_domain(element.get("from")) != self.remote
                or bare_domain(element.get("to")) != self.local):
            return []  # not the answer to our question
        kind = element.get("type")
        self.state = OutState.CLOSED
        outcome: bool | str = kind == "valid"
        if kind == "error":
            outcome = _error_condition(element) or "remote-server-not-found"
        return [Verified(outcome), Close()]


def _error_condition(element: etree._Element) -> str | None:
    for error in element:
        if etree.QName(error).localname == "error":
            for child in error:
                if etree.QName(child).namespace == ns.STANZAS_ERR:
                    return etree.QName(child).localname
    return None
