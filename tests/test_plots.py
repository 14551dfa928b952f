"""The data behind the pictures of bench/RESULTS.md and chaos/RESULTS.md: what bench/plot.py
reads from bench/results/ and what chaos/plot.py computes from a run's history. Drawing
needs matplotlib, which the suite does not install; these parts do not."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from chaos.history import Fault, History
from chaos.plot import timeline

ROOT = Path(__file__).resolve().parent.parent
PLOT = runpy.run_path(str(ROOT / "bench" / "plot.py"))


def test_every_sitting_of_the_three_servers_is_read_from_the_results():
    sittings = PLOT["single_node"](ROOT / "bench" / "results")
    assert set(sittings) == {"ejabberd", "prosody", "raftxmpp"}
    for server, by_sitting in sittings.items():
        assert len(by_sitting) >= 3, server  # three sittings on 2026-11-22
        for rows in by_sitting.values():
            assert {r["tag"] for r in rows} >= {"login2000_fresh", "msg_p50_w10_fresh"}


def test_history_has_each_scenario_for_each_server_and_the_cluster_figures():
    figures = PLOT["history"](ROOT / "bench" / "results")
    for scenario in PLOT["SCENARIOS"]:
        assert set(figures[scenario.title]) == {"ejabberd 23.01", "Prosody 0.12.3", "raftxmpp"}
    writes = figures["durable writes/s (3 nodes, 200 clients)"]
    assert writes["raw pysyncobj"] and writes["roster, leader"]
    durable = figures["durable writes/s: fsync layer vs raw pysyncobj (window 200)"]
    assert all(durable.values()) and durable  # its stamps have no seconds (10:48Z)
    web = figures["messages/s, 50 pairs × 10: c2s (TCP) and WebSocket"]
    assert web["WebSocket"] and web["c2s over TCP"]  # lines without tag=, matched by fields
    points = figures["messages/s, 50 pairs × window 10"]["raftxmpp"]
    assert [s for s, _ in points] == sorted(s for s, _ in points)


def test_a_sitting_is_a_header_or_a_date_and_its_median_spans_the_reps(tmp_path):
    results = tmp_path / "prosody.txt"
    results.write_text(
        "# prosody 2026-01-01T10:00:00Z load1=1 reps=2\n"
        "server=prosody rep=1 tag=t RESULT x=10 other_cpu=5%\n"
        "server=prosody rep=2 tag=t RESULT x=30\n"
        "# prosody done 2026-01-01T10:05:00Z load1=1\n"
        "server=prosody rep=1 tag=t date=2026-01-02T09:00:00Z RESULT x=7\n")
    rows = PLOT["read_results"](results)
    sittings = PLOT["by_sitting"](rows)
    assert list(sittings) == ["2026-01-01T10:00:00Z", "2026-01-02T09:00:00Z"]
    assert PLOT["spread"](sittings["2026-01-01T10:00:00Z"], "t", "x") == (20, 10, 30)


def _run(tmp_path: Path) -> Path:
    """A small history written by chaos.history itself on a clock the test sets."""
    history = History(tmp_path / "history.jsonl")
    clock = [0.0]
    history.now = lambda: clock[0]

    def op(kind: str, node: str, t0: float, t1: float, status: str) -> None:
        clock[0] = t0
        record = history.invoke(kind, "k", node)
        clock[0] = t1
        history.complete(record, status)

    for t in (0.2, 0.5, 0.9, 1.1, 4.4):  # probes through node2; nothing between 1.1 and 4.4
        op("probe", "node2", t - 0.1, t, "ok")
    op("login", "node1", 0.1, 0.3, "ok")
    op("login", "node1", 0.4, 0.6, "fail")
    op("register", "node1", 1.2, 3.5, "unknown")
    fault = Fault("kill_leader", ["node1"], t_start=1.0)
    history.fault(fault)
    history.fault_event(fault, "heal", t=2.0)
    history.fault_event(fault, "healthy", t=3.0)
    history.close()
    return tmp_path / "history.jsonl"


def test_the_timeline_counts_ops_per_second_and_finds_failover_and_gaps(tmp_path):
    data = timeline(_run(tmp_path))
    assert data["ops_per_second"]["ok"][0] == 1 and data["ops_per_second"]["fail"][0] == 1
    assert data["ops_per_second"]["unknown"][3] == 1
    assert data["faults"] == [{"kind": "kill_leader", "targets": ["node1"], "start": 1.0,
                               "heal": 2.0, "healthy": 3.0}]
    # The first probe invoked after the fault through another node ends at 1.1 s.
    assert data["failovers"] == [{"start": 1.0, "seconds": 0.1, "kind": "kill_leader"}]
    assert data["unavailable"] == [[1.1, 3.3]]
    json.dumps(data)  # what chaos/figure-timeline.json keeps


def test_the_kept_timeline_of_the_latest_picture_is_a_run_that_passed():
    data = json.loads((ROOT / "chaos" / "figure-timeline.json").read_text())
    assert data["passed"] is True and data["faults"] and data["failovers"]
    assert len(data["ops_per_second"]["ok"]) == data["seconds"]


def test_a_run_whose_history_is_missing_gets_a_reason_instead_of_a_picture(tmp_path):
    from chaos.plot import draw_run

    assert draw_run(tmp_path) == "no timeline.png: the run wrote no history"
    assert not (tmp_path / "timeline.png").exists()
