"""The two parts of the presence fix without a network (issue 13, finding 1): the index
of who receives an account's presence follows every roster change without a copy, and
the per-session pacing lets the latest presence win."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from raftxmpp import credentials
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.presence_index import SubscriberIndex
from raftxmpp.jid import JID
from raftxmpp.modules.presence_pacing import PresencePacer
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.stanza import make

_ids = itertools.count()
ALICE = "alice@localhost"
CREDS = credentials.derive("pw", 4096)


def _apply(state: sm.ClusterState, op: str, **args) -> tuple:
    result = state.apply({"v": sm.VERSION, "id": f"p:{next(_ids)}", "ts": 1.0, "op": op, **args})
    assert result[0] == "ok", result
    return result


def _subscribe_from(state: sm.ClusterState, contact: str) -> None:
    _apply(state, "roster_subscription", jid=ALICE, contact=contact, event="in-subscribe")
    _apply(state, "roster_subscription", jid=ALICE, contact=contact, event="out-subscribed")


def test_the_index_follows_roster_changes_and_a_recreated_account():
    state, index = sm.ClusterState(), SubscriberIndex()
    _apply(state, "register", jid=ALICE, credentials=CREDS)
    assert index.subscribers(state.rosters, ALICE) == frozenset()
    _subscribe_from(state, "bob@localhost")
    _apply(state, "roster_set", jid=ALICE, contact="carol@localhost", groups=[])  # none
    first = index.subscribers(state.rosters, ALICE)
    assert first == {"bob@localhost"}
    assert index.subscribers(state.rosters, ALICE) is first  # no work while unchanged
    _apply(state, "roster_subscription", jid=ALICE, contact="bob@localhost",
           event="out-unsubscribed")
    assert index.subscribers(state.rosters, ALICE) == frozenset()
    _subscribe_from(state, "dave@localhost")
    _subscribe_from(state, "erin@example.org")
    assert index.subscribers(state.rosters, ALICE) == {"dave@localhost", "erin@example.org"}
    assert index.by_domain(state.rosters, ALICE) == {"localhost": ("dave@localhost",),
                                                     "example.org": ("erin@example.org",)}
    _apply(state, "unregister", jid=ALICE)
    assert index.subscribers(state.rosters, ALICE) == frozenset()
    _apply(state, "register", jid=ALICE, credentials=CREDS)  # same ver, another roster
    for _ in range(3):
        _apply(state, "roster_set", jid=ALICE, contact="eve@localhost", groups=[])
    assert index.subscribers(state.rosters, ALICE) == frozenset()


class _Delivered:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def __call__(self, sender: LocalSession, stanza) -> None:
        self.statuses.append(stanza.findtext("{jabber:client}status") or stanza.get("type"))


def _presence(status: str):
    element = make("presence", {})
    element.append(make("status", {}))
    element[0].text = status
    return element


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def _pacer(nursery, delivered, rate=2.0, burst=3) -> PresencePacer:
    def spawn(fn, *args) -> bool:
        nursery.start_soon(fn, *args)
        return True

    return PresencePacer(rate, burst, delivered, spawn)


async def test_past_the_burst_the_latest_presence_waits_and_wins(nursery, mock_clock):
    delivered = _Delivered()
    pacer = await _pacer(nursery, delivered)
    session = LocalSession(JID.parse("alice@localhost/r"))
    for i in range(10):
        await pacer.broadcast(session, _presence(f"s{i}"))
    assert delivered.statuses == ["s0", "s1", "s2"]  # the burst, at once
    await trio.sleep(5)
    assert delivered.statuses == ["s0", "s1", "s2", "s9"]  # then only the latest


async def test_a_waiting_presence_is_dropped_when_the_session_ends(nursery, mock_clock):
    delivered = _Delivered()
    pacer = await _pacer(nursery, delivered, burst=1)
    session = LocalSession(JID.parse("alice@localhost/r"))
    await pacer.broadcast(session, _presence("first"))
    await pacer.broadcast(session, _presence("waiting"))
    async with pacer.closing(session):
        await delivered(session, make("presence", {"type": "unavailable"}))
    await trio.sleep(5)
    assert delivered.statuses == ["first", "unavailable"]
    await pacer.broadcast(session, _presence("after the end"))
    await trio.sleep(5)
    assert delivered.statuses == ["first", "unavailable"]


async def test_rate_zero_switches_pacing_off(nursery):
    delivered = _Delivered()
    pacer = await _pacer(nursery, delivered, rate=0)
    session = LocalSession(JID.parse("alice@localhost/r"))
    for i in range(50):
        await pacer.broadcast(session, _presence(f"s{i}"))
    assert len(delivered.statuses) == 50
