#!/usr/bin/env python3
"""Message latency while the Raft leader is killed (issue 22: p99 during a leader kill <= 1 s).

usage: python3 bench/failover_msgs.py [--trials 3] [--pairs 50] [--window 1]

A fresh 3-node cluster (bench/cluster-3, data in bench/data/cluster-3). Each trial: find
the leader; senders log in on one survivor, receivers on the other (bench/xmppload-x -Q:
every message crosses a node link), 50 pairs x window 1 for T = 8 s after a 3 s warm-up;
runs alternate between a run with no kill (baseline, same load) and a run in which the
leader's process is killed with SIGKILL ~1.5 s into the measured window. xmppload's
p50 / p99 / max one-way latency of the measured window are the figures; the killed node
is then restarted and must catch up before the next trial. Lines are appended to
bench/results/failover_msgs.txt (with load1 before each run). Every node is stopped at exit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import benchlib
from benchlib import BENCH, BenchNode, load1

OUT = BENCH / "results" / "failover_msgs.txt"
T, U = 8, 3


def established(ports: list[int]) -> int:
    n = 0
    want = {f"{p:04X}" for p in ports}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and f[1].rsplit(":", 1)[1] in want:
                n += 1
    return n


def value(line: str, key: str) -> str:
    for w in line.split():
        if w.startswith(key + "="):
            return w.split("=", 1)[1]
    return ""


def caught_up(nodes: list[BenchNode], timeout: float = 90) -> BenchNode:
    leader = benchlib.wait_leader(nodes, timeout)

    def ok():
        target = leader.status()["commit_index"]
        return all(n.status()["applied_index"] >= target for n in nodes)
    benchlib.wait_for(ok, timeout, "every node to catch up", interval=0.2)
    return leader


def run(nodes, leader, pairs, window, kill: bool, tag: str) -> str:
    a, b = [n for n in nodes if n is not leader]
    xl = [str(BENCH / "xmppload-x"), "-O", "-s", "messages", "-P", str(pairs), "-W", str(window),
          "-T", str(T), "-U", str(U), "-c", "100", "-t", "60", "-p", str(a.c2s_port),
          "-Q", str(b.c2s_port), "-S", f"{a.pid},{b.pid}"]
    l1 = load1()
    gen = subprocess.Popen(xl, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed_at = ""
    try:
        benchlib.wait_for(lambda: established([a.c2s_port, b.c2s_port]) >= 2 * pairs, 60,
                          "the generator's clients to connect", interval=0.05)
        if kill:
            time.sleep(1 + U + 1.5)  # logins, warm-up, 1.5 s into the window
            t = time.monotonic()
            leader.kill(signal.SIGKILL)
            killed_at = f" killed={leader.name} kill_s={time.monotonic() - t:.3f}"
        out, _ = gen.communicate(timeout=120)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), "RESULT failed=all")
    return (f"server=raftxmpp-3 tag={tag} {line} senders={a.name} receivers={b.name}"
            f"{killed_at} load1={l1}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--window", type=int, default=1)
    args = ap.parse_args()
    base = BENCH / "data" / "cluster-3"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    nodes = [BenchNode(BENCH / "cluster-3" / f"node{i}.toml", base / f"node{i}.log")
             for i in (1, 2, 3)]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%FT%TZ")
    tree = os.environ.get("RAFTXMPP_TREE", "checkout")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    p99 = {"none": [], "kill": []}
    try:
        for n in nodes:
            n.start()
        caught_up(nodes)
        subprocess.run([str(BENCH / "xmppload"), "-s", "register", "-p", str(nodes[0].c2s_port),
                        "-n", str(2 * args.pairs), "-c", "50", "-t", "300"], check=True,
                       capture_output=True)
        with open(OUT, "a") as f:
            f.write(f"# failover_msgs {stamp} trials={args.trials} pairs={args.pairs} "
                    f"window={args.window} T={T} tree={tree} load1={load1()}\n")
        for trial in range(1, args.trials + 1):
            for mode in ("none", "kill"):
                leader = caught_up(nodes)
                time.sleep(2)
                line = run(nodes, leader, args.pairs, args.window, mode == "kill",
                           f"msgs_p{args.pairs}_w{args.window}_{mode}")
                line += f" trial={trial} date={stamp}"
                print(line, flush=True)
                with open(OUT, "a") as f:
                    f.write(line + "\n")
                v = value(line, "p99_ms")
                if v:
                    p99[mode].append(float(v))
                if mode == "kill":
                    leader.start()
        summary = " ".join(f"{m}_p99_median_ms={statistics.median(v):.1f}" for m, v in p99.items() if v)
        print(f"RESULT test=failover_msgs {summary} date={stamp}", flush=True)
        with open(OUT, "a") as f:
            f.write(f"RESULT test=failover_msgs {summary} date={stamp}\n")
    finally:
        benchlib.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
