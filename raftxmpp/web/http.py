"""HTTP/1.1 connections on h11: requests in, responses out, with the limits a public
port needs. The protocol is h11's; this module owns the sockets, the clocks and the
bounds around it.

One task per connection, keep-alive, one request at a time (HTTP/1.1 pipelining is
answered in order by h11's state machine). What each bound prevents:
- the request head is capped at `[http] max_request_head` bytes (h11's
  max_incomplete_event_size; 431 beyond), and must arrive within `request_timeout`
  seconds of its first byte (slowloris; 408), an idle keep-alive connection is closed
  after `keepalive_timeout`;
- a body is read only by the handler that wants it, up to the limit that handler
  gives (413 beyond), each read bounded by `request_timeout` without progress;
- a handler that did not read the body it was sent closes the connection afterwards,
  so unread bytes are never parsed as the next request.

Handlers get a `Request` and return a `Response`; an `HTTPError` becomes a plain-text
answer with its status. A handler may take the connection over (WebSocket) by
returning a response with `upgrade` set: the 101 goes out, then the callback owns the
stream. Every response carries the security headers browsers honour and, where the
request had an allowed Origin, the CORS headers (raftxmpp.web.server decides).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

log = logging.getLogger("raftxmpp.web")

READ_SIZE = 65536
LINGER = 1.0  # seconds to drain a client's unread bytes before closing …
LINGER_BYTES = 65536  # … or this many bytes
UNREAD_BODY_MAX = 65536  # an unread body up to this size is skipped to keep the connection
TEXT = "text/plain; charset=utf-8"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# On every response: no MIME sniffing of uploads, no framing of anything we serve, no
# referrer leaking upload URLs (their signature is the capability to read them).
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


class HTTPError(Exception):
    """Ends a request with `status` and a one-line plain-text reason."""

    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


Upgrade = Callable[[trio.abc.Stream, bytes], Awaitable[None]]


@dataclass
class Response:
    status: int
    body: bytes | AsyncIterable[bytes] = b""
    content_type: str | None = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)
    length: int | None = None  # for a streamed body; None with bytes = len(body)
    upgrade: Upgrade | None = None  # 101 Switching Protocols, then the stream is this callback's


def text(status: int, body: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, (body + "\n").encode(), TEXT, headers or [])


class Request:
    """One request head, and its body on demand."""

    def __init__(self, connection: HTTPConnection, event: h11.Request) -> None:
        self._connection = connection
        self.method = event.method.decode("ascii", "replace")
        self.target = event.target.decode("ascii", "replace")
        parts = urlsplit(self.target)
        self.raw_path = parts.path
        try:
            self.path: str | None = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            self.path = None  # not UTF-8 once decoded: the router answers 400
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii").lower()
            decoded = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {decoded}" if key in self.headers else decoded
        self.peer = connection.peer
        self.secure = connection.secure
        self.admission = connection.admission  # the connection's per-address admission
        self.body_read = False

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    async def body(self, limit: int) -> bytes:
        """The whole body; HTTPError 413 past `limit` bytes."""
        chunks, size = [], 0
        async for chunk in self.stream_body(limit):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def stream_body(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives; HTTPError 413 once it passes `limit` bytes."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"body over {limit} bytes")
        size = 0
        async for chunk in self._connection.body_chunks():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body over {limit} bytes")
            yield chunk
        self.body_read = True


Handler = Callable[[Request], Awaitable[Response]]


class HTTPConnection:
    """h11 over one trio stream, for as long as the client keeps it alive."""

    def __init__(self, stream: trio.abc.Stream, peer: str, secure: bool, handler: Handler,
                 max_head: int, request_timeout: float, keepalive_timeout: float,
                 decorate: Callable[[Request | None, Response], None],
                 admission: object = None) -> None:
        self.stream = stream
        self.admission = admission
        self.peer = peer
        self.secure = secure
        self.handler = handler
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.decorate = decorate
        self._served = 0

    async def serve(self) -> None:
        with contextlib.suppress(*_GONE):
            while True:
                request = await self._next_request()
                if request is None:
                    break
                self._served += 1
                if await self._respond(request):
                    return  # the stream belongs to the upgrade now
                if not self._next_cycle():
                    break
            await self._linger()

    async def _linger(self) -> None:
        """Half-closes, then reads what the client still sends for a moment before the
        close: closing with unread bytes makes the kernel send a reset, which can
        destroy the error response the client has not read yet (RFC 9112 §9.6)."""
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:
            return
        with trio.move_on_after(LINGER), contextlib.suppress(*_GONE):
            await send_eof()
            drained = 0
            while drained < LINGER_BYTES and (data := await self.stream.receive_some(READ_SIZE)):
                drained += len(data)

    async def _next_request(self) -> Request | None:
        """The next request head, or None when the connection should end."""
        idle = self.keepalive_timeout if self._served else self.request_timeout
        started: float | None = None
        received = 0
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                if received > self.max_head:  # whatever else is wrong, it is too big
                    await self._refuse(431, "request head too large")
                else:
                    await self._refuse(exc.error_status_hint, str(exc) or "malformed request")
                return None
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete; one that arrived whole in a
                # single read is measured here.
                if _head_size(event) > self.max_head:
                    await self._refuse(431, "request head too large")
                    return None
                return Request(self, event)
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed, or PAUSED after an upgrade request we refused
            # The first byte of a head may wait `idle`; the whole head gets request_timeout.
            deadline = (trio.current_time() + idle if started is None
                        else started + self.request_timeout)
            with trio.move_on_at(deadline):
                data = await self.stream.receive_some(READ_SIZE)
                if started is None and data:
                    started = trio.current_time()
                received += len(data)
                self.conn.receive_data(data)
                continue
            if started is not None or self.conn.they_are_waiting_for_100_continue:
                await self._refuse(408, "request head not received in time")
            return None

    async def body_chunks(self) -> AsyncIterator[bytes]:
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HTTPError(exc.error_status_hint, "malformed body") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif event is h11.NEED_DATA:
                with trio.move_on_after(self.request_timeout) as scope:
                    self.conn.receive_data(await self.stream.receive_some(READ_SIZE))
                if scope.cancelled_caught:
                    raise HTTPError(408, "body not received in time")
            else:
                raise HTTPError(400, "connection closed in the middle of the body")

    async def _respond(self, request: Request) -> bool:
        """Runs the handler and writes its response; True if the stream was handed over."""
        try:
            response = await self.handler(request)
        except HTTPError as exc:
            response = text(exc.status, exc.text, exc.headers)
        if response.upgrade is not None:
            return await self._upgrade(request, response)
        if not request.body_read and not self._skip_unread_body():
            response.headers.append(("Connection", "close"))  # never parse a body as a head
        await self._send_response(request, response)
        return False

    def _skip_unread_body(self) -> bool:
        """Consumes what h11 already holds of a body the handler did not read (for a
        request without a body, its end); False when more would have to be read."""
        skipped = 0
        while skipped <= UNREAD_BODY_MAX:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False
            skipped += len(event.data)
        return False

    async def _send_response(self, request: Request | None, response: Response) -> None:
        self.decorate(request, response)
        headers = list(response.headers)
        if response.content_type is not None:
            headers.append(("Content-Type", response.content_type))
        body = response.body
        length = response.length if response.length is not None \
            else len(body) if isinstance(body, bytes) else None
        if length is not None:
            headers.append(("Content-Length", str(length)))
        await self._send(h11.Response(status_code=response.status, headers=headers))
        if isinstance(body, bytes):
            if body:
                await self._send(h11.Data(data=body))
        else:
            async for chunk in body:
                await self._send(h11.Data(data=chunk))
        await self._send(h11.EndOfMessage())

    async def _upgrade(self, request: Request, response: Response) -> bool:
        self.decorate(request, response)
        await self._send(h11.InformationalResponse(status_code=101, headers=response.headers))
        trailing, _ = self.conn.trailing_data
        await response.upgrade(self.stream, bytes(trailing))
        return True

    async def _refuse(self, status: int, reason: str) -> None:
        """An answer to a request h11 could not parse, then the connection ends."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = text(status, reason, [("Connection", "close")])
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send_response(None, response)

    def _next_cycle(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def _send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)


def _head_size(event: h11.Request) -> int:
    """The bytes of a request line and headers, as sent give or take whitespace."""
    return (len(event.method) + len(event.target) + 12
            + sum(len(name) + len(value) + 4 for name, value in event.headers))
