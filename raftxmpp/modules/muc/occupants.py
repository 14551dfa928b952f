"""Room occupants: volatile, owner-written gossip entries (DESIGN.md, "Volatile state").

Each node writes the occupants whose sessions it holds, one gossip entry each:
key "u:<room>\\x01<real full JID>" → {"n": nick, "r": role, "a": affiliation,
"p": the occupant's presence children (XML text), "t": join time, and "x" once the
occupant is leaving: {"c": status codes, "s": silent, "ac": actor nick, "re": reason}}.
Every node keeps the whole table, so any node answers who is in a room; when a node
dies, gossip purges its entries and every survivor sees its occupants leave.

This file is the table only; what a change means for clients is raftxmpp.modules.muc.presence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from raftxmpp import metrics

log = logging.getLogger("raftxmpp.muc")

PREFIX = "u:"
SEPARATOR = "\x01"  # PRECIS forbids control characters in every JID part

ROLES = ("moderator", "participant", "visitor", "none")


@dataclass
class Occupant:
    room: str
    real_jid: str  # the full JID of the session in the room
    nick: str
    role: str
    affiliation: str
    presence: str = ""  # the client's presence children, serialised
    joined: float = 0.0
    node: str = ""  # the node holding the session ("" until known)
    leaving: dict | None = None

    @property
    def bare_jid(self) -> str:
        return self.real_jid.partition("/")[0]

    def entry(self) -> dict[str, Any]:
        entry = {"n": self.nick, "r": self.role, "a": self.affiliation, "p": self.presence,
                 "t": self.joined}
        if self.leaving is not None:
            entry["x"] = self.leaving
        return entry


def key_of(room: str, real_jid: str) -> str:
    return f"{PREFIX}{room}{SEPARATOR}{real_jid}"


def _from_entry(node: str, key: str, entry: Any) -> Occupant | None:
    room, _, real = key[len(PREFIX):].partition(SEPARATOR)
    if not isinstance(entry, dict) or not room or not real:
        return None
    try:
        return Occupant(room, real, str(entry["n"]), str(entry["r"]), str(entry["a"]),
                        str(entry.get("p") or ""), float(entry.get("t", 0.0)), node,
                        entry.get("x") if isinstance(entry.get("x"), dict) else None)
    except (KeyError, TypeError, ValueError):
        return None


# (old occupant or None, new occupant or None, whether the change is this node's own)
ChangeHandler = Callable[[Occupant | None, Occupant | None], None]


@dataclass
class OccupantTable:
    node_name: str
    # The node's raftxmpp.cluster.gossip.Gossip (None before the node runs, or alone).
    gossip_of: Callable[[], Any] = lambda: None
    rooms: dict[str, dict[str, Occupant]] = field(default_factory=dict)
    on_change: list[ChangeHandler] = field(default_factory=list)

    # -- lookups ------------------------------------------------------------------------------

    def of_room(self, room: str) -> list[Occupant]:
        return [o for o in self.rooms.get(room, {}).values() if o.leaving is None]

    def local_of_room(self, room: str) -> list[Occupant]:
        return [o for o in self.of_room(room) if o.node == self.node_name]

    def get(self, room: str, real_jid: str) -> Occupant | None:
        occupant = self.rooms.get(room, {}).get(real_jid)
        return occupant if occupant is not None and occupant.leaving is None else None

    def by_nick(self, room: str, nick: str) -> list[Occupant]:
        return [o for o in self.of_room(room) if o.nick == nick]

    def of_session(self, real_jid: str) -> list[Occupant]:
        """The local occupants a session is (one per room it joined)."""
        return [o for occupants in self.rooms.values() for o in occupants.values()
                if o.real_jid == real_jid and o.node == self.node_name and o.leaving is None]

    def counts(self) -> tuple[int, int]:
        """(rooms with occupants, occupants) cluster-wide, for metrics."""
        return len(self.rooms), sum(len(o) for o in self.rooms.values())

    def _count(self) -> None:
        every = sum(len(o) for o in self.rooms.values())
        local = sum(1 for occupants in self.rooms.values() for o in occupants.values()
                    if o.node == self.node_name)
        metrics.MUC_OCCUPANTS.labels("cluster").value = every
        metrics.MUC_OCCUPANTS.labels("local").value = local

    # -- our own occupants ------------------------------------------------------------------

    def put(self, occupant: Occupant) -> None:
        """Adds or changes an occupant whose session is here, and tells the cluster.
        A change is a new Occupant (dataclasses.replace): handlers compare old and new."""
        occupant.node = self.node_name
        old = self.rooms.get(occupant.room, {}).get(occupant.real_jid)
        self.rooms.setdefault(occupant.room, {})[occupant.real_jid] = occupant
        gossip = self.gossip_of()
        if gossip is not None:
            gossip.set(key_of(occupant.room, occupant.real_jid), occupant.entry())
        self._changed(old, occupant)

    def remove(self, occupant: Occupant, leaving: dict) -> None:
        """An occupant of ours leaves: the cluster sees it leaving (with why), then gone."""
        self.put(replace(occupant, leaving=leaving))
        self._drop(occupant.room, occupant.real_jid)
        gossip = self.gossip_of()
        if gossip is not None:
            gossip.delete(key_of(occupant.room, occupant.real_jid))

    def _drop(self, room: str, real_jid: str) -> None:
        occupants = self.rooms.get(room)
        if occupants is not None:
            occupants.pop(real_jid, None)
            if not occupants:
                del self.rooms[room]

    # -- other nodes' occupants, from gossip ----------------------------------------------------

    def on_gossip(self, node: str, key: str, old: Any, new: Any) -> None:
        room, _, real = key[len(PREFIX):].partition(SEPARATOR)
        before = self.rooms.get(room, {}).get(real)
        if before is not None and before.node != node:
            before = None  # another node's entry for the same session: a stale one
        if new is None:
            if before is not None:
                self._drop(room, real)
                if before.leaving is None:
                    # Gone without leaving: its node died (or forgot it). Status 333.
                    gone = Occupant(**{**before.__dict__, "leaving": {"c": [333]}})
                    self._changed(before, gone)
            return
        occupant = _from_entry(node, key, new)
        if occupant is None:
            log.warning("ignoring malformed occupant entry %s from %s", key[:120], node)
            return
        self.rooms.setdefault(room, {})[real] = occupant
        if before is not None and before.leaving is not None:
            return  # already told
        self._changed(before, occupant)

    def _changed(self, old: Occupant | None, new: Occupant | None) -> None:
        if old is None or new is None or new.leaving is not None:
            self._count()  # a join or a leave: O(occupants), never per message
        for handler in self.on_change:
            try:
                handler(old, new)
            except Exception:  # one bad presence must not stop the others' handlers
                log.exception("occupant change handler failed")
