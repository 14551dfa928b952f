"""XMPP over WebSocket (RFC 7395) at /xmpp-websocket, with the `xmpp` subprotocol.

The handshake is checked here (RFC 6455 §4.2.1 and RFC 7395 §3.1); wsproto frames the
messages; `WebSocketTransport` gives the c2s connection the same events a TCP stream
gives, so SASL, bind, every IM module and the limits of c2s apply unchanged.

Framing (RFC 7395 §3.3): each message is one complete XML document. The client opens
with `<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to=… version='1.0'/>` (again
after SASL success, §3.5) and we answer with our own `<open/>`; `<close/>` ends the
stream in either direction (§3.6), carrying `see-other-uri` when this node is shutting
down and another member can take the client (§3.6.1). Incoming messages go through
the stream framer (size, depth, no DTD, entities, comments or PIs) one element at a
time. Keepalive is WebSocket ping/pong (§3.4): a ping after `[http]
websocket_ping_interval` seconds of silence, and a client that has not answered by the
next one is gone.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from raftxmpp.c2s.limits import TokenBucket
from raftxmpp.c2s.transport import ConnectionClosed
from raftxmpp.web import framing
from raftxmpp.web.http import HTTPError, Request, Response
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import Event, StanzaReceived, StreamClosed, StreamFramer, StreamOpened

if TYPE_CHECKING:
    from raftxmpp.web.server import WebServer

log = logging.getLogger("raftxmpp.web.websocket")

PATH = "/xmpp-websocket"
SUBPROTOCOL = "xmpp"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_OPEN = f"{{{framing.FRAMING}}}open"
_CLOSE = f"{{{framing.FRAMING}}}close"
# The framer sees WebSocket messages as the children of one stream that never restarts.
_SYNTHETIC_HEADER = (f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}' "
                     "version='1.0'>").encode()
READ_SIZE = 65536
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def accept_token(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.strip().encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def check_handshake(request: Request) -> str:
    """The client's key, after checking the opening handshake; raises HTTPError."""
    if request.method != "GET":
        raise HTTPError(405, "a WebSocket opens with GET", [("Allow", "GET")])
    if "websocket" not in request.header("upgrade").lower() \
            or "upgrade" not in request.header("connection").lower():
        raise HTTPError(426, "this endpoint speaks WebSocket only (RFC 7395)",
                        [("Upgrade", "websocket")])
    if request.header("sec-websocket-version").strip() != "13":
        raise HTTPError(426, "WebSocket version 13 only", [("Sec-WebSocket-Version", "13")])
    key = request.header("sec-websocket-key").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HTTPError(400, "bad Sec-WebSocket-Key") from None
    offered = [p.strip() for p in request.header("sec-websocket-protocol").split(",")]
    if SUBPROTOCOL not in offered:
        raise HTTPError(400, "the xmpp subprotocol is required (RFC 7395 §3.1)")
    return key


class WebSocketEndpoint:
    def __init__(self, server: WebServer) -> None:
        self.server = server

    async def handle(self, request: Request) -> Response:
        key = check_handshake(request)
        if not self.server.origin_allowed(request.header("origin")):
            raise HTTPError(403, "origin not allowed")
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", accept_token(key)),
                   ("Sec-WebSocket-Protocol", SUBPROTOCOL)]

        async def run(stream: trio.abc.Stream, trailing: bytes) -> None:
            transport = WebSocketTransport(
                stream, trailing, request.peer, request.secure,
                self.server.framer(), self.server.read_bucket(request.peer),
                self.server.config.websocket_ping_interval, self.server.see_other_uri)
            await self.server.run_client(transport, request.admission)

        return Response(101, b"", None, headers, upgrade=run)


class WebSocketTransport:
    """A c2s ClientTransport over one WebSocket (raftxmpp.c2s.transport)."""

    can_starttls = False

    def __init__(self, stream: trio.abc.Stream, trailing: bytes, peer: str, secure: bool,
                 framer: StreamFramer, read_bucket: TokenBucket | None, ping_interval: float,
                 see_other_uri: Callable[[], str | None] = lambda: None) -> None:
        self.stream = stream
        self.peer = peer
        self.secure = secure
        self.ws = Connection(ConnectionType.SERVER, trailing_data=trailing)
        self.framer = framer
        self.framer.feed(_SYNTHETIC_HEADER)
        self.max_message = framer.max_stanza_size
        self._read_bucket = read_bucket
        self._ping_interval = ping_interval
        self._awaiting_pong = False
        self._message: list[str] = []
        self._message_size = 0
        self._send_lock = trio.Lock()  # the reader answers pings while the writer writes
        self._see_other_uri = see_other_uri
        self._closed = False

    # -- reading -------------------------------------------------------------------------------------

    async def receive(self) -> list[Event]:
        """The events of every complete message read so far (a batch, as TCP gives)."""
        while True:
            batch: list[Event] = []
            try:
                for event in self.ws.events():
                    events = await self._on_ws_event(event)
                    if events:
                        batch.extend(events)
            except RemoteProtocolError:
                raise StreamError("not-well-formed", "WebSocket protocol error") from None
            if batch:
                return batch
            await self._read_more()

    async def _read_more(self) -> None:
        bucket = self._read_bucket
        if bucket is not None:
            pause = bucket.wait(trio.current_time())
            if pause > 0:
                await trio.sleep(pause)
        with trio.move_on_after(self._ping_interval) as idle:
            data = await self.stream.receive_some(READ_SIZE)
        if idle.cancelled_caught:
            await self._keepalive()
            return
        if not data:
            raise ConnectionClosed
        if bucket is not None:
            bucket.spend(len(data), trio.current_time())
        self.ws.receive_data(data)

    async def _keepalive(self) -> None:
        """RFC 7395 §3.4: pings, not whitespace; a ping unanswered for a whole
        interval means the client is gone."""
        if self._awaiting_pong:
            log.debug("websocket client %s did not answer a ping; closing", self.peer)
            raise ConnectionClosed
        self._awaiting_pong = True
        await self._write(self.ws.send(Ping(payload=b"raftxmpp")))

    async def _on_ws_event(self, event) -> list[Event] | None:
        if isinstance(event, TextMessage):
            return self._on_text(event.data, event.message_finished)
        if isinstance(event, BytesMessage):
            raise StreamError("bad-format", "XMPP over WebSocket uses text messages (RFC 7395 §3.2)")
        if isinstance(event, Ping):
            await self._write(self.ws.send(event.response()))
        elif isinstance(event, Pong):
            self._awaiting_pong = False
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                await self._write(self.ws.send(event.response()))
            raise ConnectionClosed
        return None

    def _on_text(self, data: str, finished: bool) -> list[Event] | None:
        if finished and not self._message:  # the common case: one frame, one message
            if len(data) > self.max_message:
                raise StreamError("policy-violation", f"message over {self.max_message} bytes")
            return self._parse(data.encode("utf-8"))
        self._message_size += len(data)
        if self._message_size > self.max_message:
            raise StreamError("policy-violation", f"message over {self.max_message} bytes")
        self._message.append(data)
        if not finished:
            return None
        text, self._message, self._message_size = "".join(self._message), [], 0
        return self._parse(text.encode("utf-8"))

    def _parse(self, message: bytes) -> list[Event]:
        """One message is one element (RFC 7395 §3.3.3); <open/> and <close/> become
        the stream events the negotiation core knows."""
        events = self.framer.feed(message)
        if not events and not message.strip():
            return []
        if len(events) != 1 or not self.framer.between_stanzas:
            raise StreamError("bad-format", "a WebSocket message must hold exactly one element")
        element = events[0].element if isinstance(events[0], StanzaReceived) else None
        if element is None:
            raise StreamError("bad-format", "a WebSocket message must hold one element")
        if element.tag == _OPEN:
            attrs = {k: v for k in ("to", "from", "version", "id")
                     if (v := element.get(k)) is not None}
            lang = element.get(f"{{{ns.XML}}}lang")
            if lang is not None:
                attrs["lang"] = lang
            return [StreamOpened(attrs, ns.CLIENT)]
        if element.tag == _CLOSE:
            return [StreamClosed()]
        return events

    # -- writing -------------------------------------------------------------------------------------

    async def send_stream(self, data: bytes) -> None:
        await self._send_documents(framing.documents(data))

    async def send_stanzas(self, chunks: list[bytes]) -> None:
        await self._send_documents(framing.stanza_documents(chunks))

    async def _send_documents(self, documents: list[framing.Document]) -> None:
        if self.ws.state is not ConnectionState.OPEN:
            return
        out = []
        for document in documents:
            if isinstance(document, framing.Element):
                out.append(text_frame(document.data))
            elif isinstance(document, framing.Open):
                out.append(text_frame(_open_element(document.attrs).encode()))
            else:
                out.append(text_frame(self._close_element().encode()))
        if out:
            await self._write(b"".join(out))

    def _close_element(self) -> str:
        uri = self._see_other_uri()
        extra = f" see-other-uri={quoteattr(uri)}" if uri else ""
        return f"<close xmlns='{framing.FRAMING}'{extra}/>"

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    def restart(self) -> None:
        pass  # the next <open/> is the new header: nothing to reset in message framing

    async def start_tls(self, context) -> None:
        raise ConnectionClosed  # never offered: TLS belongs to the HTTP layer here

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                if self.ws.state is ConnectionState.OPEN:
                    data = self.ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                    await self._write(data)
                await self.stream.aclose()
            except (*_GONE, trio.BusyResourceError):
                pass


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 §5.2: a server never masks).
    Built here rather than by wsproto, which would take a str and encode it again: our
    stanzas are UTF-8 bytes already, and this is the outgoing hot path."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return head + payload


def _open_element(attrs: dict[str, str]) -> str:
    """Our <open/> (RFC 7395 §3.3.2) from the header the core wrote."""
    rendered = "".join(f" {name}={quoteattr(value)}" for name, value in attrs.items())
    return f"<open xmlns='{framing.FRAMING}'{rendered}/>"
