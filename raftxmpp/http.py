"""The node's HTTP port: Prometheus metrics and load-balancer health checks.

    GET /metrics   Prometheus text exposition of this node (raftxmpp.metrics)
    GET /health    200 "ok" while the node's event loop serves requests (liveness)
    GET /ready     200 "ready" when this node can serve durable writes and current
                   reads: Raft has a leader, this node reaches a majority, and it has
                   caught up with the log; else 503 with a one-line reason

Deliberately tiny: one request per connection (`Connection: close`), GET and HEAD
only, the request line and headers read with a size cap and a deadline, bodies
ignored, a bounded number of connections at once. It must never accept anything
that changes the node: there is no admin over HTTP (the admin API is the Unix
socket, see raftxmpp.admin.server). Bind it to an address only the monitoring
network reaches; it serves no secret, but it tells who the members are.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio

from raftxmpp import __version__, metrics

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.http")

MAX_HEAD_BYTES = 8192
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
# A follower that applied fewer entries than the leader committed by more than this
# is still catching up (a restart, a snapshot being installed): not ready.
MAX_READY_LAG = 1000

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}
TEXT = "text/plain; charset=utf-8"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


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


def parse_head(head: bytes) -> tuple[str, str]:
    """(method, path) from the request line and headers; raises BadRequest."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are served")
    for line in header_lines:
        if line and ":" not in line:
            raise BadRequest(400, "malformed header line")
    return method, target.split("?", 1)[0]


def response(status: int, body: bytes, content_type: str = TEXT, head_only: bool = False,
             extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n"
            f"{extra}"
            f"Connection: close\r\n\r\n").encode()
    return head if head_only else head + body


class HTTPServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = metrics.node_registry(node, __version__)
        self.slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(self, listener: trio.SocketListener,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = listener.socket.getsockname()[:2]
        log.info("http on %s:%d: /metrics /health /ready", host, port)
        task_status.started()
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.slots.value == 0:
                return  # over the limit: close at once rather than queue
            async with self.slots:
                # A client that went away needs no answer.
                with trio.move_on_after(REQUEST_TIMEOUT), contextlib.suppress(*_GONE):
                    await stream.send_all(await self._answer(stream))

    async def _answer(self, stream: trio.SocketStream) -> bytes:
        try:
            method, path = parse_head(await _read_head(stream))
        except BadRequest as exc:
            return response(exc.status, exc.text.encode() + b"\n")
        if method not in ("GET", "HEAD"):
            return response(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        status, body, content_type = self.route(path)
        return response(status, body, content_type, head_only=method == "HEAD")

    def route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, metrics.exposition(self.registry), metrics.CONTENT_TYPE
        if path == "/health":
            return 200, b"ok\n", TEXT
        if path == "/ready":
            raft = self.node.raft
            ready, reason = readiness(raft.status() if raft is not None else None)
            if getattr(self.node, "cluster", None) is not None and self.node.cluster.removed:
                ready, reason = False, "removed from the cluster"
            return (200 if ready else 503), reason.encode() + b"\n", TEXT
        return 404, b"not found: try /metrics, /health or /ready\n", TEXT


async def _read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest(400, "connection closed before the end of the request head")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest(431, "request head too large")
    return head


async def serve(node: Node, listener: trio.SocketListener,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serves the HTTP port on an already bound listener until cancelled."""
    await HTTPServer(node).serve(listener, task_status=task_status)
