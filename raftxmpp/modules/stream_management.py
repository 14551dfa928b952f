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
The one exception is custody (CustodyTable): the sending node keeps the bytes of a
message it sent to a session on another node until that node reports it safe, so
that it can route it again if that node dies; a duplicate is then possible, a loss not.
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
from dataclasses import dataclass
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
from raftxmpp.routing.sessions import MAX_HOPS, LocalSession, RemoteSession, custody, link_hops
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


# Copies of messages in custody sent to other nodes, at most (count, bytes): past that a
# message is acknowledged when handed to the link, as before custody (counted: overflow).
CUSTODY_MAX_COUNT = 100_000
CUSTODY_MAX_BYTES = 64 * 1024 * 1024
SETTLED = "sm-settled"  # gossip message: {"t": SETTLED, "ids": [token, …]}
SWEEP_INTERVAL = 10.0
SETTLE_BATCH_DELAY = 0.005  # settled tokens for one node go in one message


def setup(router: Router) -> None:
    router.resumption = Resumption(router)
    router.custody = CustodyTable(router)
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
            # Unique per park: after a resumption the sequence numbers start again from
            # the client's h, and a parked copy still stored under the same id would make
            # offline_store skip this one as a duplicate (it is not one).
            message_id = f"sm-{state.id[-16:]}-{seq}-{secrets.token_hex(4)}"
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
        sm.settle(data)  # committed: the sender's ack may cover it
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
        _restore(arrival, result, body, remote.node, self.router.custody)
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
        result, out = _export(session, peer, self.router.custody)
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
            self.remember(state.id, state.settled_h())

    async def session_ended(self, session: LocalSession) -> None:
        """The session is over and unbound: its unacknowledged and unsent stanzas go on."""
        state = session.sm
        if state is None:
            return
        pending = list(state.unacked) + session.outbox
        state.unacked.clear()
        session.outbox = []
        session.outbox_bytes = 0
        session.ended = True  # a copy in custody arriving now is routed again at once
        since = session.detached_at or time.time()
        for data in pending:
            await self.reroute(session, data, since)

    async def reroute(self, session: LocalSession, data: bytes, since: float) -> None:
        record = sm.in_custody(data)
        if record is None:
            await self._reroute(session, data, since)
            return
        # In custody: the new copies (another resource, offline storage) take it over,
        # then this one lets go.
        record.hold()
        sm.settle(data)
        try:
            stanza = _parse(data)
        except etree.XMLSyntaxError:
            record.release()
            await self._reroute(session, data, since)  # logged and counted there
            return
        token = custody.set((record, stanza, self.router.custody))
        try:
            await self._reroute(session, data, since, stanza)
        finally:
            custody.reset(token)
            record.release()

    async def _reroute(self, session: LocalSession, data: bytes, since: float,
                       stanza: etree._Element | None = None) -> None:
        try:
            stanza = _parse(data) if stanza is None else stanza
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


@dataclass(eq=False)
class _Pending:
    custody: sm.Custody
    bare_jid: str
    data: bytes
    since: float


class CustodyTable:
    """Custody of client messages across nodes (issue 16): the sender's ack waits until
    each copy is settled, wherever it went.

    Origin side: a copy sent to a session on another node gets a token; its bytes stay
    here until that node says "settled" (a batched gossip message). When gossip declares
    the node dead (or restarted), or a token waits longer than a recipient can stay
    silent before its ping timeout detaches it, the copy is routed again from here
    (another resource or offline storage): a duplicate is possible, a loss is not.
    Receiving side: a copy that arrives with a token is queued with a `Custody` proxy
    whose settlement sends the token back."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._next = 0
        self.pending: dict[str, dict[int, _Pending]] = {}  # node → token → copy
        self.count = 0
        self.bytes = 0
        self._settled_out: dict[str, list[int]] = {}  # origin node → tokens settled here
        self._wakeup = trio.Event()
        c2s = router.config.c2s
        # A recipient that never acks is detached by its ping timeout and then parked;
        # a token older than that lost its "settled" message (a link broke): route again.
        self.max_age = (c2s.ping_interval + c2s.ping_timeout if c2s.ping_interval > 0
                        else router.config.stream_management.resume_timeout) + 60.0
        router.gossip_messages[SETTLED] = self._on_settled
        router.background.append(self.run)

    def start(self, stanza: etree._Element) -> sm.Custody | None:
        """A record for a client's message worth keeping, else None (settles when handled)."""
        if stanza.tag != MESSAGE or not _worth_rerouting(stanza):
            return None
        return sm.Custody()

    # -- origin side ----------------------------------------------------------------------------

    def send_remote(self, remote: RemoteSession, target: str, data: bytes,
                    record: sm.Custody, hops: int) -> None:
        links = remote.links
        if hops >= MAX_HOPS or links is None:
            self._store_offline(record, remote.bare_jid, data)
            return
        if self.count >= CUSTODY_MAX_COUNT or self.bytes + len(data) > CUSTODY_MAX_BYTES:
            metrics.SM_CUSTODY.labels("overflow").inc()
            if links.send_stanza(remote.node, target, data, hops):
                metrics.ROUTED_REMOTE.inc()
            else:
                self._store_offline(record, remote.bare_jid, data)
            return
        self._next += 1
        token = self._next
        if not links.send_custody(remote.node, token, target, data, hops):
            self._store_offline(record, remote.bare_jid, data)
            return
        metrics.ROUTED_REMOTE.inc()
        record.hold()
        self._add(remote.node, token, _Pending(record, remote.bare_jid, data, time.monotonic()))
        metrics.SM_CUSTODY.labels("sent").inc()

    def hand_to(self, node: str, bare_jid: str, chunk: bytes) -> int:
        """A queued copy moves to `node` with its session (a handover): its count goes
        with it, under a token that node reports settled. 0: the chunk holds nothing."""
        record = sm.in_custody(chunk)
        if record is None:
            return 0
        chunk.custody = None
        self._next += 1
        self._add(node, self._next, _Pending(record, bare_jid, bytes(chunk), time.monotonic()))
        metrics.SM_CUSTODY.labels("sent").inc()
        return self._next

    def _add(self, node: str, token: int, entry: _Pending) -> None:
        self.pending.setdefault(node, {})[token] = entry
        self.count += 1
        self.bytes += len(entry.data)
        metrics.SM_CUSTODY_PENDING.labels("copies").set(self.count)
        metrics.SM_CUSTODY_PENDING.labels("bytes").set(self.bytes)

    def _remove(self, entry: _Pending) -> None:
        self.count -= 1
        self.bytes -= len(entry.data)
        metrics.SM_CUSTODY_PENDING.labels("copies").set(self.count)
        metrics.SM_CUSTODY_PENDING.labels("bytes").set(self.bytes)

    def _on_settled(self, peer: str, message: dict) -> None:
        tokens = self.pending.get(peer)
        if not tokens:
            return
        for token in message.get("ids", ()):
            entry = tokens.pop(int(token), None)
            if entry is not None:
                self._remove(entry)
                metrics.SM_CUSTODY.labels("settled").inc()
                entry.custody.release()

    def peer_gone(self, node: str) -> None:
        """`node` died (or restarted): every copy it had not settled is routed again here,
        where the session table no longer lists its sessions."""
        entries = list(self.pending.pop(node, {}).values())
        if not entries:
            return
        for entry in entries:
            self._remove(entry)
        log.info("%d messages in custody of %s (gone) routed again here", len(entries), node)
        if not self.router.spawn(self._route_entries, entries):
            for entry in entries:
                entry.custody.release()

    async def _route_entries(self, entries: list[_Pending]) -> None:
        for entry in entries:
            metrics.SM_CUSTODY.labels("rerouted").inc()
            await self.route_again(entry.data, entry.custody)

    async def route_again(self, data: bytes, record: sm.Custody) -> None:
        """Routes a copy again as if new (its 'to': that resource if it is still bound,
        else the account's best resources or offline storage), still in custody; then
        lets go of the count the caller handed over."""
        try:
            stanza = _parse(data)
        except etree.XMLSyntaxError:
            log.error("a message in custody is not a stanza; dropped")
            record.release()
            return
        token = custody.set((record, stanza, self))
        hops = link_hops.set(0)
        try:
            await self.router.route(stanza, None)
        except (StanzaError, StoreError, RaftUnavailable) as exc:
            error = exc if isinstance(exc, StanzaError) else StanzaError(
                "recipient-unavailable", text="the message could not be delivered")
            await self.router.resumption._bounce(stanza, error)
        finally:
            link_hops.reset(hops)
            custody.reset(token)
            record.release()

    def _store_offline(self, record: sm.Custody, bare_jid: str, data: bytes) -> None:
        """No link will take the copy (a loop between session tables that disagree, a
        full link): it goes to the account's offline storage instead of being dropped."""
        log.warning("message in custody for %s not forwarded: to offline storage", bare_jid)
        record.hold()
        if not self.router.spawn(self._commit_offline, record, bare_jid, data):
            record.release()

    async def _commit_offline(self, record: sm.Custody, bare_jid: str, data: bytes) -> None:
        try:
            await self.router.store.offline_store(
                bare_jid, etree.tostring(_parse(data)), self.router.config.limits.offline_queue)
            metrics.SM_CUSTODY.labels("stored").inc()
        except (StoreError, RaftUnavailable, etree.XMLSyntaxError) as exc:
            log.warning("message in custody for %s not stored: %s", bare_jid, exc)
            with contextlib.suppress(etree.XMLSyntaxError):
                await self.router.resumption._bounce(_parse(data), StanzaError(
                    "recipient-unavailable", type="wait", text="not delivered; send it again"))
        finally:
            record.release()

    def refused(self, session: LocalSession, chunk: bytes) -> None:
        """A copy reached a session whose queue was already handed on: routed again."""
        record = sm.in_custody(chunk)
        if record is None:
            return
        record.hold()
        sm.settle(chunk)
        if not self.router.spawn(self.route_again, bytes(chunk), record):
            record.release()

    # -- receiving side -------------------------------------------------------------------------

    def proxy(self, origin: str, token: int) -> sm.Custody:
        """A record standing for `origin`'s token: settled here, reported there."""
        return sm.Custody(on_settled=lambda: self._settled_here(origin, token))

    def _settled_here(self, origin: str, token: int) -> None:
        self._settled_out.setdefault(origin, []).append(token)
        self._wakeup.set()

    def deliver(self, session: LocalSession, data: bytes, origin: str, token: int) -> None:
        """A copy with a token for one of our sessions: queued in custody if its client
        acks (or it waits detached), else settled now (nothing more is possible)."""
        if session.sm is None and not session.detached:
            session.send(data)
            self._settled_here(origin, token)
            return
        record = self.proxy(origin, token)
        held = custody.set((record, None, self))
        try:
            session.send(sm.Held(data, record))
        finally:
            custody.reset(held)
        record.release()

    # -- the background task: batched "settled" messages and the sweep ---------------------------

    async def run(self) -> None:
        next_sweep = trio.current_time() + SWEEP_INTERVAL
        while True:
            with trio.move_on_at(next_sweep):
                await self._wakeup.wait()
                await trio.sleep(SETTLE_BATCH_DELAY)
            self._wakeup = trio.Event()
            self._flush()
            if trio.current_time() >= next_sweep:
                next_sweep = trio.current_time() + SWEEP_INTERVAL
                self._sweep()

    def _flush(self) -> None:
        gossip = self.router.sessions.gossip
        out, self._settled_out = self._settled_out, {}
        if gossip is None:
            return
        for origin, tokens in out.items():
            gossip.send(origin, {"t": SETTLED, "ids": tokens})

    def _sweep(self) -> None:
        oldest = time.monotonic() - self.max_age
        stale = []
        for tokens in self.pending.values():
            for token, entry in list(tokens.items()):
                if entry.since < oldest:
                    del tokens[token]
                    self._remove(entry)
                    stale.append(entry)
        if stale:
            log.warning("%d messages in custody unsettled for %.0fs routed again", len(stale),
                        self.max_age)
            metrics.SM_CUSTODY.labels("expired").inc(len(stale))
            if not self.router.spawn(self._route_entries, stale):
                for entry in stale:
                    entry.custody.release()


_DELAY = f"{{{ns.DELAY}}}delay"
_BODY = f"{{{ns.CLIENT}}}body"


def _worth_rerouting(stanza: etree._Element) -> bool:
    """Messages a person would miss: chat or normal, with a body, not a carbon copy (the
    account's other resources had their own)."""
    if stanza.get("type", "normal") not in ("chat", "normal"):
        return False
    # One pass over the children, not find() per tag: this runs for every message a
    # client with stream management sends (custody), and find() costs ~10 µs a call.
    body = False
    for child in stanza:
        tag = child.tag
        if tag == _BODY:
            body = True
        elif tag in _CARBON_TAGS:
            return False
    return body


def _add_delay(stanza: etree._Element, domain: str, since: float) -> None:
    delay = etree.SubElement(stanza, _DELAY, nsmap={None: ns.DELAY})
    delay.set("from", domain)
    moment = datetime.datetime.fromtimestamp(since, datetime.UTC)
    delay.set("stamp", moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z")
    delay.text = "Resent: the session it was sent to ended"


def _export(session: LocalSession, peer: str, table: CustodyTable) -> tuple[dict, bytes]:
    """A session's state for the node it moves to; stanzas as lengths + bytes, and the
    custody token of each (0: none) under which that node reports it settled."""
    state = session.sm
    session.release_held()
    unacked, queued = list(state.unacked), list(session.outbox)
    tokens = [table.hand_to(peer, session.bare_jid, chunk) for chunk in unacked + queued]
    result = {
        "found": True, "priority": session.priority, "available": session.available,
        "presence": session.presence.decode() if session.presence else None,
        "unavailable_status": session.unavailable_status,
        "roster": session.roster_requested, "blocklist": session.blocklist_requested,
        "carbons": session.carbons, "directed": sorted(session.directed),
        "handled": state.restart_inbound(), "sent": state.sent, "timeout": state.timeout,
        "custody": tokens,
        "parked": {str(seq): message_id for seq, message_id in state.parked.items()},
        "unacked": [len(c) for c in unacked], "queued": [len(c) for c in queued],
    }
    return result, b"".join(unacked + queued)


def _restore(session: LocalSession, result: dict, body: bytes, holder: str,
             table: CustodyTable) -> None:
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
    tokens = result.get("custody") or []
    for i, length in enumerate([*result["unacked"], *result["queued"]]):
        chunk = body[offset:offset + length]
        if i < len(tokens) and tokens[i]:
            record = table.proxy(holder, int(tokens[i]))  # the holder routes it again if we die
            chunk = sm.Held(chunk, record)
            record.release()
        chunks.append(chunk)
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
