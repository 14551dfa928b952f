"""The web on a 3-node cluster of real processes: BOSH without sticky sessions, uploads
that survive the node that received them, and see-other-uri when a node stops."""

from __future__ import annotations

import hashlib
import os
import re
import signal

import pytest
import trio

from tests.harness import Cluster, wait_for
from tests.test_upload import request_slot, target, urls
from tests.web_client import PASSWORD, BoshClient, arequest, ws_login

pytestmark = pytest.mark.cluster


def start(base, size: int = 3) -> Cluster:
    cluster = Cluster(base, size).start()
    cluster.leader()
    wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == size for n in cluster.nodes),
             20, "every node to see the others by gossip")
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start(tmp_path_factory.mktemp("web-cluster"))
    for user in ("alice", "bob", "carol"):
        c.nodes[0].admin("user.add", jid=f"{user}@localhost", password=PASSWORD)
    yield c
    c.kill_all()


def http_port(node) -> int:
    return node.ports["http"]


def upload_files(node) -> list:
    root = node.data_dir / "uploads" / "files"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_a_bosh_session_continues_on_any_node(cluster):
    """No sticky load balancer: each request of one BOSH session goes to the next node;
    the owner (node1 created it) serves every request, forwarded over the node link,
    with the rid sequence unbroken, and the user chats with a WebSocket user on node3."""
    ports = [http_port(n) for n in cluster.nodes]
    client = BoshClient(*ports)
    assert await client.login("alice", "spread") == "alice@localhost/spread"
    sessions = cluster.nodes[0].admin("node.status")["sessions_by_node"]
    assert sessions.get("node1", 0) >= 1
    await client.send("<presence xmlns='jabber:client'/>")
    bob = await ws_login(ports[2], "bob", "ws3")
    await bob.send("<message xmlns='jabber:client' to='alice@localhost/spread' type='chat'>"
                   "<body>from node3</body></message>")
    assert "from node3" in await client.send_until("from node3")
    for n in range(6):  # requests through every node, in sequence
        await client.send(f"<message xmlns='jabber:client' to='bob@localhost/ws3' type='chat'>"
                          f"<body>bosh {n}</body></message>")
    for n in range(6):
        assert f"bosh {n}" in await bob.receive_until(r"<body>bosh \d")
    answer = await client.send(type="terminate")
    assert "type='terminate'" in answer
    await bob.aclose()


async def test_an_upload_survives_the_node_that_received_it(cluster):
    """The PUT is answered 201 only when a majority holds the file; after the receiving
    node is killed, a GET through a survivor serves the same bytes."""
    node1, node2, node3 = cluster.nodes
    alice = await ws_login(http_port(node1), "alice", "up")
    data = os.urandom(700_000)  # several link chunks
    put_url, get_url = urls(await request_slot(alice, "photo.jpg", len(data), "image/jpeg"))
    status, _, _ = await arequest(http_port(node2), "PUT", target(put_url), data,
                                  {"Content-Type": "image/jpeg"})
    assert status == 201
    slot = put_url.split("/")[4]
    holders = [n for n in cluster.nodes if any(p.name == slot for p in upload_files(n))]
    assert len(holders) >= 2
    await alice.aclose()
    node2.kill()
    try:
        for survivor in (node1, node3):
            status, headers, body = await arequest(http_port(survivor), "GET", target(get_url))
            assert status == 200 and headers["content-type"] == "image/jpeg"
            assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        node2.start()


async def test_a_node_that_missed_an_upload_fetches_it_from_a_peer(tmp_path):
    """A member that was down during the upload serves the GET by fetching a verified
    copy from a node that holds it."""
    cluster = start(tmp_path)
    try:
        node1, node2, node3 = cluster.nodes
        node1.admin("user.add", jid="dave@localhost", password=PASSWORD)
        node3.kill()
        cluster.leader()
        dave = await ws_login(http_port(node1), "dave", "up")
        data = b"missed while down\n" * 1000
        put_url, get_url = urls(await request_slot(dave, "notes.txt", len(data)))
        status, _, _ = await arequest(http_port(node1), "PUT", target(put_url), data,
                                      {"Content-Type": "text/plain"})
        assert status == 201
        node3.start()
        slot = put_url.split("/")[4]
        wait_for(lambda: node3.admin("node.status")["raft"]["ready"], 20, "node3 to catch up")
        assert not any(p.name == slot for p in upload_files(node3))
        status, _, body = await arequest(http_port(node3), "GET", target(get_url))
        assert (status, body) == (200, data)
        assert any(p.name == slot for p in upload_files(node3))
    finally:
        cluster.kill_all()


async def test_a_put_without_a_majority_is_refused(tmp_path):
    """With two of three nodes down the file cannot reach a majority: 503, and the slot
    stays unused."""
    cluster = start(tmp_path)
    try:
        node1, node2, node3 = cluster.nodes
        node1.admin("user.add", jid="erin@localhost", password=PASSWORD)
        erin = await ws_login(http_port(node1), "erin", "up")
        put_url, _ = urls(await request_slot(erin, "lonely.txt", 5))
        node2.kill()
        node3.kill()
        status, _, _ = await arequest(http_port(node1), "PUT", target(put_url), b"alone",
                                      {"Content-Type": "text/plain"})
        assert status == 503
        assert upload_files(node1) == []
    finally:
        cluster.kill_all()


async def test_a_bosh_session_whose_owner_died_is_item_not_found_elsewhere(tmp_path):
    cluster = start(tmp_path)
    try:
        node1, node2, _ = cluster.nodes
        node1.admin("user.add", jid="frank@localhost", password=PASSWORD)
        client = BoshClient(http_port(node1))
        await client.login("frank", "gone")
        node1.kill()
        wait_for(lambda: "node1" not in node2.admin("node.status")["gossip"], 10,
                 "node1 to be declared dead")
        client.ports = [http_port(node2)]
        answer = await client.send()
        assert re.search(r"type='terminate'.*condition='item-not-found'", answer)
    finally:
        cluster.kill_all()


async def test_a_stopping_node_sends_websocket_clients_elsewhere(tmp_path):
    """RFC 7395 §3.6.1: the server's <close/> may carry see-other-uri; a node shutting
    down points its WebSocket clients at another member."""
    cluster = start(tmp_path)
    try:
        node1, node2, _ = cluster.nodes
        node1.admin("user.add", jid="grace@localhost", password=PASSWORD)
        grace = await ws_login(http_port(node1), "grace", "moving")
        node1.kill(signal.SIGTERM)
        close = await grace.receive_until("<close")
        match = re.search(r'see-other-uri="([^"]+)"', close)
        assert match, close
        assert match.group(1).startswith("ws://127.0.0.1:")
        assert match.group(1).endswith("/xmpp-websocket")
        assert match.group(1) != f"ws://127.0.0.1:{http_port(node1)}/xmpp-websocket"
    finally:
        cluster.kill_all()
        await trio.sleep(0)
