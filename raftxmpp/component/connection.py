"""The trio edge of one component connection: a thin loop around the framer and
ComponentStream (raftxmpp.component.stream).

One task reads (framer → stream core → router); once the component is accepted it is
an instance in the cluster's routing table, and a second task writes its outgoing
queue in batches. A component that does not complete the handshake within
`[components] handshake_timeout` is cut off; one that stops reading is cut off when a
write blocks longer than `[components] send_timeout`. Nothing a component sends can
take more than this connection down.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from raftxmpp import metrics
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.component.stream import Accepted, Action, Close, ComponentStream, Send, Stanza
from raftxmpp.routing.components import LocalInstance
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StreamFramer, StreamOpened
from raftxmpp.xml.ns import COMPONENT
from raftxmpp.xml.stanza import STREAM_CLOSE

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.components")

READ_SIZE = 65536

# The peer went away under us.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# Marks a close that needs only </stream:stream>: the peer closed first.
_PLAIN_CLOSE = StreamError("undefined-condition", "stream closed")


class ConnectionClosed(Exception):
    pass


class ComponentConnection:
    def __init__(self, node: Node, transport: trio.abc.Stream, peer: str) -> None:
        self.node = node
        self.manager = node.router.components
        self.transport = transport
        self.peer = peer
        cfg = node.config.components
        self.framer = StreamFramer(max_stanza_size=cfg.max_stanza_size,
                                   max_depth=node.config.c2s.max_stanza_depth,
                                   stream_ns=COMPONENT)
        self.core = ComponentStream(self.manager.secret)
        self.instance: LocalInstance | None = None

    async def run(self) -> None:
        metrics.COMPONENT_CONNECTIONS.inc()
        timeout = self.node.config.components.handshake_timeout
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Lifted once the component is accepted (see _perform).
                with trio.CancelScope(deadline=trio.current_time() + timeout) as self._handshake:
                    await self._serve()
                if self._handshake.cancelled_caught:
                    await self._send_error(StreamError("connection-timeout", "handshake sooner"))
                    raise ConnectionClosed
        except* (ConnectionClosed, *_GONE):
            pass  # the peer went away or the stream was ended; cleanup follows
        finally:
            metrics.COMPONENT_CONNECTIONS.dec()
            await self._cleanup()

    async def _serve(self) -> None:
        while True:
            for event in await self._read_events():
                actions = (await self._unconfirmed() if isinstance(event, StreamOpened) else
                           None) or self.core.receive(event)
                for action in actions:
                    await self._perform(action)

    async def _unconfirmed(self) -> list[Action] | None:
        """The registration and secret are read behind a Raft barrier: a node cut off
        from the majority may still hold a removed component or a replaced secret.
        None when confirmed; else the actions that end the stream."""
        try:
            await self.node.raft.fresh()
        except RaftUnavailable:
            return self.core.fail(StreamError(
                "remote-connection-failed", "this node cannot reach the cluster majority to "
                "confirm the component's registration; try another node or later"))
        return None

    async def _read_events(self) -> list:
        data = await self.transport.receive_some(READ_SIZE)
        if not data:
            raise ConnectionClosed
        try:
            return self.framer.feed(data)
        except StreamError as exc:
            for action in self.core.fail(exc):
                await self._perform(action)
            raise ConnectionClosed from None

    async def _perform(self, action: Action) -> None:
        """Before acceptance we write directly; after it, everything goes through the
        instance's queue, so the writer task keeps the order."""
        instance = self.instance
        if isinstance(action, Stanza):
            await self.manager.route_from_component(action.element, instance)
        elif isinstance(action, Send):
            if instance is None:
                await self.transport.send_all(action.data)
            else:
                instance.send(action.data)
        elif isinstance(action, Accepted):
            self.instance = self.manager.connect(action.domain)
            log.info("component %s accepted from %s as instance %s", action.domain, self.peer,
                     self.instance.instance_id)
            self._handshake.deadline = math.inf
            self._nursery.start_soon(self._write_loop, self.instance)
            if not self.manager.serves(action.domain):  # removed during the handshake
                self.instance.close(StreamError("host-gone", f"{action.domain} was removed"))
        elif isinstance(action, Close):
            if action.error is not None:
                log.info("component stream from %s (%s) ended: %s", self.peer,
                         self.core.domain or "no domain", action.error)
            if instance is None:
                await self._send_error(action.error or _PLAIN_CLOSE)
                raise ConnectionClosed
            instance.close(action.error or _PLAIN_CLOSE)
            await trio.sleep_forever()  # the writer flushes, sends the close and ends us

    async def _write_loop(self, instance: LocalInstance) -> None:
        send_all = self.transport.send_all
        send_timeout = self.node.config.components.send_timeout
        while True:
            await instance.wakeup.wait()
            data = instance.take_outbox()
            if data:
                with trio.move_on_after(send_timeout) as write:
                    await send_all(data)
                if write.cancelled_caught:
                    log.warning("component %s (%s) stopped reading for %gs; closing it",
                                instance.domain, instance.instance_id, send_timeout)
                    self._nursery.cancel_scope.cancel()
                    return
            if instance.closing is not None:
                await self._send_error(instance.closing)
                self._nursery.cancel_scope.cancel()
                return

    async def _send_error(self, error: StreamError) -> None:
        tail = STREAM_CLOSE if error is _PLAIN_CLOSE else error.to_bytes() + STREAM_CLOSE
        with trio.move_on_after(2), contextlib.suppress(*_GONE):
            await self.transport.send_all(tail)

    async def _cleanup(self) -> None:
        if self.instance is not None:
            self.manager.disconnect(self.instance)
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_GONE):
            await self.transport.aclose()
