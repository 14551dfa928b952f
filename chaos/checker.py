"""Checkers and figures for one run's history.

Each check is a `Check(name, passed, details)`; the run fails when any check does.
What is checked (chaos/README section of the top README explains each):
- acknowledged registrations and components are visible on every node after healing;
- exactly one winner per registration race;
- after an acknowledged password change, the old password fails on every node;
- offline messages: lost = 0, duplicated = 0, unexpected = 0 (recovered: sent with an
  unknown outcome and delivered, which is allowed, is counted);
- refused ∩ present = ∅: a write the client was told failed never shows up later (a
  refused registration's account or password, a refused password change's password, a
  refused roster set's name, a refused offline message's body);
- no durable write is acknowledged through a node while it is cut off from a majority
  (every fault that can cut a node off records its windows);
- after healing, equal applied index and state digest on every node;
- per-key linearizability of accounts and roster items (chaos.linearizability); a key
  the search could not decide within its budget fails the run, it never passes it;
- no CRITICAL line and no Traceback in any node's log;
- every fault healed into a healthy cluster within the recovery deadline.

There is no way to mark a failed check as acceptable: a known bug fails the run until
it is fixed (its regression test lives in tests/, not here).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos import linearizability as lin
from chaos.history import INF, History, Op

DURABLE = ("register", "passwd", "roster_set", "roster_remove", "offline_send", "component_add")
LEADER_FAULTS = ("kill_leader", "pause_leader", "isolate_leader")


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    details: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def spread(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None}


# Lines of a node log that fail a run: pysyncobj logs lost invariants at CRITICAL (e.g.
# "truncating already-applied log entries"), and an uncaught exception leaves a Traceback.
BAD_LOG_LINE = re.compile(r"\bCRITICAL\b|^Traceback \(most recent call last\)")


def scan_log(text: str) -> list[str]:
    """The lines of a node log that must not be there (with their line numbers)."""
    return [f"line {i}: {line.strip()[:200]}"
            for i, line in enumerate(text.splitlines(), 1) if BAD_LOG_LINE.search(line)]


class Report:
    def __init__(self, history: History, workload, final: dict,
                 budget: int = lin.DEFAULT_BUDGET) -> None:
        self.history = history
        self.workload = workload
        self.final = final
        self.budget = budget
        self.ops = [op for op in history.ops if op.status is not None]
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}

    def run(self) -> bool:
        self.check_visible("registrations", "register", "accounts")
        self.check_visible("components", "component_add", "components")
        self.check_races()
        self.check_old_passwords()
        self.check_offline()
        self.check_refused_absent()
        self.check_minority()
        self.check_convergence()
        self.check_linearizable()
        self.check_recovery()
        self.check_crashes()
        self.check_logs()
        self.compute_figures()
        return self.passed

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    # -- checks ---------------------------------------------------------------------------

    def check_visible(self, what: str, kind: str, listing: str) -> None:
        acked = {op.key.split(":", 1)[1] for op in self.ops if op.kind == kind and op.status == "ok"}
        details = []
        for node, present in self.final.get(listing, {}).items():
            if present is None:
                details.append(f"{node}: could not list {listing}")
                continue
            missing = acked - set(present)
            if missing:
                details.append(f"{node}: {len(missing)} acknowledged {what} missing, "
                               f"e.g. {sorted(missing)[:5]}")
        self.checks.append(Check(f"no acknowledged {what[:-1]} lost", not details,
                                 f"{len(acked)} acknowledged, checked on "
                                 f"{len(self.final.get(listing, {}))} nodes", details))

    def check_races(self) -> None:
        details = []
        final_ok = self.final.get("race_logins", {})
        changed = {op.key for op in self.ops if op.kind == "passwd" and op.status != "fail"}
        for a, b in self.workload.races:
            jid = a.key.split(":", 1)[1]
            oks = [op for op in (a, b) if op.status == "ok"]
            if len(oks) > 1:
                details.append(f"{jid}: both registrations acknowledged ({a.node}, {b.node})")
            if a.status == b.status == "fail":
                details.append(f"{jid}: both refused, nobody won")
            winners = final_ok.get(jid)
            if winners is not None and a.key not in changed:
                if len(winners) > 1:
                    details.append(f"{jid}: both racers' passwords log in: {sorted(winners)}")
                if oks and winners and oks[0].args["password"] not in winners:
                    details.append(f"{jid}: {oks[0].node} was told it won, but the other "
                                   "password is the one that logs in")
                if oks and not winners:
                    details.append(f"{jid}: acknowledged winner cannot log in anywhere")
        self.checks.append(Check("exactly one winner per registration race", not details,
                                 f"{len(self.workload.races)} races", details))

    def check_old_passwords(self) -> None:
        by_key: dict[str, list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.kind == "login" and op.status == "ok":
                by_key[op.key].append(op)
        details, changes = [], 0
        for op in self.ops:
            if op.kind != "passwd" or op.status != "ok":
                continue
            changes += 1
            for login in by_key[op.key]:
                if login.args["password"] == op.args["old"] and login.t0 > op.t1:
                    details.append(f"{op.key[8:]}: old password accepted by {login.node} at "
                                   f"t={login.t0:.2f}s, {login.t0 - op.t1:.2f}s after the change "
                                   f"was acknowledged by {op.node} (t={op.t1:.2f}s)")
        self.checks.append(Check("old password fails everywhere after a change", not details,
                                 f"{changes} acknowledged changes", details))

    def check_offline(self) -> None:
        received = Counter(body for body, _, _ in self.workload.received)
        lost, duplicated, recovered, acked = [], [], [], 0
        for body, op in self.workload.sent.items():
            count = received.get(body, 0)
            if op.status == "ok":
                acked += 1
                if count == 0:
                    lost.append(f"{body} (sent via {op.node} to {op.key[6:]} at t={op.t0:.2f}s)")
            elif count >= 1 and op.status == "unknown":
                recovered.append(body)  # may have been stored: allowed, counted
            if count > 1:
                duplicated.append(f"{body} received {count} times")
        unexpected = [b for b in received if b not in self.workload.sent]
        self.figures["offline"] = {"sent": len(self.workload.sent), "acknowledged": acked,
                                   "lost": len(lost), "duplicated": len(duplicated),
                                   "recovered": len(recovered), "unexpected": len(unexpected)}
        passed = not lost and not duplicated and not unexpected
        online_dups = {b: n for b, n in self.workload.online_received.items() if n > 1}
        self.checks.append(Check(
            "online messages: none duplicated", not online_dups,
            f"{len(self.workload.online_sent)} sent, {len(self.workload.online_received)} "
            f"received, {len(online_dups)} more than once",
            [f"{b} received {n} times" for b, n in sorted(online_dups.items())[:20]]))
        self.checks.append(Check(
            "offline messages: none lost, none duplicated", passed,
            f"acked {acked}, lost {len(lost)}, duplicated {len(duplicated)}, "
            f"recovered {len(recovered)}, unexpected {len(unexpected)}",
            [*("lost: " + x for x in lost[:20]), *duplicated[:20],
             *("unexpected: " + x for x in unexpected[:20])]))

    def check_refused_absent(self) -> None:
        """refused ∩ present = ∅: a write the client was told failed must never apply.

        Every refused write carries something unique to it (a password, a roster item
        name, a message body), so its effect is recognisable wherever it shows up later:
        a login that accepts the password, a roster read that returns the name, an inbox
        that receives the body, an account listed although every registration of it was
        refused."""
        details: list[str] = []
        accepted: dict[str, list[Op]] = defaultdict(list)  # (key, password) → ok logins
        names: dict[tuple[str, str], list[Op]] = defaultdict(list)
        registered: dict[str, list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.kind == "login" and op.status == "ok":
                accepted[f"{op.key}\0{op.args['password']}"].append(op)
            elif op.kind == "roster_read" and op.status == "ok" and op.result is not None:
                names[(op.key, op.result)].append(op)
            elif op.kind == "register":
                registered[op.key].append(op)
        refused = 0
        for op in self.ops:
            if op.status != "fail":
                continue
            if op.kind in ("register", "passwd"):
                refused += 1
                for login in accepted.get(f"{op.key}\0{op.args['password']}", ()):
                    details.append(f"{op.kind} {op.key[8:]} via {op.node} refused "
                                   f"({op.result}) at t={op.t1:.2f}s, but its password "
                                   f"logs in on {login.node} at t={login.t1:.2f}s")
            elif op.kind == "roster_set":
                refused += 1
                for read in names.get((op.key, op.args.get("name")), ()):
                    details.append(f"roster_set {op.key[7:]} name={op.args.get('name')} via "
                                   f"{op.node} refused ({op.result}) at t={op.t1:.2f}s, but "
                                   f"{read.node} returns that name at t={read.t1:.2f}s")
            elif op.kind == "offline_send":
                refused += 1
        for body, inbox, t in self.workload.received:
            op = self.workload.sent.get(body)
            if op is not None and op.status == "fail":
                details.append(f"offline message {body} via {op.node} refused ({op.result}) at "
                               f"t={op.t1:.2f}s, but delivered to {inbox} at t={t:.2f}s")
        listed = self.final.get("accounts", {})
        for key, ops in registered.items():
            if not ops or any(op.status != "fail" for op in ops):
                continue
            jid = key.split(":", 1)[1]
            where = sorted(n for n, present in listed.items() if present and jid in present)
            if where:
                details.append(f"{jid}: every registration was refused "
                               f"({', '.join(f'{op.node}: {op.result}' for op in ops)}), "
                               f"but the account exists on {', '.join(where)}")
        self.checks.append(Check("a refused write never applies (refused ∩ present = ∅)",
                                 not details, f"{refused} refused writes", details))

    def check_logs(self) -> None:
        """No node logs a CRITICAL line or a Traceback (final["logs"]: node → log text)."""
        logs = self.final.get("logs")
        if logs is None:
            self.checks.append(Check("no CRITICAL line or Traceback in any node log", False,
                                     "the run collected no node logs",
                                     ["unchecked logs pass nothing: the runner must read "
                                      "every node's log into final['logs']"]))
            return
        details = [f"{node}: {line}" for node, text in sorted(logs.items())
                   for line in scan_log(text)]
        self.checks.append(Check("no CRITICAL line or Traceback in any node log", not details,
                                 f"{len(logs)} node logs, {len(details)} bad lines", details))

    def check_minority(self) -> None:
        """A node cut off from a majority (isolated, paused, killed) cannot know that a
        write committed: a durable write invoked through it and answered while the cut
        lasted must not be acknowledged. Writes invoked before the cut may have committed
        before it and are not judged; the summary counts the writes that were exposed."""
        windows = [(on, off, set(names)) for f in self.history.faults
                   for on, off, names in f.minority_windows]
        details, exposed = [], 0
        for op in self.ops:
            if op.kind not in DURABLE:
                continue
            inside = [(on, off) for on, off, names in windows
                      if op.node in names and on <= op.t0 <= off]
            if not inside:
                continue
            exposed += 1
            if op.status == "ok" and any(op.t1 <= off for _, off in inside):
                on, off = next(w for w in inside if op.t1 <= w[1])
                details.append(f"{op.kind} {op.key} acknowledged by {op.node} at "
                               f"t={op.t1:.2f}s while it was cut off "
                               f"({on:.2f}s–{off:.2f}s)")
        self.figures["minority"] = {"windows": len(windows), "exposed_writes": exposed}
        self.checks.append(Check("a node cut off from a majority acknowledges no durable write",
                                 not details, f"{len(windows)} cut-off windows, {exposed} durable "
                                 "writes invoked through a cut-off node", details))

    def check_convergence(self) -> None:
        conv = self.final.get("convergence", {})
        passed = bool(conv.get("equal"))
        self.checks.append(Check(
            "after healing: same applied index and state digest everywhere", passed,
            f"{'equal' if passed else 'DIFFERENT'} after {conv.get('seconds', '?')}s: "
            f"applied {conv.get('applied')}", conv.get("details", [])))

    def check_linearizable(self) -> None:
        keys: dict[str, list[lin.Call]] = defaultdict(list)
        for op in self.ops:
            call = _as_call(op)
            if call is not None:
                keys[op.key].append(call)
        bad, inconclusive, checked = [], [], 0
        for key, calls in sorted(keys.items()):
            step = lin.account_step if key.startswith("account:") else lin.roster_step
            verdict = lin.check(calls, step, budget=self.budget)
            checked += 1
            if verdict.inconclusive:
                inconclusive.append(key)
            elif not verdict.ok:
                window = lin.minimal_window(calls, step)
                shown = "; ".join(_show(c) for c in window[-6:])
                bad.append(f"{key}: not linearizable ({len(calls)} ops); last ops of the "
                           f"shortest failing prefix: {shown}")
        self.figures["linearizability"] = {"keys": checked, "violations": len(bad),
                                           "inconclusive": len(inconclusive)}
        self.checks.append(Check("per-key linearizability (accounts, roster items)",
                                 not bad and not inconclusive,
                                 f"{checked} keys, {len(bad)} violations, "
                                 f"{len(inconclusive)} inconclusive (search budget)",
                                 [*bad[:30], *(f"{k}: undecided within the search budget "
                                               f"({self.budget} configurations)"
                                               for k in inconclusive[:30])]))

    def check_recovery(self) -> None:
        details = [f"{f.kind} {f.targets} at t={f.t_start:.1f}s: not healthy within the deadline"
                   for f in self.history.faults if f.t_healthy is None]
        details += self.final.get("recovery_errors", [])
        self.checks.append(Check("every fault recovered into a healthy cluster", not details,
                                 f"{len(self.history.faults)} faults", details))

    def check_crashes(self) -> None:
        crashes = self.final.get("crashes", [])
        self.checks.append(Check("no node process exited on its own", not crashes,
                                 f"{len(crashes)} unexpected exits", crashes))

    # -- figures --------------------------------------------------------------------------------

    def compute_figures(self) -> None:
        probes = sorted((op for op in self.ops if op.kind == "probe" and op.status == "ok"),
                        key=lambda op: op.t1)
        failover, recovery = [], []
        by_fault: dict[str, list[float]] = defaultdict(list)
        for fault in self.history.faults:
            if fault.kind in LEADER_FAULTS:
                after = [p.t1 for p in probes
                         if p.t0 >= fault.t_start and p.node not in fault.targets]
                if after:
                    failover.append(min(after) - fault.t_start)
                    by_fault[fault.kind].append(min(after) - fault.t_start)
            if fault.t_heal is not None and fault.t_healthy is not None:
                recovery.append(fault.t_healthy - fault.t_heal)
        self.figures["failover_seconds"] = spread(failover)
        self.figures["failover_by_fault"] = {k: spread(v) for k, v in by_fault.items()}
        self.figures["recovery_after_heal_seconds"] = spread(recovery)
        windows = []
        start = self.final.get("t_workload_start", 0.0)
        end = self.final.get("t_workload_end", self.history.now())
        last = start
        for p in probes:
            if p.t1 < start or p.t1 > end:
                continue
            if p.t1 - last > 1.0:
                windows.append((round(last, 2), round(p.t1 - last, 2)))
            last = p.t1
        if end - last > 1.0:
            windows.append((round(last, 2), round(end - last, 2)))
        self.figures["unavailability"] = {
            "windows_over_1s": len(windows), "total_seconds": round(sum(w for _, w in windows), 2),
            "max_seconds": max((w for _, w in windows), default=0.0),
            "worst": sorted(windows, key=lambda w: -w[1])[:5]}
        wl = self.workload
        self.figures["presence_convergence_seconds"] = {
            **spread(wl.convergence), "timeouts": wl.convergence_timeouts}
        sent = len(wl.online_sent)
        self.figures["online_messages"] = {
            "sent": sent, "delivered": len(wl.online_latency),
            "duplicates": sum(n - 1 for n in wl.online_received.values()),
            "latency_p50": percentile(wl.online_latency, 50),
            "latency_p99": percentile(wl.online_latency, 99)}
        duration = max(1e-9, end - start)
        workload_ops = [op for op in self.ops if op.kind != "probe" and start <= op.t0 <= end]
        self.figures["ops_per_second"] = round(len(workload_ops) / duration, 1)
        self.figures["ops"] = {f"{k}/{s}": n for (k, s), n in sorted(
            Counter((op.kind, op.status) for op in self.ops).items())}
        self.figures["faults"] = dict(Counter(f.kind for f in self.history.faults))
        self.figures["per_fault"] = self._per_fault(failover_by=by_fault)
        self.figures["episodes"] = len(self.history.faults)
        self.figures["duration_seconds"] = round(duration, 1)

    def _per_fault(self, failover_by: dict[str, list[float]]) -> dict[str, dict]:
        """Per fault kind: episodes, workload ops during the fault by outcome, recovery."""
        table: dict[str, dict] = {}
        ops = sorted((op for op in self.ops if op.kind != "probe"), key=lambda op: op.t0)
        starts = [op.t0 for op in ops]
        for fault in self.history.faults:
            row = table.setdefault(fault.kind, {"episodes": 0, "ok": 0, "fail": 0, "unknown": 0,
                                                "recovery": []})
            row["episodes"] += 1
            end = fault.t_heal if fault.t_heal is not None else fault.t_start
            lo, hi = bisect.bisect_left(starts, fault.t_start), bisect.bisect_right(starts, end)
            for op in ops[lo:hi]:
                row[op.status] = row.get(op.status, 0) + 1
            if fault.t_heal is not None and fault.t_healthy is not None:
                row["recovery"].append(fault.t_healthy - fault.t_heal)
        for kind, row in table.items():
            recovery = row.pop("recovery")
            row["recovery_p50"] = percentile(recovery, 50)
            row["recovery_max"] = max(recovery) if recovery else None
            if kind in failover_by:
                row["failover_p50"] = percentile(failover_by[kind], 50)
                row["failover_max"] = max(failover_by[kind])
        return table

    # -- output ---------------------------------------------------------------------------------

    def table(self) -> str:
        lines = ["", "CHECK                                                          RESULT",
                 "-" * 78]
        for c in self.checks:
            lines.append(f"{c.name:<62} {'PASS' if c.passed else 'FAIL'}")
            lines.append(f"    {c.summary}")
            for d in c.details[:12]:
                lines.append(f"    ! {d}")
            if len(c.details) > 12:
                lines.append(f"    ! … {len(c.details) - 12} more")
        f = self.figures
        lines += ["", "FIGURES", "-" * 78,
                  f"episodes {f['episodes']} in {f['duration_seconds']}s: {f['faults']}",
                  f"ops/s {f['ops_per_second']}   ops: {f['ops']}",
                  f"failover (leader faults) s: {_fmt(f['failover_seconds'])}",
                  *(f"    {k}: {_fmt(v)}" for k, v in f["failover_by_fault"].items()),
                  f"recovery after heal s: {_fmt(f['recovery_after_heal_seconds'])}",
                  "per fault kind (ops invoked while the fault was on, by outcome):",
                  *(f"    {k:<17} episodes {v['episodes']:>3}  ok {v['ok']:>5}  fail {v['fail']:>4}"
                    f"  unknown {v['unknown']:>4}  recovery p50/max "
                    f"{_num(v['recovery_p50'])}/{_num(v['recovery_max'])}s"
                    + (f"  failover p50/max {_num(v['failover_p50'])}/{_num(v['failover_max'])}s"
                       if "failover_p50" in v else "")
                    for k, v in sorted(f["per_fault"].items())),
                  f"unavailability (no barrier commits anywhere > 1s): {f['unavailability']}",
                  f"presence convergence s: {_fmt(f['presence_convergence_seconds'])}",
                  f"online messages: {f['online_messages']}",
                  f"offline messages: {f['offline']}",
                  f"linearizability: {f['linearizability']}"]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "figures": self.figures}


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt(s: dict) -> str:
    def r(v):
        return "-" if v is None else f"{v:.2f}"
    extra = f" timeouts {s['timeouts']}" if "timeouts" in s else ""
    return f"n={s['n']} p50={r(s['p50'])} p99={r(s['p99'])} max={r(s['max'])}{extra}"


def _as_call(op: Op) -> lin.Call | None:
    t1 = INF if op.status == "unknown" else op.t1
    if op.kind == "register":
        if op.status == "fail" and op.result != "conflict":
            return None
        return lin.Call(op.t0, t1, "register", op.args["password"],
                        None if op.status == "unknown" else ("ok" if op.status == "ok" else "conflict"))
    if op.kind == "passwd":
        if op.status == "fail":
            return None
        return lin.Call(op.t0, t1, "passwd", op.args["password"])
    if op.kind == "login":
        if op.status == "unknown":
            return None
        return lin.Call(op.t0, t1, "login", op.args["password"], op.status == "ok")
    if op.kind == "roster_remove" and op.status == "fail" and op.result == "item-not-found":
        return lin.Call(op.t0, t1, "remove_absent")  # a definite answer: it was not there
    if op.kind in ("roster_set", "roster_remove"):
        if op.status == "fail":
            return None
        action = "set" if op.kind == "roster_set" else "remove"
        return lin.Call(op.t0, t1, action, op.args.get("name"))
    if op.kind == "roster_read" and op.status == "ok":
        return lin.Call(op.t0, op.t1, "read", None, op.result)
    return None


def _show(c: lin.Call) -> str:
    end = "?" if c.unknown else f"{c.t1:.2f}"
    return f"[{c.t0:.2f}–{end}] {c.action}({c.arg})→{c.result}"
