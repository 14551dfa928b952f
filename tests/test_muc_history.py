"""The in-memory room history (XEP-0045 §7.2.14) without a network: what a join asks
for, and the memory bounds (per room and per node)."""

from __future__ import annotations

from types import SimpleNamespace

from lxml import etree

from raftxmpp.config import MucSection
from raftxmpp.modules.muc import history
from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.muc.occupants import OccupantTable

MUC = "http://jabber.org/protocol/muc"


def context(length: int = 5) -> Muc:
    return Muc(SimpleNamespace(), MucSection(history_length=length), OccupantTable("n1"))


def message(n: int, size: int = 0) -> str:
    return (f"<message xmlns='jabber:client' type='groupchat' from='r@c/x'>"
            f"<body>m{n}{'x' * size}</body></message>")


def join(**limits: str) -> etree._Element:
    x = etree.Element(f"{{{MUC}}}x")
    etree.SubElement(x, f"{{{MUC}}}history", **limits)
    return x


def bodies(entries) -> list[str]:
    return [etree.fromstring(e.xml).findtext("{jabber:client}body")[:3] for e in entries]


def test_history_keeps_the_last_messages_and_honours_the_limits():
    ctx = context(length=5)
    for n in range(8):
        history.remember(ctx, "r@c", message(n), 1000.0 + n)
    assert bodies(history.wanted(ctx, "r@c", None)) == ["m3", "m4", "m5", "m6", "m7"]
    assert bodies(history.wanted(ctx, "r@c", join(maxstanzas="2"))) == ["m6", "m7"]
    assert history.wanted(ctx, "r@c", join(maxstanzas="0")) == []
    assert bodies(history.wanted(ctx, "r@c", join(since="1970-01-01T00:16:45Z"))) == \
        ["m6", "m7"]
    one = len(message(7))
    assert bodies(history.wanted(ctx, "r@c", join(maxchars=str(one)))) == ["m7"]


def test_history_memory_is_bounded_per_room_and_per_node(monkeypatch):
    monkeypatch.setattr(history, "ROOM_CHARS", 1000)
    monkeypatch.setattr(history, "NODE_CHARS", 2500)
    ctx = context(length=50)
    for n in range(10):
        history.remember(ctx, "a@c", message(n, 300), float(n))
    assert history.sum_chars(ctx.history["a@c"]) <= 1000
    for room in ("b@c", "c@c", "d@c"):
        for n in range(3):
            history.remember(ctx, room, message(n, 300), float(n))
    assert ctx.history_chars <= 2500
    assert ctx.history_chars == sum(history.sum_chars(k) for k in ctx.history.values())
    assert "a@c" not in ctx.history  # written to least recently: dropped first
    history.forget(ctx, "d@c")
    assert ctx.history_chars == sum(history.sum_chars(k) for k in ctx.history.values())
