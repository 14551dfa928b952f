"""Growing a cluster from one running node with data, as ejabberd's clustering guide does:
real node processes, slixmpp logins, kill -9 of the original node."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.harness import NodeProcess, free_ports, wait_for
from tests.xmpp_client import Client, run

pytestmark = pytest.mark.cluster

PASSWORD = "grow-password"


def tls_extra(tls) -> str:
    return f'\n[tls]\ncertificate = "{tls / "cert.pem"}"\nkey = "{tls / "key.pem"}"\n'


def node_ports() -> dict[str, int]:
    return dict(zip(("raft", "link", "c2s", "c2s_tls", "http"), free_ports(5), strict=True))


def single_node(tmp_path, tls) -> NodeProcess:
    """A single node as the embedded default runs one: no [cluster] secret, so it keeps
    a random one in data_dir/raft.secret."""
    return NodeProcess(tmp_path, "node1", node_ports(), [], tls_extra(tls))


def newcomer(tmp_path, name: str, first: NodeProcess, tls, peers: list[int] = ()) -> NodeProcess:
    """A node given the first node's secret the way the README says: a copy of its
    raft.secret as [cluster] secret_file."""
    node = NodeProcess(tmp_path, name, node_ports(), list(peers), tls_extra(tls))
    secret_file = node.dir / "cluster.secret"
    shutil.copyfile(first.data_dir / "raft.secret", secret_file)
    os.chmod(secret_file, 0o600)
    text = "\n".join(line for line in node.config_path.read_text().splitlines()
                     if not line.startswith("secret = "))  # the harness's shared one
    node.config_path.write_text(text.replace(
        "[cluster]", f'[cluster]\nsecret_file = "{secret_file}"'))
    return node


def login(node: NodeProcess, tls, jid: str) -> list[str]:
    """Logs in on `node`; returns the roster it serves."""
    async def scenario():
        c = Client(f"{jid}/grow", PASSWORD, node.c2s_port, tls / "ca.pem")
        assert await c.start(), f"login of {jid} on {node.name} failed"
        roster = list(c.client_roster)
        await c.stop()
        return roster

    return run(scenario())


def digests(nodes: list[NodeProcess]) -> set[tuple]:
    """The distinct (state digest, applied index) pairs the nodes report."""
    return {tuple(sorted(n.admin("state.digest").items())) for n in nodes}


def settled(nodes: list[NodeProcess], size: int) -> None:
    """Every node lists `size` members, one leader, and the same state digest."""
    def agreed():
        statuses = [n.status() for n in nodes]
        return (all(len(s["members"]) == size and s["has_quorum"] and s["leader"]
                    for s in statuses)
                and len({s["leader"] for s in statuses}) == 1
                and len(digests(nodes)) == 1)

    wait_for(agreed, 45, f"{len(nodes)} nodes to agree on {size} members and equal digests")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftxmpp_cli.main", *args],
                          capture_output=True, text=True, timeout=90)


def test_a_single_node_with_data_grows_to_three_then_loses_the_first(tmp_path, ca_file):
    tls = ca_file
    node1 = single_node(tmp_path, tls).start()
    nodes = [node1]
    try:
        node1.admin("user.add", jid="alice@localhost", password=PASSWORD)
        node1.admin("user.add", jid="bob@localhost", password=PASSWORD)

        async def befriend():
            c = Client("alice@localhost/one", PASSWORD, node1.c2s_port, tls / "ca.pem")
            assert await c.start()
            await c.update_roster("bob@localhost", name="Bob", timeout=15)
            await c.stop()

        run(befriend())

        # One node to two by --join: the add can commit only with node2's vote.
        node2 = newcomer(tmp_path, "node2", node1, tls)
        node2.start("--join", f"127.0.0.1:{node1.ports['link']}")
        nodes.append(node2)
        settled(nodes, 2)
        assert "bob@localhost" in login(node2, tls, "alice@localhost")

        # Two to three by `cluster add-peer`, then start it with the members as peers.
        node3 = newcomer(tmp_path, "node3", node1, tls,
                         [node1.ports["raft"], node2.ports["raft"]])
        added = cli("cluster", "add-peer", node3.raft_address, "--config", str(node1.config_path))
        assert added.returncode == 0, added.stderr
        node3.start()
        nodes.append(node3)
        settled(nodes, 3)
        assert "bob@localhost" in login(node3, tls, "alice@localhost")

        node1.kill()  # kill -9 of the node the cluster grew from
        survivors = [node2, node3]
        wait_for(lambda: all(n.status()["has_quorum"] and n.status()["leader"]
                             not in (None, node1.raft_address) for n in survivors), 30,
                 "node2 and node3 to elect a leader without node1")
        node3.admin("user.add", jid="carol@localhost", password=PASSWORD)
        wait_for(lambda: len(digests(survivors)) == 1, 30,
                 "equal digests on the survivors")
        assert "bob@localhost" in login(node2, tls, "alice@localhost")
        login(node2, tls, "carol@localhost")

        # A fourth node joins while node1 is down: 2 up of the 4 members, so this add
        # too commits only with the joiner's vote.
        node4 = newcomer(tmp_path, "node4", node1, tls)
        node4.start("--join", f"127.0.0.1:{node2.ports['link']}")
        nodes.append(node4)
        settled([node2, node3, node4], 4)
        assert "bob@localhost" in login(node4, tls, "alice@localhost")

        # Restarted on its data (its config still lists no peers), node1 finds the others
        # in its journal and catches up: it must not lead a cluster of its own.
        node1.start()
        settled(nodes, 4)
        login(node1, tls, "carol@localhost")
    finally:
        for node in nodes:
            node.kill()


def test_a_single_node_grows_by_add_peer_then_start(tmp_path, ca_file):
    """`cluster add-peer` on a single node cannot wait for the commit (it needs the new
    node's vote): it answers at once, and the change commits once the node starts and
    has received node1's snapshot."""
    tls = ca_file
    node1 = single_node(tmp_path, tls)
    node1.config_path.write_text(node1.config_path.read_text().replace(
        "[cluster]", "[cluster]\nsnapshot_interval = 1"))
    node1.start()
    nodes = [node1]
    try:
        node1.admin("user.add", jid="early@localhost", password=PASSWORD)
        # node2 then catches up from a snapshot, not from the first entries of the log.
        wait_for(lambda: (node1.data_dir / "raft.dump").exists(), 30, "node1's first snapshot")
        node2 = newcomer(tmp_path, "node2", node1, tls, [node1.ports["raft"]])
        added = cli("cluster", "add-peer", node2.raft_address, "--config", str(node1.config_path))
        assert added.returncode == 0, added.stderr
        assert "start it now" in added.stdout
        node2.start()
        nodes.append(node2)
        settled(nodes, 2)
        login(node2, tls, "early@localhost")
    finally:
        for node in nodes:
            node.kill()


def test_a_join_with_a_wrong_secret_is_a_one_line_error(tmp_path, ca_file):
    tls = ca_file
    node1 = single_node(tmp_path, tls).start()
    try:
        stranger = NodeProcess(tmp_path, "stranger", node_ports(), [], tls_extra(tls))
        stranger.config_path.write_text(stranger.config_path.read_text().replace(
            "[cluster]", '[cluster]\nsecret = "not-the-cluster-secret-0123456789"'))
        result = cli("node", "start", "--config", str(stranger.config_path),
                     "--join", f"127.0.0.1:{node1.ports['link']}")
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
        assert "secret" in errors[0] and "raft.secret" in errors[0], errors[0]
        assert len(node1.status()["members"]) == 1
        assert "wrong cluster secret (this node uses its own random secret" in node1.log()
    finally:
        node1.kill()
