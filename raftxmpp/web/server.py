"""The node's one HTTP server: TLS on its own port, plain HTTP for a reverse proxy.

Routes:
    /metrics /health /ready            raftxmpp.web.health (GET)
    /xmpp-websocket                    raftxmpp.web.websocket (RFC 7395)
    /http-bind                         raftxmpp.web.bosh (XEP-0124/0206)
    /.well-known/host-meta[.json]      raftxmpp.web.hostmeta (XEP-0156)
    /upload/<slot>/<file name>         raftxmpp.web.upload (XEP-0363 PUT and GET)

No admin over HTTP: nothing here changes the node's configuration or accounts (the
admin API is the Unix socket). WebSocket and BOSH clients run through the same c2s
connection (raftxmpp.c2s.connection) as TCP clients, with the same per-address
admission, read rate, login throttle and stream limits; HTTP connections count against
the same per-address connection limits as c2s connections.

Why h11 + wsproto rather than hypercorn's trio worker: the rest of the node is plain
trio with sans-IO cores, and so is this: h11 and wsproto are the protocol state
machines hypercorn itself is built on, without an ASGI layer in between that would
hide the socket (the WebSocket must become a c2s transport, BOSH requests must be
held and forwarded, upload bodies streamed to disk and peers) and bring a second
configuration and lifecycle into the node's nursery.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

import trio

from raftxmpp import __version__, metrics
from raftxmpp.c2s import listener as c2s_listener
from raftxmpp.c2s.connection import C2SConnection, framer_for
from raftxmpp.c2s.limits import MAX_TRACKED, Admission, Refused, TokenBucket, host_of
from raftxmpp.c2s.transport import ClientTransport
from raftxmpp.cluster.rpc import RpcError
from raftxmpp.tls import server_tls
from raftxmpp.web import health, hostmeta
from raftxmpp.web.bosh import PATH as BOSH_PATH
from raftxmpp.web.bosh import BoshEndpoint
from raftxmpp.web.http import SECURITY_HEADERS, HTTPConnection, HTTPError, Request, Response, text
from raftxmpp.web.urls import public_url
from raftxmpp.web.websocket import PATH as WEBSOCKET_PATH
from raftxmpp.web.websocket import WebSocketEndpoint

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.web")

TLS_HANDSHAKE_TIMEOUT = 10.0
PUBLIC_URL_KEY = "w:url"  # gossip: each node's public URL, for see-other-uri
CORS_METHODS = "GET, HEAD, POST, PUT, OPTIONS"
CORS_HEADERS = "Content-Type, Range"


class WebServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = node.config.http
        self.node_name = node.config.node.name
        self.public_url = public_url(node.config.http)
        self.guards = c2s_listener.guards_for(node)
        self.health = health.Health(
            metrics.node_registry(node, __version__),
            lambda: node.raft.status() if node.raft is not None else None,
            lambda: bool(node.cluster is not None and node.cluster.removed))
        self.live: set[C2SConnection] = set()
        self.connections = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._nursery: trio.Nursery | None = None
        self.websocket = WebSocketEndpoint(self)
        self.bosh = BoshEndpoint(self)
        self.upload = None  # raftxmpp.web.upload.UploadEndpoint, when [upload] is on
        if node.config.upload.enabled:
            from raftxmpp.web.upload import UploadEndpoint

            self.upload = UploadEndpoint(self)

    # -- running --------------------------------------------------------------------------------------

    async def run(self, listeners: list[tuple[trio.SocketListener, bool]],
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.gossip_set(PUBLIC_URL_KEY, self.public_url)
            nursery.start_soon(c2s_listener.sweep, self.live, self.node.config.c2s)
            if self.upload is not None:
                nursery.start_soon(self.upload.run)
            for listener, tls in listeners:
                host, port = listener.socket.getsockname()[:2]
                log.info("http%s on %s:%d: /xmpp-websocket /http-bind /upload /metrics",
                         "s" if tls else "", host, port)
                nursery.start_soon(trio.serve_listeners, self._accept_tls if tls
                                   else self._accept_plain, [listener])
            task_status.started()

    async def _accept_plain(self, stream: trio.SocketStream) -> None:
        await self._accept(stream, tls=False)

    async def _accept_tls(self, stream: trio.SocketStream) -> None:
        await self._accept(stream, tls=True)

    async def _accept(self, stream: trio.SocketStream, tls: bool) -> None:
        async with stream:
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:
                return
            peer = f"{host}:{port}"
            if self.connections >= self.config.max_connections:
                return  # over the node's limit: close at once rather than queue
            try:
                admission = self.admit(host)
            except Refused as refused:
                log.debug("http connection refused: %s", refused.reason)
                if not tls:
                    await _refuse(stream, 429, refused.reason)
                return
            self.connections += 1
            try:
                await self._serve(stream, peer, tls, admission)
            except Exception:
                log.exception("http connection from %s crashed", peer)  # one connection, never the node
            finally:
                self.connections -= 1
                admission.release()

    async def _serve(self, stream: trio.abc.Stream, peer: str, tls: bool,
                     admission: Admission) -> None:
        if tls:
            secured: trio.abc.Stream | None = None
            with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT), \
                    contextlib.suppress(trio.BrokenResourceError, ssl.SSLError, OSError):
                secured = await server_tls(stream, self.node.ssl_context)
            if secured is None:
                return
            async with secured:  # it owns the socket now: the caller's close is a no-op
                await self._serve_http(secured, peer, True, admission)
            return
        await self._serve_http(stream, peer, False, admission)

    async def _serve_http(self, stream: trio.abc.Stream, peer: str, tls: bool,
                          admission: Admission) -> None:
        secure = tls or self.config.proxy_terminates_tls
        connection = HTTPConnection(stream, peer, secure, self._dispatch,
                                    self.config.max_request_head, self.config.request_timeout,
                                    self.config.keepalive_timeout, self._decorate, admission)
        await connection.serve()

    # -- requests -------------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path is None:
            raise HTTPError(400, "the path is not UTF-8")
        if request.method == "OPTIONS":
            return self._preflight(request)
        if path in health.PATHS:
            _only_get(request)
            return await self.health.handle(request)
        if path == WEBSOCKET_PATH:
            return await self.websocket.handle(request)
        if path == BOSH_PATH:
            return await self.bosh.handle(request)
        if path in hostmeta.PATHS:
            return hostmeta.handle(request, self.public_url)
        if path.startswith("/upload/") and self.upload is not None:
            return await self.upload.handle(request)
        raise HTTPError(404, "not found")

    def _preflight(self, request: Request) -> Response:
        """CORS preflight (Fetch standard §3.2.2): what a page may send us."""
        response = Response(204, b"", None, [("Allow", CORS_METHODS)])
        if self.origin_allowed(request.header("origin")):
            response.headers += [("Access-Control-Allow-Methods", CORS_METHODS),
                                 ("Access-Control-Allow-Headers", CORS_HEADERS),
                                 ("Access-Control-Max-Age", "86400")]
        return response

    def _decorate(self, request: Request | None, response: Response) -> None:
        response.headers.extend(SECURITY_HEADERS)
        origin = request.header("origin") if request is not None else ""
        if origin and self.origin_allowed(origin):
            allowed = "*" if "*" in self.config.cors_origins else origin
            response.headers += [("Access-Control-Allow-Origin", allowed), ("Vary", "Origin"),
                                 ("Access-Control-Expose-Headers",
                                  "Content-Length, Content-Range, Content-Type")]

    def origin_allowed(self, origin: str) -> bool:
        """A browser page's origin may call us; requests without one (not from a page) may."""
        origins = self.config.cors_origins
        return not origin or "*" in origins or origin in origins

    # -- what the endpoints need from the node --------------------------------------------------------

    def framer(self):
        return framer_for(self.node)

    def served_hosts(self) -> frozenset[str]:
        return self.node.served_hosts()

    def admit(self, ip: str) -> Admission:
        """A per-address admission, as for a c2s connection; raises Refused."""
        return self.guards.connections.admit(ip, time.monotonic())

    def read_bucket(self, peer: str) -> TokenBucket | None:
        return self.guards.read_bucket(host_of(peer), trio.current_time())

    def bosh_bucket(self, peer: str) -> TokenBucket | None:
        """One read-rate bucket per client address for BOSH bodies, the table bounded."""
        ip = host_of(peer)
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self.read_bucket(peer)
            if bucket is None:
                return None
            if len(self._buckets) >= MAX_TRACKED:
                self._buckets.clear()
            self._buckets[ip] = bucket
        return bucket

    async def run_client(self, transport: ClientTransport, admission: Admission | None,
                         release: bool = False) -> None:
        """A c2s connection over a web transport, until it ends."""
        connection = C2SConnection(self.node, transport, self.guards, admission)
        self.live.add(connection)
        try:
            await connection.run()
        except Exception:
            log.exception("web client %s crashed", transport.peer)  # one client, never the node
        finally:
            self.live.discard(connection)
            if release and admission is not None:
                admission.release()

    def start_client(self, transport: ClientTransport, admission: Admission) -> None:
        """Runs a client whose requests come and go (BOSH) in the server's nursery."""
        self._nursery.start_soon(self.run_client, transport, admission, True)

    def start_soon(self, fn, *args) -> None:
        self._nursery.start_soon(fn, *args)

    def see_other_uri(self) -> str | None:
        """While this node shuts down: another live member's WebSocket URL (RFC 7395 §3.6.1)."""
        if not self.node.stopping:
            return None
        gossip = self._gossip()
        if gossip is None:
            return None
        for name, url in sorted(gossip.values_of(PUBLIC_URL_KEY).items()):
            if name != self.node_name and url != self.public_url:
                return hostmeta.endpoints(url)[hostmeta.WEBSOCKET_REL]
        return None

    # -- the cluster, when there is one ---------------------------------------------------------------

    def _gossip(self):
        cluster = self.node.cluster
        return cluster.gossip if cluster is not None else None

    def gossip_set(self, key: str, value: Any) -> None:
        gossip = self._gossip()
        if gossip is not None:
            gossip.set(key, value)

    def gossip_delete(self, key: str) -> None:
        gossip = self._gossip()
        if gossip is not None:
            gossip.delete(key)

    def gossip_owner(self, key: str) -> str | None:
        gossip = self._gossip()
        return gossip.owner_of(key) if gossip is not None else None

    def link_up(self, peer: str) -> bool:
        return self.node.cluster is not None and self.node.cluster.links.connected(peer)

    def rpc_register(self, method: str, handler) -> None:
        if self.node.cluster is not None:
            self.node.cluster.rpc.register(method, handler)

    async def rpc_call(self, peer: str, method: str, args: dict, body: bytes = b"",
                       timeout: float = 10.0) -> tuple[dict, bytes]:
        if self.node.cluster is None:
            raise RpcError("not clustered")
        return await self.node.cluster.rpc.call(peer, method, args, body, timeout)


def _only_get(request: Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise HTTPError(405, "GET and HEAD only", [("Allow", "GET, HEAD")])


async def _refuse(stream: trio.SocketStream, status: int, reason: str) -> None:
    response = text(status, reason)
    head = (f"HTTP/1.1 {status} Too Many Requests\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n").encode()
    with trio.move_on_after(2), contextlib.suppress(trio.BrokenResourceError,
                                                    trio.ClosedResourceError, OSError):
        await stream.send_all(head + response.body)
        # Drain the unread request briefly: closing on it would reset the connection
        # and could destroy the answer before the client reads it.
        await stream.send_eof()
        drained = 0
        while drained < 65536 and (data := await stream.receive_some(65536)):
            drained += len(data)
