"""Stream management across the cluster: slixmpp's xep_0198 plugin resumes a session on
another node than the one holding it, and a killed holder loses nothing the server
acknowledged. Three real node processes; kill -9 for the failures."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import Cluster, wait_for
from tests.test_cluster_xmpp import account, client, tls_extra
from tests.test_sm_clients import lose_connection, reconnect
from tests.xmpp_client import TIMEOUT, run

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def tls(ca_file):
    return ca_file


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls):
    c = Cluster(tmp_path_factory.mktemp("smcluster"), 3, tls_extra(tls)).start()
    c.leader()
    wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in c.nodes), 20,
             "every node to see the others by gossip")
    yield c
    c.kill_all()


def sm_client(node, tls, jid: str, resource: str):
    c = client(node, tls, jid, resource, plugins=("xep_0198",))
    c.events = {name: asyncio.Queue() for name in ("sm_enabled", "session_resumed", "sm_failed")}
    for name, queue in c.events.items():
        c.add_event_handler(name, queue.put_nowait)
    return c


def holder(node, full_jid: str) -> str | None:
    """The node holding `full_jid`, as `node` sees the gossiped session table."""
    for entry in node.admin("user.sessions", jid=full_jid.split("/")[0]):
        if entry["full_jid"] == full_jid:
            return entry["node"]
    return None


def test_a_session_resumes_on_another_node_with_what_was_sent_meanwhile(cluster, tls):
    node1, node2, node3 = cluster.nodes
    alice_jid, bob_jid = account(node1, "smx-alice"), account(node3, "smx-bob")

    async def scenario():
        alice = sm_client(node1, tls, alice_jid, "phone")
        bob = client(node3, tls, bob_jid, "desk")
        assert await alice.start() and await bob.start()
        await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
        bob.send_message(f"{alice_jid}/phone", "before", mtype="chat")
        assert (await alice.next_message())["body"] == "before"
        await lose_connection(alice)
        for body in ("during1", "during2"):
            bob.send_message(f"{alice_jid}/phone", body, mtype="chat")
        assert await reconnect(alice, node2.c2s_port) == "resumed"
        got = [(await alice.next_message())["body"] for _ in range(2)]
        assert got == ["during1", "during2"]
        await alice.expect_no_message(within=1.5)  # exactly once
        wait_for(lambda: holder(node3, f"{alice_jid}/phone") == "node2", 15,
                 "the cluster to see the session on node2")
        bob.send_message(f"{alice_jid}/phone", "after", mtype="chat")
        assert (await alice.next_message())["body"] == "after"
        alice.send_message(f"{bob_jid}/desk", "back", mtype="chat")
        assert (await bob.next_message())["body"] == "back"
        await alice.stop()
        await bob.stop()

    run(scenario(), timeout=120)
