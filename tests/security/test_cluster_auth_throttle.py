"""Failed logins are counted cluster-wide: guesses spread over nodes add up."""

from __future__ import annotations

import pytest
import trio

from tests.harness import Cluster, wait_for
from tests.security.test_auth_abuse import login

pytestmark = pytest.mark.cluster

PASSWORD = "s3cret-Passw0rd-for-tests"
EXTRA = """plaintext_auth_on_loopback = true

[limits]
exempt_ips = []
auth_failures_per_account = 3
auth_failures_per_ip = 100
connection_rate_per_ip = 0
"""


def test_failures_on_two_nodes_throttle_the_account_on_the_third(tmp_path):
    cluster = Cluster(tmp_path, 3, EXTRA).start()
    try:
        cluster.leader()
        node1, node2, node3 = cluster.nodes
        wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes),
                 20, "gossip between all nodes")
        node1.admin("user.add", jid="target@localhost", password=PASSWORD)

        async def scenario():
            assert await login(node1.c2s_port, "target", "guess1") == b"not-authorized"
            assert await login(node1.c2s_port, "target", "guess2") == b"not-authorized"
            assert await login(node2.c2s_port, "target", "guess3") == b"not-authorized"
            # The third node saw no failure itself, yet refuses: the count is shared.
            with trio.fail_after(10):
                while await login(node3.c2s_port, "target", PASSWORD) != b"temporary-auth-failure":
                    await trio.sleep(0.05)  # the gossip delta may be a few ms behind
            assert await login(node3.c2s_port, "target", "guess4") == b"temporary-auth-failure"

        trio.run(scenario)
    finally:
        cluster.kill_all()
