"""Failed-login counters and trusted login sources shared by gossip, so the login
throttle (raftxmpp.c2s.limits.AuthThrottle) is cluster-wide.

Each node publishes its own decaying counter per client source and per account
(gossip key "f:<kind>:<key>", value [level, wall-clock stamp, drain per second]); the
throttle on any node adds every other node's current level to its own. An attacker
spreading guesses over N nodes gets no more than on one (ejabberd's mod_fail2ban
counts per node and gives N times the guesses). Wall clocks of nodes must agree to
within a fraction of the window, which NTP gives.

The sources an account logged in from are remembered where the login happened, and
shared only where it matters: once anyone fails to log into that account, on any node,
each node that remembers sources for it publishes them ("t:<account>", value [sources,
stamp]), so its owner is let through on every node while the guessing lasts. Those
entries go when the account's counters have drained, and there are at most
MAX_TRUST_ENTRIES of them per node, so gossip never carries every account.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raftxmpp.cluster.gossip import Gossip

log = logging.getLogger("raftxmpp.c2s.limits")

PREFIX = "f:"
TRUST_PREFIX = "t:"
PRUNE_EVERY = 256
MAX_TRUST_ENTRIES = 4096


class GossipedFailures:
    PREFIX = PREFIX

    def __init__(self, gossip: Gossip,
                 on_account_failure: Callable[[str], None] | None = None) -> None:
        self.gossip = gossip
        # Called with an account another node counted a failure for (→ share_trusted).
        self.on_account_failure = on_account_failure
        self._shares = 0
        self._trust_entries = 0
        self._trust_full_logged = False

    # -- failure counters ---------------------------------------------------------------------------

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

    def on_gossip_change(self, node: str, key: str, old: Any, new: Any) -> None:
        """Another node's failure entry changed (raftxmpp.cluster.membership routes "f:")."""
        kind, _, account = key[len(PREFIX):].partition(":")
        if kind == "account" and new and self.on_account_failure is not None:
            self.on_account_failure(account)

    # -- trusted sources ------------------------------------------------------------------------------

    def publish_trusted(self, account: str, sources: list[str]) -> None:
        name = f"{TRUST_PREFIX}{account}"
        current = self.gossip.items.get(name)
        if current is not None and current[0] == sources:
            return  # already published: no gossip delta per failure
        if current is None:
            if self._trust_entries >= MAX_TRUST_ENTRIES:
                self._prune()
            if self._trust_entries >= MAX_TRUST_ENTRIES:
                if not self._trust_full_logged:
                    self._trust_full_logged = True
                    log.warning("%d accounts under password guessing at once: their owners' "
                                "usual sources are no longer shared with the other nodes",
                                MAX_TRUST_ENTRIES)
                return
            self._trust_entries += 1
        self.gossip.set(name, [sources, time.time()])

    def trusted(self, account: str, source: str) -> bool:
        name = f"{TRUST_PREFIX}{account}"
        return any(source in entry[0] for view in self.gossip.views.values()
                   if (entry := view.items.get(name)))

    # -- housekeeping ---------------------------------------------------------------------------------

    def _prune(self) -> None:
        now = time.time()
        for name, entry in list(self.gossip.items.items()):
            if name.startswith(PREFIX) and _current(entry, now) <= 0.0:
                self.gossip.delete(name)
        for name in [n for n in self.gossip.items if n.startswith(TRUST_PREFIX)]:
            account = name[len(TRUST_PREFIX):]
            if (self.level("account", account) <= 0.0
                    and _current(self.gossip.items.get(f"{PREFIX}account:{account}"), now) <= 0.0):
                self.gossip.delete(name)
                self._trust_entries -= 1
        self._trust_full_logged = self._trust_entries >= MAX_TRUST_ENTRIES


def _current(entry: list | None, now: float) -> float:
    if not entry:
        return 0.0
    level, stamp, drain = entry
    return max(0.0, float(level) - max(0.0, now - float(stamp)) * float(drain))
