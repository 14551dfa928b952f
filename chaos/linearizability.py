"""A per-key Wing–Gong–Lowe linearizability checker, in the style of Porcupine.

A history is split by key (one account, one roster item); each key's operations are
checked against a small sequential model by a depth-first search over "which
operation takes effect next", memoising (set of linearized ops, model state) so
no configuration is explored twice (Lowe, "Testing for linearizability", 2017).

An operation may be linearized next only if it was invoked before every other
pending operation returned (otherwise one that returned earlier must come first).
An `unknown` operation never returns: it may take effect at any point after its
invocation, or never, and its result is not checked. A history is linearizable
when every operation that returned has been placed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

INF = float("inf")


@dataclass(frozen=True)
class Call:
    t0: float
    t1: float  # INF when the outcome is unknown
    action: str
    arg: Any = None
    result: Any = None  # None for an unknown outcome

    @property
    def unknown(self) -> bool:
        return self.t1 == INF


# step(state, call) -> (legal, new_state)
Step = Callable[[Hashable, Call], tuple[bool, Hashable]]


def account_step(state: str | None, call: Call) -> tuple[bool, str | None]:
    """An account: None (absent) or its current password."""
    if call.action == "register":
        if call.unknown:
            return True, call.arg if state is None else state
        if call.result == "ok":
            return state is None, call.arg
        return state is not None, state  # <conflict/>: the name was taken
    if call.action == "passwd":
        if call.unknown:
            return True, call.arg if state is not None else state
        return state is not None, call.arg
    if call.action == "login":  # a read: did the password match?
        return (state == call.arg) == call.result, state
    raise ValueError(call.action)


def roster_step(state: str | None, call: Call) -> tuple[bool, str | None]:
    """A roster item: None (absent) or its name."""
    if call.action == "set":
        return True, call.arg
    if call.action == "remove":
        return True, None
    if call.action == "remove_absent":  # refused with <item-not-found/>
        return state is None, state
    if call.action == "read":
        return state == call.result, state
    raise ValueError(call.action)


@dataclass
class Verdict:
    ok: bool
    explored: int
    inconclusive: bool = False


DEFAULT_BUDGET = 500_000


def check(calls: list[Call], step: Step, initial: Hashable = None,
          budget: int = DEFAULT_BUDGET) -> Verdict:
    """ok=True only when a linearization was found; when the search runs out of budget
    the verdict is ok=False, inconclusive=True (undecided is not a pass)."""
    calls = sorted(calls, key=lambda c: c.t0)
    n = len(calls)
    must = 0
    for i, c in enumerate(calls):
        if not c.unknown:
            must |= 1 << i
    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = [(0, initial)]
    explored = 0
    while stack:
        done, state = stack.pop()
        if done & must == must:
            return Verdict(True, explored)
        if (done, state) in seen:
            continue
        seen.add((done, state))
        explored += 1
        if explored > budget:
            return Verdict(False, explored, inconclusive=True)
        # The earliest return among pending ops bounds which ops may go next.
        horizon = min((calls[i].t1 for i in range(n) if not done >> i & 1), default=INF)
        for i in range(n):
            if done >> i & 1:
                continue
            call = calls[i]
            if call.t0 > horizon:
                break  # sorted by t0: nothing later qualifies
            legal, new_state = step(state, call)
            if legal:
                stack.append((done | 1 << i, new_state))
    return Verdict(False, explored)


def minimal_window(calls: list[Call], step: Step, initial: Hashable = None) -> list[Call]:
    """The shortest prefix (by invocation) that is already not linearizable, for reports."""
    calls = sorted(calls, key=lambda c: c.t0)
    lo, hi = 1, len(calls)
    while lo < hi:
        mid = (lo + hi) // 2
        if check(calls[:mid], step, initial).ok:
            lo = mid + 1
        else:
            hi = mid
    return calls[:lo]
