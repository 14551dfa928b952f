#!/usr/bin/env python3
"""What the state machine's whole-state operations cost, and how long each holds the
apply lock (the Raft thread waits for it: no heartbeats meanwhile).

usage: python3 bench/state_cost.py [--accounts 100000] [--repeat 3]

Builds a ClusterState of N accounts (SCRAM keys, a roster item, a vCard each) through
apply, then times:
  digest_whole   ClusterState.digest(): canonical JSON + SHA-256 of everything, the way
                 the admin `state.digest` computed it under the lock before issue 12
  fork_lock      what Store.digest() now holds the lock for: fork() of this process
                 (RaftNode.read_frozen; the digest runs in the child, off the lock)
  fork_digest    the whole of that digest, fork to answer (the caller waits this long,
                 the Raft thread does not)
  snapshot       pickle of the snapshot, what the serializer writes at compaction
  apply          one register command, for scale
Prints RESULT lines and appends them to bench/results/state_cost.txt.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftxmpp import credentials  # noqa: E402
from raftxmpp.cluster.state import ClusterState  # noqa: E402


def build(accounts: int) -> ClusterState:
    state = ClusterState()
    creds = credentials.derive("bench-password", 4096)
    for i in range(accounts):
        jid = f"user{i}@bench.example"
        base = {"v": 1, "ts": 1700000000.0 + i}
        state.apply({**base, "id": f"r{i}", "op": "register", "jid": jid, "credentials": creds})
        state.apply({**base, "id": f"s{i}", "op": "roster_set", "jid": jid,
                     "contact": f"user{(i + 1) % accounts}@bench.example", "name": "Friend",
                     "groups": ["Friends"]})
        state.apply({**base, "id": f"v{i}", "op": "vcard_set", "jid": jid,
                     "vcard": f"<vCard xmlns='vcard-temp'><FN>User {i}</FN></vCard>"})
    return state


def forked_digest(state: ClusterState, forks: list[float]) -> str:
    """RaftNode._read_in_child's steps, timing the fork (the part under the lock)."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, state.digest().encode())
        finally:
            os._exit(0)
    forks.append(time.perf_counter() - started)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    state = build(args.accounts)
    built = time.perf_counter() - started
    forks: list[float] = []
    figures = {
        "digest_whole": timed(state.digest, args.repeat),
        "fork_digest": timed(lambda: forked_digest(state, forks), args.repeat),
        "snapshot": timed(lambda: pickle.dumps(state.snapshot(), pickle.HIGHEST_PROTOCOL),
                          args.repeat),
    }
    figures["fork_lock"] = statistics.median(forks)
    assert forked_digest(state, []) == state.digest()
    load = os.getloadavg()[0]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"RESULT state_cost accounts={args.accounts} {name}_ms={value * 1000:.1f} "
             f"load1={load:.2f} at={stamp}" for name, value in figures.items()]
    lines.append(f"RESULT state_cost accounts={args.accounts} build_s={built:.1f} "
                 f"apply_us={built / (3 * args.accounts) * 1e6:.1f} load1={load:.2f} at={stamp}")
    out = Path(__file__).resolve().parent / "results" / "state_cost.txt"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        for line in lines:
            print(line)
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
