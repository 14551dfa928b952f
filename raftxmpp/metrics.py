"""Prometheus metrics of one node, served by `raftxmpp.http` at `GET /metrics`.

Two kinds of numbers, kept apart on purpose:
- Counts made on the stanza and Raft paths (stanzas, routing outcomes, connections,
  commit latency) are module-level, with every label child bound once, at import.
  Counting a stanza is one `.inc()` on a pre-bound `HotCount` (a plain int; see its
  docstring for why not a prometheus_client child): no `labels()` call, no string
  formatting, no allocation, no lock. They count for the process, and a node is one
  process (tests that run several nodes in one process share them).
- Facts that already live somewhere (sessions, Raft role, term, indexes) are read at
  scrape time by a collector bound to one node, so nothing has to keep them in step.

Each node builds its own `CollectorRegistry` (`node_registry`), never the global
one, so a library that registers into the default registry cannot leak into our
output and two nodes in one process cannot collide.

This module must never import the rest of raftxmpp: the Raft bridge, the stanza
path and the cluster links all import it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

# `_created` series double the output and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()

_CLIENT = "jabber:client"
_COMPONENT = "jabber:component:accept"
_SERVER = "jabber:server"
STANZA_KINDS = ("message", "presence", "iq")


class HotCount:
    """One labelled count on the stanza path: a plain int behind `.inc()`.

    prometheus_client's children take a lock per increment: 611 ns measured, against
    58 ns here, where the budget is about 22 µs per message from socket to socket.
    Only the node's trio thread counts (the stanza path runs there, never on the Raft
    thread), so no lock is needed; scrapes read the ints on that thread too.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount

    def set(self, value: int) -> None:
        self.value = value


class HotFamily:
    """A counter or gauge with one label, all of whose children exist from import on."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str],
                 kind: str = "counter") -> None:
        self.name, self.documentation, self.label, self.kind = name, documentation, label, kind
        self.children = {value: HotCount() for value in values}

    def labels(self, value: str) -> HotCount:
        return self.children[value]

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.documentation, labels=[self.label])
        for value, child in self.children.items():
            family.add_metric([value], child.value)
        return family


class _ByKey(dict):
    """A dict of pre-bound children; an unexpected key counts as `other`."""

    def __init__(self, children: dict, other: HotCount) -> None:
        super().__init__(children)
        self.other = other

    def __missing__(self, key: object) -> HotCount:
        return self.other


def _by_tag(metric: HotFamily) -> _ByKey:
    """Children keyed by a stanza's Clark-notation tag, in every namespace a stream uses."""
    children = {}
    for kind in STANZA_KINDS:
        child = metric.labels(kind)
        for namespace in (_CLIENT, _COMPONENT, _SERVER):
            children[f"{{{namespace}}}{kind}"] = child
    return _ByKey(children, metric.labels("other"))


# -- connections -----------------------------------------------------------------------------

CONNECTIONS = HotFamily("raftxmpp_connections", "Open connections by type.", "type",
                        ("c2s", "component"), kind="gauge")
C2S_CONNECTIONS = CONNECTIONS.labels("c2s")
COMPONENT_CONNECTIONS = CONNECTIONS.labels("component")

# -- stanzas ----------------------------------------------------------------------------------

STANZAS_IN_TOTAL = HotFamily("raftxmpp_stanzas_in", "Stanzas received from bound clients, by kind.",
                             "kind", (*STANZA_KINDS, "other"))
STANZAS_OUT_TOTAL = HotFamily("raftxmpp_stanzas_out", "Stanzas written to clients, by kind.",
                              "kind", (*STANZA_KINDS, "other"))
# STANZAS_IN[element.tag].inc(): the tag is the key, so the stanza path does no parsing.
STANZAS_IN = _by_tag(STANZAS_IN_TOTAL)
STANZAS_OUT = _by_tag(STANZAS_OUT_TOTAL)
# Serialised stanzas start with their tag (raftxmpp.xml.stanza.serialize writes no prefix).
_OUT_BY_PREFIX = _ByKey(
    {b"<me": STANZAS_OUT_TOTAL.labels("message"),
     b"<pr": STANZAS_OUT_TOTAL.labels("presence"),
     b"<iq": STANZAS_OUT_TOTAL.labels("iq")},
    STANZAS_OUT_TOTAL.labels("other"))


def count_stanzas_out(chunks: Iterable[bytes]) -> None:
    """Counts a connection's queued output, one chunk per stanza, before it is written."""
    for chunk in chunks:
        _OUT_BY_PREFIX[chunk[:3]].value += 1


# -- routing outcomes -------------------------------------------------------------------------

ROUTED = HotFamily(
    "raftxmpp_routed",
    "Stanzas to accounts of this cluster by where they went: a session on this node (local), "
    "a session on another node (remote), offline storage (offline), an error reply (error), "
    "or nowhere (dropped: the hop limit between nodes was reached or the node link refused it).",
    "outcome", ("local", "remote", "offline", "error", "dropped"))
# The router counts errors (Router.bounce); the session manager, which makes the
# choice, counts the other three where it delivers, forwards or stores a stanza.
ROUTED_LOCAL = ROUTED.labels("local")
ROUTED_REMOTE = ROUTED.labels("remote")
ROUTED_OFFLINE = ROUTED.labels("offline")
ROUTED_ERROR = ROUTED.labels("error")
ROUTED_DROPPED = ROUTED.labels("dropped")

# -- s2s (raftxmpp.routing.s2s) ---------------------------------------------------------------

S2S_FORWARDED_TOTAL = HotFamily(
    "raftxmpp_s2s_forwarded", "Stanzas for another server handed to the node holding the "
    "outgoing stream, by outcome.", "outcome", ("forwarded",))
S2S_FORWARDED = S2S_FORWARDED_TOTAL.labels("forwarded")
S2S_STREAM_FAILURES_TOTAL = HotFamily(
    "raftxmpp_s2s_stream_failures", "Outgoing s2s streams this node could not set up.",
    "reason", ("failed",))
S2S_STREAM_FAILURES = S2S_STREAM_FAILURES_TOTAL.labels("failed")
S2S_BOUNCES = ("remote-server-not-found", "remote-server-timeout", "resource-constraint",
               "not-allowed", "service-unavailable", "other")
S2S_BOUNCED = HotFamily("raftxmpp_s2s_bounced", "Stanzas for other servers returned to their "
                        "sender with an error, by condition.", "condition", S2S_BOUNCES)


def s2s_bounced(condition: str) -> None:
    S2S_BOUNCED.labels(condition if condition in S2S_BOUNCED.children else "other").inc()


class S2SDomainCounts:
    """Stanzas to and from each remote domain, for `raftxmpp_s2s_stanzas_total`.

    Remote domains are chosen by whoever federates with us, so the label set is bounded:
    the first `limit` domains seen get their own label, every later one is counted as
    domain="other" (at most limit + 1 series per direction, ever, per node process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out: dict[str, HotCount] = {}
        self.into: dict[str, HotCount] = {}
        self.other_out, self.other_in = HotCount(), HotCount()

    def _child(self, table: dict[str, HotCount], other: HotCount, domain: str) -> HotCount:
        child = table.get(domain)
        if child is None:
            if len(table) >= self.limit:
                return other
            child = table[domain] = HotCount()
        return child

    def stanza_out(self, domain: str) -> None:
        self._child(self.out, self.other_out, domain).value += 1

    def stanza_in(self, domain: str) -> None:
        self._child(self.into, self.other_in, domain).value += 1

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily("raftxmpp_s2s_stanzas", "Stanzas exchanged with other "
                                     "servers by this node, by direction and remote domain "
                                     "(the first [s2s] metrics_domains domains; the rest are "
                                     "'other').", labels=["direction", "domain"])
        for direction, table, other in (("out", self.out, self.other_out),
                                        ("in", self.into, self.other_in)):
            for domain, child in sorted(table.items()):
                family.add_metric([direction, domain], child.value)
            family.add_metric([direction, "other"], other.value)
        return family


# -- publish-subscribe (raftxmpp.modules.pubsub) -------------------------------------------------

PUBSUB_REQUESTS = HotFamily(
    "raftxmpp_pubsub_requests",
    "Pubsub and PEP requests handled on this node, by kind (errors included).", "request",
    ("publish", "retract", "items", "subscribe", "unsubscribe", "create", "configure", "delete",
     "purge", "other"))
PUBSUB_NOTIFICATIONS = HotFamily(
    "raftxmpp_pubsub_notifications",
    "Pubsub event notifications this node sent: to a session here (local), over a node link "
    "(remote), through the router to another domain (routed), or refused there "
    "(undeliverable).", "outcome", ("local", "remote", "routed", "undeliverable"))
PUBSUB_CAPS = HotFamily(
    "raftxmpp_pubsub_caps",
    "Entity capabilities (XEP-0115) of client presence: hash known (cached), disco#info sent "
    "to the client (queried), answer matched the hash and was shared (verified), did not "
    "(unverified), or no answer (failed).", "outcome",
    ("cached", "queried", "verified", "unverified", "failed"))

# -- multi-user chat (raftxmpp.modules.muc) -----------------------------------------------------

MUC_MESSAGES = HotFamily(
    "raftxmpp_muc_messages",
    "Room messages: ordered by this node (it is the room's ordering node), delivered by this "
    "node to an occupant here (one per recipient), refused (not an occupant, no voice, too "
    "fast).", "step", ("ordered", "delivered", "refused"))
MUC_ORDERED = MUC_MESSAGES.labels("ordered")
MUC_DELIVERED = MUC_MESSAGES.labels("delivered")
MUC_REFUSED = MUC_MESSAGES.labels("refused")
MUC_OCCUPANTS = HotFamily(
    "raftxmpp_muc_occupants",
    "Room occupants whose sessions are on this node (local), and in the whole cluster as this "
    "node knows them (cluster).", "where", ("local", "cluster"), kind="gauge")

# -- logins (raftxmpp.c2s.login, for every client transport) -----------------------------------

LOGINS = HotFamily(
    "raftxmpp_c2s_logins",
    "SASL exchanges of clients on this node by outcome: success; failure (wrong credentials "
    "or an unknown account); refused (throttled, or the cluster could not confirm "
    "credentials: not the client's guess).", "outcome", ("success", "failure", "refused"))
LOGIN_SUCCEEDED = LOGINS.labels("success")
LOGIN_FAILED = LOGINS.labels("failure")
LOGIN_REFUSED = LOGINS.labels("refused")

# -- stream management (XEP-0198) ----------------------------------------------------------------

SM_RESUMPTIONS = HotFamily(
    "raftxmpp_sm_resumptions",
    "Stream resumption requests (XEP-0198 <resume/>) answered on this node: resumed, or "
    "failed (unknown or expired id, another account: <failed/>).", "outcome",
    ("resumed", "failed"))
SM_RESUMED = SM_RESUMPTIONS.labels("resumed")
SM_RESUME_FAILED = SM_RESUMPTIONS.labels("failed")

SM_SESSIONS = HotFamily(
    "raftxmpp_sm_sessions",
    "Stream-management session events on this node: enabled, detached (the connection was "
    "lost, the session waits), resumed_local (resumed on this node), resumed_remote (moved "
    "here from another node), handed_over (moved from here to another node), expired (no "
    "resumption in time; raftxmpp_sm_resumptions counts the refused ones).", "event",
    ("enabled", "detached", "resumed_local", "resumed_remote", "handed_over", "expired"))
SM_UNACKED = HotFamily(
    "raftxmpp_sm_unacked_stanzas",
    "Stanzas a client never acknowledged when its session ended, by what became of them: "
    "rerouted (to another resource or offline storage), bounced (an error to the sender), "
    "dropped (presence and other traffic nobody would miss); parked: messages for a detached "
    "session committed to offline storage; duplicated: parked messages a resumed client may "
    "get twice (their removal failed).", "outcome",
    ("rerouted", "bounced", "dropped", "parked", "duplicated"))
SM_DETACHED = HotFamily(
    "raftxmpp_sm_detached_sessions", "Detached stream-management sessions held on this node.",
    "state", ("detached",), kind="gauge")
SM_CUSTODY = HotFamily(
    "raftxmpp_sm_custody",
    "Copies of client messages in custody (an ack waits until they are safe) sent to "
    "another node, by event: sent (with a token), settled (that node reported it safe), "
    "rerouted (that node died or restarted: routed again here), expired (unsettled too "
    "long: routed again), stored (no link took it: offline storage), overflow (the "
    "custody table was full: acknowledged when handed to the link).", "event",
    ("sent", "settled", "rerouted", "expired", "stored", "overflow"))
SM_CUSTODY_PENDING = HotFamily(
    "raftxmpp_sm_custody_pending",
    "Copies of messages in custody on other nodes that this node keeps until settled, "
    "and their bytes.", "measure", ("copies", "bytes"), kind="gauge")

# -- message archive (raftxmpp.modules.mam) ---------------------------------------------------------

ARCHIVE_ROWS = HotFamily(
    "raftxmpp_archive_rows",
    "Archive rows this node queued (one per archiving account and message), committed in a "
    "batch, retried after a failed commit, or dropped (queue overflow, refused batch).",
    "outcome", ("queued", "committed", "retried", "dropped"))
ARCHIVE_PACING = HotFamily(
    "raftxmpp_archive_paced", "Client messages held back until the archive writer caught up "
    "(its queue was more than 10 batches behind): the sender slowed down, nothing dropped.",
    "reason", ("behind",))
ARCHIVE_PACED = ARCHIVE_PACING.labels("behind")
ARCHIVE_QUERIES = HotFamily(
    "raftxmpp_archive_queries", "MAM queries answered on this node, by kind.", "kind",
    ("query", "form", "metadata", "prefs"))

C2S_EVENTS = HotFamily(
    "raftxmpp_c2s_ping_timeouts", "Client connections taken for gone because they did not "
    "answer the server's ping (XEP-0199) in time.", "outcome", ("timeout",))
C2S_PING_TIMEOUTS = C2S_EVENTS.labels("timeout")

HOT_FAMILIES = (CONNECTIONS, STANZAS_IN_TOTAL, STANZAS_OUT_TOTAL, ROUTED,
                S2S_FORWARDED_TOTAL, S2S_STREAM_FAILURES_TOTAL, S2S_BOUNCED,
                PUBSUB_REQUESTS, PUBSUB_NOTIFICATIONS, PUBSUB_CAPS, LOGINS, SM_RESUMPTIONS,
                SM_SESSIONS, SM_UNACKED, SM_DETACHED, SM_CUSTODY, SM_CUSTODY_PENDING, C2S_EVENTS,
                ARCHIVE_ROWS, ARCHIVE_PACING, ARCHIVE_QUERIES, MUC_MESSAGES, MUC_OCCUPANTS)


class _HotCollector(Collector):
    def collect(self) -> Iterator[Any]:
        for family in HOT_FAMILIES:
            yield family.family()


# -- Raft ---------------------------------------------------------------------------------------

RAFT_COMMIT_SECONDS = Histogram(
    "raftxmpp_raft_commit_seconds",
    "Time from submitting a command on this node to its commit and apply here, retries included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=None)

RAFT_WRITE_FAILURES = Counter(
    "raftxmpp_raft_write_failures",
    "Writes that did not commit in time: 'unavailable' surely never apply, 'unknown' may "
    "still apply until the state machine's expiry window passes.",
    ["outcome"], registry=None)
for _outcome in ("unavailable", "unknown"):
    RAFT_WRITE_FAILURES.labels(_outcome)  # both series from the start, so rate() sees the first

OFFLINE_REDELIVERED = Counter(
    "raftxmpp_offline_redelivered",
    "Offline messages delivered again because the session that claimed them ended before "
    "removing them (a duplicate the client may see; never a loss).", registry=None)

RAFT_FSYNC_SECONDS = Histogram(
    "raftxmpp_raft_fsync_seconds",
    "Time one fsync (or msync) of Raft's journal, metadata or snapshot took on this node.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1.0),
    registry=None)


def observe_fsync(seconds: float) -> None:
    """Called by the Raft layer's durable writes, from whichever thread synced (the
    Histogram takes its own lock; a sync costs far more than the lock)."""
    RAFT_FSYNC_SECONDS.observe(seconds)


PROCESS_METRICS = (RAFT_COMMIT_SECONDS, RAFT_FSYNC_SECONDS, RAFT_WRITE_FAILURES,
                   OFFLINE_REDELIVERED)

# -- per-node facts, read at scrape time --------------------------------------------------------


class _NodeView(Protocol):
    """What the collector reads from a node (raftxmpp.node.Node)."""

    config: Any
    raft: Any
    router: Any
    store: Any
    cluster: Any


RAFT_ROLES = ("leader", "follower", "candidate")


class NodeCollector(Collector):
    """Sessions and Raft facts of one node, collected when Prometheus scrapes."""

    def __init__(self, node: _NodeView, version: str) -> None:
        self.node = node
        self.version = version

    def collect(self) -> Iterator[Any]:
        node = self.node
        info = InfoMetricFamily("raftxmpp_build", "Version and name of this node.")
        info.add_metric([], {"version": self.version, "node": node.config.node.name})
        yield info
        sessions = GaugeMetricFamily("raftxmpp_sessions", "Client sessions bound on this node.")
        router = node.router
        sessions.add_metric([], router.sessions.local_count() if router is not None else 0)
        yield sessions
        s2s = getattr(router, "s2s", None)
        if s2s is not None:  # federation (raftxmpp.routing.s2s)
            yield s2s.metrics.family()
            streams = GaugeMetricFamily("raftxmpp_s2s_streams", "Authenticated s2s streams "
                                        "on this node, by direction.", labels=["direction"])
            for direction, count in s2s.streams().items():
                streams.add_metric([direction], count)
            yield streams
        if node.raft is not None:
            yield from raft_families(node.raft.status())
        if node.store is not None:
            yield from pubsub_families(node.store.pubsub_totals())
            rooms = GaugeMetricFamily("raftxmpp_muc_rooms", "Rooms in the replicated state "
                                      "(every MUC service of the cluster).")
            rooms.add_metric([], node.store.muc_room_count())
            yield rooms
        cluster = getattr(node, "cluster", None)
        if cluster is not None:
            yield from link_families(cluster.links)
            alive = GaugeMetricFamily("raftxmpp_gossip_nodes_alive", "Nodes this node hears "
                                      "gossip heartbeats from, itself included.")
            alive.add_metric([], len(cluster.gossip.nodes()))
            yield alive
        yield from disk_families(node.config.node.data_dir)


def raft_families(status: dict) -> Iterator[GaugeMetricFamily]:
    """Gauges from RaftNode.status(); a missing fact is left out rather than faked."""
    role = GaugeMetricFamily("raftxmpp_raft_role", "1 for this node's current Raft role.",
                             labels=["role"])
    for name in RAFT_ROLES:
        role.add_metric([name], 1.0 if status.get("role") == name else 0.0)
    yield role
    gauges = {
        "term": ("raftxmpp_raft_term", "Current Raft term."),
        "commit_index": ("raftxmpp_raft_commit_index", "Highest log index known committed."),
        "applied_index": ("raftxmpp_raft_applied_index", "Highest log index applied here."),
        "leader_commit_index": ("raftxmpp_raft_leader_commit_index",
                                "The leader's commit index, as last heard from it."),
        "log_length": ("raftxmpp_raft_log_entries", "Entries in the log since the last snapshot."),
    }
    for key, (name, text) in gauges.items():
        value = status.get(key)
        if isinstance(value, int | float):
            yield GaugeMetricFamily(name, text, value=value)
    flags = {
        "has_quorum": ("raftxmpp_raft_has_quorum", "1 when this node reaches a majority."),
        "ready": ("raftxmpp_raft_ready", "1 once this node caught up with the log after start."),
    }
    for key, (name, text) in flags.items():
        if key in status:
            yield GaugeMetricFamily(name, text, value=1.0 if status[key] else 0.0)
    leader = GaugeMetricFamily("raftxmpp_raft_has_leader", "1 when this node knows a leader.",
                               value=1.0 if status.get("leader") else 0.0)
    yield leader
    members = status.get("members", {})
    if members:
        yield GaugeMetricFamily("raftxmpp_raft_members", "Members of the Raft cluster, this "
                                "node included.", value=len(members))
    reachable = GaugeMetricFamily(
        "raftxmpp_raft_member_reachable", "1 when this node is connected to the member.",
        labels=["member"])
    for member, connected in sorted(members.items()):
        reachable.add_metric([member], 1.0 if connected else 0.0)
    yield reachable


def pubsub_families(totals: dict) -> Iterator[GaugeMetricFamily]:
    """Pubsub data in the replicated state (the same on every node that caught up)."""
    for key, text in (("owners", "Accounts and service domains with pubsub nodes."),
                      ("nodes", "Pubsub and PEP nodes."),
                      ("items", "Items stored in pubsub and PEP nodes."),
                      ("bytes", "Bytes of stored pubsub items (ids and payloads).")):
        yield GaugeMetricFamily(f"raftxmpp_pubsub_{key}", text, value=totals.get(key, 0))


def link_families(links: Any) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The node-to-node links (raftxmpp.cluster.links.Links), one series per peer node:
    the label set is the member table, a handful of names."""
    up = GaugeMetricFamily("raftxmpp_node_link_up", "1 while the link to the peer node is "
                           "connected and authenticated.", labels=["peer"])
    queued = GaugeMetricFamily("raftxmpp_node_link_queue_bytes", "Bytes waiting in the "
                               "outgoing queue of the link to the peer node.", labels=["peer"])
    dropped = CounterMetricFamily("raftxmpp_node_link_dropped_frames", "Frames for the peer "
                                  "node dropped because its link queue was full.",
                                  labels=["peer"])
    for name, peer in sorted(links.peers.items()):
        up.add_metric([name], 1.0 if peer.connected else 0.0)
        queued.add_metric([name], peer.queued_bytes)
        dropped.add_metric([name], peer.dropped)
    yield from (up, queued, dropped)
    yield GaugeMetricFamily("raftxmpp_node_link_queue_limit_bytes", "Bytes a link queue holds "
                            "before frames are dropped.", value=links.queue_limit)


def disk_families(data_dir: Any) -> Iterator[GaugeMetricFamily]:
    """The data directory's own files (Raft journal, metadata, snapshot: the replicated
    state, archive included) and its file system. Only the top level is summed: uploads/
    can hold thousands of files, too many to stat on the event loop at every scrape; the
    file system's free bytes cover them."""
    path = Path(data_dir)
    used = 0
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):  # removed between listing and stat
                if entry.is_file(follow_symlinks=False):
                    used += entry.stat(follow_symlinks=False).st_size
    yield GaugeMetricFamily("raftxmpp_data_dir_bytes", "Bytes of the files directly in the "
                            "data directory (Raft journal, metadata, snapshot).", value=used)
    size = 0
    with contextlib.suppress(OSError):  # none yet
        size = (path / "raft.dump").stat().st_size
    yield GaugeMetricFamily("raftxmpp_raft_snapshot_bytes", "Size of the last Raft snapshot "
                            "written by this node (0 before the first).", value=size)
    with contextlib.suppress(OSError):
        fs = os.statvfs(path)
        yield GaugeMetricFamily("raftxmpp_data_filesystem_avail_bytes", "Bytes free for the "
                                "node on the data directory's file system.",
                                value=fs.f_bavail * fs.f_frsize)
        yield GaugeMetricFamily("raftxmpp_data_filesystem_size_bytes", "Size of the data "
                                "directory's file system.", value=fs.f_blocks * fs.f_frsize)


def node_registry(node: _NodeView, version: str) -> CollectorRegistry:
    """A registry with everything `GET /metrics` shows for `node`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HotCollector())
    for metric in PROCESS_METRICS:
        registry.register(metric)
    registry.register(NodeCollector(node, version))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything in `registry`."""
    return prometheus_client.generate_latest(registry)


# The classic text format: every Prometheus version reads it, and our names are plain ASCII.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
