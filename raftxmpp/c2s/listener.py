"""c2s listeners: accept client connections and run each in its own task.

Admission happens here, before any byte is read: a client source (an address or
prefix) over its connection count (or its count of unauthenticated connections) gets
a stream header and <policy-violation/>; a listener holding its cap of unauthenticated
connections from all sources gets <resource-constraint/>; a source opening connections
faster than its rate is closed at once, spending nothing more on it
(raftxmpp.c2s.limits). The listener also keeps the connections' clocks in one sweep:
a connection whose write stays blocked for `[c2s] send_timeout` is ended, and a bound
client silent for `[c2s] ping_interval` is pinged (XEP-0199).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
import weakref
from typing import TYPE_CHECKING

import trio

from raftxmpp.c2s.connection import C2SConnection, tcp_connection
from raftxmpp.c2s.limits import C2SGuards, Refused, guards_from_config
from raftxmpp.c2s.sasl import unknown_account_key
from raftxmpp.cluster.auth_failures import GossipedFailures
from raftxmpp.cluster.secrets import node_cluster_secret
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.stanza import STREAM_CLOSE, stream_header

if TYPE_CHECKING:
    from raftxmpp.config import C2SSection
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.c2s")

# One set of limits per node, shared by its STARTTLS and direct-TLS listeners.
_GUARDS: weakref.WeakKeyDictionary[Node, C2SGuards] = weakref.WeakKeyDictionary()


def guards_for(node: Node) -> C2SGuards:
    guards = _GUARDS.get(node)
    if guards is None:
        guards = dataclasses.replace(
            guards_from_config(node.config.limits),
            unknown_account_key=unknown_account_key(node_cluster_secret(node.config)))
        _GUARDS[node] = guards
        if node.cluster is not None:  # count failed logins cluster-wide
            failures = GossipedFailures(node.cluster.gossip, guards.auth.share_trusted)
            guards.auth.peers = failures
            node.cluster.gossip_handlers[GossipedFailures.PREFIX] = failures.on_gossip_change
    return guards


async def serve(node: Node, listener: trio.SocketListener, direct_tls: bool) -> None:
    guards = guards_for(node)
    bound = listener.socket.getsockname()
    cap = guards.listener_cap(f"c2s listener {bound[0]}:{bound[1]}")
    live: set[C2SConnection] = set()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            return
        try:
            admission = guards.connections.admit(host, time.monotonic(), cap)
        except Refused as refused:
            await _refuse(node, stream, refused, direct_tls)
            return
        connection = tcp_connection(node, stream, direct_tls, peer, guards, admission)
        live.add(connection)
        try:
            await connection.run()
        except Exception:
            # A bug must cost one connection, never the node.
            log.exception("connection from %s crashed", peer)
        finally:
            live.discard(connection)
            admission.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep, live, node.config.c2s)
        await trio.serve_listeners(handle, [listener])


async def sweep(live: set[C2SConnection], cfg: C2SSection) -> None:
    """The connections' clocks, one sweep for all of them instead of a timer (and, for
    the pings, a task) per connection: a write blocked for `send_timeout` seconds ends
    its connection (the slow-consumer policy); a bound client silent for
    `ping_interval` is pinged, and ended if it stays silent `ping_timeout` longer."""
    timeout = cfg.send_timeout
    interval, ping_timeout = cfg.ping_interval, cfg.ping_timeout
    pinging = interval > 0
    period = min(1.0, timeout / 4, *((interval / 4, ping_timeout / 4) if pinging else ()))
    while True:
        await trio.sleep(period)
        now = trio.current_time()
        for connection in list(live):
            if not connection.cut_if_stalled(now, timeout) and pinging:
                connection.keep_alive(now, interval, ping_timeout)


async def _refuse(node: Node, stream: trio.SocketStream, refused: Refused, direct_tls: bool) -> None:
    """RFC 6120 §4.9.1.1: an error before the stream is set up still opens one first.
    A direct-TLS port would need a handshake for that, so it is only closed."""
    log.debug("connection refused: %s", refused.reason)  # debug: a flood must not flood the log
    if refused.polite and not direct_tls:
        domain = min(node.config.node.hosts)
        error = StreamError(refused.condition, refused.reason)
        data = stream_header(domain, secrets.token_hex(8), None) + error.to_bytes() + STREAM_CLOSE
        with trio.move_on_after(2), contextlib.suppress(trio.BrokenResourceError,
                                                        trio.ClosedResourceError, OSError):
            await stream.send_all(data)
    with trio.CancelScope(shield=True), contextlib.suppress(OSError):
        await stream.aclose()
