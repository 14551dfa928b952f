"""Prometheus metrics and load-balancer health checks.

    GET /metrics   Prometheus text exposition of this node (raftxmpp.metrics)
    GET /health    200 "ok" while the node's event loop serves requests (liveness)
    GET /ready     200 "ready" when this node can serve durable writes and current
                   reads: Raft has a leader, this node reaches a majority, and it has
                   caught up with the log; else 503 with a one-line reason

Read-only by design: there is no admin over HTTP (the admin API is the Unix socket,
see raftxmpp.admin.server). Put the listener where only the monitoring network and
the proxy reach it; it serves no secret, but it tells who the members are.
"""

from __future__ import annotations

from collections.abc import Callable

from raftxmpp import metrics
from raftxmpp.web.http import TEXT, Request, Response

# A follower that applied fewer entries than the leader committed by more than this
# is still catching up (a restart, a snapshot being installed): not ready.
MAX_READY_LAG = 1000

PATHS = ("/metrics", "/health", "/ready")


def readiness(status: dict | None) -> tuple[bool, str]:
    """(ready, one-line reason) from RaftNode.status()."""
    if not status:
        return False, "raft is not running yet"
    if not status.get("has_quorum"):
        return False, "this node does not reach a majority of the cluster"
    if not status.get("leader"):
        return False, "the cluster has no leader (election in progress)"
    if not status.get("ready"):
        return False, "this node is still catching up with the raft log"
    applied, leader_commit = status.get("applied_index"), status.get("leader_commit_index")
    if isinstance(applied, int) and isinstance(leader_commit, int) \
            and leader_commit - applied > MAX_READY_LAG:
        return False, f"this node is {leader_commit - applied} log entries behind the leader"
    return True, "ready"


class Health:
    def __init__(self, registry, raft_status: Callable[[], dict | None],
                 removed: Callable[[], bool]) -> None:
        self.registry = registry
        self.raft_status = raft_status
        self.removed = removed

    async def handle(self, request: Request) -> Response:
        if request.path == "/metrics":
            return Response(200, metrics.exposition(self.registry), metrics.CONTENT_TYPE,
                            [("Cache-Control", "no-store")])
        if request.path == "/health":
            return Response(200, b"ok\n", TEXT, [("Cache-Control", "no-store")])
        ready, reason = readiness(self.raft_status())
        if self.removed():
            ready, reason = False, "removed from the cluster"
        return Response(200 if ready else 503, reason.encode() + b"\n", TEXT,
                        [("Cache-Control", "no-store")])
