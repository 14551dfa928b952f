"""This node's place in the cluster: links, gossip, the member table, membership changes.

- The replicated member table maps node names to their Raft and link addresses; each
  node writes its own entry, and every node dials the links of the others from it.
- Membership changes (add-peer, remove-peer, join) take a cluster-wide lock in the
  state machine first, because pysyncobj does not refuse a second change in flight.
  A node is added to Raft before it starts (pysyncobj #89): `node start --join`
  asks a member over the authenticated link port to add it, then starts Raft with
  the member list it got back.
- A node that finds itself removed from the member table says so and refuses
  durable writes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from raftxmpp.cluster.gossip import Gossip
from raftxmpp.cluster.links import CUSTODY, GOSSIP, STANZA, LinkError, Links, SecretMismatch
from raftxmpp.cluster.raft import RaftOutcomeUnknown, RaftUnavailable
from raftxmpp.cluster.rpc import ANSWER, REQUEST, Rpc
from raftxmpp.cluster.state import MAX_VERSION
from raftxmpp.cluster.store import StoreError
from raftxmpp.config import Address

if TYPE_CHECKING:
    from raftxmpp.node import Node

log = logging.getLogger("raftxmpp.cluster")

MEMBERSHIP_TTL = 60
REMOVED_MARKER = "removed"  # in the data dir, once this node learnt it was removed
REFUSED_MEANS_REMOVED = 3.0

__all__ = ["ClusterMembership", "MembershipError", "LinkError", "join", "remembered_peers"]


class MembershipError(Exception):
    """A membership change that cannot be made; the message is for the operator."""


class ClusterMembership:
    def __init__(self, node: Node, secret: str) -> None:
        self.node = node
        cfg = node.config
        self.name = cfg.node.name
        self.links = Links(self.name, secret, cfg.cluster.link, self._on_frame, self._on_join,
                           raft=str(cfg.cluster.raft), is_member=self._is_member,
                           on_refused=self._refused, encrypt=cfg.cluster.encrypt_links)
        if cfg.cluster_secret() is None:
            self.links.wrong_secret_hint = (
                f" (this node uses its own random secret, {cfg.node.data_dir / 'raft.secret'}: "
                "give a node that joins a copy of it as [cluster] secret_file)")
        self.gossip = Gossip(self.name, self.links, self._on_gossip_change,
                             self._on_gossip_message)
        node.router.sessions.attach(self.gossip, self.links)
        self.gossip.on_dead = self._on_peer_dead
        # A node back with a new incarnation before it was declared dead lost what it held.
        self.gossip.on_restarted = self._on_peer_restarted
        # Gossip entries owned by other parts, by key prefix (the login throttle's "f:").
        self.gossip_handlers: dict[str, Callable[[str, str, Any, Any], None]] = {}
        # s2s streams: "o:" outgoing stream holders, "i:" incoming streams.
        node.router.s2s.attach(self.gossip, self.links)
        self.gossip_handlers["o:"] = node.router.s2s.on_gossip_change
        self.gossip_handlers["i:"] = node.router.s2s.on_gossip_change
        self.rpc = Rpc(self.links)  # calls between nodes (BOSH forwarding, upload bytes)
        self.removed = False
        self._was_member = False
        self._refused_since: float | None = None
        self._nursery: trio.Nursery | None = None  # for a join's change that outlives its answer

    # -- running ------------------------------------------------------------------------------------

    async def run(self, listener: trio.SocketListener, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.rpc.run)
            await nursery.start(self.links.serve, listener)
            nursery.start_soon(self.gossip.run)
            nursery.start_soon(self._track_members)
            nursery.start_soon(self._report_catch_up)
            task_status.started()

    async def _track_members(self) -> None:
        cfg = self.node.config
        # The version tells submitters which commands every member can apply.
        own = {"raft": str(cfg.cluster.raft), "link": str(cfg.cluster.link),
               "version": MAX_VERSION}
        while True:
            members = self.node.raft.read(lambda s: dict(s.members))
            self.links.set_peers({name: Address.parse(m["link"]) for name, m in members.items()})
            if self.name in members:
                self._was_member = True
            elif self._was_member and members and not self.removed:
                self._mark_removed("its entry left the replicated member table")
            if members.get(self.name) != own and not self.removed:
                await self._register(own)
            await trio.sleep(0.5)

    async def _report_catch_up(self) -> None:
        """Logs progress while this node is not yet current (restart, join, snapshot)."""
        raft = self.node.raft
        while not raft.status().get("ready"):
            await trio.sleep(2)
            status = raft.status()
            if not status.get("ready"):
                log.info("catching up: applied %s of %s (leader %s)", status.get("applied_index"),
                         status.get("leader_commit_index"), status.get("leader") or "unknown")
        log.info("caught up: applied index %s", raft.status().get("applied_index"))

    async def _register(self, own: dict) -> None:
        try:
            await self.node.store.member_set(self.name, **own)
        except RaftUnavailable:
            pass  # no quorum yet: try again next round
        except StoreError as exc:
            log.error("cannot register this node in the member table: %s", exc.text)

    # -- frames from other nodes -----------------------------------------------------------------------

    async def _on_frame(self, peer: str, kind: bytes, payload: bytes) -> None:
        try:
            if kind == GOSSIP:
                self.gossip.handle(peer, payload)
            elif kind == STANZA:
                await self.node.router.deliver_from_link(payload)
            elif kind == CUSTODY:
                (token,) = struct.unpack_from(">Q", payload)
                await self.node.router.deliver_from_link(payload[8:], peer, token)
            elif kind in (REQUEST, ANSWER):
                self.rpc.handle(peer, kind, payload)
        except (ValueError, KeyError, TypeError, struct.error) as exc:  # a short T frame
            log.warning("bad %r frame from %s: %r", kind, peer, exc)

    def _on_peer_dead(self, peer: str) -> None:
        """Stanzas still queued on the link to a node gossip declared dead are routed again
        here, where the session table is complete: left in the queue, they would reach the
        node's next incarnation before it knows where anyone's session is, and a message
        already acknowledged to its sender was lost that way (chaos/RESULTS.md, issue 16)."""
        self._custody_lost(peer)
        payloads = self.links.take_stanzas(peer, self.node.router.for_a_session)
        if payloads and self._nursery is not None:
            self._nursery.start_soon(self._route_again, peer, payloads)

    def _on_peer_restarted(self, peer: str) -> None:
        """Its previous incarnation died holding copies in custody (the stanzas queued on
        the link go to the new incarnation, which knows its sessions by now)."""
        self._custody_lost(peer)

    def _custody_lost(self, peer: str) -> None:
        """The copies in custody `peer` held or had queued are routed again here."""
        self.links.drop_custody(peer)
        self.node.router.custody.peer_gone(peer)

    async def _route_again(self, peer: str, payloads: list[bytes]) -> None:
        log.info("%d stanzas queued for %s (declared dead) routed again here", len(payloads), peer)
        for payload in payloads:
            try:
                await self.node.router.deliver_from_link(payload)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("stanza queued for %s not routed again: %r", peer, exc)

    def _on_gossip_change(self, node: str, key: str, old: Any, new: Any) -> None:
        """Routes a gossip entry change to its owner by key prefix: s: sessions, c: components."""
        router = self.node.router
        if key.startswith("s:"):
            router.sessions.on_gossip_change(node, key, old, new)
        elif key.startswith("c:"):
            router.components.on_gossip_change(node, key, old, new)
        elif (handler := self.gossip_handlers.get(key[:2])) is not None:
            handler(node, key, old, new)
        elif (handler := router.gossip_handlers.get(key[:2])) is not None:
            handler(node, key, old, new)  # a module's own gossip ("e:" entity caps)

    def _on_gossip_message(self, peer: str, message: dict) -> None:
        kind = message.get("t")
        if kind == "kick":
            self.node.router.sessions.kick(str(message["jid"]), str(message.get("condition")))
        elif kind == "s2s-close":  # `raftxmpp s2s close DOMAIN` run on another node
            self.node.router.s2s.close_domain(str(message.get("domain")))
        elif kind == "s2s-ack":  # a holder of an s2s stream has what we handed it
            self.node.router.s2s.acknowledged(peer, str(message["pair"]), int(message["seq"]))
        elif kind == "removed" and not self.removed:
            self._mark_removed(f"node {peer} removed it")
        elif (handler := self.node.router.gossip_messages.get(kind)) is not None:
            handler(peer, message)  # a module's own ("pubsub-deliver")

    def _mark_removed(self, reason: str) -> None:
        """Stops durable writes here and remembers it in the data dir: restarted on the
        same data, a removed node would otherwise serve its old state and keep trying
        to register again."""
        self.removed = True
        log.warning("this node was removed from the cluster (%s): it no longer serves "
                    "durable writes", reason)
        try:
            _write_private(self.node.config.node.data_dir / REMOVED_MARKER,
                           json.dumps({"reason": reason, "at": time.time()}))
        except OSError as exc:
            log.error("cannot record the removal in the data dir: %s", exc)

    def _is_member(self, raft_address: str) -> bool:
        return raft_address in self.node.raft.members()

    def _refused(self, peer: str) -> None:
        """A peer says we are not a member. A lagging peer may say so for a heartbeat or
        two right after we joined, so only a refusal that lasts means removal."""
        now = trio.current_time()
        if self._refused_since is None:
            self._refused_since = now
        elif now - self._refused_since > REFUSED_MEANS_REMOVED and not self.removed:
            self._mark_removed(f"{peer} and others no longer accept it")

    def _member_name(self, raft_address: str) -> str | None:
        members = self.node.raft.read(lambda s: dict(s.members))
        return next((n for n, m in members.items() if m["raft"] == raft_address), None)

    # -- membership changes ------------------------------------------------------------------------------

    async def change(self, action: str, address: str,
                     on_locked: Callable[[], None] | None = None,
                     timeout: float = 10.0) -> None:
        """Adds or removes one Raft member, holding the cluster-wide lock while it happens."""
        store = self.node.store
        owner = f"{self.name}:{uuid.uuid4().hex[:8]}"
        try:
            await store.membership_lock(owner, MEMBERSHIP_TTL)
        except StoreError as exc:
            raise MembershipError(exc.text) from None
        if on_locked is not None:
            on_locked()
        try:
            await self.node.raft.change_membership(action, address, timeout)
        except RaftOutcomeUnknown:
            # The change may still commit: a second change now could be in flight with
            # it, which pysyncobj does not prevent. The lock stays until it expires.
            log.warning("membership change %s %s: outcome unknown; the membership lock is "
                        "kept until it expires in %ds", action, address, MEMBERSHIP_TTL)
            raise
        except BaseException:
            await self._unlock(owner)  # the change surely did not happen
            raise
        try:
            if action == "remove":
                # It gets no more log entries now: tell it directly, then forget it.
                name = self._member_name(address)
                if name is not None:
                    self.gossip.send(name, {"t": "removed"})
                await store.member_remove(address)
            log.info("membership change done: %s %s", action, address)
        finally:
            await self._unlock(owner)

    async def _unlock(self, owner: str) -> None:
        try:
            await self.node.store.membership_unlock(owner)
        except (RaftUnavailable, StoreError):
            log.warning("could not release the membership lock; it expires in %ds",
                        MEMBERSHIP_TTL)

    async def _on_join(self, request: dict) -> dict:
        raft = str(request.get("raft", ""))
        try:
            Address.parse(raft)
        except ValueError:
            return {"error": f"bad raft address {raft!r}"}
        if raft not in self.node.raft.members():
            if self.add_needs_the_newcomer():
                try:
                    await self.start_add(raft, str(request.get("name")))
                except (MembershipError, RaftUnavailable) as exc:
                    return {"error": str(exc)}
                return {"peers": sorted(self.node.raft.members() | {raft})}
            try:
                await self.change("add", raft)
            except RaftOutcomeUnknown as exc:
                # It may be a member now: a member that never starts would count against
                # every quorum, so the joiner starts either way (and is refused, then
                # removed, if the add did not take).
                log.warning("join of %s (%s): %s; it starts anyway", request.get("name"),
                            raft, exc)
                return {"peers": sorted(self.node.raft.members() | {raft})}
            except (MembershipError, RaftUnavailable) as exc:
                return {"error": str(exc)}
        log.info("node %s (%s) joined the cluster", request.get("name"), raft)
        return {"peers": sorted(self.node.raft.members())}

    def add_needs_the_newcomer(self) -> bool:
        """pysyncobj counts a new member in the quorum once the change is appended, so
        when the members up are fewer than the new quorum (a single node growing to
        two, or one of three down) the add commits only after the new node runs."""
        members = self.node.raft.status().get("members", {})
        up = sum(1 for alive in members.values() if alive)
        return up < (len(members) + 1) // 2 + 1

    async def start_add(self, raft: str, name: str) -> None:
        """Takes the membership lock and submits the add, whose commit waits for the new
        node's vote: it returns then, so that the new node can start (waiting for the
        commit first would wait forever). The lock is held until the commit."""
        await self._nursery.start(self._add_in_background, raft, name)
        log.info("%s (%s) may start now: the add commits with its vote",
                 f"node {name}" if name else "the new node", raft)

    async def _add_in_background(self, raft: str, name: str,
                                 task_status=trio.TASK_STATUS_IGNORED) -> None:
        locked = False

        def on_locked() -> None:
            nonlocal locked
            locked = True
            task_status.started()

        try:
            # Its commit waits for the new node to start and to receive the whole log or
            # snapshot: longer than a change among running members, within the lock's TTL.
            await self.change("add", raft, on_locked=on_locked, timeout=MEMBERSHIP_TTL * 0.75)
        except (MembershipError, RaftUnavailable) as exc:
            if not locked:
                raise  # to the join's answer
            log.error("adding %s (%s) did not commit: %s; the cluster lacks a quorum until "
                      "that node runs (or a member that is down comes back): start it",
                      name or "a node", raft, exc)
            return
        log.info("%s (%s) joined the cluster", f"node {name}" if name else "a node", raft)


async def join(links: Links, member: Address, request: dict, data_dir: Path) -> list[str]:
    """Asks a member to add us; returns the Raft peers to start with, and keeps them."""
    try:
        answer = await links.request_join(member, request)
    except SecretMismatch as exc:
        raise MembershipError(
            f"{exc} (a node started without [cluster] secret uses a random one kept in its "
            "data_dir/raft.secret: give this node a copy of that file as [cluster] "
            "secret_file; README: Growing a single node)") from None
    if "error" in answer:
        raise MembershipError(f"{member} refused the join: {answer['error']}")
    peers = [p for p in answer["peers"] if p != request["raft"]]
    _write_private(data_dir / "raft.peers", json.dumps(peers))
    return peers


def _write_private(path: Path, text: str) -> None:
    """Written whole (a crash leaves the old file or the new one), mode 0600."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def refuse_if_removed(data_dir: Path) -> None:
    """Raises MembershipError with a one-line message when this data dir belongs to a
    node that was removed from its cluster."""
    marker = data_dir / REMOVED_MARKER
    if not marker.exists():
        return
    try:
        reason = str(json.loads(marker.read_text()).get("reason", "unknown"))
    except (OSError, ValueError, AttributeError):
        reason = "unknown"
    raise MembershipError(f"this node was removed from its cluster ({reason}); it does not "
                          f"serve from {data_dir}: start it with an empty data dir and "
                          "--join to bring it back")


def remembered_peers(data_dir: Path) -> list[str] | None:
    """The member list a previous `--join` got, so a restart finds the cluster again."""
    path = data_dir / "raft.peers"
    if not path.exists():
        return None
    try:
        peers: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [str(p) for p in peers] if isinstance(peers, list) else None

