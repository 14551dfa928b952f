#!/usr/bin/env python3
"""report.py: the figures of issue 9 from the latest sitting in bench/results/, side by side.

usage: python3 bench/report.py [RESULTS_DIR]
       python3 bench/report.py --issue22 [RESULTS_DIR]   (issue 22's table: the latest bench/sitting22.sh
       sitting, and the cross_node.sh / raft_writes.py / failover_msgs.py runs since it began)

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


def _sections(path: Path) -> list[list[dict]]:
    """Every '# ...' sitting of a file (lines up to the next header), oldest first."""
    out: list[list[dict]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            if " done " not in line:
                out.append([])
        elif line.startswith("server=") and out:
            out[-1].append(dict(KV.findall(line)))
    return out


def _dated(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [dict(KV.findall(x)) for x in path.read_text().splitlines() if x.startswith("server=")]


def per_cpu(rows: list[dict], server: str, tag: str) -> float | None:
    vals = [num(r["msgs_per_s"]) / (num(r["server_cpu"]) / 100) for r in rows
            if r.get("server") == server and r.get("tag") == tag
            and num(r.get("msgs_per_s")) and num(r.get("server_cpu"))]
    return statistics.median(vals) if vals else None


def issue22(d: Path) -> None:
    sittings = [s for s in _sections(d / "sitting22.txt") if s]
    rows = sittings[-1] if sittings else []
    by = {s: [r for r in rows if r.get("server") == s] for s in ("ejabberd", "prosody", "raftxmpp")}
    print("| figure | ejabberd 23.01 | Prosody 0.12.3 | raftxmpp | raftxmpp / ejabberd | goal |")
    print("|---|---|---|---|---|---|")
    figures = [("messages/s, 50 × 10, SM + archive on", "msg_sm_p50_w10", "msgs_per_s", "≥ 1.8 ×"),
               ("messages/s, 500 × 1 (archive on)", "msg_p500_w1", "msgs_per_s", "≥ 1.0 ×"),
               ("logins/s, 2000, 100 at once, TLS + SCRAM-SHA-256", "login_tls", "logins_per_s", "≥ 2 ×"),
               ("KiB per idle TLS connection, after login + roster", "idle_tls", "kb_per_conn", "≤ 20"),
               ("messages/s, 50 × 10, archive off (raftxmpp only)", "msg_p50_w10_noarch", "msgs_per_s", ""),
               ("messages/s, 500 × 1, archive off (raftxmpp only)", "msg_p500_w1_noarch", "msgs_per_s", "")]
    for label, tag, key, goal in figures:
        cells = [med(by[s], tag, key)[1] for s in ("ejabberd", "prosody", "raftxmpp")]
        e, x = med(by["ejabberd"], tag, key)[0], med(by["raftxmpp"], tag, key)[0]
        ratio = f"{x / e:.2f}" if e and x is not None and key != "kb_per_conn" else "—"
        paired = sorted(num(a[key]) / num(b[key]) for a in by["raftxmpp"] for b in by["ejabberd"]
                        if a.get("tag") == tag == b.get("tag") and a.get("rep") == b.get("rep")
                        and num(a.get(key)) and num(b.get(key)))
        if paired and key != "kb_per_conn":  # each repetition's pair ran back to back
            ratio += f" (paired by rep: median {statistics.median(paired):.2f} of " \
                     f"{', '.join(f'{r:.2f}' for r in paired)})"
        print(f"| {label} | {' | '.join(cells)} | {ratio} | {goal} |")
    for tag, label in (("msg_sm_p50_w10", "50 × 10, SM + archive"), ("msg_p500_w1", "500 × 1")):
        vals = {s: per_cpu(rows, s, tag) for s in ("ejabberd", "prosody", "raftxmpp")}
        cells = [f"{v:,.0f}" if v else "-" for v in vals.values()]
        ratio = f"{vals['raftxmpp'] / vals['ejabberd']:.2f}" if vals["raftxmpp"] and vals["ejabberd"] else "—"
        print(f"| messages per server CPU-second, {label} | {' | '.join(cells)} | {ratio} | |")
    loads = [num(r.get("load1")) for r in rows if num(r.get("load1")) is not None]
    if loads:
        print(f"\nload1 before each test: {min(loads):.1f}–{max(loads):.1f} "
              f"(median {statistics.median(loads):.1f}); {len(rows)} runs")
    since = min((r["date"] for r in rows if "date" in r), default="")
    xn = [r for r in _dated(d / "cross_node.txt")
          if r.get("date", "") >= since and r.get("pairs_ok") != "0"]  # failed runs left out
    for tag, label in (("p50_w10", "50 × 10"), ("p500_w1", "500 × 1")):
        ratios = [num(r.get("ratio")) for r in xn if r.get("tag") == f"cross_node_{tag}"]
        ratios = [r for r in ratios if r]  # 0.00: a run whose same-node half failed
        s, x = med(xn, f"same_node_{tag}", "msgs_per_s"), med(xn, f"cross_node_{tag}", "msgs_per_s")
        if ratios:
            print(f"| cross-node / same-node, {label} | median of {len(ratios)} paired ratios "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]; "
                  f"cross {x[1]}, same {s[1]} msg/s | ≥ 0.9 |")
    rw = _dated(d / "raft_writes.txt")
    dates = sorted({r["date"] for r in rw if r.get("date", "") >= since})
    for tag in ("raft_roster_leader", "raft_offline_leader", "raft_roster_follower"):
        ratios, pairs = [], []
        for date in dates:
            run = {r["tag"]: num(r.get("writes_per_s")) for r in rw if r.get("date") == date}
            if run.get(tag) and run.get("raw_leader_w200"):
                ratios.append(run[tag] / run["raw_leader_w200"])
                pairs.append(f"{run[tag]:,.0f}/{run['raw_leader_w200']:,.0f}")
        if ratios:
            print(f"| durable writes/s vs raw pysyncobj (window 200), {tag[5:]} | median "
                  f"{statistics.median(ratios):.2f} of {', '.join(f'{r:.2f}' for r in ratios)} "
                  f"({'; '.join(pairs)} w/s) | ≥ 0.7 |")
    fm = latest_dated(d / "failover_msgs.txt")
    for mode in ("kill", "none"):
        m = [r for r in fm if r.get("tag", "").endswith("_" + mode)]
        if m:
            p99 = [num(r["p99_ms"]) for r in m]
            mx = [num(r["max_ms"]) for r in m]
            print(f"| message p99 / max ms, 50 × 1 across nodes, {'leader killed' if mode == 'kill' else 'no kill'}"
                  f" | p99 median {statistics.median(p99):,.0f} [{min(p99):,.0f}..{max(p99):,.0f}], "
                  f"max {', '.join(f'{v:,.0f}' for v in mx)} | {'≤ 1,000' if mode == 'kill' else ''} |")


def main() -> None:
    if sys.argv[1:2] == ["--issue22"]:
        issue22(Path(sys.argv[2]) if len(sys.argv) > 2 else BENCH / "results")
        return
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
