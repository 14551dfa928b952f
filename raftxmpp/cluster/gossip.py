"""Gossip: the volatile, owner-written part of the cluster's state (sessions, presence).

Each node is the only writer of its own entries. A node's entries carry its
incarnation (new on every start) and a version (bumped on every change):
- a change goes at once to every connected peer as a delta;
- every INTERVAL each node sends a digest {node: (incarnation, version, heartbeat)}
  of everything it knows; a peer that sees a newer (incarnation, version) pulls that
  node's full table from the sender, so an update missed on one link arrives through
  another (anti-entropy), and a node cut off from one peer is still seen through others;
- a node whose heartbeat has not advanced for DEAD_AFTER seconds, directly or through
  anyone's digest, is declared dead and its entries are purged everywhere; its return
  (a new incarnation, or a heartbeat past the one it died with) brings them back.

Nothing here goes through Raft. Messages are JSON; entries must be JSON values.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from raftxmpp.cluster.links import GOSSIP, Links

log = logging.getLogger("raftxmpp.gossip")

INTERVAL = 0.25
DEAD_AFTER = 2.0

# (node, key, old value or None, new value or None)
ChangeHandler = Callable[[str, str, Any, Any], None]


@dataclass
class NodeView:
    incarnation: int
    version: int = 0
    heartbeat: int = 0
    seen: float = field(default_factory=time.monotonic)
    items: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # holds a full table, not only deltas


class Gossip:
    def __init__(self, name: str, links: Links, on_change: ChangeHandler,
                 on_message: Callable[[str, dict], None] | None = None) -> None:
        self.name = name
        self.links = links
        self.on_change = on_change
        self.on_message = on_message  # other message types (e.g. session kicks)
        self.on_dead: Callable[[str], None] = lambda node: None  # after its entries are purged
        # A node seen with a new incarnation while still alive here (after its new entries).
        self.on_restarted: Callable[[str], None] = lambda node: None
        self.incarnation = time.time_ns()
        self.version = 0
        self.heartbeat = 0
        self.items: dict[str, Any] = {}
        self.views: dict[str, NodeView] = {}
        # node → (incarnation, heartbeat) it had when declared dead
        self.dead: dict[str, tuple[int, int]] = {}

    # -- our own entries ---------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        self.items[key] = value
        self._delta({"set": {key: value}})

    def delete(self, key: str) -> None:
        if self.items.pop(key, None) is not None:
            self._delta({"del": [key]})

    def _delta(self, change: dict) -> None:
        self.version += 1
        self._broadcast({"t": "delta", "node": self.name, "inc": self.incarnation,
                         "ver": self.version, **change})

    def _broadcast(self, message: dict) -> None:
        if self.links.peers:  # a single node serializes nothing per login and logout
            self.links.broadcast(GOSSIP, json.dumps(message).encode())

    def send(self, peer: str, message: dict) -> None:
        self.links.send(peer, GOSSIP, json.dumps(message).encode())

    # -- what we know of others --------------------------------------------------------------------------

    def nodes(self) -> dict[str, dict]:
        """Live nodes and what they hold, for `cluster status`."""
        known = {self.name: {"entries": len(self.items), "incarnation": self.incarnation}}
        for name, view in self.views.items():
            known[name] = {"entries": len(view.items), "incarnation": view.incarnation,
                           "seen_ago": round(time.monotonic() - view.seen, 2)}
        return known

    def alive(self, node: str) -> bool:
        return node == self.name or node in self.views

    # -- incoming ----------------------------------------------------------------------------------------

    def handle(self, peer: str, payload: bytes) -> None:
        message = json.loads(payload)
        kind = message.get("t")
        if kind == "delta":
            self._on_delta(peer, message)
        elif kind == "digest":
            self._on_digest(peer, message)
        elif kind == "pull":
            self._on_pull(peer, message)
        elif kind == "full":
            self._on_full(message)
        elif self.on_message is not None:
            self.on_message(peer, message)

    def _on_delta(self, peer: str, message: dict) -> None:
        node, inc, ver = message["node"], int(message["inc"]), int(message["ver"])
        if node == self.name:
            return
        view = self.views.get(node)
        if view is None or view.incarnation != inc or not view.complete or ver != view.version + 1:
            if view is None or inc >= view.incarnation:
                self.send(peer, {"t": "pull", "nodes": [node]})
            return
        view.version = ver
        for key, value in message.get("set", {}).items():
            old = view.items.get(key)
            view.items[key] = value
            self.on_change(node, key, old, value)
        for key in message.get("del", []):
            old = view.items.pop(key, None)
            if old is not None:
                self.on_change(node, key, old, None)

    def _on_digest(self, peer: str, message: dict) -> None:
        wanted = []
        now = time.monotonic()
        for node, (inc, ver, hb) in message["nodes"].items():
            if node == self.name:
                continue
            view = self.views.get(node)
            if view is None:
                if self._returned(node, inc, hb):
                    wanted.append(node)
                continue
            if inc > view.incarnation or (inc == view.incarnation and ver > view.version):
                wanted.append(node)
            if inc == view.incarnation and hb > view.heartbeat:
                view.heartbeat = hb
                view.seen = now
        if wanted:
            self.send(peer, {"t": "pull", "nodes": wanted})

    def _returned(self, node: str, inc: int, hb: int) -> bool:
        """Unknown node, or a dead one that shows a new incarnation or a newer heartbeat."""
        dead = self.dead.get(node)
        return dead is None or inc > dead[0] or (inc == dead[0] and hb > dead[1])

    def _on_pull(self, peer: str, message: dict) -> None:
        for node in message["nodes"]:
            if node == self.name:
                self.send(peer, {"t": "full", "node": self.name, "inc": self.incarnation,
                                 "ver": self.version, "hb": self.heartbeat, "items": self.items})
            elif node in self.views and self.views[node].complete:
                view = self.views[node]
                self.send(peer, {"t": "full", "node": node, "inc": view.incarnation,
                                 "ver": view.version, "hb": view.heartbeat, "items": view.items})

    def _on_full(self, message: dict) -> None:
        node, inc, ver, hb = message["node"], int(message["inc"]), int(message["ver"]), int(message["hb"])
        if node == self.name:
            return
        view = self.views.get(node)
        if view is None:
            if not self._returned(node, inc, hb):
                return
            self.dead.pop(node, None)
            view = self.views[node] = NodeView(inc)
            log.info("node %s is alive (incarnation %d)", node, inc)
        elif inc < view.incarnation or (inc == view.incarnation and ver < view.version):
            return
        restarted = False
        if view is not None and inc > view.incarnation:
            log.info("node %s restarted: dropping its old sessions", node)
            self._replace(node, view, {})
            view.incarnation = inc
            restarted = True
        self._replace(node, view, message["items"])
        view.version, view.complete = ver, True
        if hb > view.heartbeat:
            view.heartbeat, view.seen = hb, time.monotonic()
        if restarted:
            self.on_restarted(node)

    def _replace(self, node: str, view: NodeView, items: dict) -> None:
        old_items, view.items = view.items, dict(items)
        for key, old in old_items.items():
            if key not in items:
                self.on_change(node, key, old, None)
        for key, value in items.items():
            if old_items.get(key) != value:
                self.on_change(node, key, old_items.get(key), value)

    # -- rounds ------------------------------------------------------------------------------------------

    async def run(self, dead_after: float = DEAD_AFTER, interval: float = INTERVAL) -> None:
        while True:
            self.heartbeat += 1
            nodes = {self.name: [self.incarnation, self.version, self.heartbeat]}
            for name, view in self.views.items():
                if view.complete:
                    nodes[name] = [view.incarnation, view.version, view.heartbeat]
            self._broadcast({"t": "digest", "nodes": nodes})
            self._expire(dead_after)
            await trio.sleep(interval)

    def _expire(self, dead_after: float) -> None:
        now = time.monotonic()
        for node, view in list(self.views.items()):
            if now - view.seen > dead_after:
                log.warning("node %s declared dead: no heartbeat for %.1fs", node, now - view.seen)
                del self.views[node]
                self.dead[node] = (view.incarnation, view.heartbeat)
                for key, old in view.items.items():
                    self.on_change(node, key, old, None)
                self.on_dead(node)

    # -- lookups by key (owner-written entries: BOSH sessions, web endpoints) ----------------------------

    def owner_of(self, key: str) -> str | None:
        """The live node whose entries hold `key` (ours first), if any."""
        if key in self.items:
            return self.name
        for node, view in self.views.items():
            if key in view.items:
                return node
        return None

    def values_of(self, key: str) -> dict[str, Any]:
        """Every live node's value for `key`, by node name."""
        found = {self.name: self.items[key]} if key in self.items else {}
        for node, view in self.views.items():
            if key in view.items:
                found[node] = view.items[key]
        return found
