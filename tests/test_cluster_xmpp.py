"""The cluster as clients see it: three real node processes, slixmpp clients on different nodes."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
import slixmpp

from tests.harness import Cluster, NodeProcess, free_ports, wait_for
from tests.im_nodes import start_cluster, tls_extra
from tests.xmpp_client import Client, run, unique

pytestmark = pytest.mark.cluster

PASSWORD = "cluster-password"


@pytest.fixture(scope="module")
def tls(ca_file):
    """The test CA and the node certificate it issued (tests/conftest.py)."""
    return ca_file


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls):
    c = start_cluster(tmp_path_factory.mktemp("cluster"), tls_extra(tls))
    yield c
    c.kill_all()


def account(node, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


def client(node, tls, jid: str, resource: str | None = None, **kwargs) -> Client:
    full = f"{jid}/{resource}" if resource else jid
    return Client(full, PASSWORD, node.c2s_port, tls / "ca.pem", **kwargs)


async def befriend(a: Client, b: Client) -> None:
    """A mutual subscription through the real protocol."""
    for c in (a, b):
        c.auto_authorize = True
        c.auto_subscribe = True
    a.send_presence(pto=b.boundjid.bare, ptype="subscribe")
    await a.presence_from(b.boundjid.bare)
    await b.presence_from(a.boundjid.bare)


def test_chat_and_presence_between_clients_on_different_nodes(cluster, tls):
    node1, node2, _ = cluster.nodes
    alice_jid, bob_jid = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice, bob = client(node1, tls, alice_jid), client(node2, tls, bob_jid)
        assert await alice.start() and await bob.start()
        await befriend(alice, bob)
        alice.send_message(mto=bob_jid, mbody="across the cluster", mtype="chat")
        assert (await bob.next_message())["body"] == "across the cluster"
        bob.send_message(mto=alice.boundjid, mbody="and back", mtype="chat")
        assert (await alice.next_message())["body"] == "and back"
        await bob.stop()
        await alice.presence_from(bob_jid, "unavailable")
        await alice.stop()

    run(scenario())


def test_bare_jid_message_goes_to_the_highest_priority_resource_on_any_node(cluster, tls):
    node1, node2, node3 = cluster.nodes
    sender_jid, rcpt_jid = account(node1, "s"), account(node2, "r")

    async def scenario():
        low = client(node2, tls, rcpt_jid, "low")
        high = client(node3, tls, rcpt_jid, "high")
        sender = client(node1, tls, sender_jid)
        assert await low.start(priority=1) and await high.start(priority=10)
        assert await sender.start()
        await _until(lambda: node1.admin("node.status")["sessions_by_node"].get("node3", 0) >= 1)
        sender.send_message(mto=rcpt_jid, mbody="to the top", mtype="chat")
        assert (await high.next_message())["body"] == "to the top"
        await low.expect_no_message(within=0.5)
        for c in (low, high, sender):
            await c.stop()

    run(scenario())


def test_offline_message_stored_on_one_node_is_delivered_on_login_at_another(cluster, tls):
    node1, _, node3 = cluster.nodes
    sender_jid, rcpt_jid = account(node1, "os"), account(node1, "or")

    async def scenario():
        sender = client(node1, tls, sender_jid)
        assert await sender.start()
        sender.send_message(mto=rcpt_jid, mbody="stored via node1", mtype="chat")
        await sender.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        await sender.stop()
        rcpt = client(node3, tls, rcpt_jid, plugins=("xep_0203",))
        assert await rcpt.start()
        msg = await rcpt.next_message()
        assert msg["body"] == "stored via node1" and msg["delay"]["stamp"] is not None
        await rcpt.stop()

    run(scenario())


def test_two_sessions_coming_online_together_share_the_offline_queue_exactly_once(cluster, tls):
    """Claim, deliver, remove by id: concurrent logins on two nodes never both deliver a
    message, and every stored message reaches one of them."""
    node1, node2, node3 = cluster.nodes
    sender_jid, rcpt_jid = account(node1, "qs"), account(node1, "qr")
    bodies = [f"queued {i}" for i in range(8)]

    async def scenario():
        sender = client(node1, tls, sender_jid)
        assert await sender.start()
        for body in bodies:
            sender.send_message(mto=rcpt_jid, mbody=body, mtype="chat")
        await sender.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        await sender.stop()
        first, second = client(node2, tls, rcpt_jid, "one"), client(node3, tls, rcpt_jid, "two")
        assert all(await asyncio.gather(first.start(), second.start()))
        got: list[str] = []
        while len(got) < len(bodies):
            received = await asyncio.wait(
                [asyncio.ensure_future(c.next_message()) for c in (first, second)],
                timeout=15, return_when=asyncio.FIRST_COMPLETED)
            done, pending = received
            assert done, f"only {len(got)} of {len(bodies)} offline messages arrived"
            for task in pending:
                task.cancel()
            got.extend(task.result()["body"] for task in done)
        for c in (first, second):
            await c.expect_no_message(within=1.0)
        assert sorted(got) == sorted(bodies)
        await first.stop()
        await second.stop()

    run(scenario())
    wait_for(lambda: all(n.admin("state.digest") == cluster.nodes[0].admin("state.digest")
                         for n in cluster.nodes), 10, "equal digests")


def test_roster_push_reaches_a_resource_on_another_node(cluster, tls):
    node1, node2, _ = cluster.nodes
    jid = account(node1, "pusher")

    async def scenario():
        here, there = client(node1, tls, jid, "here"), client(node2, tls, jid, "there")
        assert await here.start() and await there.start()
        pushed = asyncio.get_running_loop().create_future()
        there.add_event_handler("roster_update", lambda iq: pushed.done() or pushed.set_result(iq))
        await _until(lambda: node1.admin("node.status")["sessions_by_node"].get("node2", 0) >= 1)
        await here.update_roster("friend@localhost", name="Friend")
        update = await asyncio.wait_for(pushed, 10)
        assert "friend@localhost" in update["roster"]["items"]
        await here.stop()
        await there.stop()

    run(scenario())


def test_a_killed_nodes_sessions_are_purged_and_contacts_see_unavailable(tmp_path, tls):
    cluster = Cluster(tmp_path, 3, tls_extra(tls)).start()
    try:
        cluster.leader()
        node1, _, node3 = cluster.nodes
        wait_for(lambda: len(node1.admin("node.status")["gossip"]) == 3, 20, "gossip")
        alice_jid, bob_jid = account(node1, "watcher"), account(node3, "doomed")

        async def scenario():
            alice, bob = client(node1, tls, alice_jid), client(node3, tls, bob_jid)
            assert await alice.start() and await bob.start()
            await befriend(alice, bob)
            node3.kill()
            gone = await alice.presence_from(bob_jid, "unavailable", timeout=15)
            assert gone["from"].bare == bob_jid
            bob.abort()
            # bob logs in again on a surviving node and finds his roster.
            again = client(node1, tls, bob_jid)
            assert await again.start()
            assert alice_jid in again.client_roster
            await again.stop()
            await alice.stop()

        run(scenario())
        assert node1.admin("node.status")["sessions_by_node"].get("node3", 0) == 0
    finally:
        cluster.kill_all()


def test_client_writes_resume_after_the_leader_is_killed(tmp_path, tls):
    cluster = Cluster(tmp_path, 3, tls_extra(tls)).start()
    try:
        leader = cluster.leader()
        first, second = [n for n in cluster.nodes if n is not leader]
        jid = account(first, "writer")
        leader.kill()

        async def scenario():
            c = client(first, tls, jid, "one")
            assert await c.start()
            await c.update_roster("after-failover@localhost", name="ok", timeout=15)
            await c.stop()
            other = client(second, tls, jid, "two")
            assert await other.start()  # fetches the roster from the other survivor
            assert "after-failover@localhost" in other.client_roster
            await other.stop()

        run(scenario())
    finally:
        cluster.kill_all()


def test_a_node_joins_at_runtime_then_is_removed(tmp_path):
    cluster = Cluster(tmp_path, 3).start()
    try:
        cluster.leader()
        node1 = cluster.nodes[0]
        node1.admin("user.add", jid="early@localhost", password=PASSWORD)
        ports = dict(zip(("raft", "link", "c2s", "c2s_tls", "http"), free_ports(5), strict=True))
        node4 = NodeProcess(tmp_path, "node4", ports, [], "")
        node4.config_path.write_text(node4.config_path.read_text().replace(
            "[cluster]", '[cluster]\nsecret = "test-cluster-secret-0123456789abcdef"'))
        node4.start("--join", f"127.0.0.1:{node1.ports['link']}")
        cluster.nodes.append(node4)
        wait_for(lambda: "early@localhost" in node4.admin("user.list", current=True), 30,
                 "node4 to catch up by snapshot and log")
        members = set(node1.status()["members"])
        assert node4.raft_address in members and len(members) == 4
        node4.admin("user.add", jid="late@localhost", password=PASSWORD)
        assert "late@localhost" in node1.admin("user.list", current=True)
        node1.admin("cluster.change", action="remove", address=node4.raft_address)
        wait_for(lambda: node4.raft_address not in node1.status()["members"], 15, "removal")
        wait_for(lambda: node4.admin("node.status")["removed"], 15, "node4 to know it was removed")
        assert http_status(ports["http"], "/ready") == 503
        node1.admin("user.add", jid="after-removal@localhost", password=PASSWORD)
        # Restarted on its old data dir, it refuses to serve instead of queueing
        # registrations into a cluster that removed it (issue 12, problem 6).
        node4.kill()
        with pytest.raises(AssertionError, match="was removed from its cluster"):
            node4.start()
    finally:
        cluster.kill_all()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_a_node_without_majority_routes_but_refuses_durable_writes_with_a_wait_error(tmp_path, tls):
    cluster = Cluster(tmp_path, 3, tls_extra(tls)).start()
    try:
        cluster.leader()
        node1, node2, node3 = cluster.nodes
        alice_jid, bob_jid = account(node1, "minority-a"), account(node1, "minority-b")

        async def scenario():
            alice, bob = client(node1, tls, alice_jid), client(node1, tls, bob_jid)
            assert await alice.start() and await bob.start()
            node2.kill()
            node3.kill()
            alice.send_message(mto=bob.boundjid, mbody="still routed", mtype="chat")
            assert (await bob.next_message())["body"] == "still routed"
            iq = alice.make_iq_set(ito=None)
            iq.enable("roster")
            iq["roster"]["items"] = {"carol@localhost": {"name": "Carol"}}
            try:
                await iq.send(timeout=15)
            except slixmpp.exceptions.IqError as exc:
                assert exc.iq["error"]["type"] == "wait"
            else:
                raise AssertionError("a roster change was acknowledged without a majority")
            await alice.stop()
            await bob.stop()

        run(scenario())
    finally:
        cluster.kill_all()


def test_a_node_cut_off_from_the_majority_does_not_answer_from_its_possibly_stale_copy(
        tmp_path, tls):
    """Issue 12, problem 6: vCard, private XML, the block list and a component's
    registration were read from the local copy, which on a node cut off from the
    majority may be old (a replaced vCard, a removed component). They are read behind a
    Raft barrier now: the cut-off node answers "wait" (or refuses the component)."""
    import signal
    from xml.etree import ElementTree as ET

    from tests.test_components_cluster import SECRET as COMPONENT_SECRET
    from tests.test_components_cluster import RawComponent

    cluster = Cluster(tmp_path, 3, tls_extra(tls)).start()
    try:
        cluster.leader()
        node1, node2, node3 = cluster.nodes
        node1.admin("component.add", domain="comp.localhost", secret=COMPONENT_SECRET)
        alice_jid = account(node1, "cutoff")
        queries = {"vcard": "<vCard xmlns='vcard-temp'/>",
                   "private": "<query xmlns='jabber:iq:private'><x xmlns='urn:x:test'/></query>",
                   "blocklist": "<blocklist xmlns='urn:xmpp:blocking'/>"}

        async def scenario():
            alice = client(node1, tls, alice_jid)
            assert await alice.start()
            for node in (node2, node3):
                node.kill(signal.SIGSTOP)
            await _until(lambda: node1.status()["leader"] is None, timeout=20)
            for name, payload in queries.items():
                iq = alice.make_iq_get(ito=alice.boundjid.bare if name == "vcard" else None)
                iq.set_payload(ET.fromstring(payload))
                try:
                    await iq.send(timeout=20)
                except slixmpp.exceptions.IqError as exc:
                    assert exc.iq["error"]["type"] == "wait", (name, exc.iq)
                else:
                    raise AssertionError(f"{name} answered from a node without a majority")
            alice.abort()

        run(scenario(), timeout=120)
        assert RawComponent.refusal(node1, "comp.localhost", COMPONENT_SECRET) == \
            "remote-connection-failed"
    finally:
        for node in cluster.nodes:
            node.kill(signal.SIGCONT)
        cluster.kill_all()
