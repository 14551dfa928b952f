"""Definite outcomes of a write (issue 12): committed, surely not applied, or unknown
until a retry with the same id settles it. One in-process Raft node, real pysyncobj."""

from __future__ import annotations

import time

import pytest
import trio

from raftxmpp import credentials
from raftxmpp.cluster.raft import RaftNode, RaftOutcomeUnknown, RaftUnavailable
from raftxmpp.cluster.state import MAX_VERSION
from raftxmpp.cluster.store import Store, StoreError, client_request
from raftxmpp.config import Address, ClusterSection
from tests.harness import free_ports

CREDS = credentials.derive("pw", 4096)


def _node(tmp_path, peers: list[int]) -> RaftNode:
    raft, link = free_ports(2)
    section = ClusterSection(raft=Address("127.0.0.1", raft), link=Address("127.0.0.1", link),
                             peers=tuple(Address("127.0.0.1", p) for p in peers))
    node = RaftNode(section, tmp_path, "outcome-test-secret-0123456789")
    node.start()
    return node


@pytest.fixture
async def solo(tmp_path):
    node = _node(tmp_path, [])
    with trio.fail_after(20):
        while not node.status()["ready"] or node.status()["role"] != "leader":
            await trio.sleep(0.05)
    yield node
    await trio.to_thread.run_sync(node.stop)


async def test_a_retried_client_request_gets_the_first_result_not_a_second_apply(solo):
    store = Store(solo)
    with client_request("alice@localhost/x\0t\0iq-1"):
        await store._write("register", jid="carol@localhost", credentials=CREDS)
    with client_request("alice@localhost/x\0t\0iq-1"):  # the client sends it again
        await store._write("register", jid="carol@localhost", credentials=CREDS)  # no conflict
    with client_request("alice@localhost/x\0t\0iq-2"), pytest.raises(StoreError) as exc:
        await store._write("register", jid="carol@localhost", credentials=CREDS)
    assert exc.value.condition == "conflict"


async def test_a_node_without_a_leader_refuses_definitely_within_the_deadline(tmp_path):
    node = _node(tmp_path, free_ports(1))  # its only peer never answers: no leader
    try:
        started = time.monotonic()
        with pytest.raises(RaftUnavailable) as exc:
            await node.submit(node.command("barrier"), timeout=1.0)
        assert not isinstance(exc.value, RaftOutcomeUnknown), exc.value
        assert time.monotonic() - started < 3
        assert node.read(lambda s: s.applied) == 0
    finally:
        await trio.to_thread.run_sync(node.stop)


async def _advertise(node: RaftNode, version: int = MAX_VERSION) -> None:
    await Store(node).member_set("solo", node.self_address, "127.0.0.1:1", version)


async def test_the_leader_ticks_the_clock(solo):
    await _advertise(solo)
    nursery_clock = time.time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(solo.run_clock)
        with trio.fail_after(10):
            while solo.read(lambda s: s.clock) < nursery_clock:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_a_submit_deadline_longer_than_the_expiry_window_is_refused(solo):
    with pytest.raises(ValueError):
        await solo.submit(solo.command("barrier"), timeout=60)


async def test_a_newer_op_waits_until_every_member_advertises_a_version_that_knows_it(solo):
    """Rolling upgrades: a node running older code rejects an op it does not know while
    newer nodes apply it, so the state would split; submitters hold it back instead."""
    store = Store(solo, timeout=0.5)
    await _advertise(solo, version=1)  # as if this member still ran older code
    assert not solo.supports("offline_claim") and solo.supports("register")
    with pytest.raises(RaftUnavailable, match="version"):
        await store.offline_claim("alice@localhost", "session")
    await _advertise(solo)
    assert solo.supports("offline_claim")
    assert await store.offline_claim("alice@localhost", "session") == ([], 0)


async def test_an_apply_that_raises_gives_an_error_result_instead_of_retrying_forever(
        solo, monkeypatch):
    def broken(command):
        raise RuntimeError("a bug below the ops")

    monkeypatch.setattr(solo.state, "apply", broken)
    result = await solo.submit(solo.command("barrier"), timeout=5)
    assert result[:2] == ("error", "internal-server-error")
    monkeypatch.undo()
    assert (await solo.submit(solo.command("barrier"), timeout=5))[0] == "ok"


async def test_a_whole_state_query_does_not_hold_up_apply(solo):
    """Issue 12, problem 4: digest() held the apply lock for seconds at 100,000 accounts
    (no heartbeats, an election). It runs on a fork-frozen copy now."""
    def slow_query(state) -> str:
        time.sleep(3)  # in the child: the parent's Raft thread goes on
        return str(state.applied)

    async with trio.open_nursery() as nursery:
        answers = []

        async def query() -> None:
            answers.append(await solo.read_frozen(slow_query))

        nursery.start_soon(query)
        await trio.sleep(0.3)
        started = time.monotonic()
        await solo.submit(solo.command("barrier"), timeout=5)
        assert time.monotonic() - started < 2, "apply waited for the query"
        assert not answers  # the query was still running meanwhile
    assert answers and int(answers[0]) >= 0


async def test_the_store_digest_is_the_state_digest(solo):
    await Store(solo).register("dora@localhost", "pw")
    assert await Store(solo).digest() == solo.read(lambda s: s.digest())
