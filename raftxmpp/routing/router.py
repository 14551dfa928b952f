"""Router: the first decision for every stanza — which domain is it for?

A host this cluster serves → the local router; a registered component domain →
the component manager; anything else → the s2s manager. Modules register their
handlers here, by (stanza kind, namespace), the way Prosody and ejabberd do, so
adding a XEP never means editing the router.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lxml import etree

from raftxmpp import metrics
from raftxmpp.cluster.raft import RaftUnavailable, write_failure
from raftxmpp.cluster.store import StoreError, client_request
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.components import LINK_TARGET as COMPONENT_LINK_TARGET
from raftxmpp.routing.components import ComponentManager
from raftxmpp.routing.local import IQ, MESSAGE, PRESENCE, LocalRouter
from raftxmpp.routing.s2s import LINK_TARGET as S2S_LINK_TARGET
from raftxmpp.routing.s2s import S2SManager
from raftxmpp.routing.sessions import SESSION_SEPARATOR, LocalSession, SessionManager, link_hops
from raftxmpp.xml.errors import StanzaError, can_reply_with_error, error_reply

if TYPE_CHECKING:
    from raftxmpp.cluster.store import Store
    from raftxmpp.config import Config

log = logging.getLogger("raftxmpp.router")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

MODULES = (
    "roster",
    "presence",
    "offline",
    "disco",
    "ping",
    "version",
    "entity_time",
    "vcard",
    "private",
    "blocking",
    "carbons",
    "register",
    "last",
    "session",
    "contact_addresses",
    "adhoc",
    "service_admin",
    "http_upload",
    "pubsub",
    "muc",
    "stream_management",
    "csi",
    "external_services",
    "mam",
)


@dataclass
class IqRequest:
    """An IQ get/set addressed to the server or to an account it serves."""

    stanza: etree._Element
    payload: etree._Element
    sender: LocalSession | None
    from_jid: JID
    to_jid: JID  # the account (bare) or the server domain
    router: Router
    replied: bool = False  # the handler answered itself (e.g. before closing the session)


IqHandler = Callable[[IqRequest], Awaitable[etree._Element | None]]
Hook = Callable[..., Awaitable[None]]
# A service on its own domain (upload.<host>, pubsub.<host> …): (stanza, target, sender).
ServiceHandler = Callable[[etree._Element, JID, "LocalSession | None"], Awaitable[None]]


class Host(Protocol):
    """What the router needs of the node that runs it (raftxmpp.node.Node): modules reach
    the node only through the router's API, never the node itself."""

    config: Config
    store: Store | None

    def served_hosts(self) -> frozenset[str]: ...

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool: ...


class Router:
    def __init__(self, node: Host) -> None:
        self.node = node
        self.config = node.config
        self.sessions = SessionManager(node.config.node.name)
        self.local = LocalRouter(self)
        self.components = ComponentManager(self)
        self.s2s = S2SManager(self)
        # (scope, type, namespace) → handler; scope is "server" or "account".
        self.iq_handlers: dict[tuple[str, str, str], IqHandler] = {}
        self.hooks: dict[str, list[Hook]] = {}
        self.server_features: set[str] = set()
        # Features of every account's disco#info (XEP-0030 to a bare JID: MAM's).
        self.account_features: set[str] = set()
        # Long-running tasks of modules (the archive's batch writer), started in the
        # node's nursery once it runs, cancelled with it.
        self.background: list[Callable[[], Awaitable[None]]] = []
        # Run on every stanza a client sends, before it is routed; one may raise StanzaError
        # to refuse it (XEP-0191 §3.3: nothing goes to a JID the sender blocks).
        self.outbound_checks: list[Callable[[etree._Element, LocalSession], None]] = []
        # Awaited before a client's message is routed: a module whose queue is behind
        # holds the sender back (the archive's backpressure).
        self.outbound_pacers: list[Callable[[], Awaitable[None]]] = []
        # Called for every message a client sends (message carbons, XEP-0280).
        self.sent_hook: Callable[[etree._Element, LocalSession], None] | None = None
        self.stream_features: list[Callable[[LocalSession | None], etree._Element | None]] = []
        # Service discovery of the server's nodes and extended information (XEP-0030 §3.2,
        # XEP-0128): node → handler of a disco#info or disco#items query to that node, and
        # data forms added to the server's disco#info (raftxmpp.modules.disco answers).
        self.disco_info_nodes: dict[str, IqHandler] = {}
        self.disco_items_nodes: dict[str, IqHandler] = {}
        self.server_info_forms: list[Callable[[], etree._Element | None]] = []
        # Ad-hoc commands (XEP-0050) by node, added through raftxmpp.modules.adhoc.
        self.adhoc_commands: dict[str, Any] = {}
        # Services on their own domains, answered by every node (modules add them), and
        # the items they add to a served host's disco#items.
        self.services: list[tuple[Callable[[str], bool], ServiceHandler]] = []
        self.disco_items: list[Callable[[str], list[str]]] = []
        # IQ results and errors addressed to the server or an account, by IQ id: the
        # answers to IQs a module sent to a client (entity capabilities, XEP-0115).
        self.iq_callbacks: dict[str, Callable[[etree._Element], None]] = {}
        # Called with each presence a client sends, before it is routed (may change it:
        # the avatar hash of XEP-0398 §4); the "client-presence" hook runs after.
        self.presence_filters: list[Callable[[etree._Element, LocalSession], None]] = []
        # Gossip entries by their two-character key prefix, for modules that gossip volatile
        # state of their own (pubsub: "e:" entity capabilities).
        self.gossip_handlers: dict[str, Callable[[str, str, object, object], None]] = {}
        # Gossip messages (one node to another, not entries) by their kind "t", for modules.
        self.gossip_messages: dict[str, Callable[[str, dict], None]] = {}
        # Resumable sessions (XEP-0198); set by raftxmpp.modules.stream_management.
        self.resumption: Any = None
        # Messages in custody sent to other nodes (raftxmpp.modules.stream_management).
        self.custody: Any = None
        self.modules = {name: importlib.import_module(f"raftxmpp.modules.{name}") for name in MODULES}
        for module in self.modules.values():
            module.setup(self)

    @property
    def store(self):
        return self.node.store

    def served_hosts(self) -> set[str]:
        return self.node.served_hosts()

    # -- registration, for modules -------------------------------------------------------------------

    def register_iq(self, scope: str, iq_type: str, namespace: str, handler: IqHandler) -> None:
        self.iq_handlers[(scope, iq_type, namespace)] = handler

    def add_service(self, serves: Callable[[str], bool], handler: ServiceHandler) -> None:
        """Routes stanzas for the domains `serves` accepts to `handler`, on every node."""
        self.services.append((serves, handler))

    def service_for(self, domain: str) -> ServiceHandler | None:
        for serves, handler in self.services:
            if serves(domain):
                return handler
        return None

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Runs a module's background task in the node's nursery; False when the node is
        not running (then the task is not started)."""
        return self.node.start_soon(fn, *args)

    def add_hook(self, name: str, hook: Hook) -> None:
        self.hooks.setdefault(name, []).append(hook)

    async def run_hooks(self, name: str, *args) -> None:
        for hook in self.hooks.get(name, ()):
            await hook(*args)

    # -- routing ---------------------------------------------------------------------------------------

    async def route_from_client(self, stanza: etree._Element, session: LocalSession) -> None:
        """A stanza a bound client sent: stamp its full JID as 'from' (RFC 6120 §8.1.2.1), route."""
        stanza.set("from", session.full_jid)
        presence = stanza.tag == PRESENCE
        request = None
        if stanza.tag == IQ and stanza.get("type") == "set" and stanza.get("id"):
            # A retried IQ (same id, same session) reuses its writes' command ids.
            request = f"{session.full_jid}\0{session.created!r}\0{stanza.get('id')}"
        try:
            if stanza.tag == MESSAGE:
                for pace in self.outbound_pacers:
                    await pace()
            for check in self.outbound_checks:
                check(stanza, session)
            if self.sent_hook is not None and stanza.tag == MESSAGE:
                self.sent_hook(stanza, session)
            if presence:
                for presence_filter in self.presence_filters:
                    presence_filter(stanza, session)
            with client_request(request):
                await self.route(stanza, session)
            if presence and "client-presence" in self.hooks:
                await self.run_hooks("client-presence", stanza, session)
        except StanzaError as exc:
            self.bounce(stanza, exc, session)
        except StoreError as exc:
            self.bounce(stanza, StanzaError(exc.condition, text=exc.text or None), session)
        except RaftUnavailable as exc:
            condition, text = write_failure(exc)
            self.bounce(stanza, StanzaError(condition, type="wait", text=text), session)

    async def route(self, stanza: etree._Element, sender: LocalSession | None) -> None:
        to = stanza.get("to")
        target = None
        if to is not None:
            try:
                target = JID.parse(to)
            except InvalidJID:
                raise StanzaError("jid-malformed") from None
        if target is None or target.domain in self.served_hosts():
            await self.local.route(stanza, target, sender)
        elif (service := self.service_for(target.domain)) is not None:
            await service(stanza, target, sender)
        elif self.components.serves(target.domain):
            await self.components.route(stanza, target, sender)
        elif stanza.tag == PRESENCE and sender is not None and self.local.presence_handler:
            # A client's presence for another server: the presence module keeps the
            # roster's subscription states (RFC 6121 §3.1.2) and hands it to s2s.
            await self.local.presence_handler(stanza, target, sender)
        else:
            await self.s2s.route(stanza, target, sender)

    @staticmethod
    def for_a_session(payload: bytes) -> bool:
        """A link stanza for a client session ("full JID \x01 bind time"), which any node
        can route again; a component instance or a server-to-server stream only its own
        node can serve."""
        target = payload[1:].partition(b"\0")[0].decode(errors="replace")
        return SESSION_SEPARATOR in target and not target.startswith(
            (COMPONENT_LINK_TARGET, S2S_LINK_TARGET))

    async def deliver_from_link(self, payload: bytes, origin: str = "", token: int = 0) -> None:
        """A stanza another node routed to a session (or component instance) it believes
        is ours; with a custody `token`, `origin` waits to hear that it is safe."""
        hops, (target, _, data) = payload[0], payload[1:].partition(b"\0")
        text = target.decode()
        if text.startswith(S2S_LINK_TARGET):  # for this node's stream to another server
            token = link_hops.set(hops + 1)
            try:
                self.s2s.deliver_from_link(text, data)
            finally:
                link_hops.reset(token)
            return
        if text.startswith(COMPONENT_LINK_TARGET):
            if self.components.deliver_from_link(text, data):
                return
        else:
            # "full JID \x01 bind time": the copy is for that session, not for a newer one
            # that took the same full JID (after a restart) and may have had it already.
            full_jid, _, bound = text.partition(SESSION_SEPARATOR)
            text = full_jid
            session = self.sessions.local_session(JID.parse(full_jid))
            if session is not None and (not bound or repr(session.created) == bound):
                if token:
                    self.custody.deliver(session, data, origin, token)
                else:
                    session.send(data)  # serialised by the sending node from a parsed tree
                return
            if token:
                # In custody: routed again as if new, reported settled when it is (a copy
                # to a bare JID may reach another resource twice; none is lost).
                await self.custody.route_again(data, self.custody.proxy(origin, token))
                return
        # The session or instance left before the stanza arrived: route it again from here.
        stanza = _parse_forwarded(data)
        if stanza.get("from") is None:
            # Generated by the other node for that one session (a roster push, RFC 6121
            # §2.1.6): nobody else should get it, and there is no sender to tell.
            return
        if not text.startswith(COMPONENT_LINK_TARGET) and not _addressed_to(stanza, text):
            # One copy of a stanza the other node fanned out to several resources (a
            # message to the bare JID, a presence broadcast): the others got theirs, and
            # routing this copy again would deliver it twice.
            return
        token = link_hops.set(hops + 1)
        try:
            await self.route(stanza, None)
        except (StanzaError, StoreError, RaftUnavailable) as exc:
            error = exc if isinstance(exc, StanzaError) else StanzaError("service-unavailable")
            if can_reply_with_error(stanza):
                with contextlib.suppress(StanzaError, StoreError, RaftUnavailable):
                    await self.route(error_reply(stanza, error), None)
        finally:
            link_hops.reset(token)

    def bounce(self, stanza: etree._Element, error: StanzaError,
               session: LocalSession | None) -> None:
        """Returns an error to the sender of a stanza, unless it was an error itself."""
        metrics.ROUTED_ERROR.inc()
        if session is None or not can_reply_with_error(stanza):
            return
        session.send_stanza(error_reply(stanza, error))


def _addressed_to(stanza: etree._Element, full_jid: str) -> bool:
    try:
        return JID.parse(stanza.get("to") or "") == JID.parse(full_jid)
    except InvalidJID:
        return False


def _parse_forwarded(data: bytes) -> etree._Element:
    """A stanza as `serialize` wrote it for a client stream: it declares no jabber:client
    (the stream header does), so it is parsed inside an element that declares it."""
    wrapper = etree.fromstring(b"<r xmlns='jabber:client'>" + data + b"</r>", _PARSER)
    return wrapper[0].__copy__()  # a copy taken while attached keeps the namespace declared
