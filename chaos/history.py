"""The history of one run: every operation as invoked and as completed, every fault.

Times are seconds since the run started (time.monotonic based), plus wall-clock
stamps in the JSONL for reading alongside node logs. An operation ends `ok`
(the server acknowledged it), `fail` (a definite refusal, e.g. <conflict/>), or
`unknown` (timeout, connection lost, a `wait` error: it may or may not have
happened); an operation still running when the run ends is `unknown`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

INF = float("inf")


@dataclass
class Op:
    id: int
    kind: str
    key: str
    node: str
    t0: float
    args: dict[str, Any] = field(default_factory=dict)
    t1: float | None = None
    status: str | None = None  # ok | fail | unknown
    result: Any = None

    @property
    def end(self) -> float:
        """When the op surely had its effect, if it had one (never, for unknown)."""
        return INF if self.status == "unknown" or self.t1 is None else self.t1


@dataclass
class Fault:
    kind: str
    targets: list[str]
    t_start: float
    t_heal: float | None = None
    t_healthy: float | None = None
    t_end: float | None = None
    # (t_on, t_off, [node names]) during which those nodes were cut off from a majority.
    minority_windows: list[tuple[float, float, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.t_zero = time.monotonic()
        self.wall_zero = time.time()
        self.ops: list[Op] = []
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        # Nodes on the minority side of a partition right now (set by the injector's
        # thread, read by the workload's minority writers).
        self.partitioned: frozenset[str] = frozenset()
        self._ids = itertools.count(1)
        self._file = open(path, "w", buffering=1)  # noqa: SIM115 - closed in close()

    def now(self) -> float:
        return time.monotonic() - self.t_zero

    def _write(self, record: dict) -> None:
        record["wall"] = round(self.wall_zero + record.get("t", self.now()), 3)
        self._file.write(json.dumps(record, default=str) + "\n")

    def invoke(self, kind: str, key: str, node: str, **args: Any) -> Op:
        op = Op(next(self._ids), kind, key, node, self.now(), args)
        self.ops.append(op)
        self._write({"ev": "invoke", "t": op.t0, "op": op.id, "kind": kind, "key": key,
                     "node": node, "args": args})
        return op

    def complete(self, op: Op, status: str, result: Any = None) -> Op:
        if op.status is not None:
            return op
        op.t1, op.status, op.result = self.now(), status, result
        self._write({"ev": status, "t": op.t1, "op": op.id, "kind": op.kind, "key": op.key,
                     "node": op.node, "result": result})
        return op

    def fault(self, fault: Fault) -> None:
        self.faults.append(fault)
        self._write({"ev": "fault", "t": fault.t_start, "fault": fault.kind,
                     "targets": fault.targets})

    def fault_event(self, fault: Fault, what: str, **info: Any) -> None:
        self._write({"ev": what, "fault": fault.kind, "targets": fault.targets, **info})

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._write({"ev": "note", "text": text})

    def close_pending(self) -> None:
        for op in self.ops:
            if op.status is None:
                self.complete(op, "unknown", "run ended")

    def dump_faults(self, path: Path) -> None:
        with open(path, "w") as f:
            for fault in self.faults:
                f.write(json.dumps(asdict(fault), default=str) + "\n")

    def close(self) -> None:
        self._file.close()
