"""The trio edge of a client connection: a thin loop around the framer and ClientStream.

One task reads (framer → negotiation → router); once a resource is bound, a second
task writes the session's outgoing queue in batches, so a stanza routed to this
client from anywhere is one list append. A client that never authenticates is cut
off after PRE_AUTH_TIMEOUT (the Openfire pre-auth memory exhaustion), and nothing a
client sends can take more than this connection down.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

import trio

from raftxmpp.c2s import sasl
from raftxmpp.c2s.stream import (
    BindRequest,
    ClientStream,
    Close,
    PreAuthIq,
    ResetFramer,
    Send,
    Stanza,
    StartTLS,
    StreamSettings,
)
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError, StreamError, error_reply
from raftxmpp.xml.framer import StreamFramer
from raftxmpp.xml.stanza import STREAM_CLOSE, serialize

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.c2s")

PRE_AUTH_TIMEOUT = 60.0
TLS_HANDSHAKE_TIMEOUT = 15.0
READ_SIZE = 65536


class ConnectionClosed(Exception):
    pass


class C2SConnection:
    def __init__(self, node: Node, transport: trio.abc.Stream, direct_tls: bool, peer: str) -> None:
        self.node = node
        self.router = node.router
        self.transport = transport
        self.peer = peer
        self.direct_tls = direct_tls
        cfg = node.config.c2s
        self.framer = StreamFramer(max_stanza_size=cfg.max_stanza_size)
        loopback = _is_loopback(peer)
        self.core = ClientStream(StreamSettings(
            hosts=node.served_hosts,
            lookup_credentials=lambda user, domain: node.store.credentials(f"{user}@{domain}"),
            tls_available=node.ssl_context is not None,
            require_tls=cfg.require_tls and not (cfg.plaintext_auth_on_loopback and loopback),
            plaintext_auth=cfg.plaintext_auth_on_loopback and loopback,
            registration=cfg.registration,
            extra_features=lambda: [f() for f in self.router.stream_features],
        ))
        self.session: LocalSession | None = None

    # -- lifetime ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.direct_tls:
                    await self._start_tls()
                with trio.move_on_after(PRE_AUTH_TIMEOUT) as pre_auth:
                    await self._negotiate()
                if pre_auth.cancelled_caught:
                    await self._send_error(StreamError("connection-timeout", "authenticate sooner"))
                    raise ConnectionClosed
                await self._serve_bound()
        except* (ConnectionClosed, *_GONE):
            pass  # the peer went away or the stream was ended; cleanup follows
        finally:
            await self._cleanup()

    async def _negotiate(self) -> None:
        while self.session is None:
            for event in await self._read_events():
                await self._perform(self.core.receive(event))
                if self.session is not None:
                    return

    async def _serve_bound(self) -> None:
        session = self.session
        self._nursery.start_soon(self._write_loop, session)
        route = self.router.route_from_client
        while True:
            for event in await self._read_events():
                for action in self.core.receive(event):
                    if isinstance(action, Stanza):
                        await route(action.element, session)
                    elif isinstance(action, Close):
                        session.close(_PLAIN_CLOSE)  # any stream error was queued just before
                        return
                    elif isinstance(action, Send):
                        session.send(action.data)

    async def _read_events(self) -> list:
        data = await self.transport.receive_some(READ_SIZE)
        if not data:
            raise ConnectionClosed
        try:
            return self.framer.feed(data)
        except StreamError as exc:
            if self.session is not None:
                self.session.close(exc)
                await trio.sleep_forever()  # the writer flushes, sends the error and ends us
            await self._perform(self.core.fail(exc))
            raise ConnectionClosed from None

    # -- actions from the negotiation core ---------------------------------------------------------------

    async def _perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.transport.send_all(action.data)
            elif isinstance(action, StartTLS):
                await self._start_tls()
            elif isinstance(action, ResetFramer):
                self.framer.reset()
            elif isinstance(action, BindRequest):
                await self._bind(action)
            elif isinstance(action, PreAuthIq):
                await self._pre_auth_iq(action)
            elif isinstance(action, Close):
                # Any stream error went out in a Send just before.
                await self.transport.send_all(STREAM_CLOSE)
                raise ConnectionClosed

    async def _start_tls(self) -> None:
        ssl_stream = trio.SSLStream(self.transport, self.node.ssl_context, server_side=True)
        with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as scope:
            await ssl_stream.do_handshake()
        if scope.cancelled_caught:
            raise ConnectionClosed
        self.transport = ssl_stream
        self.framer.reset()
        self.core.settings.tls_active = True
        self.core.settings.channel_binding = (
            "tls-server-end-point", sasl.tls_server_end_point(self.node.certificate_der))

    async def _bind(self, request: BindRequest) -> None:
        domain, user = self.core.domain, self.core.username
        bare = f"{user}@{domain}"
        limit = self.node.config.limits.resources_per_account
        try:
            jid = JID.parse(f"{bare}/{request.resource or secrets.token_hex(6)}")
        except InvalidJID:
            await self._reply_error(request.iq, StanzaError("bad-request", text="invalid resource"))
            return
        existing = self.router.sessions.session(jid)
        if existing is None and limit and self.router.sessions.resource_count(bare) >= limit:
            await self._reply_error(request.iq, StanzaError("resource-constraint", type="wait",
                                                            text="too many resources"))
            return
        session = LocalSession(jid)
        replaced = self.router.sessions.bind(session)
        if replaced is not None:
            # RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>.
            replaced.close(StreamError("conflict", "replaced by a new connection"))
        await self._perform(self.core.bound(request.iq, session.full_jid))
        self.session = session
        log.info("session %s bound from %s", session.full_jid, self.peer)

    async def _pre_auth_iq(self, action: PreAuthIq) -> None:
        register = self.router.modules["register"]
        reply = await register.pre_auth(self.router, self.core, action.iq)
        await self.transport.send_all(serialize(reply))

    async def _reply_error(self, iq, error: StanzaError) -> None:
        await self.transport.send_all(serialize(error_reply(iq, error)))

    # -- writing once bound ---------------------------------------------------------------------------------

    async def _write_loop(self, session: LocalSession) -> None:
        send_all = self.transport.send_all
        while True:
            await session.wakeup.wait()
            data = session.take_outbox()
            if data:
                await send_all(data)
            if session.closing is not None:
                await self._send_error(session.closing)
                self._nursery.cancel_scope.cancel()
                return

    async def _send_error(self, error: StreamError) -> None:
        tail = STREAM_CLOSE if error is _PLAIN_CLOSE else error.to_bytes() + STREAM_CLOSE
        with trio.move_on_after(2), contextlib.suppress(*_GONE):
            await self.transport.send_all(tail)

    async def _cleanup(self) -> None:
        session = self.session
        if session is not None:
            self.router.sessions.unbind(session)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.router.run_hooks("session-closed", session)
                except Exception:
                    log.exception("cleanup of session %s failed", session.full_jid)
            log.info("session %s closed", session.full_jid)
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_GONE):
            await self.transport.aclose()


# The peer went away under us.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# Marks a close that needs only </stream:stream>: the peer closed, or the error went out already.
_PLAIN_CLOSE = StreamError("undefined-condition", "stream closed")


def _is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1") or host.startswith("127.")
