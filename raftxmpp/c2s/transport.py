"""What a client connection needs from the channel under it.

`C2SConnection` (raftxmpp.c2s.connection) runs the sans-IO negotiation core and the
bound session's read and write loops once, over any `ClientTransport`:

- `TCPTransport` here: a byte stream (RFC 6120), with STARTTLS;
- `raftxmpp.web.websocket.WebSocketTransport`: one XML document per message (RFC 7395);
- `raftxmpp.web.bosh.BoshSession`: stanzas carried in HTTP request and response bodies
  (XEP-0124/0206).

A transport turns its own framing into the framer's events (`StreamOpened`,
`StanzaReceived`, `StreamClosed`) and writes what the core and the session produce,
which is always written as for an RFC 6120 stream (a header, elements whose
jabber:client namespace the header declared, `</stream:stream>`): each transport
reframes that as its protocol needs. Anything later layered on the connection
(stream management, CSI) therefore works over every transport without knowing which.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Protocol

import trio

from raftxmpp.c2s.limits import TokenBucket
from raftxmpp.tls import server_tls
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import Event, StreamFramer

READ_SIZE = 65536
TLS_HANDSHAKE_TIMEOUT = 15.0


class ConnectionClosed(Exception):
    """The client went away, or the stream was ended."""


class ClientTransport(Protocol):
    peer: str  # the client's "host:port", for logs and the per-address limits
    secure: bool  # the client's channel is encrypted (TLS, wss://, https:// via a trusted proxy)
    can_starttls: bool  # STARTTLS is possible (a TCP stream not yet under TLS)

    async def receive(self) -> list[Event]:
        """The next stream events. Raises StreamError on bad input (the framer's
        conditions), ConnectionClosed when the client is gone."""
        ...

    async def send_stream(self, data: bytes) -> None:
        """Bytes written as for an RFC 6120 stream: a header, elements, the close tag."""
        ...

    async def send_stanzas(self, chunks: list[bytes]) -> None:
        """A bound session's outgoing queue: one top-level element per chunk."""
        ...

    def restart(self) -> None:
        """A stream restart (RFC 6120 §6.4.6, after SASL success): expect a new header."""
        ...

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Wraps the channel in TLS (STARTTLS or direct TLS); raises ConnectionClosed."""
        ...

    async def aclose(self) -> None:
        """Closes the channel; never raises."""
        ...


class TCPTransport:
    """RFC 6120 over a trio byte stream: the framer parses, bytes go out as they are."""

    can_starttls = True

    def __init__(self, stream: trio.abc.Stream, peer: str, framer: StreamFramer,
                 read_bucket: TokenBucket | None = None) -> None:
        self.stream = stream
        self.peer = peer
        self.framer = framer
        self.secure = False
        self._read_bucket = read_bucket

    async def receive(self) -> list[Event]:
        bucket = self._read_bucket
        if bucket is not None:
            # Prosody's mod_limits: over budget, stop reading and let TCP push back.
            pause = bucket.wait(trio.current_time())
            if pause > 0:
                await trio.sleep(pause)
        data = await self.stream.receive_some(READ_SIZE)
        if not data:
            raise ConnectionClosed
        if bucket is not None:
            bucket.spend(len(data), trio.current_time())
        return self.framer.feed(data)

    async def send_stream(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_stanzas(self, chunks: list[bytes]) -> None:
        await self.stream.send_all(b"".join(chunks))

    def restart(self) -> None:
        self.framer.reset()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        tls: trio.abc.Stream | None = None
        with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT):
            tls = await server_tls(self.stream, context)
        if tls is None:
            raise ConnectionClosed
        self.stream = tls
        self.framer.reset()
        self.secure = True
        self.can_starttls = False

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.aclose()


__all__ = ["ClientTransport", "ConnectionClosed", "StreamError", "TCPTransport"]
