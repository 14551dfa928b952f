#!/usr/bin/env python3
"""report.py: the figures of issue 9 from the latest sitting in bench/results/, side by side.

usage: python3 bench/report.py [RESULTS_DIR]

Takes, per file, the latest sitting only: for ejabberd.txt / prosody.txt / raftxmpp.txt the
lines after the last '# ...' header that starts a run (bench/anchors.sh, bench/single_node.sh);
for the other files the lines carrying the latest date=. Medians over reps, [min..max].
Prints a markdown table (anchors, raftxmpp, target of issue 9) and the detail tables.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
KV = re.compile(r"(\w+)=([^\s]+)")


def num(v: str | None) -> float | None:
    try:
        return float(v.rstrip("%")) if v is not None else None
    except ValueError:
        return None


def latest_section(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.startswith("#") and " done " not in line:
            start = i + 1
    return [dict(KV.findall(x)) for x in lines[start:] if x.startswith("server=")]


def latest_dated(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [dict(KV.findall(x)) for x in path.read_text().splitlines() if x.startswith("server=")]
    dates = [r["date"] for r in rows if "date" in r]
    if not dates:
        return rows
    last = max(dates)
    return [r for r in rows if r.get("date") == last]


def med(rows: list[dict], tag: str, key: str) -> tuple[float | None, str]:
    vals = [num(r.get(key)) for r in rows if r.get("tag") == tag]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, "-"
    m = statistics.median(vals)
    text = f"{m:,.0f}" if m >= 100 else f"{m:.2f}" if m < 10 else f"{m:.1f}"
    if len(vals) > 1:
        lo, hi = min(vals), max(vals)
        text += f" [{lo:,.0f}..{hi:,.0f}]" if m >= 100 else f" [{lo:.1f}..{hi:.1f}]"
    return m, text


def main() -> None:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "results"
    ej, pr, rx = (latest_section(d / f"{s}.txt") for s in ("ejabberd", "prosody", "raftxmpp"))
    rw, fo, jo, xn = (latest_dated(d / f"{s}.txt") for s in ("raft_writes", "failover", "join", "cross_node"))
    print("| figure | ejabberd 23.01 | Prosody 0.12.3 | raftxmpp | target |")
    print("|---|---|---|---|---|")
    single = [("logins/s, N=2000, 100 at once", "login2000_fresh", "logins_per_s", "≥ 500"),
              ("login latency p50 / p99 ms (N=2000)", "login2000_fresh", "p50_ms|p99_ms", ""),
              ("messages/s, 50 pairs × window 10", "msg_p50_w10_fresh", "msgs_per_s", "≥ 45,000"),
              ("  one-way latency p50 / p99 ms", "msg_p50_w10_fresh", "p50_ms|p99_ms", ""),
              ("messages/s, 500 pairs × window 1", "msg_p500_w1_fresh", "msgs_per_s", "≥ 13,000"),
              ("  one-way latency p50 / p99 ms", "msg_p500_w1_fresh", "p50_ms|p99_ms", ""),
              ("KiB per idle connection (2000)", "idle2000_fresh", "kb_per_conn", "≤ 20")]
    for label, tag, key, target in single:
        cells = []
        for rows in (ej, pr, rx):
            if "|" in key:
                a, b = key.split("|")
                cells.append(f"{med(rows, tag, a)[1].split(' ')[0]} / {med(rows, tag, b)[1].split(' ')[0]}")
            else:
                cells.append(med(rows, tag, key)[1])
        print(f"| {label} | {' | '.join(cells)} | {target} |")
    for tag, label in (("p50_w10", "50 pairs × window 10"), ("p500_w1", "500 pairs × window 1")):
        s, _ = med(xn, f"same_node_{tag}", "msgs_per_s")
        x, _ = med(xn, f"cross_node_{tag}", "msgs_per_s")
        ratio = f"{x / s:.2f} ({x:,.0f} / {s:,.0f} msg/s)" if s and x is not None else "-"
        print(f"| cross-node / same-node, {label} | — | — | {ratio} | ≥ 0.7 |")
    raw = max((num(r.get("writes_per_s")) or 0 for r in rw if r.get("tag", "").startswith("raw_")),
              default=0)
    for r in rw:
        if r.get("tag", "").startswith("raft_"):
            w = num(r.get("writes_per_s")) or 0
            ratio = f"{w / raw:.2f} ({w:,.0f} / {raw:,.0f} w/s)" if raw else "-"
            print(f"| durable writes/s vs raw pysyncobj: {r['tag'][5:]} | — | — | {ratio} | ≥ 0.7 |")
    summ = [r for r in fo if r.get("tag") == "failover_summary"]
    if summ:
        s = summ[-1]
        print(f"| failover after leader kill, p50 / max ({s['kills']} kills) | — | — | "
              f"{s['p50_s']} s / {s['max_s']} s | ≤ 0.5 s / ≤ 1.5 s |")
    for r in jo:
        if r.get("tag") == "join":
            print(f"| node catch-up from empty data dir, {r['accounts']} accounts | — | — | "
                  f"{r['caught_up_s']} s | — |")
        if r.get("tag") == "accounts":
            print(f"| RSS per 10,000 accounts | — | — | {int(r['rss_kb_per_10k_accounts']) / 1024:.1f} MiB | — |")
        if r.get("tag") == "snapshot":
            print(f"| raft.dump per 10,000 accounts | — | — | "
                  f"{int(r['dump_bytes_per_10k_accounts']) / 1e6:.2f} MB | — |")


if __name__ == "__main__":
    main()
