#!/usr/bin/env python3
"""Pubsub across three nodes: publish → notification latency, and notifications/s.

usage: nice -n 10 python3 bench/pubsub.py [--subscribers 100] [--seconds 15] [--publishers 3]

A fresh 3-node cluster from bench/cluster-3/ (data in bench/data/cluster-3). One node
`bench` on the pubsub service pubsub.localhost; SUBSCRIBERS accounts subscribe to it by
bare JID, spread round-robin over the three nodes (each with available presence, so
each notification is one headline message per subscriber). Publishers are accounts
logged in on the nodes too (the first on node 1), publishing through the service with
an IQ each; the IQ result comes after the item committed.

1. latency: one publisher (node 1) publishes ITEMS items one after another; for each
   (item, subscriber) the time from sending the publish to the subscriber reading the
   notification, and the time from the publish's acknowledgement to the last subscriber.
2. throughput: PUBLISHERS publishers (one per node, round-robin) publish closed-loop for
   SECONDS; notifications/s counts every notification every subscriber read.
Every notification is checked to arrive exactly once per subscriber.

Prints RESULT lines (+ load1, nodes' and generator's CPU) and appends them to
bench/results/pubsub.txt. The cluster is stopped on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import benchlib
from benchlib import BENCH, BenchNode, XmppClient, cpu_seconds, load1, stop_all, wait_leader

SERVICE = "pubsub.localhost"
NODE = "bench"
ITEM = re.compile(rb"<item id=\"(p\d+-\d+)\"")


class Subscriber:
    """Reads its stream and stamps each notified item id with the time it arrived."""

    def __init__(self, client: XmppClient) -> None:
        self.client = client
        self.seen: dict[str, float] = {}
        self.duplicates = 0

    async def read(self) -> None:
        tail = b""
        while True:
            chunk = await self.client.reader.read(65536)
            if not chunk:
                return
            now = time.monotonic()
            data = tail + chunk
            for match in ITEM.finditer(data):
                item_id = match.group(1).decode()
                if item_id in self.seen:
                    self.duplicates += 1
                else:
                    self.seen[item_id] = now
            tail = data[-64:]  # an id cut by a read boundary is found with the next chunk


async def login(port: int, user: str) -> XmppClient:
    client = XmppClient(port, user)
    await client.login()
    return client


async def setup(nodes: list[BenchNode], subscribers: int, publishers: int):
    owner = await login(nodes[0].c2s_port, "owner")
    await owner.request(f"<iq type='set' to='{SERVICE}' id='create'>"
                        f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='{NODE}'/>"
                        f"<configure><x xmlns='jabber:x:data' type='submit'>"
                        f"<field var='pubsub#max_items'><value>10</value></field>"
                        f"<field var='pubsub#publish_model'><value>open</value></field>"
                        f"</x></configure></pubsub></iq>", b"id=\"create\"")
    await owner._until(b">")
    readers = []
    for i in range(subscribers):
        client = await login(nodes[i % 3].c2s_port, f"sub{i}")
        await client.request(f"<presence/><iq type='set' to='{SERVICE}' id='s{i}'>"
                             f"<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                             f"<subscribe node='{NODE}' jid='sub{i}@localhost'/></pubsub></iq>",
                             f"id=\"s{i}\"".encode())
        await client._until(b"</iq>")
        readers.append(Subscriber(client))
    pubs = [await login(nodes[i % 3].c2s_port, f"pub{i}") for i in range(publishers)]
    return owner, readers, pubs


async def publish(client: XmppClient, item_id: str) -> None:
    head = await client.request(
        f"<iq type='set' to='{SERVICE}' id='{item_id}'><pubsub "
        f"xmlns='http://jabber.org/protocol/pubsub'><publish node='{NODE}'><item id='{item_id}'>"
        f"<entry xmlns='urn:example:bench'>{item_id}</entry></item></publish></pubsub></iq>",
        f"id=\"{item_id}\"".encode(), 30)
    tail = await client._until(b"</iq>") if b"type=\"error\"" in head[-300:] else b""
    if tail:
        raise RuntimeError(f"publish {item_id} failed: {(head[-300:] + tail)!r}")
    await client._until(b">")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] * 1000 if values else -1.0


async def latency(pub: XmppClient, readers: list[Subscriber], items: int) -> dict:
    sent, acked = {}, {}
    for n in range(items):
        item_id = f"p0-{n}"
        sent[item_id] = time.monotonic()
        await publish(pub, item_id)
        acked[item_id] = time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(len(r.seen) >= items for r in readers):
        await asyncio.sleep(0.05)
    to_each = [r.seen[i] - sent[i] for r in readers for i in sent if i in r.seen]
    after_ack = [max(r.seen.get(i, acked[i]) for r in readers) - acked[i] for i in sent]
    missing = sum(1 for r in readers for i in sent if i not in r.seen)
    return {"items": items, "p50_ms": pct(to_each, 0.5), "p99_ms": pct(to_each, 0.99),
            "ack_p50_ms": pct([acked[i] - sent[i] for i in sent], 0.5),
            "last_after_ack_p50_ms": pct(after_ack, 0.5),
            "last_after_ack_p99_ms": pct(after_ack, 0.99), "missing": missing,
            "duplicates": sum(r.duplicates for r in readers)}


async def throughput(pubs: list[XmppClient], readers: list[Subscriber], seconds: float) -> dict:
    before = sum(len(r.seen) for r in readers)
    published = defaultdict(int)
    t_end = time.monotonic() + seconds

    async def loop(i: int, client: XmppClient) -> None:
        n = 0
        while time.monotonic() < t_end:
            await publish(client, f"p{i + 1}-{n}")
            published[i] += 1
            n += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop(i, c) for i, c in enumerate(pubs)))
    total = sum(published.values())
    expected = before + total * len(readers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(len(r.seen) for r in readers) < expected:
        await asyncio.sleep(0.05)
    wall = time.monotonic() - t0
    delivered = sum(len(r.seen) for r in readers) - before
    return {"publishes_per_s": total / seconds, "notifications_per_s": delivered / wall,
            "delivered": delivered, "expected": total * len(readers),
            "duplicates": sum(r.duplicates for r in readers), "drain_s": wall - seconds}


def commit() -> str:
    out = subprocess.run(["git", "-C", str(benchlib.TREE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(benchlib.TREE), "status", "--porcelain",
                            "raftxmpp"], capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+uncommitted" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()
    out_path = Path(os.environ.get("RESULTS_FILE") or BENCH / "results" / "pubsub.txt")
    out_path.parent.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = f"server=raftxmpp-3 date={stamp} commit={commit()} machine={benchlib.machine()}"
    print(f"load average before the sitting: {benchlib.wait_for_quiet():.2f}", flush=True)

    def emit(tag: str, facts: dict, l1: float, cpu: str) -> None:
        values = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in facts.items())
        text = (f"{head} tag={tag} RESULT subscribers={a.subscribers} {values} {cpu} "
                f"load1={l1:.2f}")
        print(text, flush=True)
        with open(out_path, "a") as f:
            f.write(text + "\n")

    shutil.rmtree(BENCH / "data" / "cluster-3", ignore_errors=True)
    nodes = [BenchNode(BENCH / "cluster-3" / f"node{i}.toml") for i in (1, 2, 3)]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            benchlib.wait_for(node._admin_up, 30, f"{node.name} up")
        wait_leader(nodes, 30)
        users = ["owner", *(f"sub{i}" for i in range(a.subscribers)),
                 *(f"pub{i}" for i in range(a.publishers))]
        for user in users:
            nodes[0].admin("user.add", jid=f"{user}@localhost", password="pw")

        async def sitting() -> None:
            owner, readers, pubs = await setup(nodes, a.subscribers, a.publishers)
            tasks = [asyncio.create_task(r.read()) for r in readers]
            for tag, run in (("pubsub_latency", lambda: latency(pubs[0], readers, a.items)),
                             ("pubsub_throughput", lambda: throughput(pubs, readers, a.seconds))):
                l1 = load1()
                pids = [n.pid for n in nodes]
                cpu0, gen0, t0 = [cpu_seconds(p) for p in pids], time.process_time(), time.monotonic()
                facts = await run()
                wall = time.monotonic() - t0
                node_cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
                emit(tag, facts, l1, f"nodes_cpu={100 * node_cpu / wall:.0f}% "
                     f"gen_cpu={100 * (time.process_time() - gen0) / wall:.0f}%")
            for task in tasks:
                task.cancel()
            for client in [owner, *pubs, *(r.client for r in readers)]:
                client.close()

        asyncio.run(sitting())
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    os.chdir(BENCH)
    sys.exit(main())
