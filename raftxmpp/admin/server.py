"""Admin API server: one JSON request line in, one JSON response line out.

The socket lives in the node's data dir with mode 0600 (the dir itself is 0700), so
only the node's owner can use it; there is no network admin port to attack
(Openfire CVE-2023-32315). Passwords arrive here in the clear over that socket and go
straight into SCRAM key derivation; they are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.admin")

MAX_REQUEST = 64 * 1024
Handler = Callable[["Node", dict], Awaitable[Any]]


class AdminError(Exception):
    """A request the node cannot carry out, phrased for the CLI's one-line error."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / "admin.sock"


async def serve(node: Node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    path = socket_path(node.config.node.data_dir)
    path.unlink(missing_ok=True)  # stale: the data-dir lock proves no other node owns it
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        await trio.serve_listeners(lambda stream: _handle(node, stream), [listener])
    finally:
        path.unlink(missing_ok=True)


async def _handle(node: Node, stream: trio.SocketStream) -> None:
    async with stream:
        with trio.move_on_after(30):
            request = await _read_line(stream)
            response = await _dispatch(node, request)
            await stream.send_all(json.dumps(response).encode() + b"\n")


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


async def _dispatch(node: Node, raw: bytes) -> dict:
    try:
        request = json.loads(raw)
        handler = HANDLERS[request["cmd"]]
        args = request.get("args", {})
        return {"ok": True, "result": await handler(node, args)}
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": "malformed admin request"}
    except AdminError as exc:
        return {"ok": False, "error": str(exc)}
    except StoreError as exc:
        return {"ok": False, "error": exc.text or exc.condition}
    except RaftUnavailable as exc:
        return {"ok": False, "error": str(exc)}
    except Exception:
        log.exception("admin request %r failed", raw[:80])
        return {"ok": False, "error": "internal error; see the node's log"}


def _account_jid(node: Node, text: str) -> str:
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid JID: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise AdminError(f"{text!r} is not an account JID (user@domain)")
    if jid.domain not in node.served_hosts():
        raise AdminError(f"{jid.domain} is not served by this cluster")
    return str(jid)


def _password(args: dict) -> str:
    password = args["password"]
    if not isinstance(password, str) or not password:
        raise AdminError("the password must not be empty")
    return password


async def user_add(node: Node, args: dict) -> str:
    jid = _account_jid(node, args["jid"])
    try:
        await node.store.register(jid, _password(args))
    except StoreError as exc:
        if exc.condition == "conflict":
            raise AdminError(f"{jid} already exists") from None
        raise
    log.info("account %s created by admin", jid)
    return jid


async def user_remove(node: Node, args: dict) -> str:
    jid = _account_jid(node, args["jid"])
    try:
        await node.store.unregister(jid)
    except StoreError as exc:
        if exc.condition == "item-not-found":
            raise AdminError(f"no account {jid}") from None
        raise
    log.info("account %s removed by admin", jid)
    return jid


async def user_passwd(node: Node, args: dict) -> str:
    jid = _account_jid(node, args["jid"])
    try:
        await node.store.set_password(jid, _password(args))
    except StoreError as exc:
        if exc.condition == "item-not-found":
            raise AdminError(f"no account {jid}") from None
        raise
    log.info("password of %s changed by admin", jid)
    return jid


async def user_list(node: Node, args: dict) -> list[str]:
    if args.get("current"):
        await node.raft.barrier()
    return node.store.accounts(args.get("host"))


async def cluster_status(node: Node, args: dict) -> dict:
    return node.status()


async def node_status(node: Node, args: dict) -> dict:
    return node.status()


async def node_stop(node: Node, args: dict) -> str:
    node.request_stop()
    return "stopping"


async def state_digest(node: Node, args: dict) -> dict:
    if args.get("current"):
        await node.raft.barrier()
    status = node.raft.status()
    return {"digest": node.store.digest(), "applied_index": status.get("applied_index")}


HANDLERS: dict[str, Handler] = {
    "user.add": user_add,
    "user.remove": user_remove,
    "user.passwd": user_passwd,
    "user.list": user_list,
    "cluster.status": cluster_status,
    "node.status": node_status,
    "node.stop": node_stop,
    "state.digest": state_digest,
}
