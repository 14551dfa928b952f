#!/usr/bin/env python3
"""Cost of one presence broadcast against the size of the sender's roster (issue 13).

usage: python3 bench/presence_fanout.py [--sizes 10,100,1000] [--broadcasts 300]

One node in this process (a temporary data dir, free ports). For each size N an account
gets N contacts subscribed to its presence through the real commands (a request, then its
approval), none of them online, so the figure is the broadcast's own work: what every
node pays per presence of that account. One session of the account then broadcasts
BROADCASTS available presences through raftxmpp.modules.presence.broadcast, timed
together; prints ms per broadcast and the ratio to the smallest roster's.

Runs whatever raftxmpp is importable (PYTHONPATH=<checkout> to measure another).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftxmpp import config as config_mod  # noqa: E402
from raftxmpp.jid import JID  # noqa: E402
from raftxmpp.modules import presence  # noqa: E402
from raftxmpp.node import Node  # noqa: E402
from raftxmpp.routing.sessions import LocalSession  # noqa: E402
from raftxmpp.xml.stanza import make  # noqa: E402
from tests.harness import free_ports  # noqa: E402


def _config(data_dir: Path) -> config_mod.Config:
    base = config_mod.embedded_default(data_dir)
    raft, link, c2s, tls, http, comp, s2s = free_ports(7)

    def at(port: int) -> config_mod.Address:
        return config_mod.Address("127.0.0.1", port)

    return dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, raft=at(raft), link=at(link)),
        c2s=dataclasses.replace(base.c2s, listen=at(c2s), tls_listen=at(tls)),
        http=dataclasses.replace(base.http, listen=at(http)),
        components=dataclasses.replace(base.components, listen=at(comp)),
        s2s=dataclasses.replace(base.s2s, listen=at(s2s)))


async def _fill(node: Node, owner: str, size: int) -> None:
    limit = trio.Semaphore(64)

    async def subscribed(i: int) -> None:
        async with limit:
            contact = f"c{i}@localhost"
            await node.store.roster_subscription(owner, contact, "in-subscribe", "")
            await node.store.roster_subscription(owner, contact, "out-subscribed")

    async with trio.open_nursery() as nursery:
        for i in range(size):
            nursery.start_soon(subscribed, i)


async def _per_broadcast(node: Node, owner: str, count: int) -> float:
    session = LocalSession(JID.parse(f"{owner}/bench"))
    node.router.sessions.bind(session)
    await presence.broadcast(node.router, session, make("presence", {}), reflect=True)
    started = time.perf_counter()
    for _ in range(count):
        await presence.broadcast(node.router, session, make("presence", {}), reflect=True)
        session.take_outbox()
    return (time.perf_counter() - started) / count


async def main(sizes: list[int], count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(_config(Path(tmp) / "data")).run)
            while not node.raft.status().get("leader"):
                await trio.sleep(0.02)
            first = None
            for size in sizes:
                owner = f"owner{size}@localhost"
                await node.store.register(owner, "bench-password")
                await _fill(node, owner, size)
                seconds = await _per_broadcast(node, owner, count)
                first = first or seconds
                print(f"RESULT roster={size} ms_per_broadcast={seconds * 1000:.3f} "
                      f"ratio={seconds / first:.1f}", flush=True)
            node.request_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--broadcasts", type=int, default=300)
    args = parser.parse_args()
    trio.run(main, [int(s) for s in args.sizes.split(",")], args.broadcasts)
