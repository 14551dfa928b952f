"""Requests and answers between nodes, over the authenticated node links.

Node links (raftxmpp.cluster.links) carry one-way frames; this adds calls that await
an answer: a BOSH request that reached a node other than its session's owner is
forwarded to the owner and its answer returned (raftxmpp.web.bosh), and uploaded file
bytes are pushed to and fetched from peers in chunks (raftxmpp.web.files).

Frames: Q (a request) and A (an answer), each `4-byte header length, JSON header,
body bytes`. A request's header is {"id", "m" (method), "a" (arguments)}; an answer's
{"id", "ok", "a" (result) or "e" (error text)}. The answer travels back over the
answerer's own outgoing link, which every member has to every other.

Bounds: a caller waits at most its timeout (a lost frame or a dead peer costs that,
nothing more); at most MAX_SERVING requests from all peers run at once, beyond which
a request is answered "busy" at once; handlers run as tasks, so a slow one (a held
BOSH request) never stops the link's reader. The link's own bounded queue applies to
both directions: callers keep their bodies small (FILE_CHUNK) and their calls few.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from raftxmpp.cluster.links import Links

log = logging.getLogger("raftxmpp.rpc")

REQUEST, ANSWER = b"Q", b"A"
MAX_SERVING = 1024
LINK_WAIT = 5.0  # seconds a call waits for a link that is not up yet

Handler = Callable[[str, dict, bytes], Awaitable[tuple[dict, bytes]]]


class RpcError(Exception):
    """The call failed: no link, no answer in time, or the handler's error."""


def pack(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + body


def unpack(payload: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack_from(">I", payload)
    header = json.loads(payload[4:4 + size])
    if not isinstance(header, dict):
        raise ValueError("rpc header is not an object")
    return header, payload[4 + size:]


class Rpc:
    def __init__(self, links: Links) -> None:
        self.links = links
        self.handlers: dict[str, Handler] = {}
        self._pending: dict[int, tuple[trio.Event, list]] = {}
        self._next_id = 0
        self._serving = 0
        self._nursery: trio.Nursery | None = None

    def register(self, method: str, handler: Handler) -> None:
        self.handlers[method] = handler

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- calling ---------------------------------------------------------------------------------------

    async def call(self, peer: str, method: str, args: dict[str, Any], body: bytes = b"",
                   timeout: float = 10.0) -> tuple[dict, bytes]:
        """The peer's answer (result, body); raises RpcError."""
        if not self.links.connected(peer):
            # A link that is being dialled (a node just started) gets a moment.
            with trio.move_on_after(min(timeout, LINK_WAIT)):
                while not self.links.connected(peer):
                    await trio.sleep(0.05)
            if not self.links.connected(peer):
                raise RpcError(f"no link to {peer}")
        self._next_id += 1
        call_id = self._next_id
        done, outcome = trio.Event(), []
        self._pending[call_id] = (done, outcome)
        try:
            if not self.links.send(peer, REQUEST, pack({"id": call_id, "m": method, "a": args},
                                                       body)):
                raise RpcError(f"link to {peer} is full")
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            self._pending.pop(call_id, None)
        if not outcome:
            raise RpcError(f"{peer} did not answer {method} within {timeout:g}s")
        header, answer_body = outcome[0]
        if not header.get("ok"):
            raise RpcError(str(header.get("e", "failed")))
        return header.get("a") or {}, answer_body

    # -- frames from peers -----------------------------------------------------------------------------

    def handle(self, peer: str, kind: bytes, payload: bytes) -> None:
        header, body = unpack(payload)
        if kind == ANSWER:
            pending = self._pending.get(int(header["id"]))
            if pending is not None:
                pending[1].append((header, body))
                pending[0].set()
            return
        call_id, method = int(header["id"]), str(header["m"])
        handler = self.handlers.get(method)
        if handler is None or self._nursery is None:
            self._answer(peer, call_id, error=f"no method {method}")
        elif self._serving >= MAX_SERVING:
            self._answer(peer, call_id, error="busy")
        else:
            self._serving += 1
            self._nursery.start_soon(self._serve, peer, call_id, handler, header.get("a") or {},
                                     body)

    async def _serve(self, peer: str, call_id: int, handler: Handler, args: dict,
                     body: bytes) -> None:
        try:
            result, out = await handler(peer, args, body)
        except RpcError as exc:
            self._answer(peer, call_id, error=str(exc))
        except Exception as exc:
            log.exception("rpc handler failed for %s", peer)
            self._answer(peer, call_id, error=f"internal error: {type(exc).__name__}")
        else:
            self._answer(peer, call_id, result=result, body=out)
        finally:
            self._serving -= 1

    def _answer(self, peer: str, call_id: int, result: dict | None = None, body: bytes = b"",
                error: str | None = None) -> None:
        header = {"id": call_id, "ok": error is None}
        if error is None:
            header["a"] = result or {}
        else:
            header["e"] = error
        if not self.links.send(peer, ANSWER, pack(header, body)):
            log.debug("answer to %s dropped: link full or gone", peer)
