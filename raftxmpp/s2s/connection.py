"""The trio edge of federation: listeners, incoming and outgoing s2s connections.

Thin loops around the framer and the sans-IO cores (raftxmpp.s2s.stream); the queues
and the cluster-wide ownership of outgoing streams live in raftxmpp.routing.s2s.

- Outgoing: resolve (SRV, raftxmpp.s2s.resolver), try each target in order, STARTTLS
  or direct TLS, authenticate, then one task writes the route's queue in batches while
  another reads (stream errors, keepalives). Everything before "up" is bounded by
  `[s2s] connect_timeout`; a write blocked for `send_timeout` ends the stream.
- Incoming: admission per peer address (count and rate), `auth_timeout` to
  authenticate, dialback verifications run as tasks of the connection (each one a
  short outgoing connection to the claimed domain's authoritative server).
- Verification connections (XEP-0220 §2.1.3) are the same outgoing code with a
  <db:verify/> instead of authentication.

Nothing a peer sends can take more than its connection down.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from raftxmpp.c2s.limits import ConnectionLimits, Refused
from raftxmpp.routing.s2s import IncomingHandle, OutgoingRoute, S2SManager
from raftxmpp.s2s import resolver
from raftxmpp.s2s.certs import S2SContexts
from raftxmpp.s2s.stream import (
    Authenticated,
    Close,
    Failed,
    IncomingSettings,
    IncomingStream,
    OutgoingStream,
    Ready,
    ResetFramer,
    Send,
    Stanza,
    StartTLS,
    Verified,
    VerifyDialback,
    VerifyRequest,
    stream_header,
)
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StreamFramer
from raftxmpp.xml.ns import SERVER
from raftxmpp.xml.stanza import STREAM_CLOSE

if TYPE_CHECKING:
    from raftxmpp.config import S2SSection

log = logging.getLogger("raftxmpp.s2s")

READ_SIZE = 65536
MAX_DEPTH = 64
TLS_HANDSHAKE_TIMEOUT = 15.0

# The peer went away under us, or TLS broke.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError)


# Why we close a stream that are ours alone: the peer gets a plain </stream:stream>.
_INTERNAL_REASONS = ("undefined-condition", "conflict")


class _Failure(Exception):
    def __init__(self, condition: str, reason: str) -> None:
        super().__init__(reason)
        self.condition = condition


class _Ended(Exception):
    """The stream was ended (by either side); cleanup follows."""


@dataclass
class _Established:
    transport: trio.abc.Stream
    framer: StreamFramer
    core: OutgoingStream
    peer: str
    outcome: str | bool  # the auth method (routes), or the verification answer


class S2SEdge:
    """One node's federation edge: opens outgoing streams, serves incoming ones."""

    def __init__(self, manager: S2SManager, config: S2SSection, contexts: S2SContexts,
                 dialback_secret: str) -> None:
        self.manager = manager
        self.config = config
        self.contexts = contexts
        self.secret = dialback_secret
        self.admission = ConnectionLimits(per_ip=config.max_incoming_per_ip, pre_auth_per_ip=0,
                                          rate=config.incoming_rate_per_ip,
                                          burst=config.incoming_burst_per_ip)
        self._nursery: trio.Nursery | None = None

    # -- running --------------------------------------------------------------------------------

    async def run(self, listeners: list[tuple[trio.SocketListener, bool]],
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.manager.bind_edge(self.open_stream, nursery.start_soon)
            nursery.start_soon(self.manager.run)
            for listener, direct_tls in listeners:
                nursery.start_soon(self._serve, listener, direct_tls)
            task_status.started()

    def open_stream(self, route: OutgoingRoute) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._outgoing, route)

    # -- outgoing ----------------------------------------------------------------------------------

    async def _outgoing(self, route: OutgoingRoute) -> None:
        with trio.CancelScope() as scope:
            route.cancel = scope  # cancelled when the route gives way or is closed early
            try:
                with trio.fail_after(self.config.connect_timeout):
                    done = await self._establish(route.local, route.remote, None)
            except trio.TooSlowError:
                self.manager.route_failed(route, "remote-server-timeout", f"no stream to "
                                          f"{route.remote} within {self.config.connect_timeout:g}s")
                return
            except _Failure as failure:
                self.manager.route_failed(route, failure.condition, str(failure))
                return
            self.manager.route_up(route, str(done.outcome), done.peer)
            try:
                await self._serve_route(route, done)
            finally:
                self.manager.route_closed(route, route.take())
                with trio.CancelScope(shield=True), trio.move_on_after(1), \
                        contextlib.suppress(*_GONE):
                    await done.transport.aclose()
        if scope.cancelled_caught and route.state != "up":
            self.manager.route_closed(route, route.take())

    async def _serve_route(self, route: OutgoingRoute, done: _Established) -> None:
        async def read() -> None:
            try:
                while True:
                    data = await done.transport.receive_some(READ_SIZE)
                    if not data:
                        break
                    for event in done.framer.feed(data):
                        for action in done.core.receive(event):
                            if isinstance(action, Close | Failed):
                                route.close(StreamError("undefined-condition", str(action)))
                                return
            except StreamError as exc:
                route.close(StreamError(exc.condition, f"bad input from the peer: {exc.text}"))
                return
            except _GONE as exc:
                route.close(StreamError("undefined-condition", f"connection lost: {exc!r}"))
                return
            route.close(StreamError("undefined-condition", "the peer closed the stream"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            send_all = done.transport.send_all
            while True:
                await route.wakeup.wait()
                chunks = route.take()
                if chunks:
                    with trio.move_on_after(self.config.send_timeout) as write:
                        try:
                            await send_all(b"".join(chunks))
                        except _GONE:
                            break  # the batch may or may not have arrived: never sent twice
                        route.sent += len(chunks)
                    if write.cancelled_caught:
                        log.warning("s2s peer %s stopped reading for %gs; closing the stream",
                                    route.remote, self.config.send_timeout)
                        break
                if route.closing is not None:
                    closing = route.closing
                    tail = STREAM_CLOSE
                    if closing.condition not in _INTERNAL_REASONS:
                        tail = closing.to_bytes() + STREAM_CLOSE
                    with trio.move_on_after(2), contextlib.suppress(*_GONE):
                        await send_all(tail)
                    break
            nursery.cancel_scope.cancel()

    async def verify(self, local: str, remote: str, stream_id: str, key: str) -> bool | str:
        """Asks `remote`'s authoritative server about a key (XEP-0220 §2.1.3)."""
        try:
            with trio.fail_after(self.config.connect_timeout):
                done = await self._establish(local, remote, VerifyRequest(stream_id, key))
        except trio.TooSlowError:
            return "remote-server-timeout"
        except _Failure as failure:
            log.info("dialback verification with %s failed: %s", remote, failure)
            return failure.condition
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_GONE):
            await done.transport.send_all(STREAM_CLOSE)
            await done.transport.aclose()
        return done.outcome

    async def _establish(self, local: str, remote: str,
                         verify: VerifyRequest | None) -> _Established:
        """Resolves `remote`, tries each target in turn; raises _Failure."""
        try:
            targets = await resolver.resolve(remote, min(self.config.connect_timeout, 10.0))
        except resolver.ResolutionFailed as exc:
            raise _Failure(exc.condition, str(exc)) from None
        last = f"no server for {remote}"
        for target in targets:
            try:
                tcp = await trio.open_tcp_stream(target.host, target.port)
            except OSError as exc:
                last = f"{target.host}:{target.port}: {exc.strerror or exc}"
                continue
            try:
                return await self._negotiate(tcp, local, remote, verify, target)
            except _GONE as exc:
                last = f"{target.host}:{target.port}: {exc!r}"
                with contextlib.suppress(*_GONE):
                    await tcp.aclose()
            except BaseException:
                with trio.CancelScope(shield=True), contextlib.suppress(*_GONE):
                    await tcp.aclose()
                raise
        raise _Failure("remote-server-not-found", last)

    async def _negotiate(self, transport: trio.abc.Stream, local: str, remote: str,
                         verify: VerifyRequest | None, target: resolver.Target) -> _Established:
        cfg = self.config
        core = OutgoingStream(local, remote, self.secret, require_tls=cfg.require_tls,
                              dialback=not cfg.require_valid_certificates, verify=verify)
        if target.direct_tls:
            transport = await self._client_tls(transport, remote)
            core.tls_active = True
        framer = StreamFramer(max_stanza_size=cfg.max_stanza_size, max_depth=MAX_DEPTH,
                              stream_ns=SERVER)
        peer = f"{target.host}:{target.port}"
        pending = core.start()
        while True:
            for action in pending:
                if isinstance(action, Send):
                    await transport.send_all(action.data)
                elif isinstance(action, StartTLS):
                    transport = await self._client_tls(transport, remote)
                    framer.reset()
                    for follow in core.tls_started():
                        if isinstance(follow, Send):
                            await transport.send_all(follow.data)
                elif isinstance(action, ResetFramer):
                    framer.reset()
                elif isinstance(action, Ready):
                    return _Established(transport, framer, core, peer, action.method)
                elif isinstance(action, Verified):
                    return _Established(transport, framer, core, peer, action.valid)
                elif isinstance(action, Failed):
                    raise _Failure(action.condition, f"{remote} ({peer}): {action.reason}")
                elif isinstance(action, Close):
                    with contextlib.suppress(*_GONE):
                        await transport.send_all(STREAM_CLOSE)
                    raise _Failure("remote-server-not-found", f"{remote} ({peer}) closed")
            data = await transport.receive_some(READ_SIZE)
            if not data:
                raise trio.BrokenResourceError(f"{remote} closed the connection")
            try:
                events = framer.feed(data)
            except StreamError as exc:
                raise _Failure("remote-server-not-found", f"{remote} sent bad XML: {exc}") from None
            pending = [a for event in events for a in core.receive(event)]

    async def _client_tls(self, transport: trio.abc.Stream, remote: str) -> trio.SSLStream:
        stream = trio.SSLStream(transport, self.contexts.client, server_hostname=remote)
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
        if self.config.require_valid_certificates:
            certificate = self.contexts.peer_certificate(stream)
            if not certificate.valid_for(remote):
                raise _Failure("remote-server-not-found",
                               f"{remote} has no valid certificate for its domain")
        return stream

    # -- incoming -----------------------------------------------------------------------------------

    async def _serve(self, listener: trio.SocketListener, direct_tls: bool) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:
                return
            try:
                admission = self.admission.admit(host, trio.current_time())
            except Refused as refused:
                log.debug("s2s connection refused: %s", refused)
                with trio.CancelScope(shield=True), contextlib.suppress(*_GONE):
                    await stream.aclose()
                return
            try:
                await IncomingConnection(self, stream, f"{host}:{port}", direct_tls).run()
            except Exception:
                log.exception("s2s connection from %s:%s crashed", host, port)
            finally:
                admission.release()

        await trio.serve_listeners(handle, [listener])

    def incoming_settings(self) -> IncomingSettings:
        cfg = self.config
        return IncomingSettings(is_local=self.manager.is_local, dialback_secret=self.secret,
                                allowed=self.manager.allowed, require_tls=cfg.require_tls,
                                dialback=not cfg.require_valid_certificates)


class IncomingConnection:
    def __init__(self, edge: S2SEdge, transport: trio.abc.Stream, peer: str,
                 direct_tls: bool) -> None:
        self.edge = edge
        self.manager = edge.manager
        self.transport = transport
        self.peer = peer
        self.direct_tls = direct_tls
        cfg = edge.config
        self.framer = StreamFramer(max_stanza_size=cfg.max_stanza_size, max_depth=MAX_DEPTH,
                                   stream_ns=SERVER)
        self.core = IncomingStream(edge.incoming_settings())
        self.handle = IncomingHandle(secrets.token_hex(8), peer, close=self._close_requested)
        self._send_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closing: StreamError | None = None

    async def run(self) -> None:
        self.manager.incoming_opened(self.handle)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._auth_watchdog)
                if self.direct_tls:
                    await self._start_tls()
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except* (_Ended, trio.TooSlowError, *_GONE):
            pass
        finally:
            self.manager.incoming_closed(self.handle)
            with trio.CancelScope(shield=True), trio.move_on_after(2), \
                    contextlib.suppress(*_GONE):
                if self._closing is not None:
                    await self.transport.send_all(self._opened_if_needed() +
                                                  self._closing.to_bytes() + STREAM_CLOSE)
                await self.transport.aclose()

    def _opened_if_needed(self) -> bytes:
        if self.core.header_sent:
            return b""
        return stream_header(self.core.local, None, secrets.token_hex(16))

    def _close_requested(self, error: StreamError) -> None:
        if self._closing is None and self._nursery is not None:
            self._closing = error
            self._nursery.cancel_scope.cancel()

    async def _auth_watchdog(self) -> None:
        await trio.sleep(self.edge.config.auth_timeout)
        if not self.core.validated:
            log.info("s2s stream from %s did not authenticate within %gs", self.peer,
                     self.edge.config.auth_timeout)
            self._close_requested(StreamError("connection-timeout", "authenticate sooner"))

    async def _read_loop(self) -> None:
        while True:
            data = await self.transport.receive_some(READ_SIZE)
            if not data:
                return
            try:
                events = self.framer.feed(data)
            except StreamError as exc:
                await self._perform(self.core.fail(exc))
                return
            for event in events:
                await self._perform(self.core.receive(event))

    async def _perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                async with self._send_lock:
                    await self.transport.send_all(action.data)
            elif isinstance(action, StartTLS):
                await self._start_tls()
            elif isinstance(action, ResetFramer):
                self.framer.reset()
            elif isinstance(action, Stanza):
                await self.manager.route_incoming(action.element, self.handle)
            elif isinstance(action, Authenticated):
                self.manager.incoming_authenticated(self.handle, action.local, action.remote,
                                                    action.method)
            elif isinstance(action, VerifyDialback):
                assert self._nursery is not None
                self._nursery.start_soon(self._verify, action)
            elif isinstance(action, Close):
                if action.error is not None:
                    log.info("s2s stream from %s ended: %s", self.peer, action.error)
                async with self._send_lock:
                    with contextlib.suppress(*_GONE):
                        await self.transport.send_all(STREAM_CLOSE)
                raise _Ended

    async def _start_tls(self) -> None:
        stream = trio.SSLStream(self.transport, self.edge.contexts.server, server_side=True)
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
        self.transport = stream
        self.framer.reset()
        self.core.tls_started(self.edge.contexts.peer_certificate(stream))

    async def _verify(self, request: VerifyDialback) -> None:
        outcome = await self.edge.verify(request.local, request.remote, request.stream_id,
                                         request.key)
        log.info("dialback from %s for %s (%s): %s", request.remote, request.local, self.peer,
                 "valid" if outcome is True else "invalid" if outcome is False else outcome)
        try:
            await self._perform(self.core.verified(request.local, request.remote, outcome))
        except _Ended:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
