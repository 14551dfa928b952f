#!/usr/bin/env python3
"""Group chat (XEP-0045): join latency and room messages/s, 10 rooms x 50 occupants.

usage: python3 bench/muc.py [--rooms 10] [--occupants 50] [--senders 3] [--window 4]
                            [--seconds 15] [--server raftxmpp|ejabberd] [--port 5222]

raftxmpp: a fresh 3-node cluster from bench/cluster-3/ (data in bench/data/cluster-3);
occupants are spread round-robin over the three nodes, so every room has occupants on
every node. ejabberd: an already running server on --port (Debian's, as bench/anchors.sh
installs it, with mod_muc on conference.localhost and accounts u0..uN / pw made with
`ejabberdctl register`), one node.

1. join: every occupant joins its room one after another (history maxstanzas='0');
   latency from the join presence to the occupant's own presence (status 110).
2. throughput: SENDERS occupants per room (on different nodes) each keep WINDOW messages
   in flight for SECONDS (a message counts as accepted when its sender sees it echoed);
   room messages/s = accepted messages per second; deliveries/s = copies read by all
   occupants. Every occupant's copy is checked: each message once, and in every room
   all occupants saw the room's messages in the same order.

Prints RESULT lines (+ load1, the servers' and the generator's CPU) and appends them to
bench/results/muc.txt. The cluster is stopped on exit, whatever happens.
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
from pathlib import Path

import benchlib
from benchlib import BENCH, BenchNode, XmppClient, cpu_seconds, load1, stop_all, wait_leader

SERVICE = "conference.localhost"
BODY = re.compile(rb"<body>(m\d+-\d+-\d+)</body>")
SELF = re.compile(rb"code=[\"']110[\"']")


class Occupant:
    """One client in one room: reads its stream, notes each message id in arrival order."""

    def __init__(self, client: XmppClient, room: int, index: int) -> None:
        self.client, self.room, self.index = client, room, index
        self.order: list[str] = []
        self.seen: dict[str, float] = {}
        self.duplicates = 0
        self.joined = asyncio.Event()

    async def read(self) -> None:
        tail = self.client.buf
        while True:
            chunk = await self.client.reader.read(65536)
            if not chunk:
                return
            now = time.monotonic()
            data = tail + chunk
            if not self.joined.is_set() and SELF.search(data):
                self.joined.set()
            scanned = 0
            for match in BODY.finditer(data):
                mid = match.group(1).decode()
                scanned = match.end()
                if mid in self.seen:
                    self.duplicates += 1
                else:
                    self.seen[mid] = now
                    self.order.append(mid)
            # An id cut by a read boundary is found with the next chunk; one already
            # counted is not kept for it.
            tail = data[max(scanned, len(data) - 64):]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] * 1000 if values else -1.0


async def join_all(ports: list[int], rooms: int, per_room: int, user) -> tuple[list, dict]:
    occupants, latencies = [], []
    tasks = []
    for r in range(rooms):
        for i in range(per_room):
            n = r * per_room + i
            client = XmppClient(ports[n % len(ports)], user(n))
            await client.login()
            client.writer.write(b"<presence/>")
            occupant = Occupant(client, r, i)
            tasks.append(asyncio.create_task(occupant.read()))
            t0 = time.monotonic()
            client.writer.write(
                f"<presence to='room{r}@{SERVICE}/u{n}'><x xmlns='http://jabber.org/protocol/"
                f"muc'><history maxstanzas='0'/></x></presence>".encode())
            await asyncio.wait_for(occupant.joined.wait(), 30)
            latencies.append(time.monotonic() - t0)
            if i == 0:  # the creator: accept the default configuration (instant room)
                client.writer.write(
                    f"<iq type='set' to='room{r}@{SERVICE}' id='cfg{r}'><query xmlns='http://"
                    f"jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/>"
                    f"</query></iq>".encode())
                await asyncio.sleep(0.2)
            occupants.append(occupant)
    return occupants, {"joins": len(latencies), "join_p50_ms": pct(latencies, 0.5),
                       "join_p99_ms": pct(latencies, 0.99), "tasks": tasks}


async def throughput(occupants: list[Occupant], rooms: int, senders: int, window: int,
                     seconds: float) -> dict:
    by_room = [[o for o in occupants if o.room == r] for r in range(rooms)]
    accepted, latencies = 0, []
    t_end = time.monotonic() + seconds

    async def sender(o: Occupant) -> None:
        nonlocal accepted
        n, sent, pending = 0, {}, []
        while time.monotonic() < t_end:
            pending = [m for m in pending if m not in o.seen]
            while len(pending) < window and time.monotonic() < t_end:
                mid = f"m{o.room}-{o.index}-{n}"
                sent[mid] = time.monotonic()
                pending.append(mid)
                o.client.writer.write(
                    f"<message to='room{o.room}@{SERVICE}' type='groupchat'><body>{mid}</body>"
                    f"</message>".encode())
                n += 1
            await asyncio.sleep(0.002)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(m not in o.seen for m in sent):
            await asyncio.sleep(0.05)
        accepted += sum(1 for m in sent if m in o.seen)
        latencies.extend(o.seen[m] - t for m, t in sent.items() if m in o.seen)

    # The senders of each room sit on different nodes (occupant i is on node i % 3).
    chosen = [room[i] for room in by_room for i in range(min(senders, len(room)))]
    t0 = time.monotonic()
    await asyncio.gather(*(sender(o) for o in chosen))
    wall = time.monotonic() - t0
    expected = {r: {m for o in by_room[r] for m in o.seen} for r in range(rooms)}
    missing = sum(len(expected[o.room] - set(o.seen)) for o in occupants)
    orders_differ = 0
    for room in by_room:
        reference = [m for m in room[0].order]
        for o in room[1:]:
            common = set(reference) & set(o.order)
            if [m for m in reference if m in common] != [m for m in o.order if m in common]:
                orders_differ += 1
    delivered = sum(len(o.seen) for o in occupants)
    return {"room_msgs_per_s": accepted / seconds, "deliveries_per_s": delivered / wall,
            "echo_p50_ms": pct(latencies, 0.5), "echo_p99_ms": pct(latencies, 0.99),
            "missing": missing, "duplicates": sum(o.duplicates for o in occupants),
            "orders_differ": orders_differ}


def commit() -> str:
    out = subprocess.run(["git", "-C", str(benchlib.TREE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--occupants", type=int, default=50)
    ap.add_argument("--senders", type=int, default=3)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--server", choices=("raftxmpp", "ejabberd"), default="raftxmpp")
    ap.add_argument("--port", type=int, default=5222)
    ap.add_argument("--user-prefix", default=None,
                    help="accounts PREFIX<n> (default: u0.. on raftxmpp, created here; "
                         "user1.. on ejabberd, as create_accounts.sh makes them)")
    a = ap.parse_args()
    out_path = Path(os.environ.get("RESULTS_FILE") or BENCH / "results" / "muc.txt")
    out_path.parent.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    server = "raftxmpp-3" if a.server == "raftxmpp" else "ejabberd"
    head = f"server={server} date={stamp} commit={commit()} machine={benchlib.machine()}"
    users = a.rooms * a.occupants
    first = 0 if a.server == "raftxmpp" else 1
    prefix = a.user_prefix or ("u" if a.server == "raftxmpp" else "user")

    def user(n: int) -> str:
        return f"{prefix}{n + first}"

    def emit(tag: str, facts: dict, l1: float, cpu: str) -> None:
        values = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in facts.items() if k != "tasks")
        text = (f"{head} tag={tag} RESULT rooms={a.rooms} occupants={a.occupants} "
                f"senders={a.senders} window={a.window} {values} {cpu} load1={l1:.2f}")
        print(text, flush=True)
        with open(out_path, "a") as f:
            f.write(text + "\n")

    nodes: list[BenchNode] = []
    try:
        if a.server == "raftxmpp":
            shutil.rmtree(BENCH / "data" / "cluster-3", ignore_errors=True)
            nodes = [BenchNode(BENCH / "cluster-3" / f"node{i}.toml") for i in (1, 2, 3)]
            for node in nodes:
                node.start(wait=False)
            for node in nodes:
                benchlib.wait_for(node._admin_up, 30, f"{node.name} up")
            wait_leader(nodes, 30)
            benchlib.wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3
                                          for n in nodes), 30, "gossip between all nodes")
            for n in range(users):
                nodes[0].admin("user.add", jid=f"{user(n)}@localhost", password="pw")
            ports = [n.c2s_port for n in nodes]
            pids = [n.pid for n in nodes]
        else:
            ports = [a.port]
            pids = [int(p) for p in subprocess.run(["pgrep", "-u", "ejabberd", "-f", "beam.smp"],
                                                   capture_output=True,
                                                   text=True).stdout.split()]

        async def sitting() -> None:
            for tag in ("muc_join", "muc_throughput"):
                l1 = load1()
                cpu0, gen0, t0 = [cpu_seconds(p) for p in pids], time.process_time(), \
                    time.monotonic()
                if tag == "muc_join":
                    occupants, facts = await join_all(ports, a.rooms, a.occupants, user)
                    tasks = facts["tasks"]
                else:
                    facts = await throughput(occupants, a.rooms, a.senders, a.window, a.seconds)
                wall = time.monotonic() - t0
                cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
                emit(tag, facts, l1, f"server_cpu={100 * cpu / wall:.0f}% "
                     f"gen_cpu={100 * (time.process_time() - gen0) / wall:.0f}%")
            for task in tasks:
                task.cancel()
            for o in occupants:
                o.client.close()

        asyncio.run(sitting())
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    os.chdir(BENCH)
    sys.exit(main())
