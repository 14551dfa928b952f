"""Session manager: where the resources of each account are, cluster-wide.

A session is one bound resource (full JID). A LocalSession holds a c2s connection's
outgoing queue on this node; a RemoteSession stands for a session on another node,
learnt by gossip, and sends through the node link. Both answer the same questions
(priority, availability, last presence, roster interest, carbons) and both take
`send()`, so the routing rules of RFC 6121 §8.5 and every module work the same for
a contact on this node or on another.

Each node writes only its own sessions (published with `publish`); two sessions
with one full JID on two nodes (a bind race) are settled the same way everywhere:
the later bind wins, ties by node name, and the loser gets <conflict/>.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from lxml import etree

from raftxmpp import metrics
from raftxmpp.c2s.sm import Held, settle
from raftxmpp.jid import JID
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.stanza import serialize

if TYPE_CHECKING:
    from raftxmpp.c2s.csi import ClientState
    from raftxmpp.c2s.sm import StreamManagement
    from raftxmpp.cluster.gossip import Gossip
    from raftxmpp.cluster.links import Links

log = logging.getLogger("raftxmpp.sessions")

SESSION_KEY = "s:"
# How many node links the stanza being handled has crossed; bounds re-routing loops.
link_hops: contextvars.ContextVar[int] = contextvars.ContextVar("link_hops", default=0)
MAX_HOPS = 2
# The client message being routed in custody (XEP-0198 acks that mean "safe", issue 16):
# (its Custody record, the stanza element, the node's CustodyTable). A session that
# queues exactly that element for a client with stream management holds the record
# until the copy is settled; a remote session sends it with a custody token.
custody: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("custody", default=None)
# Separates a link stanza's target full JID from its session's bind time; PRECIS
# forbids control characters in every JID part, so it cannot occur inside one.
SESSION_SEPARATOR = "\x01"

# Why another node may end a session here, and what the client is told.
KICK_TEXTS = {
    "conflict": "replaced by a newer session on another node",
    "policy-violation": "kicked by an administrator",
    "not-authorized": "account removed",
}

# A client that stops reading may hold at most this much of our memory.
MAX_OUTBOX_BYTES = 1024 * 1024


@dataclass(eq=False)
class LocalSession:
    """One bound resource on this node and its outgoing byte queue."""

    jid: JID
    full_jid: str = ""
    bare_jid: str = ""
    priority: int = 0
    available: bool = False
    presence: bytes | None = None  # last available presence, for probes
    unavailable_status: str = ""  # <status/> of its last unavailable presence (XEP-0012)
    roster_requested: bool = False  # "interested resource" (RFC 6121 §2.1.6)
    blocklist_requested: bool = False  # gets block-list pushes (XEP-0191 §3.3)
    carbons: bool = False
    directed: set[str] = field(default_factory=set)
    outbox: list[bytes] = field(default_factory=list)
    outbox_bytes: int = 0
    closing: StreamError | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    created: float = field(default_factory=time.time)
    # Stream management (XEP-0198): the counters and unacked queue, once enabled; the
    # connection serving the session (None while detached, waiting for a resumption);
    # elements that are not stanzas (<a/>, <r/>, <enabled/>), written before the outbox
    # and never counted; and since when it is detached (its waiter watches `wakeup`).
    sm: StreamManagement | None = None
    owner: object | None = None
    nonzas: list[bytes] = field(default_factory=list)
    detached_at: float | None = None
    parking: trio.Event | None = None  # set when the commits to offline storage under way end
    ended: bool = False  # its queue was handed on (session_ended): nothing more goes in
    csi: ClientState | None = None  # XEP-0352, once the client said <inactive/>
    is_local = True

    def __post_init__(self) -> None:
        self.full_jid = str(self.jid)
        self.bare_jid = str(self.jid.bare)

    def send(self, data: bytes) -> None:
        """Queues bytes for the connection's writer; a client that stops reading is cut off."""
        if self.closing is not None or self.ended:
            if type(data) is Held:
                routing = custody.get()
                if not self.ended:
                    self.outbox.append(data)  # the session's end hands it on with the rest
                elif routing is not None:
                    routing[2].refused(self, data)  # routed again
                else:  # not reached: copies in custody are queued while routing one
                    log.error("a message in custody for ended %s was dropped", self.full_jid)
                    settle(data)  # never pending forever (its sender's acks would stop)
            return
        metrics.ROUTED_LOCAL.inc()
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        if self.outbox_bytes > MAX_OUTBOX_BYTES:
            log.warning("session %s stopped reading; closing it", self.full_jid)
            self.close(StreamError("policy-violation", "outgoing queue full: the client stopped reading"))
        self.wakeup.set()

    def send_stanza(self, stanza: etree._Element) -> None:
        data = serialize(stanza)
        held = custody.get()
        if held is not None and held[1] is stanza and (self.sm is not None or self.detached):
            data = Held(data, held[0])  # settled by the client's ack, a park or a reroute
        self.send(data)

    def send_nonza(self, data: bytes) -> None:
        """Queues a stream-level element (XEP-0198's <a/>, <r/> …): not a stanza, not counted."""
        self.nonzas.append(data)
        self.wakeup.set()

    @property
    def detached(self) -> bool:
        return self.detached_at is not None

    def release_held(self) -> None:
        """Stanzas an inactive client was spared (XEP-0352) go back to the front of the
        queue: the connection is gone, they are handled like the rest of it."""
        if self.csi is not None and self.csi.held:
            held = self.csi.flush()
            self.outbox[:0] = held
            self.outbox_bytes += sum(map(len, held))

    def take_outbox(self) -> bytes:
        data = b"".join(self.outbox)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.wakeup = trio.Event()
        return data

    def take_chunks(self) -> list[bytes]:
        """The queue as sent: one top-level element per chunk (message-framed
        transports, WebSocket and BOSH, need the boundaries)."""
        chunks, self.outbox = self.outbox, []
        self.outbox_bytes = 0
        self.wakeup = trio.Event()
        return chunks

    def close(self, error: StreamError | None) -> None:
        """Asks the connection to end the stream (with the error, if any)."""
        if self.closing is None:
            self.closing = error or StreamError("undefined-condition")
            self.wakeup.set()


@dataclass(eq=False)
class RemoteSession:
    """A session bound on another node, as its gossip entry describes it."""

    jid: JID
    node: str
    links: Links
    gossip: Gossip
    priority: int = 0
    available: bool = False
    presence: bytes | None = None
    roster_requested: bool = False
    blocklist_requested: bool = False
    carbons: bool = False
    created: float = 0.0
    directed: set[str] = field(default_factory=set)
    sm_id: str = ""  # its stream-management resumption id, if resumable
    sm_handled: int | None = None  # its handled count, gossiped while detached
    detached_at: float | None = None
    is_local = False

    def __post_init__(self) -> None:
        self.full_jid = str(self.jid)
        self.bare_jid = str(self.jid.bare)

    def update(self, entry: dict) -> None:
        self.priority = int(entry.get("p", 0))
        self.available = bool(entry.get("a"))
        presence = entry.get("pr")
        self.presence = presence.encode() if presence else None
        self.roster_requested = bool(entry.get("r"))
        self.blocklist_requested = bool(entry.get("b"))
        self.carbons = bool(entry.get("c"))
        self.created = float(entry.get("t", 0.0))
        self.sm_id = str(entry.get("sm") or "")
        handled = entry.get("h")
        self.sm_handled = int(handled) if handled is not None else None
        detached = entry.get("d")
        self.detached_at = float(detached) if detached is not None else None

    @property
    def detached(self) -> bool:
        return self.detached_at is not None

    def send(self, data: bytes) -> None:
        hops = link_hops.get()
        target = f"{self.full_jid}{SESSION_SEPARATOR}{self.created!r}"
        if hops < MAX_HOPS and self.links.send_stanza(self.node, target, data, hops):
            metrics.ROUTED_REMOTE.inc()
            return
        # A loop between session tables that disagree, or a full link (counted there too).
        metrics.ROUTED_DROPPED.inc()
        log.warning("stanza for %s on %s not forwarded (hops %d)", self.full_jid, self.node, hops)

    def send_stanza(self, stanza: etree._Element) -> None:
        held = custody.get()
        if held is not None and held[1] is stanza:
            # The receiving node reports the copy settled, or this node routes it again
            # when gossip declares that node dead.
            target = f"{self.full_jid}{SESSION_SEPARATOR}{self.created!r}"
            held[2].send_remote(self, target, serialize(stanza), held[0], link_hops.get())
            return
        self.send(serialize(stanza))

    def close(self, error: StreamError | None) -> None:
        """Asks the owning node to end the session (used for <conflict/>)."""
        self.gossip.send(self.node, {"t": "kick", "jid": self.full_jid,
                                     "condition": (error or StreamError("conflict")).condition})


Session = LocalSession | RemoteSession


def _entry(session: LocalSession) -> dict[str, Any]:
    entry = {"p": session.priority, "a": session.available,
             "pr": session.presence.decode() if session.presence else None,
             "r": session.roster_requested, "b": session.blocklist_requested,
             "c": session.carbons, "t": session.created}
    sm = session.sm
    if sm is not None and sm.resumable:
        # Any node finds a resumable session by its full JID (in the id) and checks the
        # id here; "d" marks it detached (raftxmpp user sessions shows it).
        entry["sm"] = sm.id
        entry["d"] = session.detached_at
        if session.detached_at is not None:
            # Final while detached: a resumption elsewhere that finds this node dead
            # still tells the client which of its stanzas arrived (<failed h='…'/>).
            entry["h"] = sm.settled_h()
    return entry


def _wins(a: Session, b: Session) -> bool:
    """The later bind wins (RFC 6120 §7.7.2.2); node names break ties, the same everywhere."""
    node_a = "" if a.is_local else a.node
    node_b = "" if b.is_local else b.node
    return (a.created, node_a) > (b.created, node_b)


class SessionManager:
    def __init__(self, node_name: str = "") -> None:
        self.node_name = node_name
        self._by_bare: dict[str, dict[str, Session]] = {}
        self.gossip: Gossip | None = None
        self.links: Links | None = None
        # Called with (remote session, was available) when a remote session appears,
        # changes or goes: the presence module fans it out to this node's clients.
        self.on_remote_change: list[Callable[[RemoteSession, bool], None]] = []

    def attach(self, gossip: Gossip, links: Links) -> None:
        self.gossip, self.links = gossip, links

    # -- the session table ---------------------------------------------------------------------

    def bind(self, session: LocalSession) -> Session | None:
        """Adds a local session; returns the session it replaced (RFC 6120 §7.7.2.2), if any."""
        resources = self._by_bare.setdefault(session.bare_jid, {})
        old = resources.get(session.jid.resource)
        resources[session.jid.resource] = session
        self.publish(session)
        return old

    def unbind(self, session: LocalSession) -> None:
        resources = self._by_bare.get(session.bare_jid)
        if resources is not None and resources.get(session.jid.resource) is session:
            del resources[session.jid.resource]
            if not resources:
                del self._by_bare[session.bare_jid]
        current = self.session(session.jid)
        if self.gossip is not None and (current is None or not current.is_local):
            self.gossip.delete(SESSION_KEY + session.full_jid)

    def hold(self, session: LocalSession) -> Session | None:
        """Puts a session into this node's table without telling the cluster yet: a
        stream-management resumption moving a session here (raftxmpp.modules.
        stream_management) queues what arrives meanwhile. Returns the entry it displaced."""
        resources = self._by_bare.setdefault(session.bare_jid, {})
        previous = resources.get(session.jid.resource)
        resources[session.jid.resource] = session
        return previous

    def release(self, session: LocalSession, previous: Session | None) -> None:
        """Undoes `hold` (the move failed): the displaced entry comes back."""
        resources = self._by_bare.get(session.bare_jid, {})
        if resources.get(session.jid.resource) is not session:
            return
        if previous is not None:
            resources[session.jid.resource] = previous
        else:
            del resources[session.jid.resource]
            if not resources:
                del self._by_bare[session.bare_jid]

    def moved(self, session: LocalSession, remote: RemoteSession) -> None:
        """Our session now lives on another node: stanzas that still reach us for it go
        there, and our gossip entry goes (the new holder publishes its own)."""
        resources = self._by_bare.get(session.bare_jid, {})
        if resources.get(session.jid.resource) is session:
            resources[session.jid.resource] = remote
        if self.gossip is not None:
            self.gossip.delete(SESSION_KEY + session.full_jid)

    def publish(self, session: LocalSession) -> None:
        """Tells the cluster about a change of one of our sessions."""
        if self.gossip is not None:
            self.gossip.set(SESSION_KEY + session.full_jid, _entry(session))

    def session(self, full_jid: JID) -> Session | None:
        return self._by_bare.get(str(full_jid.bare), {}).get(full_jid.resource)

    def local_session(self, full_jid: JID) -> LocalSession | None:
        session = self.session(full_jid)
        return session if session is not None and session.is_local else None

    def resources(self, bare_jid: str) -> list[Session]:
        return list(self._by_bare.get(bare_jid, {}).values())

    def available(self, bare_jid: str) -> list[Session]:
        return [s for s in self._by_bare.get(bare_jid, {}).values() if s.available]

    def available_local(self, bare_jid: str) -> list[LocalSession]:
        return [s for s in self._by_bare.get(bare_jid, {}).values() if s.available and s.is_local]

    def accounts_among(self, accounts: Collection[str]) -> list[str]:
        """Those of `accounts` (bare JIDs) with a session anywhere in the cluster, in
        O(min(len(accounts), accounts with sessions)): a fan-out to a large roster costs
        what its online part costs."""
        if len(accounts) <= len(self._by_bare):
            return [a for a in accounts if a in self._by_bare]
        return [a for a in self._by_bare if a in accounts]

    def resource_count(self, bare_jid: str) -> int:
        return len(self._by_bare.get(bare_jid, ()))

    def local_count(self) -> int:
        return sum(1 for r in self._by_bare.values() for s in r.values() if s.is_local)

    def everywhere(self) -> list[Session]:
        """Every session in the cluster, as this node knows them."""
        return [s for r in self._by_bare.values() for s in r.values()]

    def all_local(self) -> list[LocalSession]:
        return [s for r in self._by_bare.values() for s in r.values() if s.is_local]

    def count_by_node(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for resources in self._by_bare.values():
            for s in resources.values():
                node = self.node_name if s.is_local else s.node
                counts[node] = counts.get(node, 0) + 1
        return counts

    # -- gossip from other nodes -------------------------------------------------------------------

    def on_gossip_change(self, node: str, key: str, old: Any, new: Any) -> None:
        if not key.startswith(SESSION_KEY):
            return
        try:
            jid = JID.parse(key[len(SESSION_KEY):])
        except ValueError:
            return
        if jid.local is None or jid.resource is None:
            return
        resources = self._by_bare.setdefault(str(jid.bare), {})
        current = resources.get(jid.resource)
        if new is None:
            if current is not None and not current.is_local and current.node == node:
                del resources[jid.resource]
                self._notify(current, current.available, gone=True)
            if not resources:
                del self._by_bare[str(jid.bare)]
            return
        if current is not None and not current.is_local and current.node == node:
            was_available = current.available
            current.update(new)
            self._notify(current, was_available)
            return
        remote = RemoteSession(jid, node, self.links, self.gossip)
        remote.update(new)
        if current is not None and _wins(current, remote):
            return  # ours (or another node's) is newer; the other node closes its own
        if current is not None and current.is_local:
            current.close(StreamError("conflict", "replaced by a newer session on another node"))
        resources[jid.resource] = remote
        self._notify(remote, False)

    def _notify(self, session: RemoteSession, was_available: bool, gone: bool = False) -> None:
        if gone:
            session.available = False
        for callback in self.on_remote_change:
            callback(session, was_available)

    def kick(self, full_jid: str, condition: str) -> None:
        """Another node ends one of our sessions: a later bind of the same full JID there
        (<conflict/>), an administrator's kick, or the account's removal."""
        try:
            session = self.local_session(JID.parse(full_jid))
        except ValueError:
            return
        if session is not None:
            condition = condition if condition in KICK_TEXTS else "conflict"
            session.close(StreamError(condition, KICK_TEXTS[condition]))

    # -- delivery --------------------------------------------------------------------------------

    def highest_priority(self, bare_jid: str) -> list[Session]:
        """The available resources with the highest non-negative priority (RFC 6121 §8.5.2.1.1)."""
        candidates = [s for s in self.available(bare_jid) if s.priority >= 0]
        if not candidates:
            return []
        top = max(s.priority for s in candidates)
        return [s for s in candidates if s.priority == top]

    def interested(self, bare_jid: str) -> list[Session]:
        return [s for s in self.resources(bare_jid) if s.roster_requested]

    async def shutdown(self) -> None:
        """Ends every client stream with <system-shutdown/> and gives writers a moment to flush."""
        sessions = self.all_local()
        for session in sessions:
            session.close(StreamError("system-shutdown"))
        with trio.move_on_after(2):
            # Until each connection has written its error and ended (an empty outbox is
            # not enough: the writer may not have run yet, and cancelling it then would
            # lose the <system-shutdown/> and, over WebSocket, the see-other-uri).
            while any(s.outbox or self.local_session(s.jid) is s for s in sessions):
                await trio.sleep(0.02)


def is_stanza(element: etree._Element, name: str) -> bool:
    return element.tag == f"{{{ns.CLIENT}}}{name}"
