"""Stream management (XEP-0198, urn:xmpp:sm:3): the counters and the unacked queue.

Sans-IO, like the negotiation core: the connection tells it what it handled and what it
wrote; it answers with the bytes of <a/>, <r/>, <enabled/>, <resumed/>, <failed/>. It
knows no socket, no clock and no session table, so the counting rules (§4, 32-bit
wrap-around, "handled-count-too-high") are tested without a network.

What `h` means here, which is what the server promises a client when it acks
("custody", issue 16): `handled` counts the client's stanzas the router has finished
with, but the `h` we report is the number of leading stanzas that are *settled*. A
message worth keeping (chat or normal with a body) routed to sessions with stream
management carries a `Custody` record: it settles once every copy is acknowledged by
the recipient's client, committed through Raft (offline storage, parking), written to
a session without stream management, or bounced with an error. Everything else settles
as soon as it is handled. The README's "Stream management" section states the guarantee.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.stanza import serialize

WRAP = 1 << 32  # §4: "h" wraps to zero after 2^32 - 1

ENABLE = f"{{{ns.SM}}}enable"
RESUME = f"{{{ns.SM}}}resume"
REQUEST = f"{{{ns.SM}}}r"
ANSWER = f"{{{ns.SM}}}a"

R_BYTES = b"<r xmlns='urn:xmpp:sm:3'/>"
# The owner of a LocalSession that moved to another node (raftxmpp.modules.stream_management).
HANDED_OVER = "handed over"


class HandledCountTooHigh(StreamError):
    """§4: the peer acknowledged stanzas we never sent."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__("undefined-condition", "acknowledged more stanzas than were sent")
        self.h, self.sent = h, sent

    def to_bytes(self) -> bytes:
        # The application-specific condition goes inside <stream:error/> (XEP-0198 §4).
        base = super().to_bytes()
        extra = (f"<handled-count-too-high xmlns='urn:xmpp:sm:3' h='{self.h}' "
                 f"send-count='{self.sent}'/>").encode()
        return base.replace(b"</stream:error>", extra + b"</stream:error>")


def parse_h(element: etree._Element) -> int:
    """The 'h' attribute: an unsigned 32-bit integer, or a <bad-format/> stream error."""
    text = element.get("h", "")
    if not text.isdigit() or int(text) >= WRAP:
        raise StreamError("bad-format", "'h' must be an unsigned 32-bit integer")
    return int(text)


class Custody:
    """One client message on its way to sessions with stream management: `pending`
    counts the copies (and routings) not yet settled; at zero `on_settled` runs, once.

    Whoever routes it holds one count while routing (so it cannot settle half-way),
    each queued copy holds one (a `Held` chunk), each copy sent to another node holds
    one (raftxmpp.modules.stream_management.CustodyTable)."""

    __slots__ = ("pending", "on_settled")

    def __init__(self, on_settled: Callable[[], None] | None = None) -> None:
        self.pending = 1  # the routing that created it
        self.on_settled = on_settled

    def hold(self) -> None:
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.on_settled is not None:
            callback, self.on_settled = self.on_settled, None
            callback()

    @property
    def settled(self) -> bool:
        return self.pending <= 0


class Held(bytes):
    """A queued copy of a message in custody: the bytes written to the client, and the
    record its settlement releases (once: `settle` forgets it)."""

    def __new__(cls, data: bytes, custody: Custody) -> Held:
        chunk = super().__new__(cls, data)
        custody.hold()
        chunk.custody = custody
        return chunk


def settle(chunk: bytes) -> None:
    """The copy is safe (acknowledged by its client, committed, bounced, moved on)."""
    custody = getattr(chunk, "custody", None)
    if custody is not None:
        chunk.custody = None
        custody.release()


def in_custody(chunk: bytes) -> Custody | None:
    return getattr(chunk, "custody", None)


@dataclass(eq=False)
class StreamManagement:
    """One session's counters. `handled` counts the client's stanzas we handled;
    `sent` counts ours; `unacked` holds the bytes of the last `len(unacked)` sent."""

    resumable: bool = False
    id: str = ""  # the resumption id (previd), when resumable
    timeout: float = 0.0  # seconds a detached session waits for a resumption
    handled: int = 0
    sent: int = 0
    unacked: deque[bytes] = field(default_factory=deque)
    since_request: int = 0  # stanzas sent since we last asked for an ack
    custody_written: bool = False  # a message whose sender waits was written since our <r/>
    request_pending: bool = False  # an <r/> is out and its <a/> has not come
    # While detached, unacked messages are also committed to offline storage (so a dead
    # holder loses none): their sequence numbers → offline message ids.
    parked: dict[int, str] = field(default_factory=dict)
    # Inbound stanzas handled but not settled, oldest first: (sequence number, custody).
    unsettled: deque[tuple[int, Custody]] = field(default_factory=deque)
    reported: int | None = None  # the last h we told the client
    ack_due: bool = False  # more settled since: an unsolicited <a/> should go out
    on_ack_due: Callable[[], None] | None = None  # wakes the writer (the connection sets it)

    # -- inbound -----------------------------------------------------------------------------

    def handled_one(self, custody: Custody | None = None) -> None:
        """The router finished with the client's next stanza; `custody`, if any, is the
        record it created for it, still holding the routing's own count."""
        self.handled = (self.handled + 1) % WRAP
        if custody is None:
            return
        if custody.pending > 1:
            custody.on_settled = self._settled_later
            self.unsettled.append((self.handled, custody))
        custody.release()

    def _settled_later(self) -> None:
        before = self.settled_h()
        while self.unsettled and self.unsettled[0][1].settled:
            self.unsettled.popleft()
        if self.settled_h() != before and self.reported is not None \
                and self.reported != self.settled_h():
            self.ack_due = True
            if self.on_ack_due is not None:
                self.on_ack_due()

    def settled_h(self) -> int:
        """How many of the client's stanzas, from the first on, are settled."""
        if not self.unsettled:
            return self.handled
        return (self.unsettled[0][0] - 1) % WRAP

    def answer(self, h: int | None = None) -> bytes:
        """An <a/>: the client's stanzas that are settled now (or the `h` the caller
        took earlier); for an <r/>, or unsolicited when more settled since the last one
        (§4 allows <a/> at any time)."""
        self.reported = self.settled_h() if h is None else h
        self.ack_due = False
        return f"<a xmlns='urn:xmpp:sm:3' h='{self.reported}'/>".encode()

    def restart_inbound(self) -> int:
        """A resumption (here or on another node): the client sends again what `h` does
        not cover, so the count goes back to the settled ones, and stanzas still
        unsettled no longer move it (they may arrive twice, never not at all)."""
        self.handled = self.settled_h()
        for _, custody in self.unsettled:
            custody.on_settled = None
        self.unsettled.clear()
        self.ack_due = False
        return self.handled

    # -- outbound ----------------------------------------------------------------------------

    def wrote(self, chunks: list[bytes]) -> None:
        """Counts stanzas as they go to the transport (one element per chunk)."""
        self.unacked.extend(chunks)
        self.sent = (self.sent + len(chunks)) % WRAP
        self.since_request += len(chunks)
        if not self.custody_written:
            self.custody_written = any(type(chunk) is Held for chunk in chunks)

    def acknowledged(self, h: int) -> int:
        """Drops what the client's `h` covers; returns how many. Raises
        HandledCountTooHigh when `h` covers more than was ever sent."""
        outstanding = (self.sent - h) % WRAP
        if outstanding > len(self.unacked):
            raise HandledCountTooHigh(h, self.sent)
        covered = len(self.unacked) - outstanding
        popleft = self.unacked.popleft
        for _ in range(covered):
            chunk = popleft()
            if type(chunk) is Held:
                settle(chunk)
        self.request_pending = False
        return covered

    def should_request(self, every: int) -> bool:
        """Ask for an ack after `every` unacknowledged stanzas, once per outstanding <r/>."""
        return bool(self.unacked) and not self.request_pending and self.since_request >= every

    def requested(self) -> bytes:
        self.request_pending = True
        self.since_request = 0
        self.custody_written = False
        return R_BYTES

    def seq_of_unacked(self) -> list[int]:
        """The sequence number of each unacked stanza, oldest first."""
        first = (self.sent - len(self.unacked) + 1) % WRAP
        return [(first + i) % WRAP for i in range(len(self.unacked))]

    def rewind(self, h: int) -> tuple[list[bytes], list[str]]:
        """A resumption with the client's `h` (§5): what it has not got, to send again
        (they count as new stanzas from `h` on, as the client counts them), and the
        offline ids of parked stanzas it did get (to delete). Parked stanzas it did not
        get are left to offline storage, which delivers them once."""
        seqs = self.seq_of_unacked()
        outstanding = (self.sent - h) % WRAP
        if outstanding > len(self.unacked):
            raise HandledCountTooHigh(h, self.sent)
        covered = len(self.unacked) - outstanding
        for chunk in list(self.unacked)[:covered]:
            settle(chunk)
        got = [self.parked[seq] for seq in seqs[:covered] if seq in self.parked]
        again = [data for seq, data in zip(seqs[covered:], list(self.unacked)[covered:],
                                           strict=True) if seq not in self.parked]
        self.unacked.clear()
        self.parked.clear()
        self.sent = h
        self.since_request = 0
        self.request_pending = False
        return again, got


# -- the nonzas ---------------------------------------------------------------------------------


def enabled(sm: StreamManagement, max_seconds: int, location: str) -> bytes:
    element = etree.Element(f"{{{ns.SM}}}enabled", nsmap={None: ns.SM})
    if sm.resumable:
        element.set("id", sm.id)
        element.set("resume", "true")
        element.set("max", str(max_seconds))
        if location:
            element.set("location", location)
    return serialize(element)


def resumed(previd: str, h: int) -> bytes:
    element = etree.Element(f"{{{ns.SM}}}resumed", nsmap={None: ns.SM})
    element.set("previd", previd)
    element.set("h", str(h))
    return serialize(element)


def failed(condition: str, h: int | None = None, text: str = "") -> bytes:
    """§6: <failed/> with a stanza error condition and, when known, the handled count of
    the session it concerns (so a client can tell which of its stanzas arrived)."""
    element = etree.Element(f"{{{ns.SM}}}failed", nsmap={None: ns.SM})
    if h is not None:
        element.set("h", str(h))
    etree.SubElement(element, f"{{{ns.STANZAS_ERR}}}{condition}", nsmap={None: ns.STANZAS_ERR})
    if text:
        note = etree.SubElement(element, f"{{{ns.STANZAS_ERR}}}text", nsmap={None: ns.STANZAS_ERR})
        note.text = text
    return serialize(element)


def feature() -> etree._Element:
    return etree.Element(f"{{{ns.SM}}}sm", nsmap={None: ns.SM})
