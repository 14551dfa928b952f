"""s2s manager: stanzas for domains this cluster neither serves nor hosts a component for.

One outgoing stream per (local domain, remote domain) pair serves the whole cluster
(jabberd2's clustering wish, ejabberd's s2s table). The node that holds it publishes an
owner-written gossip entry "o:<local>|<remote>" → {"state": connecting | up | failed, …},
as component instances and sessions are published. For a stanza to a remote domain a
node then:
- holds the pair's stream itself: the stanza joins that stream's queue;
- sees another node's stream *up* and its node link connected: hands the stanza over
  the link (one extra hop, measured in bench/s2s.py);
- sees a stream being set up elsewhere, or its node link down: holds the stanza here,
  in order and bounded, until the stream is up (then forwards them), failed (then
  bounces them) or gone (then opens its own stream with them);
- sees none: opens the stream itself.

Two nodes may open the same pair at once (neither had seen the other's entry). Every
node settles it the same way from the same two entries: the claim with the earlier
(since, node name) wins; the loser moves the stanzas it has not written yet to the
winner, in order, and closes its stream. When the holder dies, its link drops at once
(new stanzas are held, not sent into a dead link), the gossip failure detector purges
its entry within DEAD_AFTER, and a node holding stanzas opens a new stream with them:
stanzas queued meanwhile are neither lost nor sent twice. A holder acknowledges what it
is handed on receipt (batched, every CHECK_INTERVAL); what a dead holder never
acknowledged (forwarded in the moment before its link was seen down) goes out again,
first. Stanzas the dead node had acknowledged but not yet written die with it, as in any
single server that crashes.

Incoming streams may land on any node; their stanzas are routed like local traffic.
Each node publishes its incoming streams as "i:<stream id>" for `raftxmpp s2s list`.

This module never does socket I/O: connections (raftxmpp.s2s.connection) drain the
queues kept here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from lxml import etree

from raftxmpp import metrics
from raftxmpp.cluster.raft import RaftUnavailable, write_failure
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID
from raftxmpp.routing.sessions import MAX_HOPS, link_hops
from raftxmpp.s2s.stream import domain_of
from raftxmpp.xml.errors import StanzaError, StreamError, can_reply_with_error, error_reply
from raftxmpp.xml.stanza import serialize

if TYPE_CHECKING:
    from raftxmpp.cluster.gossip import Gossip
    from raftxmpp.cluster.links import Links
    from raftxmpp.config import S2SSection
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession

log = logging.getLogger("raftxmpp.s2s")

OUTGOING_KEY = "o:"
INCOMING_KEY = "i:"
# Node-link target of a stanza for a pair's stream, "s2s:<local>|<remote>"; a full JID
# never starts so (':' is allowed in neither a localpart nor a domain name).
LINK_TARGET = "s2s:"
PAIR_SEPARATOR = "|"
# A peer that stops reading may hold at most this much of our memory per stream.
MAX_OUTBOX_BYTES = 16 * 1024 * 1024
CHECK_INTERVAL = 0.1
MAX_UNACKED = 10_000  # per holder and pair
_IQ = "{jabber:client}iq"

Pair = tuple[str, str]  # (local domain, remote domain)


def pair_key(pair: Pair) -> str:
    return f"{pair[0]}{PAIR_SEPARATOR}{pair[1]}"


def parse_pair(text: str) -> Pair | None:
    local, sep, remote = text.partition(PAIR_SEPARATOR)
    return (local, remote) if sep and local and remote else None


@dataclass(eq=False)
class OutgoingRoute:
    """This node's outgoing stream for one pair: its queue, state and counters."""

    local: str
    remote: str
    state: str = "connecting"  # connecting, up
    since: float = field(default_factory=time.time)
    queue: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)
    closing: StreamError | None = None
    method: str = ""
    peer: str = ""
    last_used: float = field(default_factory=time.monotonic)
    sent: int = 0
    cancel: trio.CancelScope | None = None

    @property
    def pair(self) -> Pair:
        return (self.local, self.remote)

    def put(self, data: bytes) -> None:
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.last_used = time.monotonic()
        self.wakeup.set()

    def take(self) -> list[bytes]:
        chunks, self.queue = self.queue, []
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        return chunks

    def close(self, error: StreamError | None = None) -> None:
        if self.closing is None:
            self.closing = error or StreamError("undefined-condition", "closing")
            self.wakeup.set()
            if self.state != "up" and self.cancel is not None:
                self.cancel.cancel()  # still connecting: stop trying


@dataclass
class Held:
    """Stanzas waiting on this node for another node's stream (or for its link)."""

    since: float = field(default_factory=time.monotonic)
    items: list[bytes] = field(default_factory=list)


@dataclass(eq=False)
class IncomingHandle:
    """One incoming stream on this node, as `s2s list` shows it and `s2s close` ends it."""

    stream_id: str
    peer: str
    local: str | None = None
    remotes: dict[str, str] = field(default_factory=dict)  # remote domain → method
    since: float = field(default_factory=time.time)
    received: int = 0
    close: Callable[[StreamError], None] = lambda error: None


class RemotePeer:
    """The sender of an IQ from another server, as modules see it: their answers go back
    over s2s (components have LocalInstance for the same purpose). It is nobody's
    session: it requests no roster pushes and takes no carbons."""

    is_local = False
    roster_requested = True
    carbons = False
    available = False
    priority = 0
    presence = None

    def __init__(self, manager: S2SManager, full_jid: str) -> None:
        self.manager = manager
        self.full_jid = full_jid
        self.jid = JID.parse(full_jid)
        self.bare_jid = str(self.jid.bare)
        self.directed: set[str] = set()

    def send_stanza(self, stanza: etree._Element) -> None:
        self.manager.send_stanza(stanza)


class S2SManager:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.config: S2SSection = router.config.s2s
        self.node_name = router.config.node.name
        self.routes: dict[Pair, OutgoingRoute] = {}
        self.claims: dict[Pair, dict[str, dict]] = {}  # other nodes' entries, by node
        self.held: dict[Pair, Held] = {}
        # Stanzas handed to another node's stream and not yet acknowledged by it, by
        # (holder, pair): if the holder dies first, they go out through the next stream.
        self.unacked: dict[tuple[str, Pair], list[tuple[int, bytes]]] = {}
        self._sequence = 0
        # What this node received from other nodes' hands and must acknowledge.
        self.acks_due: dict[tuple[str, Pair], int] = {}
        self.failures: dict[Pair, tuple[float, str, str]] = {}  # until, condition, reason
        self.incoming: dict[str, IncomingHandle] = {}
        self.remote_incoming: dict[str, dict[str, dict]] = {}  # node → stream id → entry
        self.gossip: Gossip | None = None
        self.links: Links | None = None
        self._open: Callable[[OutgoingRoute], None] | None = None
        self._spawn: Callable[..., None] | None = None
        self.metrics = metrics.S2SDomainCounts(self.config.metrics_domains)

    def attach(self, gossip: Gossip | None, links: Links | None) -> None:
        """The cluster plumbing: where entries are published and stanzas handed over."""
        self.gossip, self.links = gossip, links

    def bind_edge(self, open_stream: Callable[[OutgoingRoute], None],
                  spawn: Callable[..., None]) -> None:
        """The connection edge: `open_stream` starts a connection for a route, `spawn`
        runs a task (bounces). Until then, stanzas for other servers bounce."""
        self._open, self._spawn = open_stream, spawn

    # -- policy -----------------------------------------------------------------------------------

    def allowed(self, domain: str) -> bool:
        """The [s2s] allow and deny lists (a domain's subdomains follow it)."""
        if _listed(domain, self.config.deny):
            return False
        return not self.config.allow or _listed(domain, self.config.allow)

    def is_local(self, domain: str) -> bool:
        """A domain this cluster speaks for: a served host or a registered component."""
        return domain in self.router.served_hosts() or self.router.components.serves(domain)

    # -- routing out ------------------------------------------------------------------------------

    async def route(self, stanza: etree._Element, target: JID, sender: LocalSession | None) -> None:
        remote = target.domain
        if not self.config.enabled or self._open is None:
            raise StanzaError("remote-server-not-found", text=f"no route to {remote}")
        local = domain_of(stanza.get("from"))
        if local is None or not self.is_local(local):
            raise StanzaError("not-allowed", text="stanzas are not relayed between servers")
        if not self.allowed(remote):
            raise StanzaError("not-allowed", text=f"federation with {remote} is not allowed")
        self.send((local, remote), serialize(stanza), stanza)

    def is_remote(self, jid: str) -> bool:
        """A JID on another server (not served here, not a component of ours)."""
        domain = domain_of(jid)
        return domain is not None and not self.is_local(domain)

    def deputy(self) -> bool:
        """True on one live node of the cluster (the first by name): the one that speaks
        to other servers for a node that died (e.g. its users' unavailable presence)."""
        if self.gossip is None:
            return True
        return self.node_name == min([self.node_name, *self.gossip.views])

    def send_stanza(self, stanza: etree._Element) -> None:
        """For modules (presence broadcast, probes): a stanza from a local JID to another
        server, with no one to tell if it cannot go (presence is never bounced to its
        sender's client, RFC 6121 §4.2.2)."""
        local, remote = domain_of(stanza.get("from")), domain_of(stanza.get("to"))
        if (not self.config.enabled or self._open is None or local is None or remote is None
                or not self.is_local(local) or not self.allowed(remote)):
            return
        self.send((local, remote), serialize(stanza), stanza)

    def send(self, pair: Pair, data: bytes, stanza: etree._Element | None = None) -> None:
        """Puts one stanza on the way to its pair's stream, wherever that is."""
        route = self.routes.get(pair)
        if route is not None:
            self._enqueue(route, data, stanza)
            return
        failure = self.failures.get(pair)
        if failure is not None and failure[0] > time.monotonic():
            self._bounce(data, stanza, failure[1], failure[2])
            return
        owner, entry = self.owner(pair)
        if owner is None:
            self._open_route(pair, [data])
        elif entry.get("state") == "failed":
            self._bounce(data, stanza, str(entry.get("condition") or "remote-server-not-found"),
                         f"{pair[1]} is unreachable")
        elif entry.get("state") == "up" and self._connected(owner) and pair not in self.held:
            self._forward(owner, pair, data, stanza)
        else:
            self._hold(pair, data, stanza)

    def _enqueue(self, route: OutgoingRoute, data: bytes, stanza: etree._Element | None) -> None:
        if route.state != "up" and len(route.queue) >= self.config.max_queue:
            self._bounce(data, stanza, "resource-constraint",
                         f"too many stanzas waiting for {route.remote}")
            return
        if route.queued_bytes + len(data) > MAX_OUTBOX_BYTES:
            self._bounce(data, stanza, "resource-constraint", f"{route.remote} is not reading")
            return
        route.put(data)
        self.metrics.stanza_out(route.remote)

    def _hold(self, pair: Pair, data: bytes, stanza: etree._Element | None) -> None:
        held = self.held.setdefault(pair, Held())
        if len(held.items) >= self.config.max_queue:
            self._bounce(data, stanza, "resource-constraint",
                         f"too many stanzas waiting for {pair[1]}")
            return
        held.items.append(data)

    def _forward(self, owner: str, pair: Pair, data: bytes, stanza: etree._Element | None) -> None:
        hops = link_hops.get()
        if hops >= MAX_HOPS:
            log.debug("stanza for %s not forwarded to %s (hops %d)", pair[1], owner, hops)
            return
        self._sequence += 1
        target = f"{LINK_TARGET}{pair_key(pair)}|{self.node_name}|{self._sequence}"
        if self.links is None or not self.links.send_stanza(owner, target, data, hops):
            self._bounce(data, stanza, "resource-constraint", "the cluster link is full")
            return
        unacked = self.unacked.setdefault((owner, pair), [])
        unacked.append((self._sequence, data))
        if len(unacked) > MAX_UNACKED:
            del unacked[0]  # beyond this, a holder's death may lose the oldest
        metrics.S2S_FORWARDED.inc()

    def deliver_from_link(self, target: str, data: bytes) -> None:
        """A stanza another node handed to this node's stream for the pair; acknowledged
        (in batches, by `tick`) as soon as it is in our hands."""
        head, origin, sequence = target[len(LINK_TARGET):].rsplit(PAIR_SEPARATOR, 2)
        pair = parse_pair(head)
        if pair is None or not sequence.isdigit():
            return
        self.acks_due[(origin, pair)] = int(sequence)
        self.send(pair, data)  # ours → queued; moved meanwhile → on to the new holder

    def acknowledged(self, holder: str, key: str, sequence: int) -> None:
        """`holder` has every stanza we handed it for the pair up to `sequence`."""
        pair = parse_pair(key)
        unacked = self.unacked.get((holder, pair)) if pair is not None else None
        if unacked:
            while unacked and unacked[0][0] <= sequence:
                unacked.pop(0)
            if not unacked:
                del self.unacked[(holder, pair)]

    def _send_acks(self) -> None:
        if self.gossip is None:
            self.acks_due.clear()
            return
        for (origin, pair), sequence in self.acks_due.items():
            self.gossip.send(origin, {"t": "s2s-ack", "pair": pair_key(pair), "seq": sequence})
        self.acks_due.clear()

    def _reclaim_from_dead(self) -> None:
        """Stanzas handed to a node that died before acknowledging them were never in
        its hands (it acknowledges on receipt): they go out through the next stream,
        ahead of what was held since."""
        alive = set(self.gossip.views) if self.gossip is not None else set()
        for holder, pair in [k for k in self.unacked if k[0] not in alive]:
            items = [data for _, data in self.unacked.pop((holder, pair))]
            held = self.held.setdefault(pair, Held())
            held.items[:0] = items
            log.info("s2s: %d stanzas for %s handed to %s, which died, go out again",
                     len(items), pair[1], holder)

    # -- who holds a pair's stream ----------------------------------------------------------------

    def owner(self, pair: Pair) -> tuple[str | None, dict]:
        """The node whose claim on the pair wins (see the module docstring), and its entry."""
        claims = self.claims.get(pair)
        if not claims:
            return None, {}
        node = min(claims, key=lambda n: (float(claims[n].get("since", 0.0)), n))
        return node, claims[node]

    def _beats_us(self, route: OutgoingRoute) -> str | None:
        node, entry = self.owner(route.pair)
        if node is None:
            return None
        if (float(entry.get("since", 0.0)), node) < (route.since, self.node_name):
            return node
        return None

    def _open_route(self, pair: Pair, items: list[bytes]) -> None:
        route = OutgoingRoute(pair[0], pair[1])
        self.routes[pair] = route
        for data in items[: self.config.max_queue]:
            route.put(data)
            self.metrics.stanza_out(pair[1])
        for data in items[self.config.max_queue:]:
            self._bounce(data, None, "resource-constraint", f"too many stanzas for {pair[1]}")
        self._publish(route)
        log.info("opening s2s stream %s -> %s", pair[0], pair[1])
        assert self._open is not None
        self._open(route)

    def _publish(self, route: OutgoingRoute, **extra: Any) -> None:
        if self.gossip is not None:
            self.gossip.set(OUTGOING_KEY + pair_key(route.pair),
                            {"state": route.state, "since": route.since, "auth": route.method,
                             "peer": route.peer, **extra})

    # -- the connection edge reports ----------------------------------------------------------------

    def route_up(self, route: OutgoingRoute, method: str, peer: str) -> None:
        route.state, route.method, route.peer = "up", method, peer
        self.failures.pop(route.pair, None)
        if self.routes.get(route.pair) is route:
            self._publish(route)
        log.info("s2s stream %s -> %s up via %s (%s)", route.local, route.remote, peer, method)

    def route_failed(self, route: OutgoingRoute, condition: str, reason: str) -> None:
        """The stream could not be set up: what waits for it bounces (RFC 6120 §8.3.3)."""
        log.info("s2s stream %s -> %s failed: %s", route.local, route.remote, reason)
        owned = self.routes.get(route.pair) is route
        if owned:
            del self.routes[route.pair]
        chunks = route.take()
        if not owned or self._beats_us(route) is not None:
            self._requeue(route.pair, chunks)  # another node's stream took over meanwhile
            return
        until = time.monotonic() + self.config.failure_backoff
        self.failures[route.pair] = (until, condition, reason)
        if self.gossip is not None:
            self.gossip.set(OUTGOING_KEY + pair_key(route.pair),
                            {"state": "failed", "since": route.since, "condition": condition})
        for data in chunks:
            self._bounce(data, None, condition, reason)
        metrics.S2S_STREAM_FAILURES.inc()

    def route_closed(self, route: OutgoingRoute, unsent: list[bytes]) -> None:
        """An up stream ended (idle, closed by the peer or an operator, or lost)."""
        if self.routes.get(route.pair) is route:
            del self.routes[route.pair]
            if self.gossip is not None and route.pair not in self.failures:
                self.gossip.delete(OUTGOING_KEY + pair_key(route.pair))
        log.info("s2s stream %s -> %s closed (%d stanzas sent): %s", route.local, route.remote,
                 route.sent, route.closing or "connection lost")
        if unsent:
            self._requeue(route.pair, unsent)

    def _requeue(self, pair: Pair, chunks: list[bytes]) -> None:
        for data in chunks:
            self.send(pair, data)

    # -- gossip from other nodes ---------------------------------------------------------------------

    def on_gossip_change(self, node: str, key: str, old: Any, new: Any) -> None:
        if node == self.node_name:
            return
        if key.startswith(INCOMING_KEY):
            streams = self.remote_incoming.setdefault(node, {})
            if isinstance(new, dict):
                streams[key[len(INCOMING_KEY):]] = new
            else:
                streams.pop(key[len(INCOMING_KEY):], None)
            return
        pair = parse_pair(key[len(OUTGOING_KEY):])
        if pair is None:
            return
        claims = self.claims.setdefault(pair, {})
        if isinstance(new, dict):
            claims[node] = new
        else:
            claims.pop(node, None)
            if not claims:
                del self.claims[pair]
            self._reclaim_from_dead()  # before a new stream opens with the newer ones
        self._settle(pair)

    def _settle(self, pair: Pair) -> None:
        """Applies the owner rule to our own stream and to the stanzas held for the pair."""
        route = self.routes.get(pair)
        if route is not None:
            winner = self._beats_us(route)
            if winner is None:
                return
            log.info("s2s stream %s -> %s: %s opened it first; ours gives way", pair[0],
                     pair[1], winner)
            del self.routes[pair]
            if self.gossip is not None:
                self.gossip.delete(OUTGOING_KEY + pair_key(pair))
            chunks = route.take()
            route.close(StreamError("conflict", "another stream serves this domain pair"))
            held = self.held.setdefault(pair, Held())
            held.items[:0] = chunks
        self._release(pair)

    def _release(self, pair: Pair) -> None:
        """Moves held stanzas on, if their destination is known now."""
        held = self.held.get(pair)
        if held is None:
            return
        owner, entry = self.owner(pair)
        state = entry.get("state")
        if owner is None:
            del self.held[pair]
            self._open_route(pair, held.items)
        elif state == "failed":
            del self.held[pair]
            for data in held.items:
                self._bounce(data, None, str(entry.get("condition") or "remote-server-not-found"),
                             f"{pair[1]} is unreachable")
        elif state == "up" and self._connected(owner):
            del self.held[pair]
            for data in held.items:
                self._forward(owner, pair, data, None)

    # -- periodic work: held stanzas, idle streams, failure back-off -----------------------------------

    async def run(self) -> None:
        while True:
            await trio.sleep(CHECK_INTERVAL)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        self._send_acks()
        self._reclaim_from_dead()
        for pair in list(self.held):
            self._release(pair)
            held = self.held.get(pair)
            # Held stanzas wait for a failure to be noticed *and* for a new stream to be
            # set up (each up to connect_timeout), hence twice the bound.
            limit = 2 * self.config.connect_timeout
            if held is not None and now - held.since > limit:
                del self.held[pair]
                for data in held.items:
                    self._bounce(data, None, "remote-server-timeout",
                                 f"no stream to {pair[1]} within {limit:g}s")
        for pair, (until, _, _) in list(self.failures.items()):
            if until <= now:
                del self.failures[pair]
                if pair not in self.routes and self.gossip is not None:
                    self.gossip.delete(OUTGOING_KEY + pair_key(pair))
        for route in list(self.routes.values()):
            if route.state == "up" and not route.queue and \
                    now - route.last_used > self.config.idle_timeout:
                route.close(None)

    # -- incoming streams --------------------------------------------------------------------------

    def incoming_opened(self, handle: IncomingHandle) -> None:
        self.incoming[handle.stream_id] = handle

    def incoming_authenticated(self, handle: IncomingHandle, local: str, remote: str,
                               method: str) -> None:
        handle.local = handle.local or local
        handle.remotes[remote] = method
        log.info("s2s stream from %s (%s) authenticated for %s by %s", remote, handle.peer,
                 local, method)
        if self.gossip is not None:
            self.gossip.set(INCOMING_KEY + handle.stream_id,
                            {"local": handle.local, "remotes": handle.remotes,
                             "since": handle.since, "peer": handle.peer})

    def incoming_closed(self, handle: IncomingHandle) -> None:
        self.incoming.pop(handle.stream_id, None)
        if self.gossip is not None and handle.remotes:
            self.gossip.delete(INCOMING_KEY + handle.stream_id)

    async def route_incoming(self, stanza: etree._Element, handle: IncomingHandle) -> None:
        """A stanza of an authenticated pair, from a peer: routed like local traffic."""
        handle.received += 1
        self.metrics.stanza_in(domain_of(stanza.get("from")) or "")
        # IQs to the server or an account need a way back; other stanzas need none, and
        # must never look like a local client's own (subscriptions, broadcast).
        sender = RemotePeer(self, stanza.get("from")) if stanza.tag == _IQ else None
        try:
            await self.router.route(stanza, sender)
        except StanzaError as exc:
            self._reply_error(stanza, exc)
        except StoreError as exc:
            self._reply_error(stanza, StanzaError(exc.condition, text=exc.text or None))
        except RaftUnavailable as exc:
            condition, text = write_failure(exc)
            self._reply_error(stanza, StanzaError(condition, type="wait", text=text))

    def _reply_error(self, stanza: etree._Element, error: StanzaError) -> None:
        """An error back to the peer's user, over our outgoing stream (RFC 6120 §8.3)."""
        if not can_reply_with_error(stanza):
            return
        reply = error_reply(stanza, error)
        remote, local = domain_of(reply.get("to")), domain_of(reply.get("from"))
        if remote is not None and local is not None and self.is_local(local):
            self.send((local, remote), serialize(reply), reply)

    # -- bounces -----------------------------------------------------------------------------------

    def _bounce(self, data: bytes, stanza: etree._Element | None, condition: str,
                reason: str) -> None:
        """The sender learns its stanza could not go out (RFC 6120 §8.3.3.16, §8.3.3.17)."""
        metrics.s2s_bounced(condition)
        if stanza is None:
            try:
                stanza = _parse(data)
            except etree.XMLSyntaxError:
                return
        if not can_reply_with_error(stanza):
            return
        reply = error_reply(stanza, StanzaError(condition, text=reason))
        if self._spawn is not None:
            self._spawn(self._deliver_bounce, reply)

    async def _deliver_bounce(self, reply: etree._Element) -> None:
        with contextlib.suppress(StanzaError, StoreError, RaftUnavailable):
            await self.router.route(reply, None)

    # -- operators ------------------------------------------------------------------------------------

    def describe(self) -> list[dict]:
        """Every s2s stream of the cluster as this node knows it (`raftxmpp s2s list`)."""
        rows = []
        for route in self.routes.values():
            rows.append({"direction": "out", "local": route.local, "remote": route.remote,
                         "node": self.node_name, "state": route.state, "auth": route.method,
                         "since": route.since, "queued": len(route.queue), "sent": route.sent,
                         "peer": route.peer})
        for (local, remote), claims in self.claims.items():
            for node, entry in claims.items():
                rows.append({"direction": "out", "local": local, "remote": remote, "node": node,
                             "state": entry.get("state"), "auth": entry.get("auth", ""),
                             "since": entry.get("since"), "peer": entry.get("peer", "")})
        for handle in self.incoming.values():
            for remote, method in handle.remotes.items():
                rows.append({"direction": "in", "local": handle.local, "remote": remote,
                             "node": self.node_name, "state": "up", "auth": method,
                             "since": handle.since, "received": handle.received,
                             "peer": handle.peer})
        for node, streams in self.remote_incoming.items():
            for entry in streams.values():
                for remote, method in dict(entry.get("remotes") or {}).items():
                    rows.append({"direction": "in", "local": entry.get("local"),
                                 "remote": remote, "node": node, "state": "up", "auth": method,
                                 "since": entry.get("since"), "peer": entry.get("peer", "")})
        return sorted(rows, key=lambda r: (r["remote"], r["direction"], r["local"] or "",
                                           r["node"]))

    def close_domain(self, domain: str, reason: str = "closed by an administrator") -> int:
        """Ends this node's streams with `domain`, both ways; returns how many."""
        closed = 0
        for route in list(self.routes.values()):
            if route.remote == domain:
                route.close(StreamError("policy-violation", reason))
                closed += 1
        for handle in list(self.incoming.values()):
            if domain in handle.remotes:
                handle.close(StreamError("policy-violation", reason))
                closed += 1
        return closed

    def streams(self) -> dict[str, int]:
        """Open streams on this node, for the metrics scrape."""
        return {"out": sum(1 for r in self.routes.values() if r.state == "up"),
                "in": sum(1 for h in self.incoming.values() if h.remotes)}

    async def shutdown(self) -> None:
        """Ends our streams with <system-shutdown/>, letting writers flush."""
        for route in list(self.routes.values()):
            route.close(StreamError("system-shutdown"))
        for handle in list(self.incoming.values()):
            handle.close(StreamError("system-shutdown"))
        with trio.move_on_after(2):
            while self.routes or self.incoming:
                await trio.sleep(0.02)

    def _connected(self, node: str) -> bool:
        return self.links is None or self.links.connected(node)


def _listed(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _parse(data: bytes) -> etree._Element:
    wrapper = etree.fromstring(b"<r xmlns='jabber:client'>" + data + b"</r>", _PARSER)
    return wrapper[0].__copy__()
