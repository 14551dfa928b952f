"""Session manager: where the resources of each account are, and delivery to them.

A session is one bound resource (full JID). Local sessions hold a c2s connection's
outgoing queue; the cluster issue adds sessions on other nodes, learnt by gossip.
Message delivery follows RFC 6121 §8.5: a full JID goes to that resource; a bare JID
to the available resources of highest non-negative priority; none → offline storage
(the offline module's hook) or an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.stanza import serialize

log = logging.getLogger("raftxmpp.sessions")

# A client that stops reading may hold at most this much of our memory.
MAX_OUTBOX_BYTES = 1024 * 1024


@dataclass(eq=False)
class LocalSession:
    """One bound resource on this node and its outgoing byte queue."""

    jid: JID
    full_jid: str = ""
    bare_jid: str = ""
    priority: int = 0
    available: bool = False
    presence: bytes | None = None  # last available presence, for probes
    roster_requested: bool = False  # "interested resource" (RFC 6121 §2.1.6)
    carbons: bool = False
    directed: set[str] = field(default_factory=set)
    outbox: list[bytes] = field(default_factory=list)
    outbox_bytes: int = 0
    closing: StreamError | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.full_jid = str(self.jid)
        self.bare_jid = str(self.jid.bare)

    def send(self, data: bytes) -> None:
        """Queues bytes for the connection's writer; a client that stops reading is cut off."""
        if self.closing is not None:
            return
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        if self.outbox_bytes > MAX_OUTBOX_BYTES:
            log.warning("session %s stopped reading; closing it", self.full_jid)
            self.close(StreamError("policy-violation", "outgoing queue full: the client stopped reading"))
        self.wakeup.set()

    def send_stanza(self, stanza: etree._Element) -> None:
        self.send(serialize(stanza))

    def take_outbox(self) -> bytes:
        data = b"".join(self.outbox)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.wakeup = trio.Event()
        return data

    def close(self, error: StreamError | None) -> None:
        """Asks the connection to end the stream (with the error, if any)."""
        if self.closing is None:
            self.closing = error or StreamError("undefined-condition")
            self.wakeup.set()


class SessionManager:
    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, LocalSession]] = {}
        self.on_unavailable: list[Callable[[LocalSession], None]] = []

    # -- the session table ---------------------------------------------------------------------

    def bind(self, session: LocalSession) -> LocalSession | None:
        """Adds a session; returns the session it replaced (RFC 6120 §7.7.2.2), if any."""
        resources = self._by_bare.setdefault(session.bare_jid, {})
        old = resources.get(session.jid.resource)
        resources[session.jid.resource] = session
        return old

    def unbind(self, session: LocalSession) -> None:
        resources = self._by_bare.get(session.bare_jid)
        if resources is not None and resources.get(session.jid.resource) is session:
            del resources[session.jid.resource]
            if not resources:
                del self._by_bare[session.bare_jid]

    def session(self, full_jid: JID) -> LocalSession | None:
        return self._by_bare.get(str(full_jid.bare), {}).get(full_jid.resource)

    def resources(self, bare_jid: str) -> list[LocalSession]:
        return list(self._by_bare.get(bare_jid, {}).values())

    def available(self, bare_jid: str) -> list[LocalSession]:
        return [s for s in self._by_bare.get(bare_jid, {}).values() if s.available]

    def resource_count(self, bare_jid: str) -> int:
        return len(self._by_bare.get(bare_jid, ()))

    def local_count(self) -> int:
        return sum(len(r) for r in self._by_bare.values())

    def all_local(self) -> list[LocalSession]:
        return [s for r in self._by_bare.values() for s in r.values()]

    # -- delivery --------------------------------------------------------------------------------

    def highest_priority(self, bare_jid: str) -> list[LocalSession]:
        """The available resources with the highest non-negative priority (RFC 6121 §8.5.2.1.1)."""
        candidates = [s for s in self.available(bare_jid) if s.priority >= 0]
        if not candidates:
            return []
        top = max(s.priority for s in candidates)
        return [s for s in candidates if s.priority == top]

    def interested(self, bare_jid: str) -> list[LocalSession]:
        return [s for s in self.resources(bare_jid) if s.roster_requested]

    async def shutdown(self) -> None:
        """Ends every client stream with <system-shutdown/> and gives writers a moment to flush."""
        sessions = self.all_local()
        for session in sessions:
            session.close(StreamError("system-shutdown"))
        with trio.move_on_after(2):
            while any(s.outbox for s in sessions):
                await trio.sleep(0.02)


def is_stanza(element: etree._Element, name: str) -> bool:
    return element.tag == f"{{{ns.CLIENT}}}{name}"
