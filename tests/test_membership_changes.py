"""Membership changes whose outcome is unknown (issue 12, problem 5), without a cluster:
the membership code against stand-ins for the store and Raft."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raftxmpp.cluster import membership
from raftxmpp.cluster.membership import ClusterMembership
from raftxmpp.cluster.raft import RaftOutcomeUnknown, RaftUnavailable


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def membership_lock(self, owner: str, ttl: float) -> None:
        self.calls.append("lock")

    async def membership_unlock(self, owner: str) -> None:
        self.calls.append("unlock")

    async def member_remove(self, raft: str) -> None:
        self.calls.append("forget")


class FakeRaft:
    def __init__(self, failure: Exception | None, members: set[str]) -> None:
        self.failure = failure
        self._members = members

    async def change_membership(self, action: str, address: str, timeout: float) -> None:
        if self.failure is not None:
            raise self.failure

    def members(self) -> set[str]:
        return set(self._members)

    def status(self) -> dict:
        return {"members": dict.fromkeys(self._members, True)}  # every member up

    def read(self, query):
        return query(SimpleNamespace(members={}))


def _membership(failure: Exception | None, members: set[str] | None = None):
    store = FakeStore()
    node = SimpleNamespace(store=store, raft=FakeRaft(failure, members or {"a:1"}))
    cluster = ClusterMembership.__new__(ClusterMembership)
    cluster.node, cluster.name = node, "n1"
    cluster.gossip = SimpleNamespace(send=lambda *args: None)
    return cluster, store


async def test_the_membership_lock_stays_while_a_change_may_still_commit():
    """It was released after an ambiguous timeout, so a second change could be in
    flight with the first: pysyncobj does not prevent that."""
    cluster, store = _membership(RaftOutcomeUnknown("no commit in time"))
    with pytest.raises(RaftOutcomeUnknown):
        await cluster.change("add", "b:1")
    assert store.calls == ["lock"]


async def test_the_membership_lock_is_released_when_the_change_surely_failed():
    cluster, store = _membership(RaftUnavailable("refused"))
    with pytest.raises(RaftUnavailable):
        await cluster.change("add", "b:1")
    assert store.calls == ["lock", "unlock"]


async def test_a_join_whose_add_may_have_committed_still_gets_peers_to_start_with():
    """A member added but never started counts against every quorum (3 alive of 4)."""
    cluster, _ = _membership(RaftOutcomeUnknown("no commit in time"), {"a:1", "c:1"})
    answer = await cluster._on_join({"name": "n4", "raft": "127.0.0.1:9"})
    assert answer == {"peers": ["127.0.0.1:9", "a:1", "c:1"]}


async def test_a_join_that_surely_failed_is_refused():
    cluster, _ = _membership(RaftUnavailable("refused"), {"a:1", "c:1"})
    answer = await cluster._on_join({"name": "n4", "raft": "127.0.0.1:9"})
    assert "error" in answer


def test_a_data_dir_marked_removed_is_refused_with_one_line(tmp_path):
    membership.refuse_if_removed(tmp_path)  # not marked: nothing happens
    (tmp_path / membership.REMOVED_MARKER).write_text('{"reason": "node n1 removed it"}')
    with pytest.raises(membership.MembershipError) as exc:
        membership.refuse_if_removed(tmp_path)
    assert "node n1 removed it" in str(exc.value) and "\n" not in str(exc.value)
