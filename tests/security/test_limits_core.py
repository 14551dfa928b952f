"""raftxmpp.c2s.limits without a network: buckets, admission, the login throttle, and
that no table an attacker can fill grows past its bound."""

from __future__ import annotations

import pytest

from raftxmpp.c2s import limits
from raftxmpp.c2s.limits import AuthThrottle, ConnectionLimits, Refused, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(rate=10, burst=5, now=0)
    assert [bucket.try_take(1, 0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.try_take(1, 0.1)
    assert not bucket.try_take(1, 0.1)


def test_token_bucket_debt_says_how_long_to_pause():
    bucket = TokenBucket(rate=1000, burst=500, now=0)
    bucket.spend(2500, 0)  # a read bigger than the burst: 2000 bytes in debt
    assert bucket.wait(0) == pytest.approx(2.0)
    assert bucket.wait(1.5) == pytest.approx(0.5)
    assert bucket.wait(2.0) == 0


def test_admission_counts_unauthenticated_connections_separately():
    conns = ConnectionLimits(per_ip=3, pre_auth_per_ip=2, rate=0, burst=1)
    first, second = conns.admit("192.0.2.1", 0), conns.admit("192.0.2.1", 0)
    with pytest.raises(Refused) as refused:
        conns.admit("192.0.2.1", 0)
    assert refused.value.polite
    first.authenticated()
    third = conns.admit("192.0.2.1", 0)
    third.authenticated()
    with pytest.raises(Refused):
        conns.admit("192.0.2.1", 0)  # three open now, one of them still pre-auth
    assert conns.admit("192.0.2.2", 0)  # another address is not affected
    for admission in (first, second, third):
        admission.release()
        admission.release()  # twice is harmless
    assert conns.connections("192.0.2.1") == 0 == conns.pre_auth_connections("192.0.2.1")


def test_admission_rate_is_refused_without_politeness_and_recovers():
    conns = ConnectionLimits(per_ip=0, pre_auth_per_ip=0, rate=2, burst=3)
    for _ in range(3):
        conns.admit("192.0.2.1", 0)
    with pytest.raises(Refused) as refused:
        conns.admit("192.0.2.1", 0)
    assert not refused.value.polite
    conns.admit("192.0.2.1", 0.5)


def test_exempt_networks_skip_per_address_limits():
    conns = ConnectionLimits(per_ip=1, pre_auth_per_ip=1, rate=1, burst=1,
                             exempt=["127.0.0.0/8", "2001:db8::/32"])
    held = [conns.admit(ip, 0) for ip in ("127.0.0.1", "127.0.0.1", "2001:db8::5", "2001:db8::5")]
    assert len(held) == 4
    conns.admit("192.0.2.1", 0)
    with pytest.raises(Refused):
        conns.admit("192.0.2.1", 0)


def test_rate_buckets_of_many_addresses_stay_bounded(monkeypatch):
    monkeypatch.setattr(limits, "MAX_TRACKED", 100)
    conns = ConnectionLimits(per_ip=0, pre_auth_per_ip=0, rate=1, burst=1)
    for i in range(1000):
        conns.admit(f"10.0.{i // 256}.{i % 256}", float(i) * 0.001)
    assert len(conns._rates) <= 100


def test_auth_throttle_blocks_after_the_limit_then_lets_one_through_per_interval():
    clock = Clock()
    throttle = AuthThrottle(per_ip=0, per_account=5, window=100.0, clock=clock)
    for _ in range(4):
        throttle.record_failure("192.0.2.1", "alice@localhost")
    assert not throttle.blocked("192.0.2.1", "alice@localhost")
    throttle.record_failure("192.0.2.1", "alice@localhost")
    assert throttle.blocked("192.0.2.9", "alice@localhost")  # any address
    assert not throttle.blocked("192.0.2.1", "bob@localhost")
    clock.now += 19.0  # one failure drains in window / limit = 20 s
    assert throttle.blocked("192.0.2.1", "alice@localhost")
    clock.now += 1.5
    assert not throttle.blocked("192.0.2.1", "alice@localhost")
    throttle.record_failure("192.0.2.1", "alice@localhost")  # the one guess it got
    assert throttle.blocked("192.0.2.1", "alice@localhost")


def test_auth_throttle_per_address_ignores_exempt_addresses():
    throttle = AuthThrottle(per_ip=2, per_account=0, window=60.0, exempt=["127.0.0.1"])
    for _ in range(5):
        throttle.record_failure("127.0.0.1", None)
        throttle.record_failure("192.0.2.1", None)
    assert not throttle.blocked("127.0.0.1", None)
    assert throttle.blocked("192.0.2.1", None)


def test_auth_throttle_tables_stay_bounded(monkeypatch):
    monkeypatch.setattr(limits, "MAX_TRACKED", 50)
    throttle = AuthThrottle(per_ip=10, per_account=10, window=60.0)
    for i in range(500):
        throttle.record_failure(f"10.1.{i // 256}.{i % 256}", f"user{i}@localhost")
    assert len(throttle._by_ip) <= 50 and len(throttle._by_account) <= 50


def test_addressing_many_long_jids_does_not_pin_memory():
    import tracemalloc

    from raftxmpp import jid

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            jid.JID.parse(f"u{i}@localhost/" + "r" * 1000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        jid._parse.cache_clear()
    assert grown < 4 * 2**20, f"{grown >> 20} MiB held for 5000 JIDs the client made up"
