"""Discussion history on join (XEP-0045 §7.2.14): the last messages of each room, kept
in memory on every node (each node gets every ordered message), bounded by
[muc] history_length per room, so the history survives the loss of any node. A full
cluster restart loses it: durable history is the archive's (XEP-0313), later.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime

from lxml import etree

from raftxmpp.modules.muc import ns
from raftxmpp.modules.muc.context import HistoryEntry, Muc
from raftxmpp.routing.sessions import LocalSession

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


# Memory bounds besides [muc] history_length: characters kept per room, and on this node
# for every room together (the rooms written to least recently lose theirs first).
ROOM_CHARS = 256 * 1024
NODE_CHARS = 64 * 1024 * 1024


def remember(ctx: Muc, room: str, xml: str, ts: float) -> None:
    if ctx.settings.history_length == 0 or len(xml) > ROOM_CHARS:
        return
    kept = ctx.history.pop(room, None)  # re-inserted last: the dict is in write order
    if kept is None:
        kept = deque(maxlen=ctx.settings.history_length)
    if len(kept) == kept.maxlen:
        ctx.history_chars -= kept[0].chars
    kept.append(HistoryEntry(ts, xml, len(xml)))
    ctx.history_chars += len(xml)
    ctx.history[room] = kept
    while sum_chars(kept) > ROOM_CHARS:
        ctx.history_chars -= kept.popleft().chars
    while ctx.history_chars > NODE_CHARS and len(ctx.history) > 1:
        oldest = next(iter(ctx.history))
        forget(ctx, oldest)


def sum_chars(kept: deque[HistoryEntry]) -> int:
    return sum(e.chars for e in kept)


def forget(ctx: Muc, room: str) -> None:
    kept = ctx.history.pop(room, None)
    if kept is not None:
        ctx.history_chars -= sum_chars(kept)


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_since(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def wanted(ctx: Muc, room: str, muc_x: etree._Element | None) -> list[HistoryEntry]:
    """The entries the join asks for: <history maxchars maxstanzas seconds since/>, all
    limits together (§7.2.14); no element means the service's default (all it keeps)."""
    entries = list(ctx.history.get(room, ()))
    spec = muc_x.find(f"{{{ns.MUC}}}history") if muc_x is not None else None
    if spec is None:
        return entries
    now = time.time()
    for attr, keep in (("seconds", lambda e, v: e.ts >= now - v),):
        value = _number(spec.get(attr))
        if value is not None:
            entries = [e for e in entries if keep(e, value)]
    since = spec.get("since")
    if since is not None and (point := _parse_since(since)) is not None:
        entries = [e for e in entries if e.ts > point]
    maxstanzas = _number(spec.get("maxstanzas"))
    if maxstanzas is not None:
        entries = entries[len(entries) - int(maxstanzas):] if maxstanzas > 0 else []
    maxchars = _number(spec.get("maxchars"))
    if maxchars is not None:
        total, kept = 0, []
        for entry in reversed(entries):
            total += entry.chars
            if total > maxchars:
                break
            kept.append(entry)
        entries = kept[::-1]
    return entries


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return max(value, 0.0)


def send_on_join(ctx: Muc, room: str, session: LocalSession,
                 muc_x: etree._Element | None) -> None:
    for entry in wanted(ctx, room, muc_x):
        message = etree.fromstring(entry.xml, _PARSER)
        message.set("to", session.full_jid)
        etree.SubElement(message, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY},
                         stamp=_stamp(entry.ts), attrib={"from": room})
        session.send_stanza(message)
