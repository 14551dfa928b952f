"""Admin API server: one JSON request line in, one JSON response line out.

The socket lives in the node's data dir with mode 0600 (the dir itself is 0700), so
only the node's owner can use it; there is no network admin port to attack
(Openfire CVE-2023-32315). Passwords arrive here in the clear over that socket and go
straight into SCRAM key derivation; they are never logged.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from lxml import etree

from raftxmpp.admin import accounts
from raftxmpp.admin.accounts import AdminError
from raftxmpp.cluster import secrets
from raftxmpp.cluster.archive import Query
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.state import BALANCING
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.admin")

MAX_REQUEST = 64 * 1024
Handler = Callable[["Node", dict], Awaitable[Any]]


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
    # A client that hangs up before its answer (a CLI timed out, a Ctrl-C) ends only its
    # own request: an error escaping here would end serve_listeners and the whole node.
    try:
        async with stream:
            with trio.move_on_after(30):
                request = await _read_line(stream)
                response = await _dispatch(node, request)
                await stream.send_all(json.dumps(response).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("admin client hung up before its answer")


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


async def user_add(node: Node, args: dict) -> str:
    return await accounts.add_user(node.store, node.served_hosts(), args["jid"], args["password"])


async def user_remove(node: Node, args: dict) -> str:
    return await accounts.remove_user(node.store, node.router.sessions, node.served_hosts(),
                                      args["jid"])


async def user_passwd(node: Node, args: dict) -> str:
    return await accounts.change_password(node.store, node.served_hosts(), args["jid"],
                                          args["password"])


async def user_list(node: Node, args: dict) -> list[str]:
    if args.get("current"):
        await node.raft.barrier()
    return node.store.accounts(args.get("host"))


async def cluster_status(node: Node, args: dict) -> dict:
    return node.status()


async def cluster_change(node: Node, args: dict) -> str:
    """add-peer / remove-peer: one Raft membership change, refused while another runs."""
    from raftxmpp.cluster.membership import MembershipError
    from raftxmpp.config import Address

    action, address = args["action"], str(args["address"])
    if action not in ("add", "remove"):
        raise AdminError("action must be add or remove")
    try:
        Address.parse(address)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    members = node.raft.members()
    if action == "add" and address in members:
        raise AdminError(f"{address} is already a member")
    if action == "remove" and address not in members:
        raise AdminError(f"{address} is not a member")
    if action == "remove" and address == node.raft.self_address:
        raise AdminError("a node cannot remove itself; run remove-peer against another member")
    try:
        if action == "add" and node.cluster.add_needs_the_newcomer():
            await node.cluster.start_add(address, "")
            return (f"{address}; the change commits once that node runs: start it now, "
                    "with the members as its peers")
        await node.cluster.change(action, address)
    except MembershipError as exc:
        raise AdminError(str(exc)) from None
    return address


async def node_status(node: Node, args: dict) -> dict:
    return node.status()


async def node_stop(node: Node, args: dict) -> str:
    node.request_stop()
    return "stopping"


async def state_digest(node: Node, args: dict) -> dict:
    if args.get("current"):
        await node.raft.barrier()
    status = node.raft.status()
    return {"digest": await node.store.digest(), "applied_index": status.get("applied_index")}


# -- sessions ------------------------------------------------------------------------------------

KICK_TEXT = "kicked by an administrator"


def _session_jid(node: Node, text: str) -> JID:
    """An account JID (user@domain) or one session's full JID of a served domain."""
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid JID: {exc}") from None
    if jid.local is None:
        raise AdminError(f"{text!r} is not an account JID (user@domain[/resource])")
    if jid.domain not in node.served_hosts():
        raise AdminError(f"{jid.domain} is not served by this cluster")
    return jid


def _session_facts(node: Node, session: Any) -> dict:
    """What `user sessions` shows of one session, local or (once gossiped) remote."""
    local = getattr(session, "is_local", True)
    show = _presence_show(session.presence) if session.available else None
    return {
        "full_jid": session.full_jid,
        "priority": session.priority,
        "availability": (show or "available") if session.available else "unavailable",
        "node": node.config.node.name if local else session.node,
        # Stream management (XEP-0198): "detached" while the connection is lost and the
        # session waits for its client to resume it; "" for a session without it.
        "stream": ("detached" if getattr(session, "detached", False)
                   else "resumable" if _resumable(session) else ""),
    }


def _resumable(session: Any) -> bool:
    state = getattr(session, "sm", None)
    return bool(getattr(session, "sm_id", "")) or bool(state is not None and state.resumable)


def _presence_show(presence: bytes | None) -> str | None:
    """The <show/> of a stored available presence (away, chat, dnd, xa), if any."""
    if not presence:
        return None
    try:
        element = etree.fromstring(presence, _PRESENCE_PARSER)
    except etree.XMLSyntaxError:
        return None
    # Stored as sent on the stream, where jabber:client may be implied by the header.
    show = element.find(f"{{{ns.CLIENT}}}show")
    if show is None:
        show = element.find("show")
    return show.text if show is not None and show.text else None


_PRESENCE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


async def user_sessions(node: Node, args: dict) -> list[dict]:
    jid = _session_jid(node, args["jid"])
    if jid.resource is not None:
        raise AdminError(f"{jid} is a full JID: give the account, user@domain")
    if not node.store.account_exists(str(jid)):
        raise AdminError(f"no account {jid}")
    sessions = node.router.sessions.resources(str(jid))
    return sorted((_session_facts(node, s) for s in sessions), key=lambda f: f["full_jid"])


async def user_kick(node: Node, args: dict) -> list[str]:
    """Ends every session of an account, or one full JID, with <policy-violation/>."""
    jid = _session_jid(node, args["jid"])
    sessions = node.router.sessions
    if jid.resource is not None:
        session = sessions.session(jid)
        if session is None:
            raise AdminError(f"no session {jid} in the cluster")
        targets = [session]
    else:
        targets = sessions.resources(str(jid))
    for session in targets:
        session.close(StreamError("policy-violation", KICK_TEXT))
        log.info("session %s kicked by admin", session.full_jid)
    return sorted(s.full_jid for s in targets)


# -- components (XEP-0114) -------------------------------------------------------------------------


def _component_domain(node: Node, text: str) -> str:
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid domain: {exc}") from None
    if jid.local is not None or jid.resource is not None:
        raise AdminError(f"{text!r} is not a bare domain (like muc.example.com)")
    return jid.domain


async def component_add(node: Node, args: dict) -> dict:
    domain = _component_domain(node, args["domain"])
    if domain in node.served_hosts():
        raise AdminError(f"{domain} is a served host, not a component domain")
    secret = args["secret"]
    if not isinstance(secret, str) or not secret or len(secret) > secrets.MAX_SECRET_LENGTH:
        raise AdminError(f"the component secret must be 1 to {secrets.MAX_SECRET_LENGTH} characters")
    balancing = args.get("balancing") or "random"
    buckets = args.get("buckets") or 0
    if balancing not in BALANCING:
        raise AdminError(f"balancing must be one of {', '.join(BALANCING)}")
    if not isinstance(buckets, int) or not 0 <= buckets <= 65536:
        raise AdminError("buckets must be an integer from 0 to 65536")
    sealed = secrets.seal_component_secret(secrets.node_cluster_secret(node.config), secret)
    created = await node.store.component_add(domain, sealed, balancing, buckets)
    log.info("component %s %s by admin (balancing %s, buckets %d)", domain,
             "registered" if created else "updated", balancing, buckets)
    return {"domain": domain, "created": created, "balancing": balancing, "buckets": buckets}


async def component_remove(node: Node, args: dict) -> str:
    domain = _component_domain(node, args["domain"])
    if not await node.store.component_remove(domain):
        raise AdminError(f"no component {domain}")
    log.info("component %s removed by admin", domain)
    return domain


async def component_list(node: Node, args: dict) -> list[dict]:
    """Registered components, as committed cluster-wide; never their secrets. A component
    with live instances also lists them (id, node, since), as this node's routing table
    holds them."""
    await node.raft.barrier()
    listed = []
    for domain, entry in sorted(node.store.components().items()):
        row = {"domain": domain, "balancing": entry.get("balancing", "random"),
               "buckets": entry.get("buckets", 0)}
        instances = node.router.components.describe(domain)
        if instances:
            row["instances"] = instances
        listed.append(row)
    return listed


# -- online users, announcements, message of the day (also XEP-0133 ad-hoc commands) ---------------


def _host(node: Node, args: dict) -> str | None:
    host = args.get("host")
    if host is not None and host not in node.served_hosts():
        raise AdminError(f"{host} is not served by this cluster")
    return host


async def user_online(node: Node, args: dict) -> list[str]:
    return accounts.online_users(node.router.sessions, _host(node, args))


async def server_announce(node: Node, args: dict) -> int:
    hosts = [_host(node, args)] if args.get("host") else sorted(node.served_hosts())
    return sum(accounts.announce(node.router.sessions, host, args["text"]) for host in hosts)


async def motd_set(node: Node, args: dict) -> int:
    return await accounts.set_motd(node.store, node.router.sessions, node.served_hosts(),
                                   args["text"], edit=bool(args.get("edit")))


async def motd_delete(node: Node, args: dict) -> bool:
    return await accounts.delete_motd(node.store)


async def motd_show(node: Node, args: dict) -> str | None:
    motd = node.store.motd()
    return motd[0] if motd else None


# -- s2s (federation) -------------------------------------------------------------------------


async def s2s_list(node: Node, args: dict) -> list[dict]:
    """The cluster's s2s streams, as this node's gossip table and its own streams show them."""
    return node.router.s2s.describe()


async def s2s_close(node: Node, args: dict) -> dict:
    """Ends the streams with a remote domain here, and asks every other node to do so."""
    domain = _component_domain(node, args["domain"])
    if domain in node.served_hosts():
        raise AdminError(f"{domain} is served by this cluster, not a remote domain")
    closed = node.router.s2s.close_domain(domain)
    asked = 0
    if node.cluster is not None:
        for name in node.cluster.gossip.views:
            node.cluster.gossip.send(name, {"t": "s2s-close", "domain": domain})
            asked += 1
    log.info("s2s streams with %s closed by admin (%d here, %d nodes asked)", domain, closed, asked)
    return {"domain": domain, "closed_here": closed, "asked": asked}


# -- publish-subscribe (raftxmpp.modules.pubsub) -------------------------------------------------


def _pubsub_owner(node: Node, text: str) -> str:
    """An account (its PEP service) or a pubsub service domain of this cluster."""
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid JID: {exc}") from None
    if jid.resource is not None:
        raise AdminError(f"{text!r} is a full JID: give an account or a pubsub service domain")
    if jid.local is not None:
        return accounts.account_jid(node.served_hosts(), text)
    service = node.config.pubsub.service
    host = jid.domain.removeprefix(f"{service}.") if service else None
    if not host or host == jid.domain or host not in node.served_hosts():
        raise AdminError(f"{jid.domain} is neither an account nor a pubsub service here "
                         f"(the service is {service or 'off'}.<host>)")
    return jid.domain


async def pubsub_list(node: Node, args: dict) -> list[dict]:
    """Owners with pubsub nodes, or one owner's nodes, as committed cluster-wide."""
    await node.raft.barrier()
    owner = args.get("owner")
    if not owner:
        return [{"owner": o, "nodes": len(node.store.pubsub_nodes(o))}
                for o in node.store.pubsub_owners()]
    owner = _pubsub_owner(node, owner)
    return [{"node": name, **facts} for name, facts in node.store.pubsub_nodes(owner).items()]


async def pubsub_delete(node: Node, args: dict) -> dict:
    """Deletes one node of an account or a service; its subscribers are told (XEP-0060
    §8.4.2), as when an owner deletes it."""
    from raftxmpp.modules import pubsub
    from raftxmpp.modules.pubsub import protocol

    owner = _pubsub_owner(node, args["owner"])
    name = args["node"]
    if not isinstance(name, str) or not name:
        raise AdminError("name the node to delete")
    record = node.store.pubsub_node(owner, name)
    if record is None:
        raise AdminError(f"no node {name!r} at {owner}")
    await protocol.delete_node(pubsub.context(node.router), owner, name, "", record)
    log.info("pubsub node %r of %s deleted by admin", name, owner)
    return {"owner": owner, "node": name}


# -- multi-user chat (raftxmpp.modules.muc) --------------------------------------------------------


def _muc_room(node: Node, text: str) -> str:
    service = node.config.muc.service
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid JID: {exc}") from None
    host = jid.domain.removeprefix(f"{service}.") if service else None
    if jid.local is None or jid.resource is not None or not host or host == jid.domain \
            or host not in node.served_hosts():
        raise AdminError(f"{text!r} is not a room of this cluster's "
                         f"{service or '(disabled)'}.<host> service")
    return str(jid)


async def muc_list(node: Node, args: dict) -> list[dict]:
    """Rooms as committed cluster-wide, with the occupants this node knows of."""
    from raftxmpp.modules import muc

    await node.raft.barrier()
    ctx = muc.context(node.router)
    domain = args.get("domain") or None
    return [{"room": room, "name": info["config"]["roomname"],
             "persistent": info["config"]["persistentroom"], "locked": info["locked"],
             "occupants": len(ctx.occupants.of_room(room))}
            for room, info in node.store.muc_rooms(domain).items()]


async def muc_info(node: Node, args: dict) -> dict:
    from raftxmpp.modules import muc

    room = _muc_room(node, args["room"])
    record = node.store.muc_room(room)
    if record is None:
        raise AdminError(f"no room {room}")
    config = {k: v for k, v in record["config"].items() if k != "secret"}
    ctx = muc.context(node.router)
    return {"room": room, "config": config, "affiliations": record["affiliations"],
            "subject": record["subject"], "locked": record["locked"],
            "nicks": record.get("nicks", {}),
            "orderer": ctx.orderer_of(room),
            "occupants": [{"nick": o.nick, "jid": o.real_jid, "role": o.role,
                           "affiliation": o.affiliation, "node": o.node}
                          for o in ctx.occupants.of_room(room)]}


async def muc_destroy(node: Node, args: dict) -> str:
    """Destroys a room as its owner would (§10.9): occupants are told, with the reason."""
    from raftxmpp.modules import muc
    from raftxmpp.modules.muc import admin

    room = _muc_room(node, args["room"])
    if node.store.muc_room(room) is None:
        raise AdminError(f"no room {room}")
    await admin.destroy_room(muc.context(node.router), room, "", args.get("alternate"),
                             args.get("reason") or "destroyed by the operator")
    log.info("room %s destroyed by admin", room)
    return room


# -- message archive (XEP-0313) --------------------------------------------------------------------


async def archive_purge(node: Node, args: dict) -> int:
    """Deletes an account's archived messages (all, or those before a XEP-0082 time);
    through the log, so every node deletes the same rows."""
    jid = str(_account_jid(node, args["jid"]))
    before = args.get("before")
    if before is not None:
        try:
            moment = datetime.datetime.fromisoformat(before)
        except ValueError:
            raise AdminError(f"{before!r} is not a date (like 2026-01-31 or "
                             "2026-01-31T12:00:00Z)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        before = moment.timestamp()
    removed = await node.store.archive_purge(jid, before)
    log.info("archive of %s purged by admin (%d messages)", jid, removed)
    return removed


async def archive_stats(node: Node, args: dict) -> dict:
    """This node's archive as it holds it now (no barrier: tests compare nodes with it)."""
    rows, owners = node.store.archive_totals()
    facts = {"rows": rows, "accounts": owners,
             "position": node.raft.state.archive.position()}
    if args.get("jid"):
        jid = args["jid"]
        page = node.store.archive_query(Query(jid, max=100_000))
        facts["ids"] = [row.sid for row in page.rows]
    return facts


def _account_jid(node: Node, text: str) -> JID:
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a JID: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise AdminError(f"{text!r} is not an account (user@domain)")
    if not node.store.account_exists(str(jid)):
        raise AdminError(f"no account {jid}")
    return jid


async def raft_snapshot(node: Node, args: dict) -> bool:
    """Asks this node's Raft to write a snapshot and compact its log now (operators before
    a backup; tests of catching up from a snapshot)."""
    node.raft.syncobj.forceLogCompaction()
    return True


HANDLERS: dict[str, Handler] = {
    "archive.purge": archive_purge,
    "archive.stats": archive_stats,
    "raft.snapshot": raft_snapshot,
    "muc.list": muc_list,
    "muc.info": muc_info,
    "muc.destroy": muc_destroy,
    "cluster.change": cluster_change,
    "user.add": user_add,
    "user.remove": user_remove,
    "user.passwd": user_passwd,
    "user.list": user_list,
    "user.sessions": user_sessions,
    "user.kick": user_kick,
    "user.online": user_online,
    "server.announce": server_announce,
    "motd.set": motd_set,
    "motd.delete": motd_delete,
    "motd.show": motd_show,
    "component.add": component_add,
    "component.remove": component_remove,
    "component.list": component_list,
    "cluster.status": cluster_status,
    "node.status": node_status,
    "node.stop": node_stop,
    "state.digest": state_digest,
    "s2s.list": s2s_list,
    "s2s.close": s2s_close,
    "pubsub.list": pubsub_list,
    "pubsub.delete": pubsub_delete,
}
