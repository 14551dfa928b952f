#!/usr/bin/env python3
"""plot.py: the pictures of bench/RESULTS.md, drawn from the RESULT lines in bench/results/.

usage: python3 bench/plot.py [RESULTS_DIR] [--out DIR]      (needs matplotlib:
       pip install 'raftxmpp[plots]', or Debian's python3-matplotlib)

Writes three PNGs beside RESULTS.md (or into DIR):
- figure-scenarios.png: raftxmpp against ejabberd and Prosody per scenario, from the
  latest sitting of each (median of its reps, whiskers min..max, the issue's target dashed);
- figure-history.png: each figure's median at every sitting in the results, per server;
- figure-cluster.png: the cluster figures of the latest sitting (failover per kill,
  durable writes against raw pysyncobj, cross-node against same-node messages);
- figure-issue22.png: the latest bench/sitting22.sh sitting (issue 22's table: archives
  and stream management on, logins and idle connections over TLS with SCRAM-SHA-256),
  each goal drawn relative to ejabberd's median of the same sitting, and the messages per
  second of server CPU, which a loaded machine distorts least.

A sitting is what one script run appended: the lines under one '# <server> <timestamp>'
header (anchors.sh, single_node.sh), or the lines sharing one date= (the other scripts).
Parsing needs no matplotlib (tests/test_bench_smoke.py reads the real results with it).
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
KV = re.compile(r"(\w+)=([^\s{]+)")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?Z")  # seconds are optional
SERVERS = ("ejabberd", "prosody", "raftxmpp")
LABELS = {"ejabberd": "ejabberd 23.01", "prosody": "Prosody 0.12.3", "raftxmpp": "raftxmpp"}
COLOURS = {"ejabberd": "#4e79a7", "prosody": "#f28e2b", "raftxmpp": "#59a14f"}


@dataclass(frozen=True)
class Scenario:
    title: str
    tag: str
    key: str
    target: float | None
    better: str  # "higher" or "lower"


# The single-node figures every sitting measures on all three servers (issue 9's table).
SCENARIOS = (
    Scenario("logins/s, N=2000, 100 at once", "login2000_fresh", "logins_per_s", 500, "higher"),
    Scenario("messages/s, 50 pairs × window 10", "msg_p50_w10_fresh", "msgs_per_s", 45000,
             "higher"),
    Scenario("messages/s, 500 pairs × window 1", "msg_p500_w1_fresh", "msgs_per_s", 13000,
             "higher"),
    Scenario("KiB per idle connection (2000)", "idle2000_fresh", "kb_per_conn", 20, "lower"),
    Scenario("message latency p99 ms, 50 × 10", "msg_p50_w10_fresh", "p99_ms", None, "lower"),
    Scenario("login latency p99 ms, N=2000", "login2000_fresh", "p99_ms", None, "lower"),
)


def number(text: str | None) -> float | None:
    try:
        return float(text.rstrip("%")) if text is not None else None
    except ValueError:
        return None


def read_results(path: Path) -> list[dict]:
    """Every RESULT line of a file as a dict, with `sitting` = the run it came from."""
    rows, header = [], None
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            found = STAMP.search(line)
            # '# <server> done <stamp>' ends a sitting; later lines carry their own date=.
            header = None if " done " in line else found.group() if found else header
            continue
        if "RESULT" not in line:
            continue
        row = dict(KV.findall(line))
        row["sitting"] = header or row.get("date", "?")
        rows.append(row)
    return rows


def spread(rows: list[dict], tag: str | dict[str, str], key: str
           ) -> tuple[float, float, float] | None:
    """(median, min, max) of `key` over the rows with `tag` (or with every field of a dict,
    for scripts whose lines have no tag=)."""
    fields = tag if isinstance(tag, dict) else {"tag": tag}
    values = [v for r in rows if all(r.get(f) == want for f, want in fields.items())
              and (v := number(r.get(key))) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def by_sitting(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by the UTC timestamp of their sitting (undated rows are left out)."""
    sittings: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if STAMP.fullmatch(row["sitting"]):
            sittings[row["sitting"]].append(row)
    return dict(sorted(sittings.items()))


def single_node(results: Path) -> dict[str, dict[str, list[dict]]]:
    """{server: {sitting: rows}} for the three servers of the single-node figures."""
    return {server: by_sitting(read_results(results / f"{server}.txt")) for server in SERVERS}


def history(results: Path) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """{figure: {series: [(sitting, median)]}}: every figure at every sitting."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for server, sittings in single_node(results).items():
        for sitting, rows in sittings.items():
            for scenario in SCENARIOS:
                if (found := spread(rows, scenario.tag, scenario.key)) is not None:
                    out[scenario.title][LABELS[server]].append((sitting, found[0]))
    cluster = (("raft_writes", "durable writes/s (3 nodes, 200 clients)",
                (("raft_roster_leader", "writes_per_s", "roster, leader"),
                 ("raft_roster_follower", "writes_per_s", "roster, follower"),
                 ("raw_leader_w200", "writes_per_s", "raw pysyncobj"))),
               ("failover", "failover after kill -9 of the leader, s",
                (("failover", "failover_s", "median of kills"),)),
               ("failover_msgs", "message p99 ms around a leader kill (50 × 1, across nodes)",
                (("msgs_p50_w1_kill", "p99_ms", "leader killed"),
                 ("msgs_p50_w1_none", "p99_ms", "no kill"))),
               ("sitting22", "messages/s, 50 × 10, SM + archive (sitting22)",
                tuple(({"tag": "msg_sm_p50_w10", "server": s}, "msgs_per_s", LABELS[s])
                      for s in SERVERS)),
               ("sitting22", "messages/s, 500 × 1, archive on (sitting22)",
                tuple(({"tag": "msg_p500_w1", "server": s}, "msgs_per_s", LABELS[s])
                      for s in SERVERS)),
               ("sitting22", "logins/s over TLS, SCRAM-SHA-256 (sitting22)",
                tuple(({"tag": "login_tls", "server": s}, "logins_per_s", LABELS[s])
                      for s in ("ejabberd", "raftxmpp"))),
               ("sitting22", "KiB per idle TLS connection (sitting22)",
                tuple(({"tag": "idle_tls", "server": s}, "kb_per_conn", LABELS[s])
                      for s in ("ejabberd", "raftxmpp"))),
               ("cross_node", "messages/s across nodes, 50 × 10",
                (("cross_node_p50_w10", "msgs_per_s", "cross-node"),
                 ("same_node_p50_w10", "msgs_per_s", "same node"))),
               ("s2s", "s2s messages/s, 20 pairs × window 10",
                (("direct_p20_w10", "s2s_msgs_per_s", "raftxmpp direct"),
                 ("via_link_p20_w10", "s2s_msgs_per_s", "raftxmpp via node link"),
                 ("p2p_p20_w10", "s2s_msgs_per_s", "Prosody ↔ Prosody"))),
               ("pubsub", "pubsub notifications/s (100 subscribers)",
                (("pubsub_throughput", "notifications_per_s", "raftxmpp, 3 nodes"),)),
               ("raft_durable", "durable writes/s: fsync layer vs raw pysyncobj (window 200)",
                (({"scenario": "durable_raftxmpp_layer", "window": "200"}, "writes_per_s",
                  "raftxmpp's durable layer"),
                 ({"scenario": "raw_pysyncobj", "window": "200"}, "writes_per_s",
                  "raw pysyncobj, no fsync"))),
               ("muc", "room messages/s, 10 rooms × 50 occupants, 3 nodes",
                (({"tag": "muc_throughput", "rooms": "10", "occupants": "50"},
                  "room_msgs_per_s", "messages into rooms"),
                 ({"tag": "muc_throughput", "rooms": "10", "occupants": "50"},
                  "deliveries_per_s", "deliveries to occupants"))),
               ("mam", "messages/s, 50 pairs × 10, archive off and on",
                (({"archive": "off", "pairs": "50", "window": "10"}, "rate", "archive off"),
                 ({"archive": "on", "pairs": "50", "window": "10"}, "rate", "archive on"))),
               ("mam", "archive appends/s (store of 100,000 rows)",
                (({"kind": "store", "rows": "100000"}, "append_rows_per_s", "rows appended/s"),)),
               ("web", "messages/s, 50 pairs × 10: c2s (TCP) and WebSocket",
                (({"transport": "tcp", "pairs": "50", "window": "10"}, "rate", "c2s over TCP"),
                 ({"transport": "ws", "pairs": "50", "window": "10"}, "rate", "WebSocket"))),
               ("web", "HTTP upload, 16 MiB files, 3 nodes, MB/s",
                (({"setup": "three_nodes", "figure": "put_seq", "size_mib": "16"}, "mb_s",
                  "PUT, one at a time"),
                 ({"setup": "three_nodes", "figure": "get_node2", "size_mib": "16"}, "mb_s",
                  "GET from another node"))))
    for name, title, series in cluster:
        for sitting, rows in by_sitting(read_results(results / f"{name}.txt")).items():
            for tree in sorted({r.get("tree") for r in rows}, key=str):
                same_tree = [r for r in rows if r.get("tree") == tree]
                for tag, key, label in series:
                    if (found := spread(same_tree, tag, key)) is not None:
                        out[title][label + _tree_label(tree)].append((sitting, found[0]))
    return {title: dict(series) for title, series in out.items()}


# -- drawing (matplotlib imported here only) --------------------------------------------------------


# Issue 22's single-server figures (bench/sitting22.sh): (title, tag, key, goal, what the goal is).
ISSUE22 = (
    ("messages/s, 50 × 10, SM + archive on", "msg_sm_p50_w10", "msgs_per_s", 1.8, "× ejabberd"),
    ("messages/s, 500 × 1, archive on", "msg_p500_w1", "msgs_per_s", 1.0, "× ejabberd"),
    ("logins/s, 2000, 100 at once, TLS + SCRAM-SHA-256", "login_tls", "logins_per_s", 2.0,
     "× ejabberd"),
    ("KiB per idle TLS connection (login + roster)", "idle_tls", "kb_per_conn", 20.0, "KiB"),
    ("messages per server CPU-second, 50 × 10, SM + archive", "msg_sm_p50_w10", "per_cpu_s",
     1.8, "× ejabberd"),
    ("messages per server CPU-second, 500 × 1", "msg_p500_w1", "per_cpu_s", 1.0, "× ejabberd"),
)


def issue22_rows(results: Path) -> list[dict]:
    """The latest sitting of sitting22.txt, with per_cpu_s = msgs_per_s / server CPU share."""
    sittings = by_sitting(read_results(results / "sitting22.txt"))
    if not sittings:
        return []
    rows = sittings[max(sittings)]
    for row in rows:
        rate, cpu = number(row.get("msgs_per_s")), number(row.get("server_cpu"))
        if rate is not None and cpu:
            row["per_cpu_s"] = str(rate / (cpu / 100))
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def draw_scenarios(results: Path, out: Path) -> Path:
    plt = _pyplot()
    data = single_node(results)
    latest = {server: sittings[max(sittings)] if sittings else [] for server, sittings in data.items()}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, scenario in zip(axes.flat, SCENARIOS, strict=True):
        for i, server in enumerate(SERVERS):
            found = spread(latest[server], scenario.tag, scenario.key)
            if found is None:
                continue
            median, low, high = found
            ax.bar(i, median, color=COLOURS[server], yerr=[[median - low], [high - median]],
                   capsize=4)
            ax.annotate(f"{median:,.0f}" if median >= 100 else f"{median:.1f}", (i, median),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        if scenario.target is not None:
            ax.axhline(scenario.target, color="black", linestyle="--", linewidth=1)
            ax.annotate("target", (2.45, scenario.target), fontsize=7, va="bottom", ha="right")
        ax.set_xticks(range(3), [LABELS[s] for s in SERVERS], fontsize=8)
        ax.set_title(f"{scenario.title} ({scenario.better} is better)", fontsize=9)
    stamps = ", ".join(f"{LABELS[s]} {max(data[s])}" for s in SERVERS if data[s])
    fig.suptitle(f"One node per server, latest sitting, median of reps [min..max]\n{stamps}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "figure-scenarios.png")


def draw_history(results: Path, out: Path) -> Path:
    plt = _pyplot()
    from matplotlib import dates

    figures = history(results)
    columns = 3
    rows = (len(figures) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, figures.items(), strict=False):
        stamps = sorted({_when(s) for points in series.values() for s, _ in points})
        pad = max((stamps[-1] - stamps[0]) / 10, timedelta(minutes=10))
        ax.set_xlim(stamps[0] - pad, stamps[-1] + pad)  # one sitting still gets an axis
        locator = dates.AutoDateLocator(maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
        for label, points in series.items():
            xs = [_when(s) for s, _ in points]
            colour = next((COLOURS[k] for k, v in LABELS.items() if v == label), None)
            ax.plot(xs, [v for _, v in points], marker="o", label=label, color=colour)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(figures):]:
        ax.set_visible(False)
    fig.suptitle("Each figure at every sitting (median of its reps; x: the sitting's UTC start)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _save(fig, out / "figure-history.png")


def draw_cluster(results: Path, out: Path) -> Path:
    plt = _pyplot()
    fig, (kills, writes, cross) = plt.subplots(1, 3, figsize=(15, 4.2),
                                               gridspec_kw={"width_ratios": [1, 1.3, 1]})
    failover = _latest(read_results(results / "failover.txt"))
    times = [number(r.get("failover_s")) for r in failover if r.get("tag") == "failover"]
    kills.bar(range(1, len(times) + 1), times, color=COLOURS["raftxmpp"])
    kills.axhline(0.5, color="black", linestyle="--", linewidth=1, label="target p50 0.5 s")
    kills.axhline(1.5, color="grey", linestyle=":", linewidth=1, label="target max 1.5 s")
    kills.set_title(f"failover per leader kill -9 ({_short(failover[0]['sitting']) if failover else '-'})",
                    fontsize=9)
    kills.set_xlabel("kill", fontsize=8)
    kills.set_xticks(range(1, len(times) + 1))
    kills.set_ylabel("s to a new leader", fontsize=8)
    kills.legend(fontsize=7)
    raft = [r for r in _latest_day(read_results(results / "raft_writes.txt"))
            if number(r.get("writes_per_s")) is not None]
    keys = sorted({(r["tag"], r.get("tree")) for r in raft}, key=str)
    values = [spread([r for r in raft if r.get("tree") == tree], tag, "writes_per_s")[0]
              for tag, tree in keys]
    writes.barh(range(len(keys)), values, color=["#bab0ac" if t.startswith("raw_")
                                                 else COLOURS["raftxmpp"] for t, _ in keys])
    writes.set_yticks(range(len(keys)), [t.removeprefix("raft_") + "\n" + _tree_label(tree)
                                         for t, tree in keys], fontsize=6)
    day = raft[0]["sitting"][:10] if raft else "-"
    writes.set_title(f"durable writes/s, medians of {day}; grey: raw pysyncobj", fontsize=9)
    rows = _latest(read_results(results / "cross_node.txt"))
    shapes = ("p50_w10", "p500_w1")
    for offset, (kind, colour) in enumerate((("same_node", "#bab0ac"),
                                             ("cross_node", COLOURS["raftxmpp"]))):
        medians = [(spread(rows, f"{kind}_{s}", "msgs_per_s") or (0,))[0] for s in shapes]
        cross.bar([i + offset * 0.4 for i in range(2)], medians, width=0.4, color=colour,
                  label=kind.replace("_", " "))
    cross.set_xticks([0.2, 1.2], ["50 pairs × 10", "500 pairs × 1"], fontsize=8)
    cross.set_title("messages/s on 3 nodes: same node vs across nodes", fontsize=9)
    cross.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "figure-cluster.png")


def draw_issue22(results: Path, out: Path) -> Path | None:
    rows = issue22_rows(results)
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (title, tag, key, goal, unit) in zip(axes.flat, ISSUE22, strict=True):
        medians = {}
        for i, server in enumerate(SERVERS):
            found = spread([r for r in rows if r.get("server") == server], tag, key)
            if found is None:
                continue
            median, low, high = medians[server] = found
            ax.bar(i, median, color=COLOURS[server], yerr=[[median - low], [high - median]],
                   capsize=4)
            ax.annotate(f"{median:,.0f}" if median >= 100 else f"{median:.1f}", (i, median),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        line = goal if unit == "KiB" else goal * medians["ejabberd"][0] if "ejabberd" in medians else None
        if line is not None:
            ax.axhline(line, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"goal {goal:g} {unit}", (2.45, line), fontsize=7, va="bottom", ha="right")
        ax.set_xticks(range(3), [LABELS[s] for s in SERVERS], fontsize=8)
        ax.set_title(title, fontsize=9)
    loads = [number(r.get("load1")) for r in rows if number(r.get("load1")) is not None]
    fig.suptitle(f"Issue 22 sitting {rows[0]['sitting']}: fresh server per test, median of reps "
                 f"[min..max], servers alternated; load1 {min(loads):.1f}–{max(loads):.1f} on 2 cores",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "figure-issue22.png")


def _tree_label(tree: str | None) -> str:
    """' (name)' for rows that say which code they measured (tree=hash(name)), else ''."""
    if tree is None:
        return ""
    name = tree[tree.find("(") + 1:tree.rfind(")")] if "(" in tree else tree
    return f" ({name})"


def _latest_day(rows: list[dict]) -> list[dict]:
    """Every sitting of the last day: runs that alternate two trees belong together."""
    days = {r["sitting"][:10] for r in rows if STAMP.fullmatch(r["sitting"])}
    return [r for r in rows if r["sitting"].startswith(max(days))] if days else []


def _latest(rows: list[dict]) -> list[dict]:
    sittings = by_sitting(rows)
    return sittings[max(sittings)] if sittings else []


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ" if len(stamp) > 17 else "%Y-%m-%dT%H:%MZ")


def _short(stamp: str) -> str:
    return stamp.replace("T", " ")[:16] if STAMP.fullmatch(stamp) else stamp


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    fig.clf()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=BENCH / "results")
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args()
    for draw in (draw_scenarios, draw_history, draw_cluster, draw_issue22):
        if (path := draw(args.results, args.out)) is not None:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
