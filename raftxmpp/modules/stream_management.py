"""Stream management (XEP-0198): the resumable sessions of this node, and what becomes of
stanzas a client never acknowledged.

The counters live in raftxmpp.c2s.sm and the connection drives them; this module
announces the stream feature, names resumable sessions, finds the session a <resume/>
asks for (here, or on the node the gossiped session table says holds it), remembers
the handled count of ended sessions for <failed h='…'/>, and, when a session ends for
good, hands its unacknowledged stanzas on as §4 of the XEP asks: messages go to
another resource of the account or to offline storage, with a <delay/>; IQ requests
are answered with an error; nothing is silently dropped that a person would miss.

It must never hold a session's stanzas anywhere but in that session (one place, one
owner), so a stanza is either still queued for the client or handed on, never both.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp import metrics
from raftxmpp.c2s import sm
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.local import IQ, MESSAGE
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, can_reply_with_error, error_reply

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession, Session

log = logging.getLogger("raftxmpp.sm")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_CARBON_TAGS = (f"{{{ns.CARBONS}}}sent", f"{{{ns.CARBONS}}}received")
MAX_REMEMBERED = 100_000  # ended sessions' handled counts kept at most (oldest go first)


def setup(router: Router) -> None:
    router.resumption = Resumption(router)
    if router.config.stream_management.enabled:
        router.stream_features.append(sm.feature)


class Resumption:
    """This node's view of resumable sessions, and the end of a session's queue."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.config = router.config.stream_management
        # resumption id → (handled count, when it may be forgotten), for ended sessions.
        self._ended: OrderedDict[str, tuple[int, float]] = OrderedDict()

    # -- ids --------------------------------------------------------------------------------

    @staticmethod
    def new_id(full_jid: str) -> str:
        """An id naming the session's full JID (so any node finds its holder in the
        session table) and a random part (so nobody can guess it)."""
        name = base64.urlsafe_b64encode(full_jid.encode()).decode().rstrip("=")
        return f"{name}.{secrets.token_urlsafe(12)}"

    @staticmethod
    def jid_of(previd: str) -> JID | None:
        name, dot, _ = previd.partition(".")
        if not dot:
            return None
        try:
            return JID.parse(base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode())
        except (binascii.Error, UnicodeDecodeError, InvalidJID, ValueError):
            return None

    # -- finding a session --------------------------------------------------------------------

    def find(self, previd: str, bare_jid: str) -> Session | None:
        """The session `previd` names, if it belongs to `bare_jid` and still exists."""
        jid = self.jid_of(previd)
        if jid is None or str(jid.bare) != bare_jid or jid.resource is None:
            return None
        session = self.router.sessions.session(jid)
        if session is None:
            return None
        if session.is_local:
            ok = session.sm is not None and session.sm.resumable and session.sm.id == previd
        else:
            ok = bool(session.sm_id) and secrets.compare_digest(session.sm_id, previd)
        return session if ok else None

    def remembered_h(self, previd: str) -> int | None:
        """The handled count of a session that ended here, for <failed h='…'/>."""
        self._forget_old()
        entry = self._ended.get(previd)
        return entry[0] if entry is not None else None

    def remember(self, previd: str, handled: int) -> None:
        self._ended[previd] = (handled, time.monotonic() + self.config.remember_ended)
        self._ended.move_to_end(previd)
        while len(self._ended) > MAX_REMEMBERED:
            self._ended.popitem(last=False)

    def _forget_old(self) -> None:
        now = time.monotonic()
        while self._ended:
            previd, (_, until) = next(iter(self._ended.items()))
            if until > now:
                return
            del self._ended[previd]

    # -- the end of a session -------------------------------------------------------------------

    def forget(self, session: LocalSession) -> None:
        """The session was unbound for good: a <resume/> now fails, with its handled count."""
        state = session.sm
        if state is not None and state.resumable:
            self.remember(state.id, state.handled)

    async def session_ended(self, session: LocalSession) -> None:
        """The session is over and unbound: its unacknowledged and unsent stanzas go on."""
        state = session.sm
        if state is None:
            return
        pending = list(state.unacked) + session.outbox
        state.unacked.clear()
        session.outbox = []
        session.outbox_bytes = 0
        since = session.detached_at or time.time()
        for data in pending:
            await self.reroute(session, data, since)

    async def reroute(self, session: LocalSession, data: bytes, since: float) -> None:
        try:
            stanza = _parse(data)
        except etree.XMLSyntaxError:
            log.error("unacked data for %s is not a stanza; dropped", session.full_jid)
            metrics.SM_UNACKED.labels("dropped").inc()
            return
        if stanza.tag == MESSAGE and _worth_rerouting(stanza):
            await self._reroute_message(session, stanza, since)
        elif stanza.tag == IQ and stanza.get("type") in ("get", "set"):
            await self._bounce(stanza, StanzaError("service-unavailable",
                                                   text="the recipient's session ended"))
        else:
            # Presence, IQ answers, headlines, carbons: nobody waits for these.
            metrics.SM_UNACKED.labels("dropped").inc()

    async def _reroute_message(self, session: LocalSession, stanza: etree._Element,
                               since: float) -> None:
        """§4: "as if the recipient had no session": another resource, or offline storage."""
        local = self.router.local
        try:
            from_jid = JID.parse(stanza.get("from") or session.jid.domain)
        except InvalidJID:
            metrics.SM_UNACKED.labels("dropped").inc()
            return
        bare = session.jid.bare
        if self.router.sessions.highest_priority(str(bare)) and stanza.find(_DELAY) is None:
            # Offline storage stamps its own <delay/> when it delivers.
            _add_delay(stanza, session.jid.domain, since)
        try:
            await local.deliver_to_account(stanza, bare, from_jid, stanza.get("type", "normal"))
            metrics.SM_UNACKED.labels("rerouted").inc()
        except (StanzaError, StoreError, RaftUnavailable) as exc:
            log.warning("unacked message for %s could not be rerouted: %s", session.full_jid, exc)
            error = exc if isinstance(exc, StanzaError) else StanzaError(
                "recipient-unavailable", text="the recipient's session ended")
            await self._bounce(stanza, error)

    async def _bounce(self, stanza: etree._Element, error: StanzaError) -> None:
        metrics.SM_UNACKED.labels("bounced").inc()
        if not can_reply_with_error(stanza) or stanza.get("from") is None:
            return
        try:
            await self.router.route(error_reply(stanza, error), None)
        except (StanzaError, StoreError, RaftUnavailable) as exc:
            log.info("error for an unacked stanza not delivered: %s", exc)


_DELAY = f"{{{ns.DELAY}}}delay"


def _worth_rerouting(stanza: etree._Element) -> bool:
    """Messages a person would miss: chat or normal, with a body, not a carbon copy (the
    account's other resources had their own)."""
    if stanza.get("type", "normal") not in ("chat", "normal"):
        return False
    if any(stanza.find(tag) is not None for tag in _CARBON_TAGS):
        return False
    return stanza.find(f"{{{ns.CLIENT}}}body") is not None


def _add_delay(stanza: etree._Element, domain: str, since: float) -> None:
    delay = etree.SubElement(stanza, _DELAY, nsmap={None: ns.DELAY})
    delay.set("from", domain)
    moment = datetime.datetime.fromtimestamp(since, datetime.UTC)
    delay.set("stamp", moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z")
    delay.text = "Resent: the session it was sent to ended"


def _parse(data: bytes) -> etree._Element:
    """A stanza as written to a client stream (jabber:client declared by the header)."""
    wrapper = etree.fromstring(b"<r xmlns='jabber:client'>" + data + b"</r>", _PARSER)
    return wrapper[0].__copy__()
