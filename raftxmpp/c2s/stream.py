"""Client stream negotiation (RFC 6120 §4–§7) as a sans-IO state machine.

Theory of operation: the connection feeds framer events in (`receive`), and gets
actions back: bytes to send, "start TLS now", "bind this resource", "handle this
pre-auth IQ", "route this stanza". This module never touches a socket, a clock or
the session table, so every transition is tested without a network.

States, in order (a stream restart after TLS and after SASL returns to a header):

    HEADER ─▶ PRE_TLS ─(starttls)─▶ HEADER ─▶ AUTH ─(sasl success)─▶ HEADER ─▶ BIND ─▶ BOUND
                        └──(tls not required)──▶ AUTH
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from lxml import etree

from raftxmpp.c2s import sasl
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, StreamError, can_reply_with_error, error_reply
from raftxmpp.xml.framer import StanzaReceived, StreamClosed, StreamOpened
from raftxmpp.xml.stanza import make, serialize, stream_header

MAX_AUTH_ATTEMPTS = 3
# The stanzas of a client stream (RFC 6120 §8); any other first-level element is not one.
_STANZAS = frozenset(f"{{{ns.CLIENT}}}{name}" for name in ("message", "presence", "iq"))
_STARTTLS = f"{{{ns.TLS}}}starttls"
_SM_PREFIX = f"{{{ns.SM}}}"
_CSI_STATES = (f"{{{ns.CSI}}}active", f"{{{ns.CSI}}}inactive")


class State(Enum):
    HEADER = auto()
    PRE_TLS = auto()
    AUTH = auto()
    SASL = auto()
    BIND = auto()
    BOUND = auto()
    CLOSED = auto()


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Send nothing more; wrap the transport in TLS and reset the framer."""


@dataclass(frozen=True)
class ResetFramer:
    """A stream restart after SASL success (RFC 6120 §6.4.6)."""


@dataclass(frozen=True)
class BindRequest:
    iq: etree._Element
    resource: str | None  # None: the server picks one


@dataclass(frozen=True)
class PreAuthIq:
    iq: etree._Element  # in-band registration before authentication (XEP-0077)


@dataclass(frozen=True)
class Stanza:
    element: etree._Element


@dataclass(frozen=True)
class Close:
    error: StreamError | None = None


@dataclass(frozen=True)
class SmRequest:
    """A stream-management element (XEP-0198) once authenticated: <enable/>, <resume/>,
    <r/> or <a/>; the edge owns the counters and the resumable sessions."""

    element: etree._Element


@dataclass(frozen=True)
class ClientStateChange:
    """XEP-0352: the client says it is <active/> or <inactive/>."""

    active: bool


Action = (Send | StartTLS | ResetFramer | BindRequest | PreAuthIq | Stanza | Close | SmRequest
          | ClientStateChange)


@dataclass
class StreamSettings:
    hosts: Callable[[], set[str]]
    lookup_credentials: Callable[[str, str], object]  # (localpart, domain) → credentials | None
    tls_active: bool = False
    tls_available: bool = True
    require_tls: bool = True
    plaintext_auth: bool = False  # PLAIN without TLS (loopback benchmarks only)
    registration: bool = False
    channel_binding: tuple[str, bytes] | None = None
    # What unknown accounts' fake SCRAM parameters show: the count new accounts get.
    scram_iterations: int = 4096
    # … and the key of their fake salts (sasl.unknown_account_key of the cluster secret).
    unknown_account_key: bytes | None = None
    extra_features: Callable[[], list[etree._Element]] = field(default=lambda: [])


class ClientStream:
    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.state = State.HEADER
        self.domain: str | None = None
        self.username: str | None = None
        self.stream_id = ""
        self._sasl: sasl.SaslServer | None = None
        self._auth_failures = 0
        self._header_sent = False

    @property
    def authenticated(self) -> bool:
        return self.username is not None

    @property
    def auth_failures(self) -> int:
        """SASL exchanges that failed on this stream; the edge feeds its login throttle."""
        return self._auth_failures

    # -- events in, actions out ---------------------------------------------------------------------

    def receive(self, event: object) -> list[Action]:
        try:
            if isinstance(event, StreamOpened):
                return self._on_header(event)
            if isinstance(event, StreamClosed):
                self.state = State.CLOSED
                return [Close()]
            if isinstance(event, StanzaReceived):
                return self._on_element(event.element)
        except StreamError as exc:
            return self.fail(exc)
        return []

    def fail(self, error: StreamError) -> list[Action]:
        """A stream error: opens a stream first if we never answered the header (§4.9.1.1)."""
        self.state = State.CLOSED
        out = b""
        if not self._header_sent:
            out += self._header(self.domain or next(iter(sorted(self.settings.hosts())), ""))
        return [Send(out + error.to_bytes()), Close(error)]

    def bound(self, iq: etree._Element, full_jid: str) -> list[Action]:
        """The edge bound the resource: answer the bind IQ (§7.6.1)."""
        self.state = State.BOUND
        reply = make("iq", {"type": "result", "id": iq.get("id")})
        bind = etree.SubElement(reply, f"{{{ns.BIND}}}bind", nsmap={None: ns.BIND})
        etree.SubElement(bind, f"{{{ns.BIND}}}jid").text = full_jid
        return [Send(serialize(reply))]

    def resumed(self) -> None:
        """The edge resumed a detached session (XEP-0198 §5) instead of binding one."""
        self.state = State.BOUND

    def claimed_account(self, event: object) -> str | None:
        """The bare JID that `event` (a SASL message not yet received) names as the user,
        if it is the message that names one; the edge's login throttle may hold the
        connection back before the exchange checks it (raftxmpp.c2s.login)."""
        if not isinstance(event, StanzaReceived) or self.domain is None:
            return None
        element = event.element
        if self.state is State.AUTH and element.tag == f"{{{ns.SASL}}}auth":
            mechanism = element.get("mechanism", "")
        elif (self.state is State.SASL and element.tag == f"{{{ns.SASL}}}response"
              and self._sasl is not None and self._sasl.expects_identity):
            mechanism = self._sasl.mechanism
        else:
            return None
        try:
            message = _decode(element.text)
        except sasl.SaslFailure:
            return None
        localpart = sasl.claimed_localpart(mechanism, message, self.domain) if message else None
        return f"{localpart}@{self.domain}" if localpart else None

    # -- headers and features -------------------------------------------------------------------------

    def _on_header(self, opened: StreamOpened) -> list[Action]:
        if self.state is not State.HEADER:
            raise StreamError("bad-format", "unexpected stream header")
        to = (opened.attrs.get("to") or "").lower()
        hosts = self.settings.hosts()
        if to not in hosts:
            self.domain = sorted(hosts)[0] if hosts else to
            raise StreamError("host-unknown", "this server does not serve that domain")
        if self.domain is not None and to != self.domain:
            raise StreamError("host-unknown", "the domain changed on stream restart")
        self.domain = to
        out = self._header(to)
        if not opened.attrs.get("version", "").startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 streams only")
        out += serialize(self._features())
        self.state = self._state_after_features()
        return [Send(out)]

    def _header(self, domain: str) -> bytes:
        self.stream_id = secrets.token_hex(8)
        self._header_sent = True
        return stream_header(domain, self.stream_id, None)

    def _state_after_features(self) -> State:
        if self.authenticated:
            return State.BIND
        if self._tls_needed():
            return State.PRE_TLS
        return State.AUTH

    def _starttls_offered(self) -> bool:
        s = self.settings
        return not s.tls_active and s.tls_available

    def _tls_needed(self) -> bool:
        s = self.settings
        return not s.tls_active and s.tls_available and s.require_tls

    def _features(self) -> etree._Element:
        features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
        s = self.settings
        if self.authenticated:
            etree.SubElement(features, f"{{{ns.BIND}}}bind", nsmap={None: ns.BIND})
            session = etree.SubElement(features, f"{{{ns.SESSION}}}session", nsmap={None: ns.SESSION})
            etree.SubElement(session, f"{{{ns.SESSION}}}optional")
            for extra in s.extra_features():
                features.append(extra)
            return features
        if not s.tls_active and s.tls_available:
            tls = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap={None: ns.TLS})
            if s.require_tls:
                etree.SubElement(tls, f"{{{ns.TLS}}}required")
                return features
        mechanisms = sasl.offered_mechanisms(
            tls=s.tls_active,
            channel_binding=s.channel_binding is not None,
            allow_plain_without_tls=s.plaintext_auth,
        )
        if mechanisms:
            mech_el = etree.SubElement(features, f"{{{ns.SASL}}}mechanisms", nsmap={None: ns.SASL})
            for name in mechanisms:
                etree.SubElement(mech_el, f"{{{ns.SASL}}}mechanism").text = name
        if s.registration:
            etree.SubElement(features, f"{{{ns.REGISTER_FEATURE}}}register",
                             nsmap={None: ns.REGISTER_FEATURE})
        return features

    # -- elements -----------------------------------------------------------------------------------------

    def _on_element(self, element: etree._Element) -> list[Action]:
        if self.state is State.BOUND:
            if element.tag in _STANZAS:
                return [Stanza(element)]
            if element.tag.startswith(_SM_PREFIX):
                return [SmRequest(element)]
            if element.tag in _CSI_STATES:
                return [ClientStateChange(element.tag == _CSI_STATES[0])]
            return self._unsupported(element)
        qname = etree.QName(element)
        if self.state is State.BIND and element.tag.startswith(_SM_PREFIX):
            return [SmRequest(element)]
        if self.state is State.PRE_TLS or (self.state is State.AUTH and self._starttls_offered()
                                           and element.tag == _STARTTLS):
            return self._on_pre_tls(qname, element)
        if self.state in (State.AUTH, State.SASL) and qname.namespace == ns.SASL:
            return self._on_sasl(qname.localname, element)
        if self.state is State.BIND:
            return self._on_bind_phase(qname, element)
        if self.state is State.AUTH and self._is_register_iq(element):
            return [PreAuthIq(element)]
        if element.tag in _STANZAS or self.state is State.HEADER:
            raise StreamError("not-authorized", "authenticate first")
        return self._unsupported(element)

    def _unsupported(self, element: etree._Element) -> list[Action]:
        """A first-level element this server does not support: an answer, never silence.

        XEP-0198 before authentication: "If an error occurs with regard to an <enable/>
        or <resume/> element, the server MUST return a <failed/> element" (§6), and the
        stream goes on. A <starttls/> the server does not offer (TLS is on
        already, or there is no certificate) gets RFC 6120 §5.4.2.2's <failure/> and the
        stream closes. Anything else is RFC 6120 §4.9.3.24 <unsupported-stanza-type/>."""
        qname = etree.QName(element)
        if qname.namespace == ns.SM and qname.localname in ("enable", "resume"):
            condition = "unexpected-request"  # only ever reached before authentication
            failed = etree.Element(f"{{{ns.SM}}}failed", nsmap={None: ns.SM})
            etree.SubElement(failed, f"{{{ns.STANZAS_ERR}}}{condition}",
                             nsmap={None: ns.STANZAS_ERR})
            return [Send(serialize(failed))]
        if qname.namespace == ns.TLS and qname.localname == "starttls":
            failure = etree.Element(f"{{{ns.TLS}}}failure", nsmap={None: ns.TLS})
            self.state = State.CLOSED
            return [Send(serialize(failure)), Close()]
        raise StreamError("unsupported-stanza-type",
                          f"<{qname.localname} xmlns='{qname.namespace or ''}'/> is not supported")

    def _on_pre_tls(self, qname: etree.QName, element: etree._Element) -> list[Action]:
        if qname.namespace == ns.TLS and qname.localname == "starttls":
            self.state = State.HEADER
            proceed = etree.Element(f"{{{ns.TLS}}}proceed", nsmap={None: ns.TLS})
            return [Send(serialize(proceed)), StartTLS()]
        if qname.namespace == ns.SASL:
            # Encryption is required first (RFC 6120 §6.4.1 / §5.3.1).
            return [Send(_sasl_failure("encryption-required"))] + self.fail(
                StreamError("policy-violation", "use STARTTLS first"))
        raise StreamError("policy-violation", "use STARTTLS first")

    def _on_sasl(self, name: str, element: etree._Element) -> list[Action]:
        try:
            if name == "auth" and self.state is State.AUTH:
                return self._sasl_start(element)
            if name == "response" and self.state is State.SASL:
                return self._sasl_step(self._sasl.respond(_decode(element.text)))
            if name == "abort" and self.state is State.SASL:
                raise sasl.SaslFailure("aborted")
        except sasl.SaslFailure as failure:
            return self._sasl_failed(failure)
        raise StreamError("not-authorized", f"unexpected SASL <{name}/>")

    def _sasl_start(self, element: etree._Element) -> list[Action]:
        s = self.settings
        offered = sasl.offered_mechanisms(
            tls=s.tls_active,
            channel_binding=s.channel_binding is not None,
            allow_plain_without_tls=s.plaintext_auth,
        )
        domain = self.domain or ""
        self._sasl = sasl.SaslServer(
            element.get("mechanism", ""),
            domain,
            lambda user: s.lookup_credentials(user, domain),
            offered,
            s.channel_binding,
            unknown_user_iterations=s.scram_iterations,
            unknown_user_key=s.unknown_account_key,
        )
        self.state = State.SASL
        text = element.text
        initial = None if text is None else _decode(text)
        return self._sasl_step(self._sasl.start(initial))

    def _sasl_step(self, outcome: tuple[str, bytes]) -> list[Action]:
        kind, data = outcome
        payload = base64.b64encode(data).decode() if data else ""
        if kind == "challenge":
            challenge = etree.Element(f"{{{ns.SASL}}}challenge", nsmap={None: ns.SASL})
            challenge.text = payload or None
            return [Send(serialize(challenge))]
        self.username = self._sasl.username
        self._sasl = None
        self.state = State.HEADER
        success = etree.Element(f"{{{ns.SASL}}}success", nsmap={None: ns.SASL})
        success.text = payload or None
        return [Send(serialize(success)), ResetFramer()]

    def _sasl_failed(self, failure: sasl.SaslFailure) -> list[Action]:
        self._sasl = None
        self.state = State.AUTH
        self._auth_failures += 1
        actions: list[Action] = [Send(_sasl_failure(failure.condition))]
        if self._auth_failures >= MAX_AUTH_ATTEMPTS:
            actions += self.fail(StreamError("policy-violation", "too many failed authentications"))
        return actions

    def _on_bind_phase(self, qname: etree.QName, element: etree._Element) -> list[Action]:
        if element.tag not in _STANZAS:
            return self._unsupported(element)
        if qname.localname != "iq":
            raise StreamError("not-authorized", "bind a resource first")
        payload = element[0] if len(element) == 1 else None
        if element.get("type") == "set" and payload is not None:
            if payload.tag == f"{{{ns.BIND}}}bind":
                resource = payload.findtext(f"{{{ns.BIND}}}resource")
                return [BindRequest(element, resource.strip() if resource else None)]
            if payload.tag == f"{{{ns.SESSION}}}session":
                return [Send(serialize(make("iq", {"type": "result", "id": element.get("id")})))]
        if not can_reply_with_error(element):
            return []  # an unsolicited result or error is dropped (RFC 6120 §8.2.3)
        error = StanzaError("not-authorized" if payload is not None else "bad-request")
        return [Send(serialize(error_reply(element, error)))]

    @staticmethod
    def _is_register_iq(element: etree._Element) -> bool:
        return (
            element.tag == f"{{{ns.CLIENT}}}iq"
            and len(element) == 1
            and element[0].tag == f"{{{ns.REGISTER}}}query"
        )

    def allows_registration(self) -> bool:
        """Pre-auth registration needs the feature on and, if required, TLS first."""
        s = self.settings
        return s.registration and not self._tls_needed()


def _decode(text: str | None) -> bytes:
    if text is None or text.strip() in ("", "="):
        return b""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise sasl.SaslFailure("incorrect-encoding") from None


def _sasl_failure(condition: str) -> bytes:
    failure = etree.Element(f"{{{ns.SASL}}}failure", nsmap={None: ns.SASL})
    etree.SubElement(failure, f"{{{ns.SASL}}}{condition}")
    return serialize(failure)
