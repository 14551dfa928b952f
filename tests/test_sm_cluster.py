"""Stream management across the cluster: slixmpp's xep_0198 plugin resumes a session on
another node than the one holding it, and a killed holder loses nothing the server
acknowledged. Three real node processes; kill -9 for the failures."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import pytest
from slixmpp.plugins.xep_0198.stanza import Ack
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.im_nodes import start_cluster, tls_extra
from tests.test_cluster_xmpp import account, client
from tests.test_sm_clients import lose_connection, reconnect
from tests.xmpp_client import TIMEOUT, run

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def tls(ca_file):
    return ca_file


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls):
    c = start_cluster(tmp_path_factory.mktemp("smcluster"), tls_extra(tls))
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
        await poll(lambda: holder(node3, f"{alice_jid}/phone") == "node2", 15,
                   "the cluster to see the session on node2")
        bob.send_message(f"{alice_jid}/phone", "after", mtype="chat")
        assert (await alice.next_message())["body"] == "after"
        alice.send_message(f"{bob_jid}/desk", "back", mtype="chat")
        assert (await bob.next_message())["body"] == "back"
        await alice.stop()
        await bob.stop()

    run(scenario(), timeout=120)


async def poll(predicate, timeout: float, what: str) -> None:
    """wait_for for a scenario: the event loop (the clients' writes) keeps running."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(predicate):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def metric(node, name: str, label: str) -> float:
    """One sample of the node's /metrics, 0 if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.ports['http']}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def all_acked(c, timeout: float = TIMEOUT) -> None:
    """Until the server acknowledged every stanza the client sent (its unacked queue is empty)."""
    sm = c.plugin["xep_0198"]
    deadline = asyncio.get_running_loop().time() + timeout
    while sm.unacked_queue:
        assert asyncio.get_running_loop().time() < deadline, "the server did not ack in time"
        sm.request_ack()
        await asyncio.sleep(0.2)


def test_killing_the_holder_of_a_detached_session_loses_nothing_acknowledged(tmp_path, tls):
    """alice's phone (on node1) sends with stream management and is acknowledged, loses its
    connection, and bob writes to it while it is detached; node1 is killed -9. alice's
    resumption on node2 fails cleanly, and her new session finds every message: what she
    sent reached bob, what bob sent her (parked in offline storage) reaches her, once."""
    cluster = start_cluster(tmp_path, tls_extra(tls))
    try:
        node1, node2, node3 = cluster.nodes
        alice_jid, bob_jid = account(node2, "smk-alice"), account(node3, "smk-bob")

        async def scenario():
            alice = sm_client(node1, tls, alice_jid, "phone")
            bob = client(node3, tls, bob_jid, "desk")
            assert await alice.start() and await bob.start()
            await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
            sent = [f"a{i}" for i in range(5)]
            for body in sent:
                alice.send_message(f"{bob_jid}/desk", body, mtype="chat")
            await all_acked(alice)
            await lose_connection(alice)
            await poll(lambda: holder_stream(node1, f"{alice_jid}/phone") == "detached", 15,
                       "node1 to see the session detached")
            for body in ("b1", "b2"):
                bob.send_message(f"{alice_jid}/phone", body, mtype="chat")
            await poll(lambda: metric(node1, "raftxmpp_sm_unacked_stanzas_total",
                                      'outcome="parked"') >= 2, 15, "node1 to park bob's messages")
            node1.kill()
            started = asyncio.get_running_loop().create_future()
            alice.add_event_handler("session_start", lambda _: started.done()
                                    or started.set_result(True))
            assert await reconnect(alice, node2.c2s_port) == "failed"
            await asyncio.wait_for(started, TIMEOUT * 2)  # a new session on node2
            alice.send_presence()
            got = sorted([(await alice.next_message(timeout=20))["body"] for _ in range(2)])
            assert got == ["b1", "b2"]
            await alice.expect_no_message(within=1.5)
            received = [(await bob.next_message())["body"] for _ in sent]
            assert received == sent
            await alice.stop()
            await bob.stop()

        run(scenario(), timeout=150)
    finally:
        cluster.kill_all()


def holder_stream(node, full_jid: str) -> str | None:
    for entry in node.admin("user.sessions", jid=full_jid.split("/")[0]):
        if entry["full_jid"] == full_jid:
            return entry["stream"]
    return None


def test_killing_the_node_of_an_attached_receiver_loses_nothing_acknowledged(tmp_path, tls):
    """Found by `python -m chaos.sm_workload --seed 18 --kill-every 10 --trace` (chaos/RESULTS.md):
    alice's phone is attached on node1 when node1 is killed -9; bob (on node3) writes to
    her full JID right after the kill (b1: the session table still names node1, so it is
    queued on the link to node1) and after gossip declared node1 dead (b2); the server
    acknowledges both. alice's resumption on node3 fails, she binds a new session there
    with initial presence, node1 comes back: both must reach her. (With her new session
    on node2 instead, both did.) b1 used to wait in node3's link queue for node1's next
    incarnation, which got it before gossip gave it any session table and lost it; now
    node3 routes it again itself once gossip declares node1 dead."""
    cluster = start_cluster(tmp_path, tls_extra(tls))
    try:
        node1, node2, node3 = cluster.nodes
        alice_jid, bob_jid = account(node2, "sma-alice"), account(node3, "sma-bob")

        async def scenario():
            alice = sm_client(node1, tls, alice_jid, "phone")
            bob = sm_client(node3, tls, bob_jid, "desk")
            assert await alice.start() and await bob.start()
            await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
            await asyncio.wait_for(bob.events["sm_enabled"].get(), TIMEOUT)
            await poll(lambda: holder(node3, f"{alice_jid}/phone") == "node1", 15,
                       "node3 to see alice on node1")
            node1.kill()
            bob.send_message(f"{alice_jid}/phone", "b1", mtype="chat")
            await all_acked(bob)
            await poll(lambda: "node1" not in node3.admin("node.status")["gossip"], 15,
                       "node3's gossip to declare node1 dead (its entries purged)")
            bob.send_message(f"{alice_jid}/phone", "b2", mtype="chat")
            await all_acked(bob)
            started = asyncio.get_running_loop().create_future()
            alice.add_event_handler("session_start", lambda _: started.done()
                                    or started.set_result(True))
            assert await reconnect(alice, node3.c2s_port) == "failed"
            await asyncio.wait_for(started, TIMEOUT * 2)  # a new session on node3
            alice.send_presence()
            node1.start()
            got = []
            with contextlib.suppress(Exception):
                for _ in range(2):
                    got.append((await alice.next_message(timeout=20))["body"])
            assert sorted(got) == ["b1", "b2"]
            await alice.stop()
            await bob.stop()

        run(scenario(), timeout=150)
    finally:
        cluster.kill_all()


def acks_seen(c) -> list[int]:
    """Every <a h/> the server sends `c` from now on, in order."""
    seen: list[int] = []
    c.register_handler(Callback("Test Ack Watch", MatchXPath(Ack.tag_name()),
                                lambda ack: seen.append(int(ack["h"])), instream=True))
    return seen


def bodies_acked(c) -> list[str]:
    """The bodies of `c`'s messages the server's acks covered, from now on."""
    acked: list[str] = []
    c.add_event_handler("stanza_acked", lambda s: acked.append(s["body"])
                        if getattr(s, "name", None) == "message" else None)
    return acked


def test_an_ack_covers_a_message_on_another_node_once_its_recipient_acked(cluster, tls):
    """Custody (issue 16): bob's message to alice's phone on another node is covered by
    bob's ack once alice's client acknowledged it (node1 reports it settled to node3)."""
    node1, _, node3 = cluster.nodes
    alice_jid, bob_jid = account(node1, "smc-alice"), account(node3, "smc-bob")

    async def scenario():
        alice = sm_client(node1, tls, alice_jid, "phone")
        bob = sm_client(node3, tls, bob_jid, "desk")
        acked = bodies_acked(bob)
        assert await alice.start() and await bob.start()
        await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
        await asyncio.wait_for(bob.events["sm_enabled"].get(), TIMEOUT)
        await poll(lambda: holder(node3, f"{alice_jid}/phone") == "node1", 15,
                   "node3 to see alice on node1")
        bob.send_message(f"{alice_jid}/phone", "across", mtype="chat")
        assert (await alice.next_message())["body"] == "across"
        await all_acked(bob)  # alice's plugin answers node1's <r/>; node1 tells node3
        assert acked == ["across"]
        await alice.stop()
        await bob.stop()

    run(scenario(), timeout=120)


def test_killing_the_node_of_a_receiver_that_had_not_acked_loses_nothing_acknowledged(
        tmp_path, tls):
    """Custody (issue 16), the receiving node's death: bob (node3) writes to alice's phone
    (node1, stream management, her client has not acknowledged it). bob's ack does not
    cover the message: node1 could die with it. node1 is killed -9; once gossip declares
    it dead, node3 routes bob's message again (alice has no session left: offline
    storage), bob gets an unsolicited <a/> covering it, and alice's next session gets it."""
    cluster = start_cluster(tmp_path, tls_extra(tls))
    try:
        node1, node2, node3 = cluster.nodes
        alice_jid, bob_jid = account(node2, "smn-alice"), account(node3, "smn-bob")

        async def scenario():
            alice = sm_client(node1, tls, alice_jid, "phone")
            alice.remove_handler("Stream Management Request Ack")  # she never acks
            bob = sm_client(node3, tls, bob_jid, "desk")
            assert await alice.start() and await bob.start()
            await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
            await asyncio.wait_for(bob.events["sm_enabled"].get(), TIMEOUT)
            await all_acked(bob)
            await poll(lambda: holder(node3, f"{alice_jid}/phone") == "node1", 15,
                       "node3 to see alice on node1")
            acks, acked = acks_seen(bob), bodies_acked(bob)
            bob.send_message(f"{alice_jid}/phone", "in flight", mtype="chat")
            assert (await alice.next_message())["body"] == "in flight"
            bob.plugin["xep_0198"].request_ack()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not acks:
                assert asyncio.get_running_loop().time() < deadline, "no <a/> for bob's <r/>"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert acked == [], "acknowledged while only node1 had it"
            node1.kill()
            await poll(lambda: "node1" not in node3.admin("node.status")["gossip"], 15,
                       "node3's gossip to declare node1 dead")
            deadline = asyncio.get_running_loop().time() + 20
            while acked != ["in flight"]:  # unsolicited: bob sends no <r/> now
                assert asyncio.get_running_loop().time() < deadline, \
                    "bob's ack never covered the message"
                await asyncio.sleep(0.1)
            started = asyncio.get_running_loop().create_future()
            alice.add_event_handler("session_start", lambda _: started.done()
                                    or started.set_result(True))
            assert await reconnect(alice, node2.c2s_port) == "failed"
            await asyncio.wait_for(started, TIMEOUT * 2)
            alice.send_presence()
            assert (await alice.next_message(timeout=20))["body"] == "in flight"
            await alice.stop()
            await bob.stop()

        run(scenario(), timeout=150)
    finally:
        cluster.kill_all()
