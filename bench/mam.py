"""Message archive (XEP-0313) costs: the message rate with archiving on and off, and the
archive store at N messages (apply rate, disk, snapshot time and size, restore, queries).

    python3 bench/mam.py rate  [--pairs 50] [--window 10] [--seconds 15] [--reps 3]
    python3 bench/mam.py store [--rows 100000] [--accounts 1000]
    python3 bench/mam.py catchup [--rows 100000]

`rate`: one fresh node per run (bench/node.toml with its own data dir and [archive]
enabled true/false), the web_rate.py generator over c2s TCP: P pairs, W messages in flight
per sender. Runs alternate off, on, off, on … so a change of machine load hits both.
After each archiving run the node's archive is read back (archive.stats): every message
delivered in the run must be there twice (sender's and recipient's archive).

`store`: raftxmpp.cluster.archive in this process, on a temporary directory: N rows
(300-byte stanzas, `accounts` owners) appended in 500-row batches as apply does, then the
database's size, the snapshot image as pysyncobj writes it (pickle + gzip, timed as its
forked child would spend), a restore into an empty store, and query latencies.
`catchup`: bench/cluster-3's three nodes (own data dirs, snapshots every 10 s), messages
through node1 until its archive holds `rows`; every log compacted; node3 killed, its data
dir wiped, started again: seconds until its archive equals node1's (snapshot + log);
then node2 killed -9 and restarted with its files. Each appends RESULT lines to
bench/results/mam.txt.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402 - bench/ is a folder of scripts, not a package
import web_rate  # noqa: E402

from raftxmpp.cluster.archive import ArchiveStore, Query  # noqa: E402

OUT = benchlib.BENCH / "results" / "mam.txt"
BATCH = 500


def record(line: dict, stamp: str) -> None:
    text = " ".join(f"{k}={v}" for k, v in line.items())
    print(f"RESULT {text}", flush=True)
    with open(OUT, "a") as out:
        out.write(f"RESULT {text} date={stamp}\n")


# -- rate: archiving on and off ---------------------------------------------------------------------


def node_config(archive: bool, base: Path) -> Path:
    text = (benchlib.BENCH / "node.toml").read_text()
    data_dir = base / ("archive-on" if archive else "archive-off")
    text = text.replace('data_dir = "data/single"', f'data_dir = "{data_dir}"')
    text += f"\n[archive]\nenabled = {'true' if archive else 'false'}\n"
    path = base / f"node-{'on' if archive else 'off'}.toml"
    path.write_text(text)
    shutil.rmtree(data_dir, ignore_errors=True)
    return path


def rate_run(archive: bool, args, rep: int, base: Path) -> dict:
    node = benchlib.BenchNode(node_config(archive, base))
    try:
        node.start()
        benchlib.wait_leader([node])
        for n in range(1, 2 * args.pairs + 1):
            node.admin("user.add", jid=f"user{n}@localhost", password=web_rate.PASSWORD)
        load = benchlib.load1()
        received, server, generator = trio.run(
            web_rate.run_pairs, "tcp", node.c2s_port, args.pairs, args.window, args.seconds,
            args.warmup, node.pid)
        line = {"archive": "on" if archive else "off", "rep": rep, "pairs": args.pairs,
                "window": args.window, "rate": round(received / args.seconds),
                "server_cpu": round(100 * server / args.seconds),
                "msgs_per_cpu_s": round(received / server) if server else 0,
                "rss_kb": benchlib.rss_kb(node.pid), "load1": load}
        if archive:
            # Every delivered message (warm-up and tail included) is archived twice; wait
            # until the queue has drained into the store, and say how long that took.
            started = time.monotonic()
            benchlib.wait_for(lambda: _rows_settled(node), 120, "the archive to settle")
            line["drain_s"] = round(time.monotonic() - started, 1)
            stats = node.admin("archive.stats")
            line["archived_rows"] = stats["rows"]
            line["db_mb"] = round(_db_bytes(node.data_dir) / 2**20, 1)
        return line
    finally:
        node.stop()


_last_rows: dict[str, int] = {}


def _rows_settled(node) -> bool:
    rows = node.admin("archive.stats")["rows"]
    settled = _last_rows.get(node.name) == rows
    _last_rows[node.name] = rows
    if not settled:
        time.sleep(0.5)
    return settled


def _db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("archive.sqlite3*"))


def rate(args, stamp: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="mam-bench-"))
    rates: dict[str, list[int]] = {"on": [], "off": []}
    try:
        for rep in range(1, args.reps + 1):
            for archive in (False, True):
                line = rate_run(archive, args, rep, base)
                rates[line["archive"]].append(line["rate"])
                record(line, stamp)
    finally:
        benchlib.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    if rates["on"] and rates["off"]:
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"median {off:.0f} msg/s archiving off, {on:.0f} on: on/off {on / off:.2f}")


# -- store: N rows ---------------------------------------------------------------------------------


def stanza(i: int, owner: str, other: str) -> bytes:
    body = f"message {i:09d} " + "x" * 160
    return (f"<message xmlns='jabber:client' from='{other}/phone' to='{owner}' type='chat' "
            f"id='m{i}'><stanza-id xmlns='urn:xmpp:sid:0' by='{owner}' id='s{i}'/>"
            f"<body>{body}</body></message>").encode()


def store(args, stamp: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="mam-store-"))
    try:
        _store(args, stamp, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _store(args, stamp: str, base: Path) -> None:
    archive = ArchiveStore(base / "archive.sqlite3")
    owners = [f"user{n}@localhost" for n in range(args.accounts)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    append_s = append_cpu = 0.0
    for position, first in enumerate(range(0, args.rows, BATCH), start=1):
        rows = []
        for i in range(first, min(first + BATCH, args.rows)):
            owner, other = owners[i % len(owners)], owners[(i * 7 + 1) % len(owners)]
            rows.append((owner, f"s{i}", 1_700_000_000.0 + i, f"{other}/phone", i % 2 == 0,
                         stanza(i, owner, other)))
        started, cpu = time.perf_counter(), time.process_time()
        archive.append(position, rows)  # what apply does with one archive_append
        append_s += time.perf_counter() - started
        append_cpu += time.process_time() - cpu
    db = _db_bytes(base)
    # The snapshot: pysyncobj's dump is gzip(pickle(state)); ours carries the image.
    started = time.perf_counter()
    image = pickle.dumps(archive.image())  # serialise + zlib level 1 (ArchiveImage)
    image_s = time.perf_counter() - started
    started = time.perf_counter()
    dumped = gzip.compress(image, compresslevel=9)  # GzipFile's default level
    gzip_s = time.perf_counter() - started
    restored = ArchiveStore(base / "restored.sqlite3")
    started = time.perf_counter()
    restored.load_image(pickle.loads(image).data)
    restore_s = time.perf_counter() - started
    assert restored.totals() == archive.totals()
    queries = _query_times(archive, owners)
    record({"kind": "store", "rows": args.rows, "accounts": args.accounts,
            "append_rows_per_s": round(args.rows / append_s),
            "us_per_row": round(1e6 * append_s / args.rows, 1),
            "cpu_us_per_row": round(1e6 * append_cpu / args.rows, 1),
            "db_mb": round(db / 2**20, 1), "bytes_per_row": round(db / args.rows),
            "image_s": round(image_s, 2), "snapshot_gz_mb": round(len(dumped) / 2**20, 1),
            "gzip_s": round(gzip_s, 1), "restore_s": round(restore_s, 2),
            "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0)
                                   / 1024),
            **queries}, stamp)


def _query_times(archive: ArchiveStore, owners: list[str]) -> dict:
    """Median ms of: the last page (what a client asks on connect), a page by `with`,
    one page forwards from the middle, the metadata."""
    samples: dict[str, list[float]] = {"last_page_ms": [], "with_page_ms": [],
                                        "after_page_ms": [], "metadata_ms": []}
    for owner in owners[:50]:
        for key, run in (
            ("last_page_ms", lambda o=owner: archive.query(Query(o, max=50, rsm_before=""))),
            ("with_page_ms", lambda o=owner: archive.query(Query(o, with_jid=owners[1],
                                                                 max=50))),
            ("metadata_ms", lambda o=owner: archive.bounds(o)),
        ):
            started = time.perf_counter()
            page = run()
            samples[key].append(1000 * (time.perf_counter() - started))
            if key == "last_page_ms" and page.rows:
                middle = page.rows[0].sid
                started = time.perf_counter()
                archive.query(Query(owner, max=50, rsm_after=middle))
                samples["after_page_ms"].append(1000 * (time.perf_counter() - started))
    return {k: round(statistics.median(v), 2) for k, v in samples.items() if v}


# -- catch-up: a wiped node of three ---------------------------------------------------------------


def cluster_configs(base: Path, snapshot_interval: float) -> list[Path]:
    """bench/cluster-3 with data dirs under `base` and a shorter snapshot interval."""
    shutil.copy(benchlib.BENCH / "cluster-3" / "cluster.secret", base / "cluster.secret")
    paths = []
    for i in (1, 2, 3):
        text = (benchlib.BENCH / "cluster-3" / f"node{i}.toml").read_text()
        text = text.replace(f'data_dir = "../data/cluster-3/node{i}"',
                            f'data_dir = "{base / f"node{i}"}"')
        text = text.replace("[cluster]\n", f"[cluster]\nsnapshot_interval = {snapshot_interval}\n")
        path = base / f"node{i}.toml"
        path.write_text(text)
        paths.append(path)
    return paths


def catchup(args, stamp: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="mam-catchup-"))
    try:
        _catchup(args, stamp, base)
    finally:
        benchlib.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def _rows(node) -> int:
    return node.admin("archive.stats")["rows"]


def _catchup(args, stamp: str, base: Path) -> None:
    nodes = [benchlib.BenchNode(p) for p in cluster_configs(base, args.snapshot_interval)]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        benchlib.wait_for(node._admin_up, 30, f"{node.name} up")
    benchlib.wait_leader(nodes)
    node1, node2, node3 = nodes
    for n in range(1, 2 * args.pairs + 1):
        node1.admin("user.add", jid=f"user{n}@localhost", password=web_rate.PASSWORD)
    started = time.monotonic()
    while _rows(node1) < args.rows and time.monotonic() - started < args.max_seconds:
        trio.run(web_rate.run_pairs, "tcp", node1.c2s_port, args.pairs, args.window, 10.0,
                 1.0, node1.pid)
    benchlib.wait_for(lambda: _rows_settled(node1), 300, "node1's archive to settle")
    rows = _rows(node1)
    write_s = time.monotonic() - started
    benchlib.wait_for(lambda: all(_rows(n) == rows for n in nodes), 300, "every node's archive")
    for node in nodes:
        node.admin("raft.snapshot")
    benchlib.wait_for(lambda: all(n.status()["log_length"] < 1000 for n in nodes),
                      3 * args.snapshot_interval + 120, "every node to compact its log")
    dump = (node1.data_dir / "raft.dump").stat().st_size
    node3.kill()
    shutil.rmtree(node3.data_dir)
    started = time.monotonic()
    node3.start()
    benchlib.wait_for(lambda: _rows(node3) == rows, 600, "the wiped node to catch up")
    wiped_s = time.monotonic() - started
    node2.kill()
    started = time.monotonic()
    node2.start()
    benchlib.wait_for(lambda: node2.status().get("leader") and _rows(node2) == rows, 600,
                      "the restarted node to be back")
    restart_s = time.monotonic() - started
    record({"kind": "catchup", "rows": rows, "write_s": round(write_s),
            "dump_mb": round(dump / 2**20, 1),
            "db_mb": round(_db_bytes(node1.data_dir) / 2**20, 1),
            "wiped_catchup_s": round(wiped_s, 1), "restart_s": round(restart_s, 1),
            "rss_kb_node1": benchlib.rss_kb(node1.pid), "rss_kb_wiped": benchlib.rss_kb(node3.pid),
            "load1": benchlib.load1()}, stamp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--pairs", type=int, default=50)
    r.add_argument("--window", type=int, default=10)
    r.add_argument("--seconds", type=float, default=15)
    r.add_argument("--warmup", type=float, default=3)
    r.add_argument("--reps", type=int, default=3)
    s = sub.add_parser("store")
    s.add_argument("--rows", type=int, default=100_000)
    s.add_argument("--accounts", type=int, default=1000)
    c = sub.add_parser("catchup")
    c.add_argument("--rows", type=int, default=100_000)
    c.add_argument("--pairs", type=int, default=50)
    c.add_argument("--window", type=int, default=10)
    c.add_argument("--max-seconds", type=float, default=300)
    c.add_argument("--snapshot-interval", type=float, default=10.0)
    args = parser.parse_args()
    OUT.parent.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(OUT, "a") as out:
        out.write(f"# mam {args.what} {stamp} {benchlib.machine()} load1={benchlib.load1()} "
                  f"commit={os.environ.get('BENCH_COMMIT', '?')}\n")
    {"rate": rate, "store": store, "catchup": catchup}[args.what](args, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
