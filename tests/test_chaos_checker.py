"""The chaos checkers judged on seeded histories, without a cluster.

One hand-built history of a run where everything went right must pass every check;
each bad variant plants exactly one thing the suite promises never happens, and must
fail the check that looks for it (and the run). A checker that passes a bad history is
as bad as a server that produces one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import pytest

from chaos import linearizability as lin
from chaos.checker import Check, Report, scan_log
from chaos.history import Fault, History, Op

NODES = ("node1", "node2", "node3")


class Workload:
    """What the checkers read of chaos.workload.Workload."""

    def __init__(self) -> None:
        self.races: list[tuple[Op, Op]] = []
        self.sent: dict[str, Op] = {}
        self.received: list[tuple[str, str, float]] = []
        self.online_sent: dict[str, float] = {}
        self.online_received: dict[str, int] = {}
        self.online_latency: list[float] = []
        self.convergence: list[float] = []
        self.convergence_timeouts = 0


class Run:
    """A seeded run: history, workload records and the final read-back."""

    def __init__(self, tmp_path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.history = History(tmp_path / "history.jsonl")
        self.workload = Workload()
        self.final: dict = {
            "t_workload_start": 0.0, "t_workload_end": 60.0,
            "accounts": {n: [] for n in NODES}, "components": {n: [] for n in NODES},
            "race_logins": {}, "recovery_errors": [], "crashes": [],
            "convergence": {"equal": True, "seconds": 0.2, "applied": 99, "digest": "d"},
            "logs": {n: "2026-12-01 10:00:00 INFO raftxmpp.node: started\n" for n in NODES},
        }

    def op(self, kind: str, key: str, node: str, t0: float, t1: float, status: str,
           result=None, **args) -> Op:
        op = self.history.invoke(kind, key, node, **args)
        self.history.complete(op, status, result)
        op.t0, op.t1 = t0, t1
        return op

    def account(self, jid: str, password: str, node: str = "node1", t: float = 1.0) -> Op:
        op = self.op("register", f"account:{jid}", node, t, t + 0.5, "ok", password=password)
        for listing in self.final["accounts"].values():
            listing.append(jid)
        return op

    def report(self, budget: int = lin.DEFAULT_BUDGET) -> Report:
        self.history.close()
        report = Report(self.history, self.workload, self.final, budget=budget)
        report.run()
        return report


def good_run(tmp_path) -> Run:
    """Every kind of operation the workload does, each with a consistent outcome."""
    r = Run(tmp_path)
    # Accounts: a registration, logins, an acknowledged password change.
    r.account("a@x", "pa")
    r.op("login", "account:a@x", "node2", 2, 2.5, "ok", password="pa")
    r.op("passwd", "account:a@x", "node1", 3, 3.5, "ok", password="pb", old="pa")
    r.op("login", "account:a@x", "node3", 4, 4.5, "fail", "not-authorized", password="pa")
    r.op("login", "account:a@x", "node3", 4, 4.5, "ok", password="pb")
    # A refused password change whose password never works.
    r.op("passwd", "account:a@x", "node2", 5, 5.5, "fail", "not-acceptable", password="pz",
         old="pb")
    r.op("login", "account:a@x", "node1", 6, 6.5, "fail", "not-authorized", password="pz")
    # A race for one name: one winner, one <conflict/>.
    win = r.op("register", "account:race@x", "node1", 7, 7.5, "ok", password="rw")
    lose = r.op("register", "account:race@x", "node2", 7, 7.6, "fail", "conflict",
                password="rl")
    r.workload.races.append((win, lose))
    for listing in r.final["accounts"].values():
        listing.append("race@x")
    r.final["race_logins"]["race@x"] = {"rw"}
    # A roster item set, read back; a refused set whose name is never read.
    key = "roster:o@x:c@x"
    r.op("roster_set", key, "node1", 8, 8.5, "ok", name="n1")
    r.op("roster_read", key, "node2", 9, 9.5, "ok", "n1")
    r.op("roster_set", key, "node2", 10, 10.5, "fail", "not-acceptable", name="n2")
    r.op("roster_read", key, "node3", 11, 11.5, "ok", "n1")
    # Offline messages: acknowledged and delivered once; unknown and delivered (allowed).
    r.workload.sent["b1"] = r.op("offline_send", "inbox:i@x", "node1", 12, 12.5, "ok", body="b1")
    r.workload.sent["b2"] = r.op("offline_send", "inbox:i@x", "node2", 12, 20, "unknown",
                                 "timeout", body="b2")
    r.workload.sent["b3"] = r.op("offline_send", "inbox:i@x", "node2", 13, 13.2, "fail",
                                 "item-not-found", body="b3")
    r.workload.received += [("b1", "i@x", 14.0), ("b2", "i@x", 25.0)]
    # A component, listed everywhere.
    r.op("component_add", "component:c1.x", "node3", 15, 15.5, "ok")
    r.final["components"] = {n: ["c1.x"] for n in NODES}
    # node3 is isolated for 30–36 s: a write through it during the cut has no answer.
    fault = Fault("isolate_minority", ["node3"], 29.5, t_heal=36.1, t_healthy=37.0)
    fault.minority_windows.append((30.0, 36.0, ["node3"]))
    r.history.fault(fault)
    r.op("register", "account:cut@x", "node3", 31, 39, "unknown", "timeout", password="pc")
    r.op("roster_set", "roster:o@x:d@x", "node3", 32, 38, "unknown", "timeout", name="n9")
    # Barrier probes for the figures.
    for t in range(0, 60, 1):
        r.op("probe", "probe", "node1", t, t + 0.1, "ok")
    return r


def test_the_good_history_passes_every_check(tmp_path):
    report = good_run(tmp_path).report()
    failed = [(c.name, c.details) for c in report.checks if not c.passed]
    assert report.passed and not failed, failed
    assert len(report.checks) >= 12


# -- one planted fault per bad history -------------------------------------------------


def refused_registration_present_everywhere(r: Run) -> None:
    r.op("register", "account:ghost@x", "node1", 40, 40.5, "fail", "not-acceptable",
         password="pg")
    for listing in r.final["accounts"].values():
        listing.append("ghost@x")


def refused_registration_whose_password_logs_in(r: Run) -> None:
    r.op("register", "account:ghost@x", "node1", 40, 40.5, "fail", "not-acceptable",
         password="pg")
    r.op("login", "account:ghost@x", "node2", 45, 45.5, "ok", password="pg")


def refused_message_delivered_later(r: Run) -> None:
    r.workload.received.append(("b3", "i@x", 50.0))


def refused_password_change_applies_later(r: Run) -> None:
    r.op("login", "account:a@x", "node2", 50, 50.5, "ok", password="pz")


def refused_roster_set_read_later(r: Run) -> None:
    r.op("roster_read", "roster:o@x:c@x", "node1", 50, 50.5, "ok", "n2")


def minority_acknowledges_a_write(r: Run) -> None:
    r.op("roster_set", "roster:o@x:e@x", "node3", 33, 33.4, "ok", name="n7")


def minority_acknowledges_a_registration(r: Run) -> None:
    r.account("isolated@x", "pi", node="node3", t=34.0)


def critical_line_in_a_node_log(r: Run) -> None:
    r.final["logs"]["node2"] += ("2026-12-01 10:00:01 CRITICAL pysyncobj: truncating "
                                 "already-applied log entries\n")


def traceback_in_a_node_log(r: Run) -> None:
    r.final["logs"]["node1"] += ('Traceback (most recent call last):\n  File "x.py", '
                                 'line 1, in <module>\nValueError: boom\n')


def node_logs_not_collected(r: Run) -> None:
    del r.final["logs"]


def stale_read_after_a_write(r: Run) -> None:
    key = "roster:o@x:c@x"
    r.op("roster_set", key, "node1", 40, 40.5, "ok", name="n5")
    r.op("roster_read", key, "node2", 41, 41.5, "ok", "n1")


def acknowledged_offline_message_lost(r: Run) -> None:
    r.workload.sent["b9"] = r.op("offline_send", "inbox:i@x", "node1", 40, 40.5, "ok",
                                 body="b9")


def offline_message_delivered_twice(r: Run) -> None:
    r.workload.received.append(("b1", "i@x", 30.0))


def acknowledged_registration_missing_on_a_node(r: Run) -> None:
    r.final["accounts"]["node2"].remove("a@x")


def both_racers_acknowledged(r: Run) -> None:
    a = r.op("register", "account:race2@x", "node1", 40, 40.5, "ok", password="r1")
    b = r.op("register", "account:race2@x", "node2", 40, 40.6, "ok", password="r2")
    r.workload.races.append((a, b))
    for listing in r.final["accounts"].values():
        listing.append("race2@x")


def old_password_accepted_after_change(r: Run) -> None:
    r.op("login", "account:a@x", "node2", 40, 40.5, "ok", password="pa")


def digests_differ(r: Run) -> None:
    r.final["convergence"] = {"equal": False, "seconds": 60, "applied": {"node1": 9},
                              "details": ["node1: d1", "node2: d2"]}


def a_node_crashed(r: Run) -> None:
    r.final["crashes"].append("node2 exited with 1")


def acknowledged_component_missing(r: Run) -> None:
    r.final["components"]["node1"] = []


BAD = [
    (refused_registration_present_everywhere, "refused write never applies"),
    (refused_registration_whose_password_logs_in, "refused write never applies"),
    (refused_message_delivered_later, "refused write never applies"),
    (refused_password_change_applies_later, "refused write never applies"),
    (refused_roster_set_read_later, "refused write never applies"),
    (minority_acknowledges_a_write, "cut off from a majority"),
    (minority_acknowledges_a_registration, "cut off from a majority"),
    (stale_read_after_a_write, "linearizability"),
    (acknowledged_offline_message_lost, "offline messages"),
    (offline_message_delivered_twice, "offline messages"),
    (acknowledged_registration_missing_on_a_node, "no acknowledged registration lost"),
    (both_racers_acknowledged, "exactly one winner"),
    (old_password_accepted_after_change, "old password fails"),
    (digests_differ, "state digest"),
    (a_node_crashed, "exited on its own"),
    (acknowledged_component_missing, "no acknowledged component lost"),
    (critical_line_in_a_node_log, "node log"),
    (traceback_in_a_node_log, "node log"),
    (node_logs_not_collected, "node log"),
]


@pytest.mark.parametrize(("plant", "check"), BAD, ids=[p.__name__ for p, _ in BAD])
def test_a_bad_history_fails_the_check_that_looks_for_it(tmp_path, plant: Callable, check):
    r = good_run(tmp_path)
    plant(r)
    report = r.report()
    failed = [c for c in report.checks if not c.passed]
    assert not report.passed
    assert any(check in c.name for c in failed), [c.name for c in failed]
    assert all(c.details for c in failed), "a failed check says why"


def test_an_undecided_linearizability_search_fails_the_run(tmp_path):
    """Out of search budget is not a pass (issue 14: `inconclusive` passed)."""
    r = good_run(tmp_path)
    report = r.report(budget=1)
    check = next(c for c in report.checks if "linearizability" in c.name)
    assert not check.passed and not report.passed
    assert "inconclusive" in check.summary and check.details
    verdict = lin.check([lin.Call(0, 1, "set", "a"), lin.Call(2, 3, "read", None, "a")],
                        lin.roster_step, budget=0)
    assert verdict.inconclusive and not verdict.ok


def test_a_failed_check_cannot_be_excused():
    """No escape hatch: a check has no field that lets it fail without failing the run."""
    assert [f.name for f in fields(Check)] == ["name", "passed", "summary", "details"]


def test_a_report_with_no_checks_does_not_pass(tmp_path):
    r = Run(tmp_path)
    assert not Report(r.history, r.workload, r.final).passed


def test_scan_log_names_critical_lines_and_tracebacks_only():
    text = ("10:00 INFO ok\n10:01 WARNING slow\n10:02 CRITICAL pysyncobj: lost\n"
            "Traceback (most recent call last):\n  raise X\n10:03 INFO a word like CRITICALITY\n")
    assert scan_log(text) == ["line 3: 10:02 CRITICAL pysyncobj: lost",
                              "line 4: Traceback (most recent call last):"]
    assert scan_log("") == []
