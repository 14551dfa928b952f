"""c2s listeners: accept client connections and run each in its own task."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from raftxmpp.c2s.connection import C2SConnection

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.c2s")


async def serve(node: Node, listener: trio.SocketListener, direct_tls: bool) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            return
        try:
            await C2SConnection(node, stream, direct_tls, peer).run()
        except Exception:
            # A bug must cost one connection, never the node.
            log.exception("connection from %s crashed", peer)

    await trio.serve_listeners(handle, [listener])
