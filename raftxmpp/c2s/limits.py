"""Resource limits for client connections: who may connect, how fast they may talk,
and how often they may guess a password. Sans-IO: every method takes the time.

What each limit prevents:
- `ConnectionLimits` caps the connections one client address holds (all of them, and
  the unauthenticated ones lower: Openfire ran out of memory on pre-auth connections
  kept alive with pings) and the rate at which it opens new ones (a token bucket).
- `TokenBucket` is also the per-session read rate, as Prosody's mod_limits does it:
  a session that spent its bytes is not read from until the bucket refills, so TCP
  pushes back on the client; it is never disconnected for it.
- `AuthThrottle` counts failed logins per client address and per account, so a
  password cannot be guessed faster than the configured rate.
- `RateTable` (a token bucket per address) also paces in-band registrations: each
  one is a Raft write and a key derivation, the most expensive thing a stranger can ask.

Addresses in `exempt` (by default loopback: a local load generator, or a TCP proxy in
front of the node, would otherwise hit every per-address limit at once) skip the
per-address limits; the per-account login limit applies to everyone.

Every table here is bounded: idle entries are dropped, and when a table is still full
the oldest entry goes, so an attacker with many addresses cannot grow our memory.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("raftxmpp.c2s.limits")

# Beyond this many entries a table drops what is idle, then the oldest.
MAX_TRACKED = 65536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def try_take(self, amount: float, now: float) -> bool:
        """Takes `amount` if the bucket holds it; otherwise takes nothing."""
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def spend(self, amount: float, now: float) -> None:
        """Takes `amount` even into debt: bytes already read have been spent."""
        self._refill(now)
        self.tokens -= amount

    def wait(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 when it is not in debt)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """'127.0.0.0/8', '::1' … as networks; raises ValueError on a bad one."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def host_of(peer: str) -> str:
    """The address part of 'host:port' or '[v6]:port' (the form connections log)."""
    return peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer


class Refused(Exception):
    """A connection refused at accept. `polite`: worth a stream error before closing
    (over a count); otherwise (over a rate) it is closed without spending more on it."""

    def __init__(self, reason: str, polite: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.polite = polite


class _Exemption:
    def __init__(self, exempt: Iterable[str]) -> None:
        self._networks = parse_networks(exempt)
        self._cache: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        known = self._cache.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            exempt = False
        else:
            exempt = any(address in network for network in self._networks)
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[ip] = exempt
        return exempt


class RateTable:
    """A token bucket per key (a client address), the table bounded."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                for idle in [k for k, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[idle]
                _drop_oldest(self._buckets)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.try_take(1, now)

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionLimits:
    """Admission of client connections, per client address."""

    def __init__(
        self,
        per_ip: int,
        pre_auth_per_ip: int,
        rate: float,
        burst: float,
        exempt: Iterable[str] = (),
    ) -> None:
        self.per_ip = per_ip
        self.pre_auth_per_ip = pre_auth_per_ip
        self.rate = rate
        self.burst = burst
        self.exempt = _Exemption(exempt)
        self._open: dict[str, int] = {}
        self._pre_auth: dict[str, int] = {}
        self._rates = RateTable(rate, burst) if rate > 0 else None

    def admit(self, ip: str, now: float) -> Admission:
        """An admission to hold for the connection's life; raises Refused."""
        if self.exempt(ip):
            return Admission(self, ip, counted=False)
        if self._rates is not None and not self._rates.allow(ip, now):
            raise Refused(f"{ip} opens connections faster than {self.rate:g}/s", polite=False)
        if self.per_ip and self._open.get(ip, 0) >= self.per_ip:
            raise Refused(f"too many connections from {ip}", polite=True)
        if self.pre_auth_per_ip and self._pre_auth.get(ip, 0) >= self.pre_auth_per_ip:
            raise Refused(f"too many unauthenticated connections from {ip}", polite=True)
        self._open[ip] = self._open.get(ip, 0) + 1
        self._pre_auth[ip] = self._pre_auth.get(ip, 0) + 1
        return Admission(self, ip, counted=True)

    def connections(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def pre_auth_connections(self, ip: str) -> int:
        return self._pre_auth.get(ip, 0)


class Admission:
    """One admitted connection: counts against its address until released."""

    __slots__ = ("_limits", "ip", "_counted", "_pre_auth")

    def __init__(self, limits: ConnectionLimits, ip: str, counted: bool) -> None:
        self._limits = limits
        self.ip = ip
        self._counted = counted
        self._pre_auth = counted

    def authenticated(self) -> None:
        """The client authenticated: it no longer counts as pre-auth."""
        if self._pre_auth:
            self._pre_auth = False
            _decrement(self._limits._pre_auth, self.ip)

    def release(self) -> None:
        self.authenticated()
        if self._counted:
            self._counted = False
            _decrement(self._limits._open, self.ip)


class SharedFailures(Protocol):
    """Other nodes' failure counters (implemented over gossip in raftxmpp.cluster)."""

    def share(self, kind: str, key: str, level: float, drain: float) -> None: ...

    def level(self, kind: str, key: str) -> float: ...


class AuthThrottle:
    """Failed logins per client address and per account, as decaying counters.

    Each failure adds one; a counter drains at `limit / window` a second. A key is
    blocked once `limit` failures came in quick succession, and is let through again
    once one failure's worth has drained: one attempt per `window / limit` seconds, so
    the sustained guess rate is bounded, and a login that was blocked is not checked at all (so a blocked
    guess says nothing about the password or whether the account exists).

    Counters are per node; with `peers` set (a clustered node), each failure is
    shared by gossip and `blocked` adds every other node's counter, so an attacker does
    not get N times the guesses on an N-node cluster.
    """

    def __init__(
        self,
        per_ip: int,
        per_account: int,
        window: float,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_ip = per_ip
        self.per_account = per_account
        self.window = window
        self.exempt = _Exemption(exempt)
        self._clock = clock
        self._by_ip: dict[str, tuple[float, float]] = {}
        self._by_account: dict[str, tuple[float, float]] = {}
        # The other nodes' counters (raftxmpp.cluster.auth_failures), when clustered.
        self.peers: SharedFailures | None = None

    def record_failure(self, ip: str, account: str | None) -> None:
        now = self._clock()
        if self.per_ip and not self.exempt(ip):
            drain = self.per_ip / self.window
            level = _bump(self._by_ip, ip, drain, now)
            self._share("ip", ip, level, drain)
            if level - 1 <= self.per_ip - 1 < level:
                log.warning("logins from %s throttled: %d failures", ip, self.per_ip)
        if self.per_account and account is not None:
            drain = self.per_account / self.window
            level = _bump(self._by_account, account, drain, now)
            self._share("account", account, level, drain)
            if level - 1 <= self.per_account - 1 < level:
                log.warning("logins for %s throttled: %d failures", account, self.per_account)

    def blocked(self, ip: str, account: str | None) -> bool:
        """True while one more failure would pass the limit: the counter (this node's
        plus every other node's) has not drained by one failure since it reached it."""
        now = self._clock()
        if (self.per_ip and not self.exempt(ip)
                and self._total("ip", self._by_ip, ip, self.per_ip / self.window, now)
                > self.per_ip - 1):
            return True
        return bool(
            self.per_account and account is not None
            and self._total("account", self._by_account, account,
                            self.per_account / self.window, now) > self.per_account - 1
        )

    def _share(self, kind: str, key: str, level: float, drain: float) -> None:
        if self.peers is not None:
            self.peers.share(kind, key, level, drain)

    def _total(self, kind: str, table: dict, key: str, drain: float, now: float) -> float:
        level = _level(table, key, drain, now)
        return level + (self.peers.level(kind, key) if self.peers is not None else 0.0)


def _level(table: dict[str, tuple[float, float]], key: str, drain: float, now: float) -> float:
    entry = table.get(key)
    if entry is None:
        return 0.0
    count, stamp = entry
    return max(0.0, count - (now - stamp) * drain)


def _bump(table: dict[str, tuple[float, float]], key: str, drain: float, now: float) -> float:
    """Adds one failure; returns the counter's new level."""
    level = _level(table, key, drain, now)
    if key not in table and len(table) >= MAX_TRACKED:
        for stale in [k for k in table if _level(table, k, drain, now) == 0.0]:
            del table[stale]
        _drop_oldest(table)
    table.pop(key, None)  # re-insert: the dict's order is then the order of last failure
    table[key] = (level + 1.0, now)
    return level + 1.0


def _drop_oldest(table: dict) -> None:
    while len(table) >= MAX_TRACKED:
        del table[next(iter(table))]


def _decrement(table: dict[str, int], key: str) -> None:
    left = table.get(key, 0) - 1
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)


@dataclass(frozen=True)
class C2SGuards:
    """The limits one node applies to its client connections, shared by its listeners."""

    connections: ConnectionLimits
    auth: AuthThrottle
    exempt: _Exemption
    read_rate: float  # bytes a second per session; 0 = unlimited
    read_burst: float
    registrations: RateTable | None  # in-band registrations per address; None = unlimited

    def read_bucket(self, ip: str, now: float) -> TokenBucket | None:
        if self.read_rate <= 0 or self.exempt(ip):
            return None
        return TokenBucket(self.read_rate, self.read_burst, now)

    def registration_allowed(self, ip: str, now: float) -> bool:
        return self.registrations is None or self.exempt(ip) or self.registrations.allow(ip, now)


def guards_from_config(limits) -> C2SGuards:
    """Builds the guards from a validated `LimitsSection`."""
    exempt = tuple(limits.exempt_ips)
    return C2SGuards(
        connections=ConnectionLimits(
            per_ip=limits.connections_per_ip,
            pre_auth_per_ip=limits.pre_auth_connections_per_ip,
            rate=limits.connection_rate_per_ip,
            burst=limits.connection_burst_per_ip,
            exempt=exempt,
        ),
        auth=AuthThrottle(
            per_ip=limits.auth_failures_per_ip,
            per_account=limits.auth_failures_per_account,
            window=limits.auth_failure_window,
            exempt=exempt,
        ),
        exempt=_Exemption(exempt),
        read_rate=limits.c2s_read_rate,
        read_burst=limits.c2s_read_burst,
        registrations=RateTable(limits.registrations_per_ip / limits.registration_window,
                                limits.registrations_per_ip)
        if limits.registrations_per_ip else None,
    )
