#!/usr/bin/env python3
"""Failover time after kill -9 of the Raft leader, in a 3-node cluster on this machine.

usage: python3 bench/failover.py [--kills 12]

A fresh 3-node cluster (tests.harness.Cluster: ephemeral ports, data under
bench/data/failover). Each trial: find the leader the live nodes agree on, write through
a survivor once (warm), SIGKILL the leader's process group, and from that instant call
the admin API `user.add` on a survivor until one commits (a refused or timed-out call is
retried at once; "already exists" means an earlier try committed late and counts as
committed). failover = kill → that commit acknowledged. `user.add` derives SCRAM keys
first (~10 ms of PBKDF2), included in the figure. The killed node is then restarted and
must catch up before the next trial. Prints one RESULT line per trial and a summary
(p50 / max), appended to bench/results/failover.txt. Every node is killed at exit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401 - imported for its effect: the frozen tree on sys.path
from benchlib import BENCH, load1, wait_for_quiet

from raftxmpp.admin.client import AdminClientError  # noqa: E402 - after the sys.path switch to the frozen tree
from tests.harness import Cluster  # noqa: E402 - after the sys.path switch to the frozen tree

PASSWORD = "failover-bench-password"


def commit_through(node, jid: str, deadline: float) -> float:
    """Retries user.add on `node` until it commits; returns the monotonic time it did."""
    while time.monotonic() < deadline:
        try:
            node.admin("user.add", jid=jid, password=PASSWORD)
            return time.monotonic()
        except AdminClientError as exc:
            if "already exists" in str(exc):
                return time.monotonic()
            time.sleep(0.01)
    raise TimeoutError(f"no write committed through {node.name} before the deadline")


def caught_up(cluster, node, timeout: float = 60) -> None:
    def ok():
        try:
            leader = cluster.leader(timeout=5)
        except AssertionError:  # the harness's "timed out": no agreed leader yet
            return False
        target = leader.status()["commit_index"]
        return node.status()["applied_index"] >= target
    benchlib.wait_for(ok, timeout, f"{node.name} to catch up", interval=0.2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=12)
    a = ap.parse_args()
    out_path = Path(os.environ.get("RESULTS_FILE") or BENCH / "results" / "failover.txt")
    out_path.parent.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"load average before the sitting: {wait_for_quiet():.2f}", flush=True)
    base = BENCH / "data" / "failover"
    shutil.rmtree(base, ignore_errors=True)
    cluster = Cluster(base, 3)
    times, elections = [], []

    def emit(text: str) -> None:
        print(text, flush=True)
        with open(out_path, "a") as f:
            f.write(text + "\n")

    try:
        cluster.start()
        cluster.leader(timeout=30)
        for trial in range(1, a.kills + 1):
            leader = cluster.leader(timeout=30)
            survivor = next(n for n in cluster.nodes if n is not leader and n.alive())
            commit_through(survivor, f"warm{trial}@localhost", time.monotonic() + 30)
            term0 = survivor.status()["term"]
            l1 = load1()
            t0 = time.monotonic()
            leader.kill()
            t1 = commit_through(survivor, f"after{trial}@localhost", t0 + 60)
            new_leader = cluster.leader(timeout=30)
            term1 = new_leader.status()["term"]
            times.append(t1 - t0)
            elections.append(term1 - term0)
            emit(f"server=raftxmpp date={stamp} tag=failover RESULT scenario=failover trial={trial} "
                 f"failover_s={t1 - t0:.3f} killed={leader.name} new_leader={new_leader.name} "
                 f"terms_advanced={term1 - term0} load1={l1:.2f}")
            leader.start()
            caught_up(cluster, leader)
            time.sleep(1.0)
        times_sorted = sorted(times)
        emit(f"server=raftxmpp date={stamp} tag=failover_summary RESULT scenario=failover_summary "
             f"kills={len(times)} p50_s={statistics.median(times):.3f} max_s={max(times):.3f} "
             f"min_s={times_sorted[0]:.3f} split_votes={sum(1 for e in elections if e > 1)} "
             f"load1={load1():.2f}")
    finally:
        cluster.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
