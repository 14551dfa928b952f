#!/usr/bin/env python3
"""The raw pysyncobj ceiling on this machine: 3 local processes, a minimal replicated apply.

usage: python3 bench/raft_raw.py [--window W] [--seconds T] [--submit-on leader|follower]
                                [--durable]

Each process runs pysyncobj with exactly the SyncObjConf raftxmpp builds
(`raftxmpp.cluster.raft.RaftNode(...)._conf`: password, journal + dump files, no batching,
50 ms heartbeats, 0.3-0.6 s elections, 20,000-entry queue) and one SyncObjConsumer whose
`@replicated apply` stores a raftxmpp-shaped command (a roster_set dict) in a dict under a
lock. Once a leader is elected, one process (the leader, or a follower) submits commands
asynchronously with W in flight for T seconds after a 2 s warm-up, counting callbacks with
SUCCESS. Prints one RESULT line. All three processes are killed at the end, whatever happens.

Without --durable the processes run plain `SyncObj` on pysyncobj's own (never synced) mmap
journal: the raw ceiling. With --durable they run raftxmpp's layer exactly as a node does
(`raftxmpp.cluster.replication.DurableSyncObj` on `journal.DurableJournal`: an fdatasync per
tick before any acknowledgement, Raft-correct follower append). Either way, importing
raftxmpp makes pysyncobj fsync its dump (rare: at most one a minute here). The RESULT line
also counts the "truncating already-applied log entries" lines in the three node logs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TREE = Path(os.environ.get("RAFTXMPP_TREE") or BENCH.parent)  # see bench/snapshot_tree.sh
sys.path.insert(0, str(TREE))

SECRET = "bench-raw-pysyncobj-secret-0123456789"


def node_main(index: int, ports: list[int], data: Path, mode: str, window: int,
              seconds: float, out: Path, durable: bool) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConsumer, replicated

    from raftxmpp.cluster.raft import RaftNode
    from raftxmpp.cluster.replication import DurableSyncObj
    from raftxmpp.config import Address, ClusterSection

    class KV(SyncObjConsumer):
        def __init__(self) -> None:
            self.lock = threading.RLock()
            self.state: dict = {}
            super().__init__()

        @replicated
        def apply(self, command: dict):
            with self.lock:
                self.state.setdefault(command["jid"], {})[command["contact"]] = command
            return ("ok", None)

        def _serialize(self):
            with self.lock:
                return dict(self.state)

        def _deserialize(self, data):
            with self.lock:
                self.state = data

    me = Address("127.0.0.1", ports[index])
    peers = tuple(Address("127.0.0.1", p) for i, p in enumerate(ports) if i != index)
    node_dir = data / f"node{index + 1}"
    node_dir.mkdir(parents=True, exist_ok=True)
    conf = RaftNode(ClusterSection(raft=me, peers=peers), node_dir, SECRET)._conf
    if not durable:
        conf.journalFile = str(conf.journalFile)  # a plain path: pysyncobj's FileJournal
    consumer = KV()
    syncobj_class = DurableSyncObj if durable else SyncObj
    obj = syncobj_class(str(me), [str(p) for p in peers], conf, consumers=[consumer])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = obj.getStatus()
        if status.get("leader") is not None and obj.isReady():
            break
        time.sleep(0.05)
    time.sleep(1.0)
    leader = str(obj.getStatus().get("leader"))
    followers = sorted(str(Address("127.0.0.1", p)) for p in ports if str(Address("127.0.0.1", p)) != leader)
    submitter = leader == str(me) if mode == "leader" else (followers and followers[0] == str(me))
    if not submitter:
        while True:
            time.sleep(1)
    slots = threading.Semaphore(window)
    counts = {"ok": 0, "failed": 0}
    lat: list[float] = []
    t_start = time.monotonic() + 2.0
    t_end = t_start + seconds

    def make_callback(t0: float):
        def callback(result, reason):
            t1 = time.monotonic()
            if reason == FAIL_REASON.SUCCESS:
                if t_start <= t1 < t_end:
                    counts["ok"] += 1
                    lat.append(t1 - t0)
            else:
                counts["failed"] += 1
            slots.release()
        return callback

    seq = 0
    cpu0 = time.process_time()
    while time.monotonic() < t_end:
        if not slots.acquire(timeout=0.5):
            continue
        seq += 1
        command = {"v": 1, "id": f"raw{index}:{seq}", "ts": time.time(), "op": "roster_set",
                   "jid": f"user{seq % 1000}@localhost", "contact": f"user{seq % 997}@localhost",
                   "name": f"c{seq}", "groups": [], "limit": 0}
        t0 = time.monotonic()
        consumer.apply(command, callback=make_callback(t0))
    cpu = time.process_time() - cpu0
    lat.sort()
    def pct(q):
        return (lat[int(q * (len(lat) - 1))] * 1000 if lat else -1)
    out.write_text(json.dumps({"writes_per_s": counts["ok"] / seconds, "p50_ms": pct(0.5),
                               "p99_ms": pct(0.99), "failed": counts["failed"],
                               "submitter": "leader" if leader == str(me) else "follower",
                               "submitter_cpu": 100 * cpu / (t_end - t_start + 2.0)}))
    while True:
        time.sleep(1)


def run(window: int, seconds: float, mode: str, data: Path, durable: bool) -> dict:
    """Starts the three processes, waits (bounded) for the submitter's result, kills them."""
    import shutil

    from tests.harness import free_ports
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    ports = free_ports(3)
    out = data / "result.json"
    procs = []
    try:
        for i in range(3):
            with open(data / f"node{i + 1}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--node", str(i), "--ports",
                     ",".join(map(str, ports)), "--data", str(data), "--submit-on", mode,
                     "--window", str(window), "--seconds", str(seconds), "--out", str(out),
                     *(["--durable"] if durable else [])],
                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=log))
        deadline = time.monotonic() + seconds + 60
        while not out.exists() and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a raw pysyncobj node exited; see {data}/node*.log")
            time.sleep(0.2)
        time.sleep(0.2)
        if not out.exists():
            raise TimeoutError("no result from the raw pysyncobj submitter")
        result = json.loads(out.read_text())
        result["truncations"] = sum(
            (data / f"node{i + 1}.log").read_text(errors="replace").count(
                "truncating already-applied") for i in range(3))
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--submit-on", choices=("leader", "follower"), default="leader")
    ap.add_argument("--data", type=Path, default=BENCH / "data" / "raw")
    ap.add_argument("--node", type=int)
    ap.add_argument("--ports")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--durable", action="store_true",
                    help="raftxmpp's synced journal and Raft-correct append (as a node runs)")
    a = ap.parse_args()
    if a.node is not None:
        node_main(a.node, [int(p) for p in a.ports.split(",")], a.data, a.submit_on, a.window,
                  a.seconds, a.out, a.durable)
        return
    r = run(a.window, a.seconds, a.submit_on, a.data, a.durable)
    scenario = "durable_raftxmpp_layer" if a.durable else "raw_pysyncobj"
    print(f"RESULT scenario={scenario} submit_on={a.submit_on} window={a.window} "
          f"T={a.seconds:g}s writes_per_s={r['writes_per_s']:.1f} p50_ms={r['p50_ms']:.2f} "
          f"p99_ms={r['p99_ms']:.2f} failed={r['failed']} submitter_cpu={r['submitter_cpu']:.0f}% "
          f"truncation_lines={r['truncations']}")


if __name__ == "__main__":
    main()
