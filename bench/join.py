#!/usr/bin/env python3
"""Catch-up of a node from an empty data dir, with 10,000 accounts; memory and snapshot size.

usage: python3 bench/join.py [--accounts 10000] [--workers 12]

1. A fresh 3-node cluster (tests.harness.Cluster, data under bench/data/join).
2. ACCOUNTS accounts through the admin API `user.add`, WORKERS calls in flight spread over
   the three nodes (each call derives SCRAM keys, ~10 ms of PBKDF2, on the node it reaches).
3. RSS of every node before and after; raft.dump (written by pysyncobj's log compaction,
   at the latest logCompactionMinTime = 60 s after the previous one) and raft.journal sizes.
4. A follower is killed (-9), its data dir wiped, and it is started again: the time until
   its `state.digest` equals the leader's (and until its admin socket answers) is the join
   time; its RSS after catch-up too.
Prints RESULT lines and appends them to bench/results/join.txt. Every node is killed at exit.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

import benchlib
from benchlib import BENCH, load1, rss_kb, wait_for_quiet

from raftxmpp.admin.client import AdminClientError  # noqa: E402 - after the sys.path switch to the frozen tree
from tests.harness import Cluster  # noqa: E402 - after the sys.path switch to the frozen tree

PASSWORD = "join-bench-password"


def add_accounts(nodes, count: int, workers: int) -> float:
    def add(i: int) -> None:
        node = nodes[i % len(nodes)]
        for _ in range(20):
            try:
                node.admin("user.add", jid=f"j{i}@localhost", password=PASSWORD)
                return
            except AdminClientError as exc:
                if "already exists" in str(exc):
                    return
                time.sleep(0.2)
        raise RuntimeError(f"user.add j{i} kept failing")

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(add, range(count)):
            pass
    return time.monotonic() - t0


def dump_sizes(nodes, since: float, timeout: float) -> dict:
    """Waits (bounded) for every node to write raft.dump after `since`; returns sizes."""
    def fresh():
        sizes = {}
        for n in nodes:
            dump = n.data_dir / "raft.dump"
            if not dump.exists() or dump.stat().st_mtime < since:
                return None
            sizes[n.name] = dump.stat().st_size
        return sizes
    return benchlib.wait_for(fresh, timeout, "every node to write raft.dump", interval=1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=12)
    a = ap.parse_args()
    out_path = Path(os.environ.get("RESULTS_FILE") or BENCH / "results" / "join.txt")
    out_path.parent.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"load average before the sitting: {wait_for_quiet():.2f}", flush=True)
    base = BENCH / "data" / "join"
    shutil.rmtree(base, ignore_errors=True)
    cluster = Cluster(base, 3)

    def emit(text: str) -> None:
        text = f"server=raftxmpp date={stamp} {text} load1={load1():.2f}"
        print(text, flush=True)
        with open(out_path, "a") as f:
            f.write(text + "\n")

    try:
        cluster.start()
        leader = cluster.leader(timeout=30)
        rss0 = {n.name: rss_kb(n.process.pid) for n in cluster.nodes}
        t_accounts = time.time()
        wall = add_accounts(cluster.nodes, a.accounts, a.workers)
        digest = leader.admin("state.digest", current=True)
        rss1 = {n.name: rss_kb(n.process.pid) for n in cluster.nodes}
        per = 10_000 / a.accounts
        delta = max(rss1[k] - rss0[k] for k in rss0)
        emit(f"tag=accounts RESULT scenario=accounts accounts={a.accounts} wall_s={wall:.1f} "
             f"accounts_per_s={a.accounts / wall:.0f} workers={a.workers} "
             f"rss_before_kb={max(rss0.values())} rss_after_kb={max(rss1.values())} "
             f"rss_kb_per_10k_accounts={delta * per:.0f} applied_index={digest['applied_index']}")
        sizes = dump_sizes(cluster.nodes, t_accounts, 150)
        journal = max((n.data_dir / "raft.journal").stat().st_size for n in cluster.nodes)
        emit(f"tag=snapshot RESULT scenario=snapshot accounts={a.accounts} "
             f"dump_bytes={max(sizes.values())} dump_bytes_per_10k_accounts={max(sizes.values()) * per:.0f} "
             f"journal_bytes={journal}")

        leader = cluster.leader(timeout=30)
        follower = next(n for n in cluster.nodes if n is not leader)
        follower.kill()
        shutil.rmtree(follower.data_dir)
        want = leader.admin("state.digest", current=True)["digest"]
        t0 = time.monotonic()
        follower.start()
        t_up = time.monotonic() - t0
        benchlib.wait_for(lambda: follower.admin("state.digest")["digest"] == want, 300,
                          f"{follower.name} to reach the leader's digest", interval=0.1)
        t_join = time.monotonic() - t0
        emit(f"tag=join RESULT scenario=join accounts={a.accounts} node={follower.name} "
             f"admin_up_s={t_up:.2f} caught_up_s={t_join:.2f} "
             f"rss_after_join_kb={rss_kb(follower.process.pid)}")
    finally:
        cluster.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
