"""The timeline of one chaos run as a picture: faults as bands, operations per second by
outcome, failover after each leader fault, and the windows when nothing committed.

    python -m chaos.plot ARTIFACTS_DIR [--out chaos/figure-timeline.png]
    python -m chaos.plot chaos/figure-timeline.json      # redraw from the kept summary

From a run's artifacts (history.jsonl, summary.json) it writes the PNG and, beside it, a
JSON of what was drawn (a few KB: per-second counts, fault intervals, failovers,
unavailability windows), so chaos/RESULTS.md's picture can be redrawn without the
run's megabytes of history. Needs matplotlib (`pip install 'raftxmpp[plots]'`);
`timeline()` does not.

The figures follow chaos.checker's definitions: failover is the time from a leader
fault to the first probe (a Raft barrier) that commits through a node not targeted;
an unavailability window is a gap of more than 1 s between committed probes.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from chaos.checker import percentile
from chaos.faults import FAULTS, OPT_IN

LEADER_FAULTS = ("kill_leader", "isolate_leader", "pause_leader")
UNAVAILABLE_AFTER = 1.0
OUTCOMES = (("ok", "#59a14f"), ("fail", "#f28e2b"), ("unknown", "#e15759"))
# matplotlib's tab10 and three of tab20's light shades: one colour per fault kind.
FAULT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a")


def timeline(history_path: Path, summary_path: Path | None = None) -> dict:
    """What the picture shows, computed from a run's history.jsonl."""
    completions: dict[str, Counter] = {outcome: Counter() for outcome, _ in OUTCOMES}
    invoked, probes_ok, faults, open_faults = {}, [], [], {}
    with open(history_path) as lines:
        for line in lines:
            event = json.loads(line)
            kind = event["ev"]
            if kind == "invoke":
                invoked[event["op"]] = (event["t"], event["node"])
            elif kind in completions:
                if event["kind"] == "probe":
                    if kind == "ok" and event["op"] in invoked:
                        probes_ok.append((*invoked[event["op"]], event["t"]))
                else:
                    completions[kind][int(event["t"])] += 1
            elif kind == "fault":
                fault = {"kind": event["fault"], "targets": event["targets"], "start": event["t"],
                         "heal": None, "healthy": None}
                faults.append(fault)
                open_faults[event["fault"]] = fault
            elif kind in ("heal", "healthy") and event["fault"] in open_faults:
                open_faults[event["fault"]][kind] = event.get("t")
    end = max([0.0, *(t for _, _, t in probes_ok),
               *(s for c in completions.values() for s in c)]) + 1
    seconds = int(math.ceil(end))
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.exists() else {}
    return {
        "seed": summary.get("seed"), "passed": summary.get("passed"),
        "nodes": summary.get("nodes"), "minutes": summary.get("minutes"),
        "seconds": seconds,
        "ops_per_second": {k: [c.get(s, 0) for s in range(seconds)] for k, c in completions.items()},
        "faults": faults,
        "failovers": _failovers(faults, probes_ok),
        "unavailable": _gaps(sorted(t for _, _, t in probes_ok)),
    }


def _failovers(faults: list[dict], probes: list[tuple[float, str, float]]) -> list[dict]:
    out = []
    for fault in faults:
        if fault["kind"] not in LEADER_FAULTS:
            continue
        after = [t1 for t0, node, t1 in probes
                 if t0 >= fault["start"] and node not in fault["targets"]]
        if after:
            out.append({"start": fault["start"], "seconds": round(min(after) - fault["start"], 3),
                        "kind": fault["kind"]})
    return out


def _gaps(times: list[float]) -> list[list[float]]:
    """[start, length] of every gap longer than UNAVAILABLE_AFTER between committed probes."""
    return [[round(a, 2), round(b - a, 2)] for a, b in zip(times, times[1:], strict=False)
            if b - a > UNAVAILABLE_AFTER]


def draw(data: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, (ops, avail) = plt.subplots(2, 1, figsize=(15, 6.5), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1.3]})
    kinds = sorted({f["kind"] for f in data["faults"]})
    order = [*FAULTS, *OPT_IN]  # the same colour for a fault kind in every run's picture
    colour = {k: FAULT_COLOURS[(order.index(k) if k in order else len(order))
                              % len(FAULT_COLOURS)]
              for k in kinds}
    for fault in data["faults"]:
        heal = fault["heal"] if fault["heal"] is not None else fault["start"]
        for ax in (ops, avail):
            ax.axvspan(fault["start"], heal, color=colour[fault["kind"]], alpha=0.25, lw=0)
            if fault["healthy"] is not None:  # healed, not yet healthy: lighter
                ax.axvspan(heal, fault["healthy"], color=colour[fault["kind"]], alpha=0.08, lw=0)
    xs = range(data["seconds"])
    bottom = [0] * data["seconds"]
    for outcome, shade in OUTCOMES:
        counts = data["ops_per_second"][outcome]
        ops.bar(xs, counts, bottom=bottom, width=1.0, color=shade, align="edge", label=outcome)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ops.set_ylabel("operations completed / s", fontsize=9)
    legend = [Patch(color=shade, label=f"ops {o}") for o, shade in OUTCOMES]
    legend += [Patch(color=colour[k], alpha=0.5, label=k) for k in kinds]
    ops.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    for fault in data["faults"]:  # which fault each band is, without the legend
        ops.text(fault["start"], 0.99, fault["kind"].replace("_", " "), fontsize=6, rotation=90,
                 va="top", ha="left", color="#333333", transform=ops.get_xaxis_transform())
    for start, length in data["unavailable"]:
        avail.axvspan(start, start + length, ymin=0.0, ymax=0.45, color="#e15759")
    for i, fo in enumerate(data["failovers"]):
        y = 0.62 + 0.12 * (i % 3)
        avail.plot([fo["start"], fo["start"] + fo["seconds"]], [y, y], color="black", lw=2)
        avail.annotate(f"{fo['seconds']:.2f}s", (fo["start"] + fo["seconds"], y), fontsize=6,
                       xytext=(2, -2), textcoords="offset points")
    avail.set_ylim(0, 1)
    avail.set_yticks([0.22, 0.74], ["no commit\n> 1 s", "failover"], fontsize=8)
    avail.set_xlabel("seconds since the run started", fontsize=9)
    unavailable = sum(length for _, length in data["unavailable"])
    verdict = {True: "PASS", False: "FAIL"}.get(data.get("passed"), "?")
    fig.suptitle(f"chaos run: seed {data.get('seed')}, {data.get('nodes')} nodes, "
                 f"{len(data['faults'])} faults, {verdict}; failover p50 "
                 f"{_median([f['seconds'] for f in data['failovers']])} s over "
                 f"{len(data['failovers'])} leader faults; {len(data['unavailable'])} windows "
                 f"without commits, {unavailable:.1f} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def _median(values: list[float]) -> str:
    p50 = percentile(values, 50)  # the checker's own, so the title matches its report
    return "-" if p50 is None else f"{p50:.2f}"


def draw_run(artifacts: Path) -> str:
    """timeline.png (and .json) beside a finished run's summary; what happened, in a line.

    The runner calls this last: a picture that cannot be drawn (no matplotlib, a history
    cut short) is reported, never a reason for the run to fail."""
    out = artifacts / "timeline.png"
    if not (artifacts / "history.jsonl").exists():
        return f"no {out.name}: the run wrote no history"
    try:
        data = timeline(artifacts / "history.jsonl", artifacts / "summary.json")
        out.with_suffix(".json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
        draw(data, out)
    except ImportError:
        return f"no {out.name}: matplotlib is missing (pip install 'raftxmpp[plots]')"
    except (OSError, ValueError, KeyError) as exc:
        return f"no {out.name}: {exc!r}"
    return f"timeline picture in {out}"


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(prog="python -m chaos.plot", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run's artifacts directory, or a timeline JSON")
    parser.add_argument("--out", type=Path, default=here / "figure-timeline.png")
    args = parser.parse_args(argv)
    if args.source.is_dir():
        data = timeline(args.source / "history.jsonl", args.source / "summary.json")
        kept = args.out.with_suffix(".json")
        kept.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(f"wrote {kept}")
    else:
        data = json.loads(args.source.read_text())
    print(f"wrote {draw(data, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
