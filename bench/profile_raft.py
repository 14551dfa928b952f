#!/usr/bin/env python3
"""py-spy profiles of the Raft write path: leader and one follower of bench/cluster-3
while 200 XMPP clients on the leader set roster items (as bench/raft_writes.py does).

usage: python3 bench/profile_raft.py [--kind roster|offline] [--seconds 15]
Writes bench/profiles/raft_KIND_{leader,follower}.{raw,md} (top 20 by self time).
Needs py-spy. The cluster is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time

import benchlib
from benchlib import BENCH, BenchNode, stop_all, wait_leader


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("roster", "offline"), default="roster")
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()
    prof = BENCH / "profiles"
    prof.mkdir(exist_ok=True)
    print(f"load average before: {benchlib.wait_for_quiet():.2f}", flush=True)
    shutil.rmtree(BENCH / "data" / "cluster-3", ignore_errors=True)
    nodes = [BenchNode(BENCH / "cluster-3" / f"node{i}.toml") for i in (1, 2, 3)]
    spies = []
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            benchlib.wait_for(node._admin_up, 30, f"{node.name} up")
        leader = wait_leader(nodes, 30)
        follower = next(n for n in nodes if n is not leader)
        subprocess.run([str(BENCH / "xmppload"), "-s", "register", "-p", str(leader.c2s_port),
                        "-n", "2000", "-c", "50", "-t", "300"], check=True, capture_output=True)
        time.sleep(2)
        for role, node in (("leader", leader), ("follower", follower)):
            raw = prof / f"raft_{a.kind}_{role}.raw"
            spies.append((role, raw, subprocess.Popen(
                ["bash", "-c", f"sleep 4; exec py-spy record --pid {node.pid} -d {a.seconds:g} "
                               f"-r 100 --format raw -o {raw}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        result = asyncio.run(benchlib.write_load(leader.c2s_port, a.kind, 200, a.seconds + 6))
        print(f"{a.kind}: {result['writes_per_s']:.0f} writes/s (profiled), p50 "
              f"{result['p50_ms']:.0f} ms, errors {result['errors']}", flush=True)
        for role, raw, spy in spies:
            spy.wait(timeout=60)
            table = subprocess.run([sys.executable, str(BENCH / "pyspy_top.py"), str(raw), "20"],
                                   capture_output=True, text=True).stdout
            text = (f"## raft {a.kind} writes, {role} ({result['writes_per_s']:.0f} writes/s "
                    f"while profiled)\n\n{table}")
            (prof / f"raft_{a.kind}_{role}.md").write_text(text)
            print(text)
    finally:
        for _, _, spy in spies:
            if spy.poll() is None:
                spy.kill()
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
