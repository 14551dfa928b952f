"""Where published pubsub items live: a narrow store keyed by (owner, node).

Every read and write of items — from the state machine's ops and from the store's
reads — goes through `ItemStore`, and nothing else knows how items are kept. Today
they are plain dicts inside the replicated in-memory state (so a snapshot is still one
pickle); DESIGN.md's "Large durable data" moves what grows without bound into an
on-disk store fed by batched Raft entries, and for pubsub that move replaces this
class and nothing outside it.

Layout of the wrapped table (one entry per owner, the owner being an account's bare
JID for PEP or a service domain):

    {owner: {"bytes": int, "nodes": {node: {"bytes": int, "items": {item id: item}}}}}

`items` keeps publish order (a republished id moves to the end, as XEP-0060 §7.1.2
treats it as the newest); an item is {"payload": str | None, "publisher": str,
"ts": float, "size": int}. The byte counters are kept in step by every method so
limits are checked in O(1) inside apply.

Like the ops that call it, this class does no I/O and reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Item = dict[str, Any]


def item_size(item_id: str, payload: str | None) -> int:
    """What an item costs against the byte limits: its id and its payload's UTF-8."""
    return len(item_id.encode()) + (len(payload.encode()) if payload else 0)


class ItemStore:
    """put / get / list / retract / purge by (owner, node), with byte accounting."""

    def __init__(self, table: dict[str, dict]) -> None:
        self.table = table

    # -- reads ------------------------------------------------------------------------------

    def _node(self, owner: str, node: str) -> dict | None:
        entry = self.table.get(owner)
        return None if entry is None else entry["nodes"].get(node)

    def get(self, owner: str, node: str, item_id: str) -> Item | None:
        entry = self._node(owner, node)
        return None if entry is None else entry["items"].get(item_id)

    def list(self, owner: str, node: str) -> list[tuple[str, Item]]:
        """Every item of a node, oldest first."""
        entry = self._node(owner, node)
        return [] if entry is None else list(entry["items"].items())

    def ids(self, owner: str, node: str) -> Iterator[str]:
        entry = self._node(owner, node)
        return iter(()) if entry is None else iter(entry["items"])

    def last(self, owner: str, node: str) -> tuple[str, Item] | None:
        entry = self._node(owner, node)
        if not entry or not entry["items"]:
            return None
        item_id = next(reversed(entry["items"]))
        return item_id, entry["items"][item_id]

    def count(self, owner: str, node: str) -> int:
        entry = self._node(owner, node)
        return 0 if entry is None else len(entry["items"])

    def node_bytes(self, owner: str, node: str) -> int:
        entry = self._node(owner, node)
        return 0 if entry is None else entry["bytes"]

    def owner_bytes(self, owner: str) -> int:
        entry = self.table.get(owner)
        return 0 if entry is None else entry["bytes"]

    def totals(self) -> tuple[int, int]:
        """(items, bytes) over every owner: for metrics, O(owners × nodes)."""
        items = size = 0
        for entry in self.table.values():
            size += entry["bytes"]
            items += sum(len(n["items"]) for n in entry["nodes"].values())
        return items, size

    def plan_put(self, owner: str, node: str, item_id: str, size: int,
                 max_items: int) -> tuple[list[str], int, int]:
        """What `put` would do, without doing it: (evicted ids, node bytes, owner bytes)
        afterwards. Lets an op check its limits before it changes anything."""
        entry = self._node(owner, node)
        items = {} if entry is None else entry["items"]
        replaced = items.get(item_id)
        freed = replaced["size"] if replaced else 0
        kept = len(items) - (1 if replaced else 0)
        evicted = []
        if kept + 1 > max_items:
            for old_id, old in items.items():
                if kept + 1 <= max_items:
                    break
                if old_id == item_id:
                    continue
                evicted.append(old_id)
                freed += old["size"]
                kept -= 1
        node_bytes = (entry["bytes"] if entry else 0) - freed + size
        return evicted, node_bytes, self.owner_bytes(owner) - freed + size

    # -- writes -----------------------------------------------------------------------------

    def put(self, owner: str, node: str, item_id: str, item: Item, max_items: int) -> list[str]:
        """Stores an item as the node's newest; returns the ids evicted past max_items."""
        evicted, _, _ = self.plan_put(owner, node, item_id, item["size"], max_items)
        entry = self.table.setdefault(owner, {"bytes": 0, "nodes": {}})
        node_entry = entry["nodes"].setdefault(node, {"bytes": 0, "items": {}})
        for old_id in evicted:
            self._drop(entry, node_entry, old_id)
        self._drop(entry, node_entry, item_id)
        node_entry["items"][item_id] = item
        node_entry["bytes"] += item["size"]
        entry["bytes"] += item["size"]
        return evicted

    def retract(self, owner: str, node: str, item_id: str) -> bool:
        entry = self.table.get(owner)
        node_entry = None if entry is None else entry["nodes"].get(node)
        if node_entry is None or item_id not in node_entry["items"]:
            return False
        self._drop(entry, node_entry, item_id)
        self._forget_empty(owner, node)
        return True

    def trim(self, owner: str, node: str, max_items: int) -> list[str]:
        """Drops the oldest items beyond max_items (a node reconfigured smaller)."""
        entry = self.table.get(owner)
        node_entry = None if entry is None else entry["nodes"].get(node)
        if node_entry is None:
            return []
        excess = len(node_entry["items"]) - max_items
        evicted = list(node_entry["items"])[:max(0, excess)]
        for item_id in evicted:
            self._drop(entry, node_entry, item_id)
        self._forget_empty(owner, node)
        return evicted

    def purge(self, owner: str, node: str) -> int:
        """Removes every item of a node (the node itself is the caller's); returns how many."""
        entry = self.table.get(owner)
        node_entry = None if entry is None else entry["nodes"].pop(node, None)
        if node_entry is None:
            return 0
        entry["bytes"] -= node_entry["bytes"]
        if not entry["nodes"]:
            del self.table[owner]
        return len(node_entry["items"])

    def drop_owner(self, owner: str) -> None:
        self.table.pop(owner, None)

    def _drop(self, entry: dict, node_entry: dict, item_id: str) -> None:
        old = node_entry["items"].pop(item_id, None)
        if old is not None:
            node_entry["bytes"] -= old["size"]
            entry["bytes"] -= old["size"]

    def _forget_empty(self, owner: str, node: str) -> None:
        entry = self.table[owner]
        if not entry["nodes"][node]["items"]:
            del entry["nodes"][node]
        if not entry["nodes"]:
            del self.table[owner]
