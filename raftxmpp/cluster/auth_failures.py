"""Failed-login counters shared by gossip, so the login throttle is cluster-wide.

Each node publishes its own decaying counter per client address and per account
(gossip key "f:<kind>:<key>", value [level, wall-clock stamp, drain per second]); the
throttle on any node adds every other node's current level to its own. An attacker
spreading guesses over N nodes gets no more than on one (ejabberd's mod_fail2ban
counts per node and gives N times the guesses). Wall clocks of nodes must agree to
within a fraction of the window, which NTP gives.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raftxmpp.cluster.gossip import Gossip

PREFIX = "f:"
PRUNE_EVERY = 256


class GossipedFailures:
    def __init__(self, gossip: Gossip) -> None:
        self.gossip = gossip
        self._shares = 0

    def share(self, kind: str, key: str, level: float, drain: float) -> None:
        self.gossip.set(f"{PREFIX}{kind}:{key}", [level, time.time(), drain])
        self._shares += 1
        if self._shares % PRUNE_EVERY == 0:
            self._prune()

    def level(self, kind: str, key: str) -> float:
        """The sum of the other nodes' current levels for this key."""
        name, now, total = f"{PREFIX}{kind}:{key}", time.time(), 0.0
        for view in self.gossip.views.values():
            entry = view.items.get(name)
            if entry:
                total += _current(entry, now)
        return total

    def _prune(self) -> None:
        now = time.time()
        for name, entry in list(self.gossip.items.items()):
            if name.startswith(PREFIX) and _current(entry, now) <= 0.0:
                self.gossip.delete(name)


def _current(entry: list, now: float) -> float:
    level, stamp, drain = entry
    return max(0.0, float(level) - max(0.0, now - float(stamp)) * float(drain))
