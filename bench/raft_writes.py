#!/usr/bin/env python3
"""Durable writes/s through raftxmpp's Raft path vs the raw pysyncobj ceiling, same machine.

usage: python3 bench/raft_writes.py [--clients 200] [--seconds 15]

1. Raw ceiling: bench/raft_raw.py (3 processes, raftxmpp's SyncObjConf, minimal apply),
   submitting on the leader with 200 and with 1000 commands in flight.
2. raftxmpp: a fresh 3-node cluster from bench/cluster-3/ (data in bench/data/cluster-3),
   user1..user1200 registered in-band, then CLIENTS XMPP connections to the leader's c2s port,
   one write in flight each (the server handles one connection's stanzas in order):
     roster  - <iq type='set'> jabber:iq:roster item; the result comes after commit + apply
     offline - a chat message to an offline account + an iq ping; the ping's result comes after
               the message was committed to the offline store
   and the roster load once more through a follower.
Prints RESULT lines (+ load1) and appends them to bench/results/raft_writes.txt.
The cluster is stopped on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import BENCH, BenchNode, cpu_seconds, load1, stop_all, wait_leader


def raw(window: int, seconds: float) -> str:
    out = subprocess.run([sys.executable, str(BENCH / "raft_raw.py"), "--window", str(window),
                          "--seconds", str(seconds)], capture_output=True, text=True, timeout=300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"raft_raw.py failed: {out.stderr[-2000:]}")
    return line


def register(port: int, n: int) -> None:
    out = subprocess.run([str(BENCH / "xmppload"), "-s", "register", "-p", str(port), "-n", str(n),
                          "-c", "50", "-t", "600"], capture_output=True, text=True, timeout=700)
    if out.returncode != 0:
        raise RuntimeError(f"registration failed: {out.stdout[-500:]}")


def xmpp_writes(nodes: list[BenchNode], port: int, kind: str, clients: int, seconds: float) -> str:
    pids = [n.pid for n in nodes]
    cpu0 = [cpu_seconds(p) for p in pids]
    gen0 = time.process_time()
    t0 = time.monotonic()
    r = asyncio.run(benchlib.write_load(port, kind, clients, seconds))
    wall = time.monotonic() - t0
    node_cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
    gen_cpu = time.process_time() - gen0
    if r["first_error"]:
        print(f"first error reply ({kind}): {r['first_error']}", file=sys.stderr)
    return (f"RESULT scenario=raft_{kind} clients={clients} T={seconds:g}s "
            f"writes_per_s={r['writes_per_s']:.1f} p50_ms={r['p50_ms']:.2f} p99_ms={r['p99_ms']:.2f} "
            f"errors={r['errors']} nodes_cpu={100 * node_cpu / wall:.0f}% gen_cpu={100 * gen_cpu / wall:.0f}%")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--skip-raw", action="store_true")
    a = ap.parse_args()
    if not (BENCH / "xmppload").exists():
        subprocess.run([str(BENCH / "build_xmppload.sh")], check=True)
    out_path = Path(os.environ.get("RESULTS_FILE") or BENCH / "results" / "raft_writes.txt")
    out_path.parent.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"load average before the sitting: {benchlib.wait_for_quiet():.2f}", flush=True)

    def emit(tag: str, line: str, l1: float) -> None:
        text = f"server=raftxmpp date={stamp} tag={tag} {line} load1={l1:.2f}"
        print(text, flush=True)
        with open(out_path, "a") as f:
            f.write(text + "\n")

    if not a.skip_raw:
        for window in (a.clients, 1000):
            l1 = load1()
            emit(f"raw_leader_w{window}", raw(window, a.seconds), l1)

    shutil.rmtree(BENCH / "data" / "cluster-3", ignore_errors=True)
    nodes = [BenchNode(BENCH / "cluster-3" / f"node{i}.toml") for i in (1, 2, 3)]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            benchlib.wait_for(node._admin_up, 30, f"{node.name} up")
        leader = wait_leader(nodes, 30)
        follower = next(n for n in nodes if n is not leader)
        register(leader.c2s_port, 2000)  # clients: user1..; offline targets: user1001..user2000
        time.sleep(2)
        for kind, node, where in (("roster", leader, "leader"), ("offline", leader, "leader"),
                                  ("roster", follower, "follower")):
            l1 = load1()
            emit(f"raft_{kind}_{where}", xmpp_writes(nodes, node.c2s_port, kind, a.clients,
                                                     a.seconds), l1)
            time.sleep(3)
        # Safety check after the load: the same state everywhere, and how often pysyncobj
        # logged that a follower truncated entries it had already applied.
        digests = {n.name: n.admin("state.digest", current=True)["digest"] for n in nodes}
        truncations = sum(n.log_path.read_text(errors="replace").count("truncating already-applied")
                          for n in nodes)
        emit("raft_check", f"RESULT scenario=raft_check digests_equal={len(set(digests.values())) == 1} "
             f"applied_truncations={truncations}", load1())
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    os.chdir(BENCH)
    sys.exit(main())
