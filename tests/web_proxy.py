"""A round-robin HTTP load balancer for the tests, without sticky sessions: every
request goes to the next node (a WebSocket upgrade too, then stays there), so a BOSH
session's requests and an upload's PUT and GETs are spread over the cluster.

It runs its own trio loop in a thread, so synchronous tests (selenium) can use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

import h11
import trio

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection",
              b"upgrade", b"te", b"trailer"}
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError)


class RoundRobinProxy:
    def __init__(self, port: int, backends: list[int]) -> None:
        self.port = port
        self.backends = backends
        self.requests: Counter[int] = Counter()  # per backend port
        self._turn = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by __enter__ / the test
            self._error = exc
            self._ready.set()

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the proxy did not start: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._cancel.cancel)
        self._thread.join(10)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self._ready.set()
            await trio.serve_listeners(self._client, listeners)

    def _next_backend(self) -> int:
        port = self.backends[self._turn % len(self.backends)]
        self._turn += 1
        self.requests[port] += 1
        return port

    async def _client(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            with contextlib.suppress(*_GONE):
                while True:
                    request = await _next(conn, stream)
                    if not isinstance(request, h11.Request):
                        return
                    body = b""
                    while not isinstance(event := await _next(conn, stream), h11.EndOfMessage):
                        if not isinstance(event, h11.Data):
                            return
                        body += bytes(event.data)
                    backend = self._next_backend()
                    if _is_upgrade(request):
                        await self._tunnel(request, conn, stream, backend)
                        return
                    await self._forward(request, body, conn, stream, backend)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()

    async def _forward(self, request: h11.Request, body: bytes, conn: h11.Connection,
                       client: trio.SocketStream, backend: int) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", backend)
        async with upstream:
            out = h11.Connection(h11.CLIENT)
            headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
            headers.append((b"connection", b"close"))
            data = out.send(h11.Request(method=request.method, target=request.target,
                                        headers=headers))
            if body:
                data += out.send(h11.Data(data=body))
            data += out.send(h11.EndOfMessage())
            await upstream.send_all(data)
            while True:
                event = await _next(out, upstream)
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    headers = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
                    await client.send_all(conn.send(h11.Response(
                        status_code=event.status_code, headers=headers, reason=event.reason)))
                elif isinstance(event, h11.Data):
                    await client.send_all(conn.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    await client.send_all(conn.send(h11.EndOfMessage()))
                    return
                else:
                    return

    async def _tunnel(self, request: h11.Request, conn: h11.Connection,
                      client: trio.SocketStream, backend: int) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", backend)
        async with upstream:
            head = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
            head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in request.headers) + b"\r\n"
            trailing, _ = conn.trailing_data
            await upstream.send_all(head + bytes(trailing))

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                with contextlib.suppress(*_GONE):
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)


def _is_upgrade(request: h11.Request) -> bool:
    return any(k.lower() == b"upgrade" and b"websocket" in v.lower() for k, v in request.headers)


async def _next(conn: h11.Connection, stream: trio.SocketStream):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event
