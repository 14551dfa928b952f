"""Issue 13, finding 3: nobody can lock another user out by guessing their password.

Failed logins are counted per source, per account and source, and per account; past
the per-account limit, logins from sources the account never logged in from wait
(they are not refused), and its owner at a source she logged in from before does not
wait at all. An exchange left unfinished is a guess like any other. Clients here are
many: each binds its own address of 127/8.
"""

from __future__ import annotations

import base64
import time

import pytest
import trio

from tests.security.conftest import PASSWORD, SASL, c2s_port, opened
from tests.security.test_auth_abuse import login

CAROL_HOME = "127.0.0.5"


@pytest.fixture
async def node(make_node):
    """Default login limits (10 failures per account, 5 per account and address, 20 per
    address), applied to loopback too; carol logged in from her usual address once."""
    node = await make_node(limits={"connection_rate_per_ip": 0}, users=("alice", "carol"))
    assert await login(c2s_port(node), "carol", PASSWORD, CAROL_HOME) == b"success"
    return node


async def test_ten_wrong_passwords_from_any_addresses_do_not_lock_carol_out(node):
    port = c2s_port(node)
    guesses = ["127.0.0.2"] * 5 + [f"127.0.0.{10 + i}" for i in range(5)]  # one address, five
    for i, source in enumerate(guesses):
        assert await login(port, "carol", f"guess{i}", source) == b"not-authorized"
    assert await login(port, "carol", PASSWORD, CAROL_HOME) == b"success"
    # The address that guessed five times is refused for carol (and only for her).
    assert await login(port, "carol", PASSWORD, "127.0.0.2") == b"temporary-auth-failure"
    assert await login(port, "alice", PASSWORD, "127.0.0.2") == b"success"


async def test_over_the_account_limit_a_new_address_waits_and_is_not_refused(node):
    port = c2s_port(node)
    for i in range(10):
        assert await login(port, "carol", f"guess{i}", f"127.0.0.{10 + i}") == b"not-authorized"
    started = time.monotonic()
    assert await login(port, "carol", PASSWORD, "127.0.0.40", timeout=30) == b"success"
    assert time.monotonic() - started >= 0.9  # one failure over the limit: 1 s
    assert await login(port, "carol", PASSWORD, CAROL_HOME) == b"success"
    assert await login(port, "alice", PASSWORD, "127.0.0.40") == b"success"  # others: no wait


async def test_guesses_from_new_addresses_wait_their_turn_one_at_a_time(node):
    port = c2s_port(node)
    for i in range(10):
        await login(port, "carol", f"guess{i}", f"127.0.0.{10 + i}")
    started = time.monotonic()
    results: list[bytes] = []

    async def guess(i: int) -> None:
        results.append(await login(port, "carol", f"parallel{i}", f"127.0.0.{50 + i}", 30))

    async with trio.open_nursery() as nursery:
        for i in range(3):  # their turns: 1 s, 2 s and 3 s from now
            nursery.start_soon(guess, i)
    assert sorted(results) == [b"not-authorized"] * 3
    assert time.monotonic() - started >= 2.9


async def test_an_unfinished_scram_exchange_counts_as_a_failed_login(make_node):
    node = await make_node(limits={"auth_failures_per_ip": 3, "connection_rate_per_ip": 0})
    port = c2s_port(node)
    first = base64.b64encode(b"n,,n=alice,r=unfinished0123456789").decode()
    held = []
    for i in range(3):  # the salt, then silence: two dropped, one still open
        raw = await opened(port, source="127.0.0.2")
        await raw.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>".encode())
        await raw.until(b"</challenge>")
        if i < 2:
            await raw.aclose()
        else:
            held.append(raw)
    # Three guesses from 127.0.0.2 (the limit per address is 3): it is refused now.
    assert await login(port, "bob", PASSWORD, "127.0.0.2") == b"temporary-auth-failure"
    assert await login(port, "alice", PASSWORD, "127.0.0.3") == b"success"
    await held[0].aclose()
