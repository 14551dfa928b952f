"""What a stranger can make the Raft port hold before it proves the cluster secret.

pysyncobj (pinned at 0.3.17) accumulates a connection's bytes until the frame length the
sender declared has arrived, and only then decrypts; it caps neither the frame nor the
number of connections that have not finished the key exchange. So anyone who reaches
the port could make a node buffer the largest frame per connection, on as many
connections as it likes (issue 13, finding 5: 40 connections held about 200 MB).

Here, over pysyncobj's own hooks (its classes are patched once, on import):
- a connection that has not completed the key exchange (an incoming one still in the
  transport's unknown set, or one whose peer has not yet sent a frame that decrypted)
  may declare frames of at most PRE_AUTH_FRAME bytes (the exchange's frames are a few
  hundred bytes) and must finish within PRE_AUTH_DEADLINE seconds, trickling or not;
- at most PRE_AUTH_PER_PORT such connections are held per Raft port, and at most
  PRE_AUTH_PER_SOURCE from one address; more are closed as they are accepted;
- after it, frames up to MAX_RAFT_FRAME (a batch of commands or a snapshot chunk).
Nothing here is ever unpickled before the secret is proven: pysyncobj decrypts (Fernet,
with an HMAC) before it unpickles.
"""

from __future__ import annotations

import functools
import logging
import struct
import time

from pysyncobj import tcp_connection, transport

log = logging.getLogger("raftxmpp.raft")

MAX_RAFT_FRAME = 8 * 1024 * 1024
PRE_AUTH_FRAME = 4096
PRE_AUTH_DEADLINE = 5.0
PRE_AUTH_PER_PORT = 64
PRE_AUTH_PER_SOURCE = 8

_read_pysyncobj = tcp_connection.TcpConnection._TcpConnection__processRead
_accept_pysyncobj = transport.TCPTransport._onNewIncomingConnection
_tick_pysyncobj = transport.TCPTransport._onTick


def _pre_auth(connection: tcp_connection.TcpConnection) -> bool:
    """Whether the peer has yet to prove the secret on this connection: its first frame
    has not decrypted yet, or (an incoming one) it has not yet sent a frame that carries
    our fresh random key, which a replayed first frame cannot."""
    if connection.encryptor is None:
        return False  # no secret to prove (raftxmpp always sets one)
    unknown = getattr(connection, "raftxmpp_unknown", None)
    return connection.sendRandKey is None or (unknown is not None and connection in unknown)


def _refuse(connection: tcp_connection.TcpConnection, why: str, *args: object) -> None:
    log.info("raft port: " + why + "; connection closed", *args)
    connection.disconnect()


def _bounded_read(connection: tcp_connection.TcpConnection) -> bool:
    more = _read_pysyncobj(connection)
    buffered = connection._TcpConnection__readBuffer
    if len(buffered) < 4:
        return more
    (length,) = struct.unpack("i", buffered[:4])
    if _pre_auth(connection):
        accepted = getattr(connection, "raftxmpp_accepted", None)
        if accepted is not None and time.monotonic() - accepted > PRE_AUTH_DEADLINE:
            _refuse(connection, "no key exchange within %.0f s", PRE_AUTH_DEADLINE)
            return False
        # One frame is in flight during the exchange; reads continue until the socket
        # is drained, so what follows the first frame is bounded as well.
        if not 0 < length <= PRE_AUTH_FRAME or len(buffered) > 2 * (PRE_AUTH_FRAME + 4):
            _refuse(connection, "a %d-byte frame before the key exchange", length)
            return False
    elif not 0 < length <= MAX_RAFT_FRAME:
        _refuse(connection, "a %d-byte frame", length)
        return False
    return more


def _source(connection: tcp_connection.TcpConnection) -> str:
    try:
        return connection._TcpConnection__socket.getpeername()[0]
    except (OSError, AttributeError, IndexError):
        return ""


def _accept(self: transport.TCPTransport, connection: tcp_connection.TcpConnection) -> None:
    unknown = self._unknownConnections
    source = _source(connection)
    if len(unknown) >= PRE_AUTH_PER_PORT:
        _refuse(connection, "%d connections already wait for their key exchange", len(unknown))
        return
    same_source = sum(1 for c in unknown if getattr(c, "raftxmpp_source", None) == source)
    if same_source >= PRE_AUTH_PER_SOURCE:
        _refuse(connection, "%s already has %d connections before the key exchange",
                source, same_source)
        return
    connection.raftxmpp_accepted = time.monotonic()
    connection.raftxmpp_source = source
    connection.raftxmpp_unknown = unknown
    _accept_pysyncobj(self, connection)


def _tick(self: transport.TCPTransport) -> None:
    """Also closes unauthenticated connections past their deadline that went silent (a
    read would have closed one that kept sending)."""
    _tick_pysyncobj(self)
    now = time.monotonic()
    for connection in list(self._unknownConnections):
        accepted = getattr(connection, "raftxmpp_accepted", now)
        if now - accepted > PRE_AUTH_DEADLINE:
            self._unknownConnections.discard(connection)
            _refuse(connection, "no key exchange within %.0f s", PRE_AUTH_DEADLINE)


@functools.cache
def install() -> None:
    """Patches pysyncobj's classes (once per process)."""
    tcp_connection.TcpConnection._TcpConnection__processRead = _bounded_read
    transport.TCPTransport._onNewIncomingConnection = _accept
    transport.TCPTransport._onTick = _tick
