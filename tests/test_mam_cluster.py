"""The message archive on three real nodes: history written through one node pages from
another; an acknowledged message outlives kill -9 of its node; a wiped node catches the
archive up from a snapshot and the log; the operator's purge reaches every node."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

from tests.harness import Cluster, wait_for
from tests.im_nodes import BUSY, tls_extra
from tests.test_im_slixmpp import PASSWORD
from tests.test_mam import stanza_id
from tests.xmpp_client import TIMEOUT, Client, run, unique


def start_cluster(base, ca_file, snapshot_interval: float = 60.0) -> Cluster:
    """tests.im_nodes.start_cluster, with [cluster] snapshot_interval set in each config."""
    for attempt in range(3):
        cluster = Cluster(base / f"attempt{attempt}", 3, tls_extra(ca_file))
        for node in cluster.nodes:
            text = node.config_path.read_text()
            node.config_path.write_text(
                text.replace("[cluster]\n", f"[cluster]\nsnapshot_interval = {snapshot_interval}\n"))
        try:
            cluster.start()
        except AssertionError as exc:
            cluster.kill_all()
            if attempt == 2 or not any(sign in str(exc) for sign in BUSY):
                raise
            continue
        cluster.leader()
        wait_for(lambda c=cluster: all(len(n.admin("node.status")["gossip"]) == 3
                                       for n in c.nodes), 20, "every node to see the others")
        return cluster
    raise AssertionError("unreachable")


def account(node, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


def connect(node, ca_file, jid: str, resource: str, plugins=("xep_0313", "xep_0059")) -> Client:
    return Client(f"{jid}/{resource}", PASSWORD, node.c2s_port, ca_file / "ca.pem",
                  plugins=plugins)


def archive_ids(node, jid: str) -> list[str]:
    return node.admin("archive.stats", jid=jid)["ids"]


def same_everywhere(nodes, jid: str, expected: list[str], timeout: float = 30) -> None:
    wait_for(lambda: all(archive_ids(n, jid) == expected for n in nodes), timeout,
             f"the archive of {jid} to be {len(expected)} messages on every node")


def test_history_from_any_node_and_an_acked_message_outlives_its_node(tmp_path, ca_file):
    cluster = start_cluster(tmp_path, ca_file)
    node1, node2, node3 = cluster.nodes
    try:
        alice_jid, bob_jid = account(node1, "alice"), account(node1, "bob")
        wait_for(lambda: node3.admin("user.list"), 20, "the accounts to reach node3")

        async def scenario():
            alice = connect(node1, ca_file, alice_jid, "pc",
                            plugins=("xep_0313", "xep_0059", "xep_0198"))
            bob = connect(node2, ca_file, bob_jid, "phone")
            enabled = asyncio.get_running_loop().create_future()
            alice.add_event_handler("sm_enabled", lambda _: enabled.done()
                                    or enabled.set_result(True))
            assert await alice.start() and await bob.start()
            await asyncio.wait_for(enabled, TIMEOUT)
            bodies = [f"line {i}" for i in range(6)]
            ids = []
            for body in bodies:
                alice.send_message(mto=bob_jid, mbody=body, mtype="chat")
                ids.append(stanza_id(await bob.next_message(), bob_jid))
            # From node3, another of alice's devices pages through what node1 wrote.
            tablet = connect(node3, ca_file, alice_jid, "tablet")
            assert await tablet.start(presence=False)
            mam = tablet.plugin["xep_0313"]
            forwards = [m async for m in mam.iterate(with_jid=bob_jid, rsm={"max": 4})]
            assert [m["mam_result"]["id"] for m in forwards] == ids
            assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in forwards] == bodies
            backwards = await mam.retrieve(with_jid=bob_jid, timeout=TIMEOUT,
                                           rsm={"max": 4, "before": ids[-1]})
            assert [m["mam_result"]["id"] for m in backwards["mam"]["results"]] == ids[1:5]
            assert not backwards["mam_fin"]["complete"]
            # One last message, acknowledged through stream management, then node1 dies.
            acked = asyncio.get_running_loop().create_future()
            alice.add_event_handler("stanza_acked", lambda s: s.name == "message"
                                    and s["body"] == "last words" and not acked.done()
                                    and acked.set_result(s))
            alice.send_message(mto=bob_jid, mbody="last words", mtype="chat")
            # slixmpp may write a raw <r/> before a stanza sent just before it: ask again
            # until the ack for the message comes.
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not acked.done():
                assert asyncio.get_running_loop().time() < deadline, "the message was not acked"
                alice.plugin["xep_0198"].request_ack()
                await asyncio.wait([acked], timeout=0.5)
            node1.kill()
            await tablet.stop()
            await bob.stop()
            alice.abort()
            return ids

        ids = run(scenario(), timeout=120)
        survivors = [node2, node3]
        cluster.leader()
        wait_for(lambda: len(archive_ids(node2, alice_jid)) >= 7, 30,
                 "the acknowledged message in the archive on node2")
        last = archive_ids(node2, alice_jid)
        assert len(last) == 7 and last[:6] == ids
        same_everywhere(survivors, alice_jid, last)
        same_everywhere(survivors, bob_jid, last)  # one message, one id in both archives
    finally:
        cluster.kill_all()


def test_a_wiped_node_catches_up_the_archive_from_a_snapshot(tmp_path, ca_file):
    # Snapshots every 3 s (each node in its own slot of it) instead of every minute.
    cluster = start_cluster(tmp_path, ca_file, snapshot_interval=3.0)
    node1, node2, node3 = cluster.nodes
    try:
        alice_jid, bob_jid = account(node1, "alice"), account(node1, "bob")

        async def write(count: int, start: int) -> None:
            alice = connect(node1, ca_file, alice_jid, "pc")
            assert await alice.start(presence=False)
            for i in range(start, start + count):
                alice.send_message(mto=bob_jid, mbody=f"message {i}", mtype="chat")
            # A query drains this node's queue: every message is committed after it.
            await alice.plugin["xep_0313"].retrieve(timeout=TIMEOUT, rsm={"max": 1})
            await alice.stop()

        run(write(40, 0))
        written = archive_ids(node1, alice_jid)
        assert len(written) == 40
        same_everywhere(cluster.nodes, alice_jid, written)
        for node in cluster.nodes:  # every log compacted: node3 can only get a snapshot
            node.admin("raft.snapshot")
        wait_for(lambda: all(n.status()["log_length"] < 40 for n in cluster.nodes), 30,
                 "every node to compact its log")
        node3.kill()
        shutil.rmtree(node3.data_dir)
        run(write(10, 40))  # while node3 is away
        node3.start()
        expected = archive_ids(node1, alice_jid)
        assert len(expected) == 50
        same_everywhere(cluster.nodes, alice_jid, expected, timeout=60)
        same_everywhere(cluster.nodes, bob_jid, expected)
        # A restart (kill -9, same data dir) keeps what it had and replays nothing twice.
        node2.kill()
        node2.start()
        same_everywhere(cluster.nodes, alice_jid, expected)
        assert node2.admin("archive.stats")["rows"] == node1.admin("archive.stats")["rows"]
        # The operator's purge, from the CLI, reaches every node through the log.
        result = subprocess.run(
            [sys.executable, "-m", "raftxmpp_cli.main", "user", "archive-purge", alice_jid,
             "--config", str(node2.config_path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "deleted 50 archived messages" in result.stdout
        same_everywhere(cluster.nodes, alice_jid, [])
        same_everywhere(cluster.nodes, bob_jid, expected)  # bob's own archive is his
    finally:
        cluster.kill_all()
