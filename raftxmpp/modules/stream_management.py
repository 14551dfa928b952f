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
import contextlib
import datetime
import logging
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio
from lxml import etree

from raftxmpp import metrics
from raftxmpp.c2s import sm
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.rpc import RpcError
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.local import IQ, MESSAGE
from raftxmpp.routing.sessions import LocalSession, RemoteSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, can_reply_with_error, error_reply

if TYPE_CHECKING:
    from raftxmpp.cluster.rpc import Rpc
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import Session

log = logging.getLogger("raftxmpp.sm")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_CARBON_TAGS = (f"{{{ns.CARBONS}}}sent", f"{{{ns.CARBONS}}}received")
MAX_REMEMBERED = 100_000  # ended sessions' handled counts kept at most (oldest go first)
HANDOVER = "sm.handover"  # the node-link call that moves a session to the resuming node
HANDOVER_TIMEOUT = 10.0
HANDED_OVER = sm.HANDED_OVER


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
        self._rpc: Rpc | None = None

    def serve(self, rpc: Rpc | None) -> None:
        """Answers other nodes' handover calls (from the first resumable session on)."""
        if rpc is not None and self._rpc is None:
            self._rpc = rpc
            rpc.register(HANDOVER, self._hand_over)

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

    # -- while detached: what a dead holder must not lose ---------------------------------------------

    async def hold_detached(self, session: LocalSession) -> None:
        """Runs while the session waits for its client (the caller bounds the wait):
        messages a person would miss, unacked or arriving, are committed to offline
        storage, so the holder's death loses none of them; a resumption gets them from
        there, exactly once (claim, deliver, remove by id). Other stanzas wait here."""
        async with self._parking(session):
            await self._park_unacked(session)
        examined = 0  # the outbox's first chunks were looked at already and stay
        while session.owner is None and session.closing is None:
            fresh = session.outbox[examined:]
            if not fresh:
                session.wakeup = trio.Event()
                await session.wakeup.wait()
                continue
            del session.outbox[examined:]
            session.outbox_bytes -= sum(map(len, fresh))
            async with self._parking(session):
                kept = await self._park(session, fresh)
                session.outbox[examined:examined] = kept
                session.outbox_bytes += sum(map(len, kept))
            examined += len(kept)

    @contextlib.asynccontextmanager
    async def _parking(self, session: LocalSession):
        """Marks commits under way; a resumption or handover waits for them (`settle`),
        so a parked stanza is never also sent again from memory."""
        session.parking = trio.Event()
        try:
            yield
        finally:
            session.parking.set()
            session.parking = None

    async def settle(self, session: LocalSession) -> None:
        """Waits (bounded) until no commit to offline storage is under way for the
        session; the caller takes it over without another checkpoint in between."""
        with trio.move_on_after(HANDOVER_TIMEOUT):
            while session.parking is not None:
                await session.parking.wait()

    async def _park_unacked(self, session: LocalSession) -> None:
        state = session.sm
        pairs = list(zip(state.seq_of_unacked(), list(state.unacked), strict=True))
        for seq, data in pairs:
            message_id = f"sm-{state.id[-16:]}-{seq}"
            if await self._park_one(session, data, message_id):
                state.parked[seq] = message_id

    async def _park(self, session: LocalSession, chunks: list[bytes]) -> list[bytes]:
        """Commits the messages among `chunks`; returns the rest, in order."""
        return [data for data in chunks if not await self._park_one(session, data)]

    async def _park_one(self, session: LocalSession, data: bytes,
                        message_id: str | None = None) -> bool:
        try:
            stanza = _parse(data)
        except etree.XMLSyntaxError:
            return False
        if stanza.tag != MESSAGE or not _worth_rerouting(stanza):
            return False
        try:
            await self.router.store.offline_store(
                session.bare_jid, etree.tostring(stanza),
                self.router.config.limits.offline_queue, message_id=message_id)
        except (StoreError, RaftUnavailable) as exc:
            log.info("stanza for detached %s stays in memory: %s", session.full_jid, exc)
            return False
        metrics.SM_UNACKED.labels("parked").inc()
        return True

    async def after_resumption(self, session: LocalSession, delivered_ids: list[str]) -> None:
        """Parked stanzas the client had got go from offline storage; the rest, and
        whatever was parked since, come to it from there (exactly once)."""
        store = self.router.store
        if delivered_ids:
            try:
                await store.offline_remove(session.bare_jid, delivered_ids)
            except (StoreError, RaftUnavailable) as exc:
                # Not removed: the client gets them again (a counted duplicate, never a loss).
                log.warning("parked stanzas of %s not removed: %s", session.full_jid, exc)
                metrics.SM_UNACKED.labels("duplicated").inc(len(delivered_ids))
        if session.available and store.offline_count(session.bare_jid):
            offline = self.router.modules["offline"]
            try:
                await offline.deliver_queue(self.router, session)
            except (StoreError, RaftUnavailable) as exc:
                log.warning("offline queue of resumed %s not delivered: %s", session.full_jid, exc)

    # -- moving a session between nodes (§5 on any node) --------------------------------------------

    async def take_from(self, remote: RemoteSession, previd: str, bare_jid: str,
                        rpc: Rpc | None) -> LocalSession | int | None:
        """Asks the holder to hand the session over; returns it, held in this node's table
        (unpublished) for the connection to adopt; else the session's handled count if
        known (the holder remembers the ended session, or gossiped it when the session
        detached and is now dead or unreachable), else None."""
        if rpc is None:
            return None
        arrival = LocalSession(remote.jid, created=time.time())
        arrival.detached_at = time.time()  # no connection yet: stanzas queue meanwhile
        displaced = self.router.sessions.hold(arrival)
        args = {"previd": previd, "bare": bare_jid, "created": arrival.created}
        try:
            result, body = await rpc.call(remote.node, HANDOVER, args, timeout=HANDOVER_TIMEOUT)
        except RpcError as exc:
            log.info("resumption of %s from %s failed: %s", remote.full_jid, remote.node, exc)
            self.router.sessions.release(arrival, displaced)
            for data in arrival.outbox:  # arrived for a session that is not coming
                await self.reroute(arrival, data, arrival.detached_at)
            return remote.sm_handled
        if not result.get("found"):
            self.router.sessions.release(arrival, displaced)
            for data in arrival.outbox:
                await self.reroute(arrival, data, arrival.detached_at)
            return result.get("h")
        _restore(arrival, result, body)
        arrival.sm.id = previd
        metrics.SM_SESSIONS.labels("resumed_remote").inc()
        log.info("session %s moved here from %s", arrival.full_jid, remote.node)
        return arrival

    async def _hand_over(self, peer: str, args: dict, body: bytes) -> tuple[dict, bytes]:
        """The holder's side: the session leaves this node in one step (no await), so a
        stanza is either in what we send or arrives after, and is forwarded to `peer`."""
        previd, bare = str(args.get("previd", "")), str(args.get("bare", ""))
        session = self.find(previd, bare)
        if session is not None and session.is_local:
            await self.settle(session)
            session = self.find(previd, bare)  # still ours after the wait?
        if session is None or not session.is_local or session.closing is not None \
                or session.owner == HANDED_OVER:
            return {"found": False, "h": self.remembered_h(previd)}, b""
        old, session.owner = session.owner, HANDED_OVER
        session.wakeup.set()  # a detached session's waiter lets go
        if old is not None:
            old.taken_over()  # a half-open connection here: the client went elsewhere
        result, out = _export(session)
        sessions = self.router.sessions
        remote = RemoteSession(session.jid, peer, sessions.links, sessions.gossip)
        remote.update({"p": session.priority, "a": session.available,
                       "pr": session.presence.decode() if session.presence else None,
                       "r": session.roster_requested, "b": session.blocklist_requested,
                       "c": session.carbons, "t": float(args.get("created", time.time()))})
        sessions.moved(session, remote)
        session.sm.unacked.clear()
        session.outbox = []
        metrics.SM_SESSIONS.labels("handed_over").inc()
        log.info("session %s handed over to %s", session.full_jid, peer)
        return result, out

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


def _export(session: LocalSession) -> tuple[dict, bytes]:
    """A session's state for the node it moves to; stanzas as lengths + bytes."""
    state = session.sm
    session.release_held()
    unacked, queued = list(state.unacked), list(session.outbox)
    result = {
        "found": True, "priority": session.priority, "available": session.available,
        "presence": session.presence.decode() if session.presence else None,
        "unavailable_status": session.unavailable_status,
        "roster": session.roster_requested, "blocklist": session.blocklist_requested,
        "carbons": session.carbons, "directed": sorted(session.directed),
        "handled": state.handled, "sent": state.sent, "timeout": state.timeout,
        "parked": {str(seq): message_id for seq, message_id in state.parked.items()},
        "unacked": [len(c) for c in unacked], "queued": [len(c) for c in queued],
    }
    return result, b"".join(unacked + queued)


def _restore(session: LocalSession, result: dict, body: bytes) -> None:
    session.priority = int(result["priority"])
    session.available = bool(result["available"])
    presence = result.get("presence")
    session.presence = presence.encode() if presence else None
    session.unavailable_status = str(result.get("unavailable_status") or "")
    session.roster_requested = bool(result["roster"])
    session.blocklist_requested = bool(result["blocklist"])
    session.carbons = bool(result["carbons"])
    session.directed = set(result["directed"])
    chunks, offset = [], 0
    for length in [*result["unacked"], *result["queued"]]:
        chunks.append(body[offset:offset + length])
        offset += length
    unacked_count = len(result["unacked"])
    state = sm.StreamManagement(resumable=True, handled=int(result["handled"]),
                                sent=int(result["sent"]), timeout=float(result["timeout"]))
    state.unacked.extend(chunks[:unacked_count])
    state.parked = {int(seq): str(message_id) for seq, message_id in result["parked"].items()}
    session.sm = state
    # What arrived here while the call was out comes after what the holder had queued.
    session.outbox[:0] = chunks[unacked_count:]
    session.outbox_bytes = sum(map(len, session.outbox))


def _parse(data: bytes) -> etree._Element:
    """A stanza as written to a client stream (jabber:client declared by the header)."""
    wrapper = etree.fromstring(b"<r xmlns='jabber:client'>" + data + b"</r>", _PARSER)
    return wrapper[0].__copy__()
