"""BOSH (XEP-0124, XMPP over it per XEP-0206) at /http-bind, on any node.

A BOSH session is a c2s connection (raftxmpp.c2s.connection) whose transport is a
`BoshSession`: request bodies become stream events, and what the connection writes
waits in `pending` until a held request carries it back.

On any node, without sticky load balancing (the seeds' Tigase notes need sticky
sessions; we do not): the node that creates a session owns it and announces it as an
owner-written gossip entry `b:<sid>`, like sessions. A request that reaches another
node is forwarded over the authenticated node link to the owner (raftxmpp.cluster.rpc)
and the owner's answer is returned, so one node keeps the session's rid sequence and
nothing breaks it. If the owner dies its entries are purged and the session ends with
`item-not-found`, as XEP-0124 §17.2 prescribes for an unknown sid; the client logs in
again (stream management resumption, when it lands, will make that seamless).

Rules implemented (XEP-0124 sections): session creation with wait/hold/requests/
inactivity/polling/maxpause and the xbosh attributes (§7, XEP-0206 §3); rids in a
window of `requests` (§14.1): out-of-order requests wait their turn, a repeated rid
gets the same answer again (§14.3, broken connections), one outside the window ends
the session; hold: the oldest held request is answered when a newer one would exceed
`hold` (§11); wait: an empty answer after `wait` seconds; pause (§10); terminate
(§13); stream restart (XEP-0206 §5); acks (§9.1-9.2); inactivity (§7.1); terminal
conditions with HTTP 200 (§17.2).
"""

from __future__ import annotations

import collections
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from lxml import etree

from raftxmpp.c2s.limits import Refused, host_of
from raftxmpp.c2s.transport import ConnectionClosed
from raftxmpp.cluster.rpc import RpcError
from raftxmpp.web import framing
from raftxmpp.web.http import HTTPError, Request, Response
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import Event, StanzaReceived, StreamClosed, StreamFramer, StreamOpened

if TYPE_CHECKING:
    from raftxmpp.web.server import WebServer

log = logging.getLogger("raftxmpp.web.bosh")

PATH = "/http-bind"
HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
CONTENT_TYPE = "text/xml; charset=utf-8"
GOSSIP_PREFIX = "b:"
VERSION = "1.11"
HOLD_MAX = 1  # requests = hold + 1 (XEP-0124 §7.1: two connections are enough)
POLLING = 2  # seconds: the shortest polling interval we tell clients
FORWARD_MARGIN = 15.0  # seconds beyond `wait` a forwarded request may take
OWNER_WAIT = 2.0  # seconds to wait for a new session's gossip entry to arrive
MAX_PENDING_BYTES = 1024 * 1024  # output waiting for a request (as c2s's outbox cap)

_BODY = f"{{{HTTPBIND}}}body"
_SYNTHETIC_HEADER = (f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}' "
                     "version='1.0'>").encode()
_DECLARATION = b"<?xml"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Terminate(Exception):
    """Ends a session, or refuses a request, with a terminal binding condition."""

    def __init__(self, condition: str, children: list[bytes] | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.children = children or []


def parse_body(raw: bytes, framer: StreamFramer) -> etree._Element:
    """The request's <body/>, parsed with the c2s framer's limits; raises StreamError."""
    raw = raw.lstrip()
    if raw.startswith(_DECLARATION):
        end = raw.find(b"?>")
        raw = raw[end + 2:] if end > 0 else raw
    framer.feed(_SYNTHETIC_HEADER)
    events = framer.feed(raw)
    if len(events) != 1 or not isinstance(events[0], StanzaReceived) \
            or not framer.between_stanzas or events[0].element.tag != _BODY:
        raise StreamError("bad-format", "the request is not one <body/> in the httpbind namespace")
    return events[0].element


def render_body(attrs: dict[str, str], children: list[bytes] = ()) -> bytes:
    """A response <body/>; children are standalone documents (framing.Element data)."""
    rendered = "".join(f" {name}={_quote(value)}" for name, value in attrs.items())
    head = (f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' xmlns:stream='{ns.STREAM}'"
            f"{rendered}").encode()
    if not children:
        return head + b"/>"
    return head + b">" + b"".join(children) + b"</body>"


def terminate_body(condition: str | None, children: list[bytes] = ()) -> bytes:
    attrs = {"type": "terminate"}
    if condition:
        attrs["condition"] = condition
    return render_body(attrs, children)


def _quote(value: str) -> str:
    return "'" + value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;") + "'"


def _int_attr(body: etree._Element, name: str, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 18:
        raise Terminate("bad-request")
    return int(value)


@dataclass
class _Answer:
    """The answer to one rid, kept for a repeated request (XEP-0124 §14.3)."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes = b""


@dataclass
class _Held:
    rid: int
    done: trio.Event = field(default_factory=trio.Event)
    children: list[bytes] | None = None  # set when it is answered


class BoshSession:
    """One BOSH session: a c2s ClientTransport, and the state of its requests."""

    can_starttls = False

    def __init__(self, sid: str, peer: str, secure: bool, to: str, lang: str, rid: int,
                 wait: int, hold: int, acks: bool, inactivity: float, max_pause: float,
                 on_end: Callable[[BoshSession], None]) -> None:
        self.sid = sid
        self.peer = peer
        self.secure = secure
        self.to = to
        self.lang = lang
        self.wait = wait
        self.hold = hold
        self.requests = hold + 1
        self.acks = acks
        self.inactivity = inactivity
        self.max_pause = max_pause
        self._on_end = on_end
        self.next_rid = rid  # the rid to process next
        self.highest_rid = rid - 1
        self.events_in, self._events_out = _channel()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.output = trio.Event()  # set once the connection wrote anything
        self.held: collections.deque[_Held] = collections.deque()
        self.answers: collections.OrderedDict[int, _Answer] = collections.OrderedDict()
        self.turn = trio.Event()  # set whenever next_rid advances
        self.terminated: str | None = None  # "" for a plain end, else the condition
        self.closed = False
        self.authid = ""
        self.last_request = trio.current_time()
        self._paused_until = 0.0

    # -- requests (from the HTTP side, on this node or forwarded) ----------------------------------

    async def request(self, body: etree._Element) -> bytes:
        rid = _int_attr(body, "rid")
        if rid is None:
            raise Terminate("bad-request")
        self.last_request = trio.current_time()
        if rid < self.next_rid:
            answer = self.answers.get(rid)
            if answer is None:
                self._fail("item-not-found")  # an old rid we no longer remember
            with trio.move_on_after(self.wait + 5):
                await answer.done.wait()
            return answer.data  # §14.3: the same answer again
        if rid >= self.next_rid + self.requests:
            self._fail("item-not-found")  # outside the window (§14.1)
        self.highest_rid = max(self.highest_rid, rid)
        with trio.move_on_after(self.wait) as late:
            while rid != self.next_rid:
                await self.turn.wait()
        if late.cancelled_caught:
            self._fail("item-not-found")  # a gap the client never filled
        answer = _Answer()
        self.answers[rid] = answer
        while len(self.answers) > self.requests + 1:
            self.answers.popitem(last=False)
        try:
            answer.data = await self._process(rid, body)
        except Terminate as end:
            answer.data = terminate_body(end.condition, end.children)
        finally:
            answer.done.set()
            # §7.1: inactivity counts from the moment no request is held any more.
            self.last_request = trio.current_time()
        return answer.data

    async def _process(self, rid: int, body: etree._Element) -> bytes:
        self._advance(rid)
        if self.terminated is not None:
            return self._terminate_answer()
        if body.get("type") == "terminate":
            self._feed(body, after=[StreamClosed()])
            return terminate_body(None)
        pause = _int_attr(body, "pause")
        if pause is not None:
            self._paused_until = trio.current_time() + min(pause, self.max_pause)
            self._release_all()
            return self._answer(rid, [])
        restart: list[Event] = []
        if body.get(f"{{{XBOSH}}}restart") == "true":
            restart.append(StreamOpened({"to": self.to, "version": "1.0", "lang": self.lang},
                                        ns.CLIENT))
        self._feed(body, before=restart)
        return await self._hold(rid)

    def _fail(self, condition: str) -> None:
        """Ends the session with a terminal condition (§14.1, §17.2) and raises it."""
        self._end(condition)
        self._release_all_with_output()
        self._events_out.close()  # the connection reads the end and cleans up
        raise Terminate(condition)

    def _advance(self, rid: int) -> None:
        self.next_rid = rid + 1
        turn, self.turn = self.turn, trio.Event()
        turn.set()

    def _feed(self, body: etree._Element, before: list[Event] = (),
              after: list[Event] = ()) -> None:
        """The body's stanzas to the c2s connection, as one batch of stream events."""
        events: list[Event] = list(before)
        events += [StanzaReceived(child.__copy__(), 0) for child in body
                   if isinstance(child.tag, str)]
        events += after
        if events:
            try:
                self._events_out.send_nowait(events)
            except trio.WouldBlock:
                raise Terminate("policy-violation") from None  # the client outruns us
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise Terminate("remote-connection-failed") from None

    async def _hold(self, rid: int) -> bytes:
        """Answers at once if output waits, else holds the request up to `wait`."""
        # Let the connection task take the events just fed, so an answer it writes at
        # once (SASL, bind, a reply) goes out in this response, not in the next one.
        await trio.sleep(0)
        if self.pending or self.terminated is not None:
            return self._answer(rid, self._take())
        held = _Held(rid)
        self.held.append(held)
        while len(self.held) > self.hold:
            self._release(self.held.popleft(), [])  # §11: the oldest gives way
        with trio.move_on_after(self.wait):
            await held.done.wait()
        if held.children is None:  # waited long enough
            self.held.remove(held)
            held.children = self._take()
        if self.terminated is not None and not held.children:
            return self._terminate_answer()
        return self._answer(rid, held.children)

    def _answer(self, rid: int, children: list[bytes]) -> bytes:
        attrs = {}
        if self.terminated is not None:
            return self._terminate_answer(children)
        if self.acks and rid < self.highest_rid:
            attrs["ack"] = str(self.highest_rid)  # §9.2
        return render_body(attrs, children)

    def _terminate_answer(self, children: list[bytes] | None = None) -> bytes:
        children = (children or []) + self._take()
        return terminate_body(self.terminated or None, children)

    def _take(self) -> list[bytes]:
        out, self.pending, self.pending_bytes = self.pending, [], 0
        return out

    def _release(self, held: _Held, children: list[bytes]) -> None:
        held.children = children
        held.done.set()

    def _release_all(self) -> None:
        while self.held:
            self._release(self.held.popleft(), [])

    def _deliver(self) -> None:
        """New output: the oldest held request carries all of it."""
        if self.held:
            self._release(self.held.popleft(), self._take())

    # -- the ClientTransport face (raftxmpp.c2s.transport), for the c2s connection ------------------

    async def receive(self) -> list[Event]:
        while True:
            with trio.move_on_after(1.0):
                try:
                    return await self.events_in.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise ConnectionClosed from None
            if self._inactive():
                log.debug("bosh session %s inactive; ending it", self.sid)
                raise ConnectionClosed

    def _inactive(self) -> bool:
        if self.held:
            return False
        now = trio.current_time()
        return now - self.last_request > self.inactivity and now > self._paused_until

    async def send_stream(self, data: bytes) -> None:
        self._put(framing.documents(data))

    async def send_stanzas(self, chunks: list[bytes]) -> None:
        self._put(framing.stanza_documents(chunks))

    def _put(self, documents: list[framing.Document]) -> None:
        for document in documents:
            if isinstance(document, framing.Element):
                self.pending.append(document.data)
                self.pending_bytes += len(document.data)
            elif isinstance(document, framing.Open):
                self.authid = document.attrs.get("id", self.authid)
            else:
                self._end(_condition_of(self.pending))
        self.output.set()
        if self.terminated is not None:
            self._release_all_with_output()
        else:
            self._deliver()
        if self.pending_bytes > MAX_PENDING_BYTES:
            # The slow-consumer rule of c2s: a client that stops polling holds at most
            # this much of our memory, then its session ends.
            log.warning("bosh session %s stopped polling; closing it", self.sid)
            raise ConnectionClosed

    def _end(self, condition: str) -> None:
        if self.terminated is None:
            self.terminated = condition

    def _release_all_with_output(self) -> None:
        if self.held:
            self._release(self.held.popleft(), self._take())
        self._release_all()

    def restart(self) -> None:
        pass  # the client asks for the restart with xmpp:restart (XEP-0206 §5)

    async def start_tls(self, context) -> None:
        raise ConnectionClosed

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._end("")
        self._release_all_with_output()
        self._events_out.close()
        self._on_end(self)


def _condition_of(pending: list[bytes]) -> str:
    """'remote-stream-error' (XEP-0124 §17.2) when a stream error is on its way out."""
    return "remote-stream-error" if any(b"<stream:error" in c for c in pending[-1:]) else ""


def _channel():
    send, receive = trio.open_memory_channel(8)
    return receive, send


class BoshEndpoint:
    """The /http-bind handler: creates sessions, routes requests to their owner."""

    def __init__(self, server: WebServer) -> None:
        self.server = server
        self.sessions: dict[str, BoshSession] = {}
        server.rpc_register("bosh", self._forwarded)

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            raise HTTPError(405, "BOSH takes POST (XEP-0124 §4)", [("Allow", "POST, OPTIONS")])
        raw = await request.body(self.server.framer().max_stanza_size + 8192)
        await self._pace(request.peer, len(raw))
        data = await self.answer(raw, request.peer, request.secure, forward=True)
        return Response(200, data, CONTENT_TYPE, [("Cache-Control", "no-store")])

    async def _pace(self, peer: str, size: int) -> None:
        """The c2s read rate, per client address (BOSH has no TCP stream to push back on)."""
        bucket = self.server.bosh_bucket(peer)
        if bucket is not None:
            pause = bucket.wait(trio.current_time())
            if pause > 0:
                await trio.sleep(pause)
            bucket.spend(size, trio.current_time())

    async def answer(self, raw: bytes, peer: str, secure: bool, forward: bool) -> bytes:
        """The response body for one request body, wherever its session lives."""
        try:
            body = parse_body(raw, self.server.framer())
        except StreamError:
            raise HTTPError(400, "not a BOSH <body/>") from None
        sid = body.get("sid")
        try:
            if sid is None:
                return await self._create(body, peer, secure)
            session = self.sessions.get(sid)
            if session is not None:
                return await session.request(body)
            if forward:
                return await self._forward(sid, raw, peer, secure)
            raise Terminate("item-not-found")
        except Terminate as end:
            return terminate_body(end.condition, end.children)

    # -- another node's session ----------------------------------------------------------------------

    async def _forward(self, sid: str, raw: bytes, peer: str, secure: bool) -> bytes:
        owner = await self._owner(sid)
        if owner is None or owner == self.server.node_name:
            raise Terminate("item-not-found")
        try:
            _, data = await self.server.rpc_call(
                owner, "bosh", {"peer": peer, "secure": secure}, raw,
                timeout=self.server.config.bosh_max_wait + FORWARD_MARGIN)
        except RpcError as exc:
            log.info("bosh request for %s on %s failed: %s", sid, owner, exc)
            raise Terminate("item-not-found") from None
        return data

    async def _owner(self, sid: str) -> str | None:
        """The owner node from gossip; a session created a moment ago on another node may
        not have reached us yet, so an unknown sid is looked up again for a moment."""
        key = GOSSIP_PREFIX + sid
        with trio.move_on_after(OWNER_WAIT):
            while True:
                owner = self.server.gossip_owner(key)
                if owner is not None:
                    return owner
                await trio.sleep(0.05)
        return None

    async def _forwarded(self, peer_node: str, args: dict, raw: bytes) -> tuple[dict, bytes]:
        data = await self.answer(raw, str(args.get("peer", "")), bool(args.get("secure")),
                                 forward=False)
        return {}, data

    # -- session creation (XEP-0124 §7.1, XEP-0206 §3) -------------------------------------------------

    async def _create(self, body: etree._Element, peer: str, secure: bool) -> bytes:
        cfg = self.server.config
        rid = _int_attr(body, "rid")
        to = (body.get("to") or "").lower()
        if rid is None or not to:
            raise Terminate("bad-request")
        if to not in self.server.served_hosts():
            raise Terminate("host-unknown")
        try:
            admission = self.server.admit(host_of(peer))
        except Refused:
            raise Terminate("policy-violation") from None
        wait = max(1, min(_int_attr(body, "wait", int(cfg.bosh_max_wait)), int(cfg.bosh_max_wait)))
        hold = max(1, min(_int_attr(body, "hold", 1), HOLD_MAX))
        session = BoshSession(
            sid=secrets.token_hex(16), peer=peer, secure=secure, to=to,
            lang=body.get(f"{{{ns.XML}}}lang", "en"), rid=rid + 1, wait=wait, hold=hold,
            acks=body.get("ack") == "1", inactivity=cfg.bosh_inactivity,
            max_pause=cfg.bosh_max_pause, on_end=self._ended)
        self.sessions[session.sid] = session
        self.server.gossip_set(GOSSIP_PREFIX + session.sid, {})
        self.server.start_client(session, admission)
        session.highest_rid = rid
        session._events_out.send_nowait([StreamOpened(
            {"to": to, "version": body.get(f"{{{XBOSH}}}version", "1.0"),
             "lang": session.lang}, ns.CLIENT)])
        with trio.move_on_after(10):
            await session.output.wait()  # the stream header and features
        attrs = {"sid": session.sid, "wait": str(wait), "requests": str(session.requests),
                 "hold": str(hold), "inactivity": str(int(cfg.bosh_inactivity)),
                 "polling": str(POLLING), "maxpause": str(int(cfg.bosh_max_pause)),
                 "ver": VERSION, "from": to, "authid": session.authid,
                 "secure": "true" if secure else "false",
                 "xmpp:version": "1.0", "xmpp:restartlogic": "true"}
        if session.acks:
            attrs["ack"] = str(rid)  # §9.1
        if session.terminated is not None:
            return session._terminate_answer()
        return render_body(attrs, session._take())

    def _ended(self, session: BoshSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.server.gossip_delete(GOSSIP_PREFIX + session.sid)
