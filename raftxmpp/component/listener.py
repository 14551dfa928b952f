"""The component listener (XEP-0114, default 127.0.0.1:5347): one task per connection."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from raftxmpp.component.connection import ComponentConnection

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.components")


async def serve(node: Node, listener: trio.SocketListener) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return
        peer = f"{host}:{port}"
        try:
            await ComponentConnection(node, stream, peer).run()
        except Exception:
            # A bug must cost one connection, never the node.
            log.exception("component connection from %s crashed", peer)

    await trio.serve_listeners(handle, [listener])
