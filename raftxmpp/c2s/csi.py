"""Client State Indication (XEP-0352): what an inactive client is spared, sans-IO.

While a client says <inactive/> (a phone in a pocket), traffic nobody waits for is held
back: presence updates (collapsed: only the latest from each full JID is kept) and
messages without a body (chat states, receipts, markers). Anything urgent — a message
with a body, an IQ (someone waits for its answer), a presence subscription request —
goes out at once and takes the held queue with it, in order, so the client never sees
an older stanza after a newer one from the same contact. <active/> flushes it all.

The held queue is bounded: past `max_held` stanzas it is flushed (the client pays the
radio wake-up it would have paid anyway), so an inactive client costs bounded memory.
Stanzas are classified by their serialised start tag, never parsed: this runs on every
stanza written to an inactive client.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

# The attributes of a start tag as `raftxmpp.xml.stanza.serialize` writes it.
_FROM = re.compile(rb"""\sfrom=(?:"([^"]*)"|'([^']*)')""")
_TYPE = re.compile(rb"""\stype=(?:"([^"]*)"|'([^']*)')""")
# Subscription requests and answers change the roster: a person acts on them.
_URGENT_PRESENCE_TYPES = frozenset({b"subscribe", b"subscribed", b"unsubscribe", b"unsubscribed",
                                    b"error"})


def _start_tag(chunk: bytes) -> bytes:
    end = chunk.find(b">")
    return chunk if end < 0 else chunk[:end]


def _attr(pattern: re.Pattern, tag: bytes) -> bytes | None:
    found = pattern.search(tag)
    if found is None:
        return None
    return found.group(1) if found.group(1) is not None else found.group(2)


def holdable(chunk: bytes) -> tuple[bool, bytes | None]:
    """(may wait, collapse key): presence is keyed by its sender, so only the latest of
    each sender's presence waits; bodiless messages wait but are never collapsed."""
    if chunk.startswith(b"<presence"):
        tag = _start_tag(chunk)
        if _attr(_TYPE, tag) in _URGENT_PRESENCE_TYPES:
            return False, None
        return True, b"p:" + (_attr(_FROM, tag) or b"")
    if chunk.startswith(b"<message"):
        if b"<body" in chunk or b":body" in chunk:
            return False, None
        return True, None
    return False, None  # IQs, and anything that is not a stanza


@dataclass(eq=False)
class ClientState:
    max_held: int = 100
    inactive: bool = False
    held: OrderedDict[object, bytes] = field(default_factory=OrderedDict)
    _serial: int = 0

    def take(self, chunks: list[bytes]) -> list[bytes]:
        """What to write now out of `chunks`; the rest waits in `held`."""
        if not self.inactive:
            return self.flush() + chunks if self.held else chunks
        out: list[bytes] = []
        for chunk in chunks:
            may_wait, key = holdable(chunk)
            if not may_wait:
                out.extend(self.flush())
                out.append(chunk)
                continue
            if key is None:
                self._serial += 1
                key = self._serial
            else:
                self.held.pop(key, None)  # the newer presence replaces the older one
            self.held[key] = chunk
        if len(self.held) > self.max_held:
            out.extend(self.flush())
        return out

    def flush(self) -> list[bytes]:
        chunks = list(self.held.values())
        self.held.clear()
        return chunks
