"""One account with a maximum-size roster floods presence (issue 13, finding 1): every
other client of the node keeps its round-trip time, and the contacts get the latest
presence.

Measured against a running node and real connections: alice's roster is full
(roster_size items, each contact subscribed to her presence, a few of them online), she
sends 1,500 presence updates as fast as TCP takes them, and bob pings the server every
50 ms meanwhile. Before the fix each broadcast deep-copied her whole roster on the event
loop and one read's stanzas were handled without a yield: bob's first ping had no
answer within 30 s and the flood was not handled within 30 s (load 12). Now the median
ping is 1-30 ms, the worst under 200 ms. The bounds asserted are generous for a loaded
machine (median under 100 ms, worst under 1 s) and still far from what the old code did.
"unpaced" switches presence pacing off, to show the fan-out alone keeps the node free."""

from __future__ import annotations

import statistics
import time

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.harness import wait_for
from tests.security.conftest import PASSWORD, authenticated, node_process

ROSTER = 1000
ONLINE = 8  # contacts online on the node, who receive every broadcast
FLOOD = 1500
PING_GIVE_UP = 30.0  # seconds; the code before the fix kept bob waiting longer than this
ALICE = "alice@localhost"
USERS = ("alice", "bob") + tuple(f"c{i}" for i in range(ONLINE))


@pytest.fixture(params=["paced", "unpaced"])
def flood_node(request, tmp_path):
    """A node process whose alice has a full roster; `unpaced` switches presence pacing
    off, to show the fan-out itself no longer stalls the node."""
    limits = "c2s_read_rate = 0\n"
    if request.param == "unpaced":
        limits += "presence_rate = 0\n"
    node = node_process(tmp_path, limits=limits)
    trio.run(_seed, node.config_path)
    node.start()
    wait_for(lambda: node.status().get("leader"), 30, "a leader after the restart")
    wait_for(lambda: ALICE in node.admin("user.list", host="localhost"), 30, "alice there")
    yield node, request.param
    node.kill()


async def _seed(config_path) -> None:
    """Registers the accounts and fills alice's roster (ROSTER contacts subscribed to her
    presence, through the real commands: a request, then her approval) with the node
    in this process; the test then runs the node as its own process on the same data."""
    node = Node(config_mod.load(config_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with trio.fail_after(30):
            while not node.raft.status().get("leader"):
                await trio.sleep(0.02)
        for user in USERS:
            await node.store.register(f"{user}@localhost", PASSWORD)
        limit = trio.Semaphore(64)

        async def subscribed(i: int) -> None:
            async with limit:
                contact = f"c{i}@localhost"
                await node.store.roster_subscription(ALICE, contact, "in-subscribe", "")
                await node.store.roster_subscription(ALICE, contact, "out-subscribed")

        with trio.fail_after(240):
            async with trio.open_nursery() as seeding:
                for i in range(ROSTER):
                    seeding.start_soon(subscribed, i)
        assert len(node.store.subscribers(ALICE)) == ROSTER
        node.request_stop()


async def _drain(raw, seen: list[bytes]) -> None:
    while chunk := await raw.stream.receive_some(65536):
        seen.append(chunk)


async def _ping(raw, stop: trio.Event, times: list[float], done: trio.Event) -> None:
    """Pings the server every 50 ms until `stop`, recording each round-trip time."""
    n = 0
    while not stop.is_set():
        n += 1
        started = time.monotonic()
        await raw.send(f"<iq type='get' id='ping{n}' to='localhost'>"
                       f"<ping xmlns='urn:xmpp:ping'/></iq>".encode())
        try:
            await raw.until(f"id=\"ping{n}\"".encode(), timeout=PING_GIVE_UP)
        except trio.TooSlowError:
            times.append(PING_GIVE_UP)  # the node never answered: record the wait, stop
            break
        times.append(time.monotonic() - started)
        with trio.move_on_after(0.05):
            await stop.wait()
    done.set()


def test_a_presence_flood_from_a_full_roster_does_not_stall_other_clients(flood_node):
    node, pacing = flood_node
    times, took, handled = trio.run(_flood_and_ping, node.c2s_port)
    median, worst = statistics.median(times), max(times)
    print(f"{pacing}: flood {'handled' if handled else 'NOT handled'} in {took:.2f} s; "
          f"{len(times)} pings, median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms")
    assert worst < 1.0, f"worst ping {worst * 1000:.0f} ms during the flood"
    assert median < 0.1, f"median ping {median * 1000:.0f} ms during the flood"
    assert len(times) >= 5
    assert handled, "the contacts never got alice's latest presence"


async def _flood_and_ping(port: int) -> tuple[list[float], float, bool]:
    """Alice floods; bob pings meanwhile; until every online contact has her latest
    presence (and half a second more). Returns bob's round-trip times."""
    alice = await authenticated(port, "alice")
    bob = await authenticated(port, "bob")
    received: list[list[bytes]] = []
    times: list[float] = []
    stop, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(ONLINE):
            contact = await authenticated(port, f"c{i}")
            await contact.send(b"<presence/>")
            received.append([])
            nursery.start_soon(_drain, contact, received[-1])
        nursery.start_soon(_drain, alice, [])
        await alice.send(b"<presence/>")
        nursery.start_soon(_ping, bob, stop, times, done)
        flood = b"".join(f"<presence><status>s{i}</status></presence>".encode()
                         for i in range(FLOOD))
        started = time.monotonic()
        await alice.send(flood)
        last = f"<status>s{FLOOD - 1}</status>".encode()
        with trio.move_on_after(120):
            while not all(last in b"".join(seen) for seen in received) and not done.is_set():
                await trio.sleep(0.05)
        took = time.monotonic() - started
        handled = all(last in b"".join(seen) for seen in received)
        with trio.move_on_after(0.5):  # a few more pings once the flood was handled
            await trio.sleep_forever()
        stop.set()
        with trio.fail_after(60):
            await done.wait()
        nursery.cancel_scope.cancel()
    return times, took, handled
