"""Stream management (XEP-0198, urn:xmpp:sm:3): the counters and the unacked queue.

Sans-IO, like the negotiation core: the connection tells it what it handled and what it
wrote; it answers with the bytes of <a/>, <r/>, <enabled/>, <resumed/>, <failed/>. It
knows no socket, no clock and no session table, so the counting rules (§4, 32-bit
wrap-around, "handled-count-too-high") are tested without a network.

What `h` means here, which is what the server promises a client when it acks:
an inbound stanza counts as handled once the router has finished with it — written
to the recipient's session queue on this node, handed to the node link for a session
on another node, committed through Raft (offline storage), or answered with an error.
The README's "Stream management" section states the guarantee in full.
"""

from __future__ import annotations

from collections import deque
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
    request_pending: bool = False  # an <r/> is out and its <a/> has not come
    # While detached, unacked messages are also committed to offline storage (so a dead
    # holder loses none): their sequence numbers → offline message ids.
    parked: dict[int, str] = field(default_factory=dict)

    # -- inbound -----------------------------------------------------------------------------

    def handled_one(self) -> None:
        self.handled = (self.handled + 1) % WRAP

    def answer(self) -> bytes:
        """The <a/> for a client's <r/>: everything read before it has been handled."""
        return f"<a xmlns='urn:xmpp:sm:3' h='{self.handled}'/>".encode()

    # -- outbound ----------------------------------------------------------------------------

    def wrote(self, chunks: list[bytes]) -> None:
        """Counts stanzas as they go to the transport (one element per chunk)."""
        self.unacked.extend(chunks)
        self.sent = (self.sent + len(chunks)) % WRAP
        self.since_request += len(chunks)

    def acknowledged(self, h: int) -> int:
        """Drops what the client's `h` covers; returns how many. Raises
        HandledCountTooHigh when `h` covers more than was ever sent."""
        outstanding = (self.sent - h) % WRAP
        if outstanding > len(self.unacked):
            raise HandledCountTooHigh(h, self.sent)
        covered = len(self.unacked) - outstanding
        for _ in range(covered):
            self.unacked.popleft()
        self.request_pending = False
        return covered

    def should_request(self, every: int) -> bool:
        """Ask for an ack after `every` unacknowledged stanzas, once per outstanding <r/>."""
        return bool(self.unacked) and not self.request_pending and self.since_request >= every

    def requested(self) -> bytes:
        self.request_pending = True
        self.since_request = 0
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
