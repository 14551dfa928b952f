"""Resource limits for client connections: who may connect, how fast they may talk,
and how often they may guess a password. Sans-IO: every method takes the time.

What each limit prevents:
- `ConnectionLimits` caps the connections one client source holds (all of them, and
  the unauthenticated ones lower: Openfire ran out of memory on pre-auth connections
  kept alive with pings) and the rate at which it opens new ones (a token bucket).
- `PreAuthCap` caps the unauthenticated connections of one listener over all sources
  together, so many addresses cannot add up to what one may not hold.
- `TokenBucket` is also the per-session read rate, as Prosody's mod_limits does it:
  a session that spent its bytes is not read from until the bucket refills, so TCP
  pushes back on the client; it is never disconnected for it.
- `AuthThrottle` counts failed logins per source, per account and source, and per
  account, so a password cannot be guessed faster than the configured rates, while
  the account's owner, at a source it logged in from before, is never locked out.
- `RateTable` (a token bucket per source) also paces in-band registrations: each
  one is a Raft write and a key derivation, the most expensive thing a stranger can ask.

A *source* is what the per-address limits count under (`SourcePrefixes`): an IPv4
address (or its network, `[limits] ipv4_prefix`) and an IPv6 /64 (`ipv6_prefix`): one
subscriber holds a whole /64 and may rotate through its addresses at will (RFC 8981).

Addresses in `exempt` (by default loopback: a local load generator, or a TCP proxy in
front of the node, would otherwise hit every per-address limit at once) skip the
per-source limits; the per-account login limit applies to everyone, and an exempt
address is never remembered as an account's usual source.

Every table here is bounded: idle entries are dropped, and when a table is still full
the oldest entry goes, so an attacker with many addresses cannot grow our memory.
"""

from __future__ import annotations

import ipaddress
import logging
import math
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


class SourcePrefixes:
    """A client address → the source the per-address limits count it under: the IPv4
    address, or its /ipv4_prefix network; the IPv6 /ipv6_prefix network (a /64 by
    default: what one subscriber's link holds). An IPv4-mapped IPv6 address is IPv4."""

    def __init__(self, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> None:
        if not 1 <= ipv4_prefix <= 32 or not 1 <= ipv6_prefix <= 128:
            raise ValueError("prefix lengths are 1-32 (IPv4) and 1-128 (IPv6)")
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix

    def __call__(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip  # not an IP address (a Unix socket): counted as itself
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefix = self.ipv4_prefix if address.version == 4 else self.ipv6_prefix
        if prefix == address.max_prefixlen:
            return str(address)
        return str(ipaddress.ip_network((address, prefix), strict=False))


class Refused(Exception):
    """A connection refused at accept. `polite`: worth a stream error (`condition`)
    before closing (over a count); otherwise (over a rate) it is closed without
    spending more on it."""

    def __init__(self, reason: str, polite: bool, condition: str = "policy-violation") -> None:
        super().__init__(reason)
        self.reason = reason
        self.polite = polite
        self.condition = condition


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
    """A token bucket per key (a client source), the table bounded."""

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


class PreAuthCap:
    """Unauthenticated connections of one listener, over all sources together.

    Per-source limits alone let an attacker with many addresses (a botnet, or a /48 of
    IPv6) hold any number of pre-auth connections, each with its parser and TLS state.
    The cap counts exempt addresses too: it guards memory, not fairness. Hitting it is
    logged once per episode (until the count falls back below 90 %), not per refusal.
    """

    def __init__(self, limit: int, where: str) -> None:
        self.limit = limit  # 0: no cap
        self.where = where
        self.open = 0
        self.refused = 0
        self._full = False

    def take(self) -> bool:
        if self.limit and self.open >= self.limit:
            self.refused += 1
            if not self._full:
                self._full = True
                log.warning("%s: %d unauthenticated connections, the cap ([limits] "
                            "pre_auth_connections_per_listener); refusing new ones with "
                            "<resource-constraint/>", self.where, self.limit)
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open = max(0, self.open - 1)
        if self._full and self.open < self.limit * 0.9:
            self._full = False
            log.warning("%s: below the unauthenticated-connection cap again, after refusing "
                        "%d connections", self.where, self.refused)
            self.refused = 0


class ConnectionLimits:
    """Admission of client connections, per client source and per listener."""

    def __init__(
        self,
        per_ip: int,
        pre_auth_per_ip: int,
        rate: float,
        burst: float,
        exempt: Iterable[str] = (),
        sources: SourcePrefixes | None = None,
    ) -> None:
        self.per_ip = per_ip
        self.pre_auth_per_ip = pre_auth_per_ip
        self.rate = rate
        self.burst = burst
        self.exempt = _Exemption(exempt)
        self.sources = sources or SourcePrefixes()
        self._open: dict[str, int] = {}
        self._pre_auth: dict[str, int] = {}
        self._rates = RateTable(rate, burst) if rate > 0 else None

    def admit(self, ip: str, now: float, cap: PreAuthCap | None = None) -> Admission:
        """An admission to hold for the connection's life; raises Refused."""
        if self.exempt(ip):
            return self._within(cap, Admission(self, ip, counted=False, cap=cap))
        source = self.sources(ip)
        if self._rates is not None and not self._rates.allow(source, now):
            raise Refused(f"{source} opens connections faster than {self.rate:g}/s", polite=False)
        if self.per_ip and self._open.get(source, 0) >= self.per_ip:
            raise Refused(f"too many connections from {source}", polite=True)
        if self.pre_auth_per_ip and self._pre_auth.get(source, 0) >= self.pre_auth_per_ip:
            raise Refused(f"too many unauthenticated connections from {source}", polite=True)
        admission = self._within(cap, Admission(self, source, counted=True, cap=cap))
        self._open[source] = self._open.get(source, 0) + 1
        self._pre_auth[source] = self._pre_auth.get(source, 0) + 1
        return admission

    @staticmethod
    def _within(cap: PreAuthCap | None, admission: Admission) -> Admission:
        if cap is not None and not cap.take():
            raise Refused(f"{cap.where} holds its cap of unauthenticated connections",
                          polite=True, condition="resource-constraint")
        return admission

    def connections(self, ip: str) -> int:
        return self._open.get(self.sources(ip), 0)

    def pre_auth_connections(self, ip: str) -> int:
        return self._pre_auth.get(self.sources(ip), 0)


class Admission:
    """One admitted connection: counts against its source (and its listener's pre-auth
    cap) until released."""

    __slots__ = ("_limits", "source", "_counted", "_pre_auth", "_cap")

    def __init__(self, limits: ConnectionLimits, source: str, counted: bool,
                 cap: PreAuthCap | None = None) -> None:
        self._limits = limits
        self.source = source
        self._counted = counted
        self._pre_auth = True
        self._cap = cap

    def authenticated(self) -> None:
        """The client authenticated: it no longer counts as pre-auth."""
        if self._pre_auth:
            self._pre_auth = False
            if self._counted:
                _decrement(self._limits._pre_auth, self.source)
            if self._cap is not None:
                self._cap.give_back()

    def release(self) -> None:
        self.authenticated()
        if self._counted:
            self._counted = False
            _decrement(self._limits._open, self.source)


class SharedFailures(Protocol):
    """Other nodes' failure counters and remembered sources (implemented over gossip in
    raftxmpp.cluster.auth_failures)."""

    def share(self, kind: str, key: str, level: float, drain: float) -> None: ...

    def level(self, kind: str, key: str) -> float: ...

    def publish_trusted(self, account: str, sources: list[str]) -> None: ...

    def trusted(self, account: str, source: str) -> bool: ...


class TrustedSources:
    """The sources each account logged in from successfully, for `ttl` seconds: the
    account's owner there is let through while someone else guesses its password.

    Bounded: at most PER_ACCOUNT sources per account (the most recent), and MAX_TRACKED
    accounts (the least recently used go first). Memory only; a restarted node relearns
    from the next logins, and meanwhile the other nodes' memory is shared by gossip.
    """

    PER_ACCOUNT = 4

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl  # 0: nothing is remembered
        self._by_account: dict[str, dict[str, float]] = {}

    def remember(self, account: str, source: str, now: float) -> None:
        if self.ttl <= 0:
            return
        sources = self._by_account.pop(account, None)
        if sources is None:
            if len(self._by_account) >= MAX_TRACKED:
                _drop_oldest(self._by_account)
            sources = {}
        sources.pop(source, None)
        sources[source] = now
        while len(sources) > self.PER_ACCOUNT:
            del sources[next(iter(sources))]
        self._by_account[account] = sources  # re-inserted: the dict's order is recency

    def knows(self, account: str, source: str, now: float) -> bool:
        stamp = self._by_account.get(account, {}).get(source)
        return stamp is not None and now - stamp < self.ttl

    def sources(self, account: str, now: float) -> list[str]:
        return [source for source, stamp in self._by_account.get(account, {}).items()
                if now - stamp < self.ttl]

    def __len__(self) -> int:
        return len(self._by_account)


class Throttled(Exception):
    """A login refused before its password is checked: <temporary-auth-failure/>."""


class AuthThrottle:
    """Failed logins, counted so that guessing stays slow without locking anyone out.

    Three decaying counters, each draining at `limit / window` a second:
    - per source: past `per_source` failures, every login from that source is refused;
    - per account and source: past `per_account_source`, that source's logins for that
      account are refused; the account's owner anywhere else is not affected;
    - per account, from every source: past `per_account`, a login from a source that
      never logged into the account (`TrustedSources`) waits before its password is
      checked: 1 s for the first failure over the limit, doubling with each further
      one up to `delay_max`; the waiting logins of one account go one at a time, so
      opening more connections guesses no faster, and a login that would have to wait
      longer than `delay_max` is refused. A remembered source does not wait at all.

    A login counts as a failure from the moment it names its account (`begin`) until
    it succeeds, so an exchange left unfinished (a SCRAM client-first, then silence)
    is a guess like any other, and parallel attempts see each other at once.

    Counters are per node; with `peers` set (a clustered node), each failure is shared
    by gossip and the checks add every other node's counters, and the sources an account
    logged in from are shared while someone guesses at it: an attacker does not get N
    times the guesses on an N-node cluster, and the owner may log in at any node.
    """

    def __init__(
        self,
        per_ip: int,
        per_account: int,
        window: float,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        *,
        per_account_source: int = 0,
        delay_max: float = 0.0,
        trusted_ttl: float = 0.0,
        sources: SourcePrefixes | None = None,
    ) -> None:
        self.per_ip = per_ip
        self.per_account = per_account
        self.per_account_source = per_account_source
        self.window = window
        self.delay_max = delay_max
        self.exempt = _Exemption(exempt)
        self.sources = sources or SourcePrefixes()
        self.trusted = TrustedSources(trusted_ttl)
        self._clock = clock
        self._by_ip: dict[str, tuple[float, float]] = {}
        self._by_pair: dict[str, tuple[float, float]] = {}
        self._by_account: dict[str, tuple[float, float]] = {}
        self._next_turn: dict[str, float] = {}  # account → when its next waiting login goes
        # The other nodes' counters (raftxmpp.cluster.auth_failures), when clustered.
        self.peers: SharedFailures | None = None

    # -- before the exchange ---------------------------------------------------------------------------

    def delay(self, ip: str, account: str) -> float:
        """Seconds a login for `account` from `ip` must wait before it is checked, its turn
        taken now. 0 when it need not wait, and when it will be refused (by `begin`)."""
        now = self._clock()
        if self._refusal(ip, account, now) is not None:
            return 0.0
        needed = self._needed_delay(ip, account, now)
        if needed <= 0:
            return 0.0
        turn = max(now + needed, self._next_turn.get(account, 0.0))
        if turn - now > self.delay_max:
            return 0.0  # the queue is full: `begin` refuses it
        if account not in self._next_turn and len(self._next_turn) >= MAX_TRACKED:
            for gone in [k for k, t in self._next_turn.items() if t < now]:
                del self._next_turn[gone]
            _drop_oldest(self._next_turn)
        self._next_turn[account] = turn + needed
        return turn - now

    def begin(self, ip: str, account: str, waited: bool = False) -> LoginAttempt:
        """A login names `account`: counted as a failure until it succeeds. Raises
        Throttled when it may not be checked; `waited`: it waited its `delay` already."""
        now = self._clock()
        reason = self._refusal(ip, account, now)
        if reason is None and not waited and self._needed_delay(ip, account, now) > 0:
            reason = f"logins for {account} wait their turn"
        if reason is not None:
            raise Throttled(reason)
        return LoginAttempt(self, ip, account, now)

    def record_failure(self, ip: str) -> None:
        """A failed exchange that never named an account (malformed, wrong mechanism)."""
        if self.per_ip and not self.exempt(ip):
            now = self._clock()
            source = self.sources(ip)
            _bump(self._by_ip, source, self.per_ip / self.window, now)
            self._share_source(source, now)

    def _refusal(self, ip: str, account: str, now: float) -> str | None:
        if self.exempt(ip):
            return None
        source = self.sources(ip)
        if self.per_ip and self._total("ip", self._by_ip, source, self.per_ip, now) > self.per_ip - 1:
            return f"too many failed logins from {source}"
        if self.per_account_source and _level(
                self._by_pair, _pair(account, source), self.per_account_source / self.window,
                now) > self.per_account_source - 1:
            return f"too many failed logins for {account} from {source}"
        return None

    def _needed_delay(self, ip: str, account: str, now: float) -> float:
        if not self.per_account:
            return 0.0
        over = self._total("account", self._by_account, account, self.per_account, now) \
            - (self.per_account - 1)
        if over <= 0 or self._is_trusted(ip, account, now):
            return 0.0
        return min(self.delay_max, 2.0 ** (math.ceil(over) - 1)) if self.delay_max > 0 else math.inf

    def _is_trusted(self, ip: str, account: str, now: float) -> bool:
        if self.exempt(ip):
            return False  # a proxy or load generator speaks for everyone behind it
        source = self.sources(ip)
        return self.trusted.knows(account, source, now) or (
            self.peers is not None and self.peers.trusted(account, source))

    # -- sharing ----------------------------------------------------------------------------------------

    def share_trusted(self, account: str) -> None:
        """Someone fails to log into `account`: let the other nodes know the sources its
        owner logged in from here (called for our failures and for other nodes')."""
        if self.peers is not None:
            sources = self.trusted.sources(account, self._clock())
            if sources:
                self.peers.publish_trusted(account, sources)

    def _share_source(self, source: str, now: float) -> None:
        drain = self.per_ip / self.window
        level = _level(self._by_ip, source, drain, now)
        if self.peers is not None:
            self.peers.share("ip", source, level, drain)
        if level - 1 <= self.per_ip - 1 < level:
            log.warning("logins from %s throttled: %d failures", source, self.per_ip)

    def _share_account(self, account: str, now: float) -> None:
        drain = self.per_account / self.window
        level = _level(self._by_account, account, drain, now)
        if self.peers is not None:
            self.peers.share("account", account, level, drain)
        if level - 1 <= self.per_account - 1 < level:
            log.warning("logins for %s slowed down: %d failures (sources it logged in from "
                        "before are not)", account, self.per_account)
        self.share_trusted(account)

    def _total(self, kind: str, table: dict, key: str, limit: int, now: float) -> float:
        level = _level(table, key, limit / self.window, now)
        return level + (self.peers.level(kind, key) if self.peers is not None else 0.0)


class LoginAttempt:
    """One login between naming its account and its outcome. Counted as a failure from
    the start; `succeeded` refunds it, `failed` (or `abandoned`) shares it cluster-wide,
    `withdrawn` forgets it (the node, not the client, could not check it)."""

    __slots__ = ("_throttle", "_source", "_exempt", "account", "_done")

    def __init__(self, throttle: AuthThrottle, ip: str, account: str, now: float) -> None:
        self._throttle = throttle
        self._source = throttle.sources(ip)
        self._exempt = throttle.exempt(ip)
        self.account = account
        self._done = False
        self._count(+1.0, now)

    def succeeded(self) -> None:
        if self._finish():
            now = self._throttle._clock()
            self._count(-1.0, now)
            if not self._exempt:
                self._throttle.trusted.remember(self.account, self._source, now)

    def failed(self) -> None:
        if self._finish():
            throttle, now = self._throttle, self._throttle._clock()
            if throttle.per_ip and not self._exempt:
                throttle._share_source(self._source, now)
            if throttle.per_account:
                throttle._share_account(self.account, now)

    abandoned = failed  # an exchange never finished is a guess too

    def withdrawn(self) -> None:
        if self._finish():
            self._count(-1.0, self._throttle._clock())

    def _finish(self) -> bool:
        done, self._done = self._done, True
        return not done

    def _count(self, step: float, now: float) -> None:
        t = self._throttle
        if not self._exempt:
            if t.per_ip:
                _bump(t._by_ip, self._source, t.per_ip / t.window, now, step)
            if t.per_account_source:
                _bump(t._by_pair, _pair(self.account, self._source),
                      t.per_account_source / t.window, now, step)
        if t.per_account:
            _bump(t._by_account, self.account, t.per_account / t.window, now, step)


def _pair(account: str, source: str) -> str:
    return f"{account}\0{source}"


def _level(table: dict[str, tuple[float, float]], key: str, drain: float, now: float) -> float:
    entry = table.get(key)
    if entry is None:
        return 0.0
    count, stamp = entry
    return max(0.0, count - (now - stamp) * drain)


def _bump(table: dict[str, tuple[float, float]], key: str, drain: float, now: float,
          step: float = 1.0) -> float:
    """Adds `step` failures (a negative step refunds); returns the counter's new level."""
    level = _level(table, key, drain, now)
    if key not in table and len(table) >= MAX_TRACKED:
        for stale in [k for k in table if _level(table, k, drain, now) == 0.0]:
            del table[stale]
        _drop_oldest(table)
    table.pop(key, None)  # re-insert: the dict's order is then the order of last change
    level = max(0.0, level + step)
    if level > 0.0:
        table[key] = (level, now)
    return level


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
    registrations: RateTable | None  # in-band registrations per source; None = unlimited
    sources: SourcePrefixes = SourcePrefixes()
    pre_auth_per_listener: int = 0  # unauthenticated connections per listener; 0 = no cap
    # The key of unknown accounts' fake SCRAM salts (sasl.unknown_account_key), the same
    # on every node; None only where no node is (tests of the core).
    unknown_account_key: bytes | None = None

    def read_bucket(self, ip: str, now: float) -> TokenBucket | None:
        if self.read_rate <= 0 or self.exempt(ip):
            return None
        return TokenBucket(self.read_rate, self.read_burst, now)

    def registration_allowed(self, ip: str, now: float) -> bool:
        return (self.registrations is None or self.exempt(ip)
                or self.registrations.allow(self.sources(ip), now))

    def listener_cap(self, where: str) -> PreAuthCap:
        """The pre-auth cap of one listener (`where` names it in the log)."""
        return PreAuthCap(self.pre_auth_per_listener, where)


def guards_from_config(limits) -> C2SGuards:
    """Builds the guards from a validated `LimitsSection`."""
    exempt = tuple(limits.exempt_ips)
    sources = SourcePrefixes(limits.ipv4_prefix, limits.ipv6_prefix)
    return C2SGuards(
        connections=ConnectionLimits(
            per_ip=limits.connections_per_ip,
            pre_auth_per_ip=limits.pre_auth_connections_per_ip,
            rate=limits.connection_rate_per_ip,
            burst=limits.connection_burst_per_ip,
            exempt=exempt,
            sources=sources,
        ),
        auth=AuthThrottle(
            per_ip=limits.auth_failures_per_ip,
            per_account=limits.auth_failures_per_account,
            window=limits.auth_failure_window,
            exempt=exempt,
            per_account_source=limits.auth_failures_per_account_and_ip,
            delay_max=limits.auth_failure_delay_max,
            trusted_ttl=limits.trusted_source_ttl,
            sources=sources,
        ),
        exempt=_Exemption(exempt),
        read_rate=limits.c2s_read_rate,
        read_burst=limits.c2s_read_burst,
        registrations=RateTable(limits.registrations_per_ip / limits.registration_window,
                                limits.registrations_per_ip)
        if limits.registrations_per_ip else None,
        sources=sources,
        pre_auth_per_listener=limits.pre_auth_connections_per_listener,
    )
