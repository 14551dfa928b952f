"""raftxmpp.c2s.limits without a network: buckets, admission, the login throttle, and
that no table an attacker can fill grows past its bound."""

from __future__ import annotations

import pytest

from raftxmpp.c2s import limits
from raftxmpp.c2s.limits import (
    AuthThrottle,
    ConnectionLimits,
    PreAuthCap,
    Refused,
    SourcePrefixes,
    Throttled,
    TokenBucket,
)


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


def _throttle(clock, **kwargs) -> AuthThrottle:
    settings = {"per_ip": 0, "per_account": 0, "window": 100.0, "clock": clock,
                "per_account_source": 0, "delay_max": 20.0, "trusted_ttl": 1000.0, **kwargs}
    return AuthThrottle(**settings)


def _fail(throttle: AuthThrottle, ip: str, account: str, times: int = 1) -> None:
    for _ in range(times):
        throttle.begin(ip, account, waited=True).failed()


def test_failures_from_one_source_refuse_every_login_from_it():
    throttle = _throttle(Clock(), per_ip=3)
    for user in ("u1", "u2", "u3"):
        _fail(throttle, "192.0.2.1", f"{user}@localhost")
    with pytest.raises(Throttled):
        throttle.begin("192.0.2.1", "bob@localhost")
    throttle.begin("192.0.2.2", "bob@localhost").succeeded()  # another source is not affected


def test_failures_for_an_account_from_one_source_refuse_only_that_pair():
    clock = Clock()
    throttle = _throttle(clock, per_account_source=3)
    _fail(throttle, "192.0.2.1", "alice@localhost", 3)
    with pytest.raises(Throttled):
        throttle.begin("192.0.2.1", "alice@localhost")
    throttle.begin("192.0.2.1", "bob@localhost").succeeded()
    throttle.begin("192.0.2.9", "alice@localhost").succeeded()
    clock.now += 100 / 3 + 0.1  # one failure's worth drained: one more try
    _fail(throttle, "192.0.2.1", "alice@localhost")
    with pytest.raises(Throttled):
        throttle.begin("192.0.2.1", "alice@localhost")


def test_over_the_account_limit_new_sources_wait_and_its_usual_source_does_not():
    clock = Clock()
    throttle = _throttle(clock, per_account=5)
    throttle.begin("192.0.2.77", "carol@localhost").succeeded()  # her usual address
    for i in range(5):  # five guesses from five addresses
        _fail(throttle, f"198.51.100.{i}", "carol@localhost")
    assert throttle.delay("192.0.2.77", "carol@localhost") == 0
    throttle.begin("192.0.2.77", "carol@localhost").succeeded()  # not locked out
    assert throttle.delay("203.0.113.1", "carol@localhost") == pytest.approx(1.0)
    with pytest.raises(Throttled):  # it must wait its turn first
        throttle.begin("203.0.113.2", "carol@localhost")
    throttle.begin("203.0.113.1", "carol@localhost", waited=True).failed()
    assert throttle.delay("203.0.113.3", "carol@localhost") == pytest.approx(2.0)  # doubling


def test_waiting_logins_of_one_account_go_one_at_a_time_up_to_the_longest_delay():
    clock = Clock()
    throttle = _throttle(clock, per_account=2, delay_max=5.0)
    _fail(throttle, "198.51.100.1", "carol@localhost", 2)
    waits = [throttle.delay(f"203.0.113.{i}", "carol@localhost") for i in range(8)]
    assert waits == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 0, 0, 0])  # 0: refused at begin
    with pytest.raises(Throttled):
        throttle.begin("203.0.113.6", "carol@localhost")


def test_the_account_limit_refuses_instead_of_waiting_when_the_delay_is_off():
    throttle = _throttle(Clock(), per_account=2, delay_max=0.0)
    _fail(throttle, "198.51.100.1", "carol@localhost", 2)
    assert throttle.delay("203.0.113.1", "carol@localhost") == 0
    with pytest.raises(Throttled):
        throttle.begin("203.0.113.1", "carol@localhost")


def test_an_unfinished_login_counts_as_a_failure_and_a_success_refunds_it():
    throttle = _throttle(Clock(), per_account_source=2)
    throttle.begin("192.0.2.1", "alice@localhost").succeeded()
    throttle.begin("192.0.2.1", "alice@localhost").succeeded()  # successes cost nothing
    first = throttle.begin("192.0.2.1", "alice@localhost")  # a SCRAM client-first …
    throttle.begin("192.0.2.1", "alice@localhost").abandoned()  # … and another, dropped
    with pytest.raises(Throttled):  # the one still open counts already
        throttle.begin("192.0.2.1", "alice@localhost")
    first.abandoned()
    first.succeeded()  # a finished attempt cannot be refunded later
    with pytest.raises(Throttled):
        throttle.begin("192.0.2.1", "alice@localhost")


def test_per_source_limits_ignore_exempt_addresses():
    throttle = _throttle(Clock(), per_ip=2, per_account_source=2, exempt=["127.0.0.1"])
    for _ in range(5):
        _fail(throttle, "127.0.0.1", "alice@localhost")
    throttle.begin("127.0.0.1", "alice@localhost").succeeded()
    _fail(throttle, "192.0.2.1", "alice@localhost", 2)
    with pytest.raises(Throttled):
        throttle.begin("192.0.2.1", "bob@localhost")


def test_a_source_is_remembered_for_its_ttl_and_exempt_addresses_never_are():
    clock = Clock()
    throttle = _throttle(clock, per_account=1, exempt=["127.0.0.0/8"])
    throttle.begin("192.0.2.7", "carol@localhost").succeeded()
    throttle.begin("127.0.0.1", "carol@localhost").succeeded()
    _fail(throttle, "198.51.100.1", "carol@localhost")
    assert throttle.delay("192.0.2.7", "carol@localhost") == 0
    assert throttle.delay("127.0.0.1", "carol@localhost") > 0  # a proxy speaks for anyone
    clock.now += 1000.5
    _fail(throttle, "198.51.100.1", "carol@localhost")
    assert throttle.delay("192.0.2.7", "carol@localhost") > 0  # forgotten after the ttl


def test_a_source_is_an_ipv6_slash_64_and_a_configurable_ipv4_prefix():
    default = SourcePrefixes()
    assert default("192.0.2.1") == "192.0.2.1"
    assert default("::ffff:192.0.2.1") == "192.0.2.1"
    assert default("2001:db8:1:2::1") == default("2001:db8:1:2:ffff:abcd:1:2") == "2001:db8:1:2::/64"
    assert default("2001:db8:1:3::1") != default("2001:db8:1:2::1")
    wide = SourcePrefixes(ipv4_prefix=24, ipv6_prefix=56)
    assert wide("192.0.2.1") == wide("192.0.2.200") == "192.0.2.0/24"
    assert wide("2001:db8:1:2::1") == wide("2001:db8:1:ff::1") == "2001:db8:1::/56"


def test_rotating_addresses_within_a_prefix_shares_one_limit():
    conns = ConnectionLimits(per_ip=0, pre_auth_per_ip=3, rate=0, burst=1)
    held = [conns.admit(f"2001:db8:1:2::{i}", 0) for i in range(1, 4)]
    with pytest.raises(Refused):
        conns.admit("2001:db8:1:2:dead:beef:0:1", 0)
    conns.admit("2001:db8:1:3::1", 0)  # the next /64 is someone else
    throttle = _throttle(Clock(), per_ip=2)
    _fail(throttle, "2001:db8:1:2::1", "a@localhost")
    _fail(throttle, "2001:db8:1:2::2", "b@localhost")
    with pytest.raises(Throttled):
        throttle.begin("2001:db8:1:2::3", "c@localhost")
    assert len(held) == 3


def test_the_listener_cap_counts_every_source_and_frees_on_authentication(caplog):
    conns = ConnectionLimits(per_ip=0, pre_auth_per_ip=0, rate=0, burst=1,
                             exempt=["127.0.0.0/8"])
    cap = PreAuthCap(3, "c2s listener test")
    held = [conns.admit(ip, 0, cap) for ip in ("192.0.2.1", "198.51.100.1", "127.0.0.1")]
    for ip in ("203.0.113.1", "203.0.113.2"):
        with pytest.raises(Refused) as refused:
            conns.admit(ip, 0, cap)
        assert refused.value.condition == "resource-constraint" and refused.value.polite
    assert sum("pre_auth_connections_per_listener" in r.message for r in caplog.records) == 1
    held[0].authenticated()
    held.append(conns.admit("203.0.113.1", 0, cap))
    held[1].release()
    held[1].release()  # twice is harmless
    assert cap.open == 2


def test_auth_throttle_tables_stay_bounded(monkeypatch):
    monkeypatch.setattr(limits, "MAX_TRACKED", 50)
    throttle = _throttle(Clock(), per_ip=10, per_account=10, per_account_source=10)
    for i in range(500):
        ip, account = f"10.1.{i // 256}.{i % 256}", f"user{i}@localhost"
        _fail(throttle, ip, account)
        throttle.begin(ip, account).succeeded()
        throttle.delay(ip, account)
    assert max(len(throttle._by_ip), len(throttle._by_account), len(throttle._by_pair),
               len(throttle._next_turn), len(throttle.trusted)) <= 50


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
