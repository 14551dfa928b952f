"""Failed logins are counted cluster-wide: guesses spread over nodes add up; and the
sources an account logged in from are known cluster-wide while someone guesses at it,
so its owner is let in at any node (issue 13, finding 3)."""

from __future__ import annotations

import pytest
import trio

from tests.harness import Cluster, wait_for
from tests.security.test_auth_abuse import login

pytestmark = pytest.mark.cluster

PASSWORD = "s3cret-Passw0rd-for-tests"
# auth_failure_delay_max = 0: past the account limit, new sources are refused instead of
# waiting, so what each node counts shows without timing anything.
EXTRA = """plaintext_auth_on_loopback = true

[limits]
exempt_ips = []
auth_failures_per_account = 3
auth_failures_per_ip = 100
auth_failure_delay_max = 0.0
connection_rate_per_ip = 0
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("throttle"), 3, EXTRA)
    try:
        cluster.start()
        cluster.leader()
        wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes),
                 20, "gossip between all nodes")
        for user in ("target", "carol"):
            cluster.nodes[0].admin("user.add", jid=f"{user}@localhost", password=PASSWORD)
        yield cluster
    finally:
        cluster.kill_all()


async def _until(attempt, expected: bytes, what: str) -> None:
    with trio.fail_after(10):  # the gossip delta may be a few ms behind
        while await attempt() != expected:
            await trio.sleep(0.05)


def test_failures_on_two_nodes_throttle_the_account_on_the_third(cluster):
    node1, node2, node3 = cluster.nodes

    async def scenario():
        assert await login(node1.c2s_port, "target", "guess1", "127.0.1.1") == b"not-authorized"
        assert await login(node1.c2s_port, "target", "guess2", "127.0.1.2") == b"not-authorized"
        assert await login(node2.c2s_port, "target", "guess3", "127.0.1.3") == b"not-authorized"
        # The third node saw no failure itself, yet refuses a new source: the count is shared.
        fresh = iter(f"127.0.2.{i}" for i in range(1, 250))
        await _until(lambda: login(node3.c2s_port, "target", PASSWORD, next(fresh)),
                     b"temporary-auth-failure", "node3 to count the other nodes' failures")
        assert await login(node3.c2s_port, "target", "guess4", "127.0.1.4") == \
            b"temporary-auth-failure"

    trio.run(scenario)


def test_the_owner_is_let_in_at_any_node_from_where_she_logged_in_before(cluster):
    node1, node2, node3 = cluster.nodes
    home = "127.0.3.7"

    async def scenario():
        assert await login(node1.c2s_port, "carol", PASSWORD, home) == b"success"
        for i, node in enumerate((node2, node3, node2)):
            assert await login(node.c2s_port, "carol", f"guess{i}", f"127.0.4.{i}") == \
                b"not-authorized"
        fresh = iter(f"127.0.5.{i}" for i in range(1, 250))
        await _until(lambda: login(node3.c2s_port, "carol", PASSWORD, next(fresh)),
                     b"temporary-auth-failure", "node3 to refuse carol from a new address")
        # node3 never saw carol log in: node1 shares her usual source once she is attacked.
        await _until(lambda: login(node3.c2s_port, "carol", PASSWORD, home), b"success",
                     "carol to log in at node3 from her usual address")
        assert await login(node2.c2s_port, "carol", PASSWORD, home) == b"success"

    trio.run(scenario)
