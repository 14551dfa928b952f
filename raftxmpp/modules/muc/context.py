"""What every part of the muc package shares on one node: the router, the [muc]
settings, the occupant table, each room's recent history, and the node-to-node
messages of the package."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules.muc.occupants import OccupantTable

if TYPE_CHECKING:
    from raftxmpp.config import MucSection
    from raftxmpp.routing.router import Router

log = logging.getLogger("raftxmpp.muc")

# How long an announced affiliation change overrides this node's applied state: far more
# than any node lags the log while it is in the cluster.
RECENT_SECONDS = 30.0


@dataclass
class HistoryEntry:
    ts: float
    xml: str  # the message as occupants got it, without "to"
    chars: int


@dataclass
class Muc:
    router: Router
    settings: MucSection
    occupants: OccupantTable
    # room → its last messages (every node keeps them: history survives any node).
    history: dict[str, deque[HistoryEntry]] = field(default_factory=dict)
    history_chars: int = 0  # of every room's history here (raftxmpp.modules.muc.history)
    # (room, bare JID) → (affiliation, until): affiliation changes announced by another
    # node, which this node's applied state may not show yet (a ban must hold at once).
    recent_affiliations: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    # room → (subject, until): a subject change ordered through the room, which this
    # node's applied state may not show yet (a join right after it must see it).
    recent_subjects: dict[str, tuple[dict, float]] = field(default_factory=dict)
    # Forwarded IQ id → whom its answer is for (raftxmpp.modules.muc.forwarding.Pending).
    forwarded: dict[str, Any] = field(default_factory=dict)
    # Room-archive queries waiting for the ordering node's commit (raftxmpp.modules.muc.archive).
    drains: dict[int, Any] = field(default_factory=dict)
    # (room, real JID) → (tokens, last refill) of the occupant's message rate.
    buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    @property
    def store(self):
        return self.router.store

    @property
    def gossip(self):
        return self.router.sessions.gossip

    def service_of(self, domain: str) -> bool:
        label = self.settings.service
        prefix = label + "."
        return bool(label) and domain.startswith(prefix) and \
            domain[len(prefix):] in self.router.served_hosts()

    def affiliation(self, room: str, bare: str, record: dict) -> str:
        """A user's affiliation: the newest announced change, else the applied state."""
        recent = self.recent_affiliations.get((room, bare))
        if recent is not None and recent[1] > time.monotonic():
            return recent[0]
        return record["affiliations"].get(bare, "none")

    def subject(self, room: str, record: dict) -> dict | None:
        """The room's subject: the newest one ordered here, else the applied state's."""
        recent = self.recent_subjects.get(room)
        if recent is not None and recent[1] > time.monotonic():
            return recent[0]
        return record["subject"]

    def subject_ordered(self, room: str, subject: dict) -> None:
        now = time.monotonic()
        if len(self.recent_subjects) > 10_000:
            self.recent_subjects = {k: v for k, v in self.recent_subjects.items() if v[1] > now}
        self.recent_subjects[room] = (subject, now + RECENT_SECONDS)

    def announced(self, room: str, changes: dict[str, str]) -> None:
        now = time.monotonic()
        if len(self.recent_affiliations) > 10_000:
            self.recent_affiliations = {k: v for k, v in self.recent_affiliations.items()
                                        if v[1] > now}
        for bare, affiliation in changes.items():
            self.recent_affiliations[(room, bare)] = (affiliation, now + RECENT_SECONDS)

    # -- the cluster -------------------------------------------------------------------------

    def live_nodes(self) -> list[str]:
        gossip = self.gossip
        if gossip is None:
            return [self.occupants.node_name]
        return sorted({gossip.name, *gossip.views})

    def orderer_of(self, room: str) -> str:
        """The node that orders the room's messages: the live node that ranks highest for
        the room (rendezvous hashing), so every node names the same one while they agree
        on who lives, and a dead orderer's rooms spread over the survivors."""
        def rank(node: str) -> bytes:
            return hashlib.sha256(f"{room}\0{node}".encode()).digest()

        return max(self.live_nodes(), key=rank)

    def to_node(self, node: str, message: dict[str, Any]) -> None:
        """A package message to one node (ourselves included), over the gossip link."""
        if node == self.occupants.node_name or self.gossip is None:
            handler = self.router.gossip_messages.get(message["t"])
            if handler is not None:
                handler(node, message)
        else:
            self.gossip.send(node, message)

    def to_all(self, message: dict[str, Any]) -> None:
        for node in self.live_nodes():
            self.to_node(node, message)

    # -- sending to occupants ----------------------------------------------------------------

    def send_to(self, real_jid: str, stanza: etree._Element) -> None:
        """To a session of this node (an occupant's); dropped if it has gone meanwhile."""
        stanza.set("to", real_jid)
        session = self.router.sessions.local_session(JID.parse(real_jid))
        if session is not None:
            session.send_stanza(stanza)
