"""Authentication abuse against a running node: failed logins are throttled per client
address and per account with <temporary-auth-failure/>, accounts that exist and accounts
that do not look the same at every step, and secrets are compared in constant time."""

from __future__ import annotations

import base64
import inspect
import re

import pytest
import scramp.core

from raftxmpp import credentials
from tests.security.conftest import SASL, c2s_port, opened, plain_auth

FAILURE = re.compile(rb"<failure xmlns=['\"]" + SASL.encode() + rb"['\"]><([a-z-]+)/>")


async def login(port: int, user: str, password: str, source: str | None = None,
                timeout: float = 5) -> bytes:
    """One PLAIN attempt on a fresh connection (from `source`, an address of 127/8):
    'success' or the failure condition."""
    raw = await opened(port, source=source)
    await raw.send(plain_auth(user, password))
    data = await raw.until(b">", timeout=timeout)
    if b"<failure" in data:
        data += await raw.until(b"</failure>", timeout=5)
    await raw.aclose()
    if b"<success" in data:
        return b"success"
    match = FAILURE.search(data)
    assert match, data
    return match.group(1)


@pytest.fixture
async def throttled_node(make_node):
    return await make_node(limits={"auth_failures_per_ip": 100, "auth_failures_per_account": 3,
                                   "auth_failures_per_account_and_ip": 3,
                                   "connection_rate_per_ip": 0})


async def test_failures_for_one_account_from_one_address_throttle_that_pair_only(throttled_node):
    port = c2s_port(throttled_node)
    assert [await login(port, "alice", "wrong") for _ in range(3)] == [b"not-authorized"] * 3
    assert await login(port, "alice", "s3cret-Passw0rd-for-tests") == b"temporary-auth-failure"
    assert await login(port, "bob", "s3cret-Passw0rd-for-tests") == b"success"
    # alice elsewhere is not refused (she waits her turn: tests/security/test_login_lockout.py)
    assert await login(port, "alice", "s3cret-Passw0rd-for-tests", "127.0.0.2") == b"success"


async def test_a_missing_account_is_throttled_exactly_like_a_real_one(throttled_node):
    port = c2s_port(throttled_node)
    ghost = [await login(port, "ghost", "wrong") for _ in range(4)]
    alice = [await login(port, "alice", "wrong") for _ in range(4)]
    assert ghost == alice == [b"not-authorized"] * 3 + [b"temporary-auth-failure"]


async def test_failures_from_one_address_throttle_every_account_from_it(make_node):
    node = await make_node(limits={"auth_failures_per_ip": 3, "auth_failures_per_account": 0,
                                   "connection_rate_per_ip": 0})
    port = c2s_port(node)
    for user in ("u1", "u2", "u3"):  # spread over accounts: the address still adds up
        assert await login(port, user, "guess") == b"not-authorized"
    assert await login(port, "bob", "s3cret-Passw0rd-for-tests") == b"temporary-auth-failure"


async def test_three_failures_on_one_connection_end_it_with_policy_violation(make_node):
    node = await make_node()
    raw = await opened(c2s_port(node))
    for _ in range(3):
        await raw.send(plain_auth("alice", "wrong"))
        await raw.until(b"</failure>")
    data = await raw.closed()
    assert b"policy-violation" in data and data.rstrip().endswith(b"</stream:stream>")


async def scram_first(port: int, user: str) -> bytes | str:
    """The server-first-message for `user`, or the failure condition."""
    raw = await opened(port)
    client_first = f"n,,n={user},r=clientnonce0123456789".encode()
    await raw.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>"
                   f"{base64.b64encode(client_first).decode()}</auth>".encode())
    data = await raw.until(b">", timeout=10)
    data += await raw.until(b"</challenge>" if b"<challenge" in data else b"</failure>")
    await raw.aclose()
    if b"<challenge" not in data:
        return FAILURE.search(data).group(1).decode()
    payload = re.search(rb"<challenge[^>]*>([^<]*)</challenge>", data).group(1)
    return base64.b64decode(payload)


def scram_params(server_first: bytes) -> dict[str, str]:
    return dict(part.split("=", 1) for part in server_first.decode().split(","))


async def test_scram_shows_a_missing_account_the_configured_iteration_count(make_node):
    node = await make_node(c2s={"scram_iterations": 5000})
    port = c2s_port(node)
    await node.store.register("carol@localhost", "another-password")  # made with 5000
    real = scram_params(await scram_first(port, "carol"))
    ghost = scram_params(await scram_first(port, "nobody"))
    ghost_again = scram_params(await scram_first(port, "nobody"))
    assert real["i"] == ghost["i"] == "5000"
    assert ghost["s"] == ghost_again["s"]  # a stable fake salt: it does not give itself away
    assert len(base64.b64decode(ghost["s"])) >= 16


async def test_a_throttled_scram_login_is_refused_before_any_salt_is_shown(throttled_node):
    port = c2s_port(throttled_node)
    for user in ("alice", "ghost"):
        for _ in range(3):
            assert await login(port, user, "wrong") == b"not-authorized"
        assert await scram_first(port, user) == "temporary-auth-failure"


def test_password_and_proof_checks_compare_in_constant_time():
    # PLAIN is checked against the stored key with hmac.compare_digest; SCRAM proofs in
    # scramp with the same (CVE-2021-32921 was a plain == on a secret).
    assert "hmac.compare_digest" in inspect.getsource(credentials.verify_password)
    assert "compare_digest(" in inspect.getsource(scramp.core._check_client_key)


def test_a_wrong_password_and_a_missing_account_cost_the_same_hashing():
    from raftxmpp.c2s import sasl

    calls = []
    real = credentials.verify_password

    def counting(keys, password):
        calls.append(keys["SCRAM-SHA-256"]["iterations"])
        return real(keys, password)

    creds = credentials.derive("right", 4096)
    credentials.verify_password, saved = counting, credentials.verify_password
    try:
        for user, lookup in (("alice", lambda _: creds), ("ghost", lambda _: None)):
            server = sasl.SaslServer("PLAIN", "localhost", lookup, ["PLAIN"],
                                     unknown_user_iterations=4096)
            with pytest.raises(sasl.SaslFailure) as failed:
                server.start(f"\0{user}\0wrong".encode())
            assert failed.value.condition == "not-authorized"
    finally:
        credentials.verify_password = saved
    assert calls == [4096, 4096]
