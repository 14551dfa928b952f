"""The trio edge of a client connection: a thin loop around the negotiation core.

It runs over any `ClientTransport` (raftxmpp.c2s.transport): a TCP stream here, a
WebSocket or a BOSH session from raftxmpp.web. One task reads (transport events →
negotiation → router); once a resource is bound, a second task writes the session's
outgoing queue in batches, so a stanza routed to this client from anywhere is one
list append. A client that never authenticates is cut off after `[c2s]
pre_auth_timeout` (the Openfire pre-auth memory exhaustion), and nothing a client
sends can take more than this connection down.

Limits applied here (raftxmpp.c2s.limits): a session that spends its read budget is
not read from until the bucket refills (the transport applies it; TCP pushes back; it
is not disconnected); logins go through the node's AuthThrottle (raftxmpp.c2s.login):
a throttled login is refused with <temporary-auth-failure/> before any account is
looked up, or waits its turn, and an unfinished exchange counts as a failure; a client
that stops reading is cut off when a write blocks longer than `[c2s] send_timeout`,
while its queue is capped by the session's outbox limit.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

import trio
from lxml import etree

from raftxmpp import metrics
from raftxmpp.c2s import csi, sasl, sm
from raftxmpp.c2s.limits import Admission, C2SGuards, host_of
from raftxmpp.c2s.login import LoginGuard
from raftxmpp.c2s.stream import (
    BindRequest,
    ClientStateChange,
    ClientStream,
    Close,
    PreAuthIq,
    ResetFramer,
    Send,
    SmRequest,
    Stanza,
    StartTLS,
    State,
    StreamSettings,
)
from raftxmpp.c2s.transport import ClientTransport, ConnectionClosed, TCPTransport
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.sessions import LocalSession, custody
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, StreamError, can_reply_with_error, error_reply
from raftxmpp.xml.framer import StanzaReceived, StreamFramer
from raftxmpp.xml.stanza import STREAM_CLOSE, make, serialize

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.c2s")

SASL_AUTH = f"{{{ns.SASL}}}auth"
# Stanzas of one client handled between two yields to the event loop.
STANZAS_PER_TURN = 16
# Seconds after the last write before asking a client for its ack (<r/>) when a message
# whose sender waits for it (custody, raftxmpp.c2s.sm) is among those it has not acked.
CUSTODY_REQUEST_DELAY = 0.05

__all__ = ["C2SConnection", "ConnectionClosed", "framer_for", "tcp_connection"]


def framer_for(node: Node) -> StreamFramer:
    """A stream framer with the node's [c2s] input bounds, for any client transport."""
    cfg = node.config.c2s
    return StreamFramer(max_stanza_size=cfg.max_stanza_size, max_depth=cfg.max_stanza_depth,
                        max_idle_whitespace=cfg.max_idle_whitespace)


def tcp_connection(node: Node, stream: trio.abc.Stream, direct_tls: bool, peer: str,
                   guards: C2SGuards | None = None,
                   admission: Admission | None = None) -> C2SConnection:
    """A client connection over a TCP stream (RFC 6120), STARTTLS or direct TLS."""
    bucket = guards.read_bucket(host_of(peer), trio.current_time()) if guards else None
    transport = TCPTransport(stream, peer, framer_for(node), bucket)
    return C2SConnection(node, transport, guards, admission, direct_tls=direct_tls)


class C2SConnection:
    def __init__(self, node: Node, transport: ClientTransport, guards: C2SGuards | None = None,
                 admission: Admission | None = None, direct_tls: bool = False) -> None:
        self.node = node
        self.router = node.router
        self.transport = transport
        self.peer = transport.peer
        self.ip = host_of(self.peer)
        self.direct_tls = direct_tls
        cfg = node.config.c2s
        loopback = _is_loopback(self.peer)
        self.core = ClientStream(StreamSettings(
            hosts=node.served_hosts,
            lookup_credentials=self._lookup_credentials,
            tls_active=transport.secure,
            tls_available=transport.can_starttls and node.ssl_context is not None,
            require_tls=cfg.require_tls and not (cfg.plaintext_auth_on_loopback and loopback),
            plaintext_auth=cfg.plaintext_auth_on_loopback and loopback,
            registration=cfg.registration,
            scram_iterations=cfg.scram_iterations,
            unknown_account_key=guards.unknown_account_key if guards else None,
            extra_features=lambda: [f() for f in self.router.stream_features],
        ))
        self.session: LocalSession | None = None
        self.guards = guards
        self.admission = admission
        self.login = LoginGuard(guards.auth if guards else None, self.ip)
        self._credentials_stale = False
        self._in_worker = False  # core.receive runs in a worker thread (PLAIN's PBKDF2)
        self.write_started: float | None = None  # when the write in progress began
        self._nursery: trio.Nursery | None = None
        self._leftover: list = []  # events read with the one that bound or resumed
        self.last_read = trio.current_time()  # for the server's pings (XEP-0199)
        self._acking = False  # an unsolicited <a/> is being prepared (custody)
        self._pinging = False  # bound and serving: the sweep's keep_alive pings it
        self._ping_serial = 0
        self._ping_asked: float | None = None  # when the unanswered ping went out

    # -- lifetime ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        metrics.C2S_CONNECTIONS.inc()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.direct_tls:
                    await self._start_tls()
                with trio.move_on_after(self.node.config.c2s.pre_auth_timeout) as pre_auth:
                    await self._negotiate()
                if pre_auth.cancelled_caught:
                    await self._send_error(StreamError("connection-timeout", "authenticate sooner"))
                    raise ConnectionClosed
                await self._serve_bound()
        except* (ConnectionClosed, *_GONE):
            pass  # the peer went away or the stream was ended; cleanup follows
        finally:
            self._pinging = False
            metrics.C2S_CONNECTIONS.dec()
            self.login.close()
            await self._cleanup()

    async def _negotiate(self) -> None:
        while self.session is None:
            events = await self._read_events()
            for i, event in enumerate(events):
                if self._starts_sasl(event):
                    await self._make_credentials_current()
                await self.login.before(self.core.claimed_account(event))
                await self._perform(await self._receive_before_bind(event))
                if self.session is not None:
                    # A client may pipeline stanzas (or <enable/>) behind its bind or
                    # resume: they belong to the session.
                    self._leftover = events[i + 1:]
                    return

    async def _receive_before_bind(self, event) -> list:
        """core.receive, plus the login throttle's bookkeeping around SASL."""
        core = self.core
        failures = core.auth_failures
        if self._derives_key(event):
            # PLAIN derives the SCRAM key (PBKDF2, ~1 ms of CPU): in a worker thread,
            # where hashlib releases the GIL, so the loop serves the other connections.
            self._in_worker = True
            try:
                actions = await trio.to_thread.run_sync(core.receive, event)
            finally:
                self._in_worker = False
        else:
            actions = core.receive(event)
        self.login.outcome(failed=core.auth_failures > failures, succeeded=core.authenticated)
        if core.authenticated and self.admission is not None:
            self.admission.authenticated()
        return actions

    def _derives_key(self, event) -> bool:
        return self._starts_sasl(event) and event.element.get("mechanism") == "PLAIN"

    def _starts_sasl(self, event) -> bool:
        return (self.core.state is State.AUTH and isinstance(event, StanzaReceived)
                and event.element.tag == SASL_AUTH)

    async def _make_credentials_current(self) -> None:
        """Credentials are read after a shared Raft barrier: a node cut off from the
        majority must not accept a password that was changed on the other side."""
        try:
            await self.node.raft.fresh()
            self._credentials_stale = False
        except RaftUnavailable:
            self._credentials_stale = True

    def _lookup_credentials(self, user: str, domain: str):
        """The SASL mechanisms' account lookup; refuses throttled logins first, the same
        way for accounts that exist and accounts that do not."""
        if self._in_worker:  # the throttle's shared state lives on the trio thread
            return trio.from_thread.run_sync(self._lookup_credentials_here, user, domain)
        return self._lookup_credentials_here(user, domain)

    def _lookup_credentials_here(self, user: str, domain: str):
        account = f"{user}@{domain}"
        self.login.begin(account)
        if self._credentials_stale:
            self.login.withdraw()  # not the client's fault: no failure counted
            raise sasl.SaslFailure("temporary-auth-failure", "the cluster cannot confirm "
                                   "credentials now; try again")
        return self.node.store.credentials(account)

    async def _serve_bound(self) -> None:
        session = self.session
        self._nursery.start_soon(self._write_loop, session)
        self._pinging = self.node.config.c2s.ping_interval > 0  # the listener's sweep pings
        route = self.router.route_from_client
        table = self.router.custody
        events, self._leftover = self._leftover, []
        handled = 0
        while True:
            for event in events:
                for action in self.core.receive(event):
                    if isinstance(action, Stanza):
                        element = action.element
                        metrics.STANZAS_IN[element.tag].inc()
                        if session.sm is None:
                            await route(element, session)
                        else:
                            # What an ack promises: handled, and a message worth keeping
                            # settled (raftxmpp.c2s.sm); the reading never waits for that.
                            record = table.start(element)
                            if record is None:
                                await route(element, session)
                            else:
                                token = custody.set((record, element, table))
                                try:
                                    await route(element, session)
                                finally:
                                    custody.reset(token)
                            session.sm.handled_one(record)
                        handled += 1
                        if handled % STANZAS_PER_TURN == 0:
                            # One read may hold thousands of stanzas: every other client
                            # gets a turn between them (issue 13, finding 1).
                            await trio.lowlevel.checkpoint()
                    elif isinstance(action, SmRequest):
                        await self._sm_bound(action.element)
                    elif isinstance(action, ClientStateChange):
                        self._client_state(session, action.active)
                    elif isinstance(action, Close):
                        session.close(_PLAIN_CLOSE)  # any stream error was queued just before
                        return
                    elif isinstance(action, Send):
                        session.send_nonza(action.data)  # never a stanza: never counted
            # An idle client waits in the read below for minutes: it must not keep the
            # last stanza it sent alive meanwhile (its element's document holds on to the
            # parser it came from).
            events = event = action = element = record = token = None
            events = await self._read_events()

    async def _read_events(self) -> list:
        try:
            events = await self.transport.receive()
            self.last_read = trio.current_time()
            return events
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
                await self.transport.send_stream(action.data)
            elif isinstance(action, StartTLS):
                await self._start_tls()
            elif isinstance(action, ResetFramer):
                self.transport.restart()
            elif isinstance(action, BindRequest):
                await self._bind(action)
            elif isinstance(action, PreAuthIq):
                await self._pre_auth_iq(action)
            elif isinstance(action, SmRequest):
                await self._sm_before_bind(action.element)
            elif isinstance(action, Close):
                # Any stream error went out in a Send just before.
                await self.transport.send_stream(STREAM_CLOSE)
                raise ConnectionClosed

    async def _start_tls(self) -> None:
        await self.transport.start_tls(self.node.ssl_context)
        self.core.settings.tls_active = True
        self.core.settings.tls_available = False
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
        session.owner = self
        replaced = self.router.sessions.bind(session)
        if replaced is not None:
            # RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>.
            replaced.close(StreamError("conflict", "replaced by a new connection"))
        await self._perform(self.core.bound(request.iq, session.full_jid))
        self.session = session
        log.info("session %s bound from %s", session.full_jid, self.peer)

    async def _pre_auth_iq(self, action: PreAuthIq) -> None:
        if not can_reply_with_error(action.iq):
            return  # an unsolicited result or error is dropped (RFC 6120 §8.2.3)
        if (action.iq.get("type") == "set" and self.guards is not None
                and not self.guards.registration_allowed(self.ip, trio.current_time())):
            # Each registration is a Raft write and a key derivation: paced per address.
            await self._reply_error(action.iq, StanzaError(
                "resource-constraint", type="wait", text="too many registrations; try later"))
            return
        register = self.router.modules["register"]
        reply = await register.pre_auth(self.router, self.core, action.iq)
        await self.transport.send_stream(serialize(reply))

    async def _reply_error(self, iq, error: StanzaError) -> None:
        await self.transport.send_stream(serialize(error_reply(iq, error)))

    # -- writing once bound ---------------------------------------------------------------------------------

    async def _write_loop(self, session: LocalSession) -> None:
        send_stanzas = self.transport.send_stanzas
        clock = trio.current_time
        while True:
            await self._wait_for_output(session)
            if session.owner is not self:
                return  # a resumption on another connection took the session over
            metrics.count_stanzas_out(session.outbox)
            nonzas, session.nonzas = session.nonzas, []
            chunks = session.take_chunks()
            if session.csi is not None:
                chunks = session.csi.take(chunks)  # an inactive client is spared some
            if session.sm is not None and (chunks or session.sm.unacked):
                chunks = self._count_out(session, chunks)
            data = nonzas + chunks if nonzas else chunks
            if data:
                # A client that stops reading blocks this write; its outbox stops growing
                # at the session's cap, and the listener's sweep (cut_if_stalled) ends
                # the connection. A timestamp costs less here than a cancel scope per write.
                self.write_started = clock()
                await send_stanzas(data)
                self.write_started = None
            if session.closing is not None:
                await self._send_error(session.closing)
                self._nursery.cancel_scope.cancel()
                return

    async def _wait_for_output(self, session: LocalSession) -> None:
        """Waits for something to write; with stanzas unacknowledged and no <r/> out, asks
        for an ack after [stream_management] ack_interval seconds even if nothing comes
        (CUSTODY_REQUEST_DELAY when a sender waits for it)."""
        state = session.sm
        if state is None or not state.unacked or state.request_pending:
            await session.wakeup.wait()
            return
        # A message whose sender's ack waits for this client's (custody): asked for as
        # soon as the flow pauses; under a steady flow every `ack_every` stanzas ask.
        wait = CUSTODY_REQUEST_DELAY if state.custody_written else \
            self.node.config.stream_management.ack_interval
        with trio.move_on_after(wait) as idle:
            await session.wakeup.wait()
        if idle.cancelled_caught:
            session.send_nonza(state.requested())

    def _count_out(self, session: LocalSession, chunks: list[bytes]) -> list[bytes]:
        """XEP-0198 §4: stanzas join the unacked queue as they are written; an <r/>
        follows every `ack_every` of them."""
        cfg = self.node.config.stream_management
        state = session.sm
        state.wrote(chunks)
        if cfg.max_unacked and len(state.unacked) > cfg.max_unacked:
            session.close(StreamError("resource-constraint", "too many unacknowledged stanzas"))
        if state.should_request(cfg.ack_every):
            return [*chunks, state.requested()]
        return chunks

    def _client_state(self, session: LocalSession, active: bool) -> None:
        """XEP-0352: <inactive/> holds back what can wait; <active/> flushes it."""
        limit = self.node.config.c2s.csi_max_held
        if not limit:
            return  # not offered: ignored, as the XEP allows for a server without it
        if session.csi is None:
            session.csi = csi.ClientState(max_held=limit)
        session.csi.inactive = not active
        if active:
            session.wakeup.set()

    def keep_alive(self, now: float, interval: float, timeout: float) -> None:
        """XEP-0199 from the server: a client silent for `interval` is pinged; one that
        sends nothing within `timeout` after is taken for gone (a half-open connection: a
        phone that lost its network). Its connection ends without a stream error, so a
        resumable session is detached, ready for the client. Called by the listener's
        sweep (a task and a timer per connection cost an idle client ~3 KiB, issue 22)."""
        if not self._pinging:
            return
        session = self.session
        asked = self._ping_asked
        if asked is not None:
            if self.last_read >= asked:
                self._ping_asked = None  # answered (any byte will do)
            elif now - asked >= timeout:
                log.info("session %s did not answer a ping in %gs: connection lost",
                         session.full_jid, timeout)
                metrics.C2S_PING_TIMEOUTS.inc()
                self._pinging = False
                self._nursery.cancel_scope.cancel()
                return
            else:
                return
        if now - self.last_read >= interval:
            self._ping_serial += 1
            self._ping_asked = now
            session.send_stanza(_server_ping(session, self._ping_serial))

    def taken_over(self) -> None:
        """A resumption elsewhere adopted our session: end this connection quietly."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def cut_if_stalled(self, now: float, timeout: float) -> bool:
        """Ends the connection if one write has been blocked for `timeout` seconds: the
        client stopped reading (the listener's sweep calls this)."""
        started = self.write_started
        if started is None or now - started < timeout or self._nursery is None:
            return False
        where = self.session.full_jid if self.session is not None else self.peer
        log.warning("session %s stopped reading for %gs; closing it", where, timeout)
        self._nursery.cancel_scope.cancel()
        return True

    async def _send_error(self, error: StreamError) -> None:
        tail = STREAM_CLOSE if error is _PLAIN_CLOSE else error.to_bytes() + STREAM_CLOSE
        with trio.move_on_after(2), contextlib.suppress(*_GONE):
            await self.transport.send_stream(tail)

    async def _cleanup(self) -> None:
        # The socket goes first: the session-closed hooks may wait for Raft (the last
        # logout, XEP-0012), and a client cut off for what it sent must not be read on.
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_GONE):
            await self.transport.aclose()
        if self.admission is not None:
            self.admission.release()  # the address's slot is free with the socket (idempotent)
        session = self.session
        if session is None or session.owner is not self:
            return  # never bound, or resumed on another connection
        session.release_held()
        if self._detachable(session):
            try:
                if await self._wait_for_resumption(session):
                    return
            except trio.Cancelled:
                await self._end_session(session)  # the node is stopping
                raise
        await self._end_session(session)

    def _detachable(self, session: LocalSession) -> bool:
        """XEP-0198 §5: a resumable session whose connection was lost (not closed by
        the client, not ended by a stream error) waits for its client."""
        state = session.sm
        return (state is not None and state.resumable and session.closing is None
                and not self.node.stopping)

    async def _wait_for_resumption(self, session: LocalSession) -> bool:
        """Holds the detached session until a resumption adopts it (True), or it times
        out or is ended (a conflict, a kick, a full queue, the node stopping)."""
        session.owner = None
        session.detached_at = time.time()
        self._forget_stream()
        self.router.sessions.publish(session)
        metrics.SM_SESSIONS.labels("detached").inc()
        metrics.SM_DETACHED.labels("detached").inc()
        log.info("session %s detached; held %gs for a resumption", session.full_jid,
                 session.sm.timeout)
        try:
            with trio.move_on_after(session.sm.timeout):
                await self.router.resumption.hold_detached(session)
        finally:
            metrics.SM_DETACHED.labels("detached").dec()
        if session.owner is not None:
            return True
        if session.closing is None:
            metrics.SM_SESSIONS.labels("expired").inc()
        return False

    def _forget_stream(self) -> None:
        """A detached session may wait minutes: the closed channel's parser and the
        negotiation state go now, only the session (its queue and counters) stays."""
        framer = getattr(self.transport, "framer", None)
        if framer is not None:
            self.transport.framer = None
        self.core = None

    async def _end_session(self, session: LocalSession) -> None:
        """The session is over: out of the table, its hooks run, its unacked stanzas on."""
        self.router.sessions.unbind(session)
        self.router.resumption.forget(session)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            try:
                await self.router.run_hooks("session-closed", session)
                await self.router.resumption.session_ended(session)
            except Exception:
                log.exception("cleanup of session %s failed", session.full_jid)
        log.info("session %s closed", session.full_jid)

    # -- stream management (XEP-0198) -------------------------------------------------------------

    async def _sm_before_bind(self, element) -> None:
        """After authentication, before binding: only <resume/> is in order here."""
        if element.tag == sm.RESUME and self.node.config.stream_management.enabled:
            await self._resume(element)
        elif element.tag in (sm.ENABLE, sm.RESUME):
            await self.transport.send_stream(sm.failed("unexpected-request"))
        else:
            await self._perform(self.core.fail(StreamError(
                "unsupported-stanza-type", "stream management is not enabled")))

    async def _sm_bound(self, element) -> None:
        session = self.session
        state = session.sm
        try:
            if element.tag == sm.ENABLE:
                self._enable(session, element)
            elif element.tag == sm.RESUME:
                session.send_nonza(sm.failed("unexpected-request", text="already bound"))
            elif state is None:
                raise StreamError("unsupported-stanza-type", "stream management is not enabled")
            elif element.tag == sm.REQUEST:
                # Modules whose writes trail the routing (the archive's batches) finish
                # them first: an ack promises they are committed (XEP-0313 + XEP-0198).
                try:
                    await self.router.run_hooks("sm-before-ack", session)
                except RaftUnavailable:
                    return  # not answered now: the client asks again
                session.send_nonza(state.answer())
            elif element.tag == sm.ANSWER:
                state.acknowledged(sm.parse_h(element))
            else:
                raise StreamError("unsupported-stanza-type", "unknown stream management element")
        except StreamError as exc:
            session.close(exc)
            await trio.sleep_forever()  # the writer sends the error and ends us

    def _ack_due(self) -> None:
        """More of the client's stanzas settled since its last <a/>: one task sends the
        unsolicited ack (coalescing what settles meanwhile)."""
        session = self.session
        if self._acking or session is None or session.owner is not self or self._nursery is None:
            return
        self._acking = True
        try:
            self._nursery.start_soon(self._send_unsolicited_ack, session)
        except RuntimeError:  # the connection is ending: the next one reports it
            self._acking = False

    async def _send_unsolicited_ack(self, session: LocalSession) -> None:
        state = session.sm
        try:
            while state.ack_due and session.owner is self:
                h = state.settled_h()  # taken first: rows of stanzas handled later may wait
                try:
                    # As for an <r/>: the archive rows of what it covers are committed.
                    await self.router.run_hooks("sm-before-ack", session)
                except RaftUnavailable:
                    await trio.sleep(1)
                    continue
                if state.reported is None or (h - state.reported) % sm.WRAP < sm.WRAP // 2:
                    session.send_nonza(state.answer(h))
                state.ack_due = state.settled_h() != state.reported  # more settled meanwhile
        finally:
            self._acking = False

    def _enable(self, session: LocalSession, element) -> None:
        cfg = self.node.config.stream_management
        if session.sm is not None or not cfg.enabled:
            reason = "already enabled" if session.sm is not None else "not offered"
            session.send_nonza(sm.failed("unexpected-request", text=reason))
            return
        state = sm.StreamManagement(resumable=element.get("resume") in ("true", "1")
                                    and cfg.resume_timeout > 0)
        if state.resumable:
            state.id = self.router.resumption.new_id(session.full_jid)
            state.timeout = _resume_timeout(element.get("max"), cfg.resume_timeout)
        session.sm = state
        state.on_ack_due = self._ack_due
        session.send_nonza(sm.enabled(state, int(state.timeout), cfg.location))
        if state.resumable:
            self.router.sessions.publish(session)
            self.router.resumption.serve(self._rpc())
        metrics.SM_SESSIONS.labels("enabled").inc()

    async def _resume(self, element) -> None:
        try:
            h = sm.parse_h(element)
        except StreamError:
            await self.transport.send_stream(sm.failed("bad-request", text="bad 'h'"))
            return
        previd = element.get("previd", "")
        bare = f"{self.core.username}@{self.core.domain}"
        resumption = self.router.resumption
        found = resumption.find(previd, bare)
        remembered = resumption.remembered_h(previd)
        moved = found is not None and not found.is_local
        if moved:
            # Held on another node (the gossiped table says which): it hands it over.
            found = await resumption.take_from(found, previd, bare, self._rpc())
            if isinstance(found, int):
                found, remembered = None, found
        if found is None or found.closing is not None:
            metrics.SM_RESUME_FAILED.inc()
            await self.transport.send_stream(sm.failed("item-not-found", remembered))
            return
        try:
            adopted = await self._adopt(found, previd, h)
        except ConnectionClosed:
            if moved:
                await self._end_session(found)  # moved here, then refused: it ends here
            raise
        if not adopted:
            metrics.SM_RESUME_FAILED.inc()
            await self.transport.send_stream(sm.failed("item-not-found"))
            return
        resumption.serve(self._rpc())
        metrics.SM_RESUMED.inc()
        if not moved:
            metrics.SM_SESSIONS.labels("resumed_local").inc()

    def _rpc(self):
        cluster = self.node.cluster
        return cluster.rpc if cluster is not None else None

    async def _adopt(self, session: LocalSession, previd: str, h: int) -> bool:
        """§5: this connection takes the session over; what the client's `h` does not
        cover is sent again, after <resumed/>."""
        state = session.sm
        await self.router.resumption.settle(session)  # no park under way: none sent twice
        if session.closing is not None or session.owner == sm.HANDED_OVER:
            return False  # ended or moved elsewhere while we waited
        try:
            again, delivered_ids = state.rewind(h)
        except sm.HandledCountTooHigh as exc:
            await self._perform(self.core.fail(exc))
            return False
        old, session.owner = session.owner, self
        session.detached_at = None
        if old is not None:
            old.taken_over()  # a half-open connection the client gave up on
        state.on_ack_due = self._ack_due
        session.nonzas = [sm.resumed(previd, state.restart_inbound())]
        session.release_held()
        session.csi = None  # a new connection starts active (XEP-0352 §5)
        session.outbox[:0] = again
        session.outbox_bytes += sum(map(len, again))
        session.wakeup.set()
        self.core.resumed()
        self.session = session
        self.router.sessions.publish(session)
        # Parked messages (committed while detached) come from offline storage, once.
        self._nursery.start_soon(self.router.resumption.after_resumption, session,
                                 delivered_ids)
        log.info("session %s resumed from %s (%d stanzas sent again)", session.full_jid,
                 self.peer, len(again))
        return True


# The peer went away under us.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# Marks a close that needs only </stream:stream>: the peer closed, or the error went out already.
_PLAIN_CLOSE = StreamError("undefined-condition", "stream closed")


def _server_ping(session: LocalSession, serial: int):
    ping = make("iq", {"type": "get", "id": f"srv-ping-{serial}", "to": session.full_jid,
                       "from": session.jid.domain})
    etree.SubElement(ping, f"{{{ns.PING}}}ping", nsmap={None: ns.PING})
    return ping


def _resume_timeout(asked: str | None, configured: float) -> float:
    """§5: the client's preferred 'max', if it asks for less than the server allows."""
    if asked is not None and asked.isdigit() and 0 < int(asked) < configured:
        return float(asked)
    return configured


def _is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1") or host.startswith("127.")
