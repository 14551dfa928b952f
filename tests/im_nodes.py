"""Node processes for the IM tests, started again on fresh ports when a port the harness
picked was taken by another process before the node bound it (free_ports cannot reserve:
on a shared machine another test's outgoing connection may land on it)."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Cluster, NodeProcess, free_ports, wait_for

ATTEMPTS = 3


def start_cluster(base: Path, extra: str = "") -> Cluster:
    """A 3-node cluster whose nodes all lead, see each other by gossip, and serve."""
    for attempt in range(ATTEMPTS):
        cluster = Cluster(base / f"attempt{attempt}", 3, extra)
        try:
            cluster.start()
        except AssertionError as exc:
            cluster.kill_all()
            if "port in use" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
            continue
        cluster.leader()
        wait_for(lambda c=cluster: all(len(n.admin("node.status")["gossip"]) == 3
                                       for n in c.nodes), 20,
                 "every node to see the others by gossip")
        return cluster
    raise AssertionError("unreachable")


def start_node(base: Path, name: str, extra: str = "") -> NodeProcess:
    for attempt in range(ATTEMPTS):
        ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
        process = NodeProcess(base / f"attempt{attempt}", name, ports, [], extra)
        try:
            process.start()
        except AssertionError as exc:
            process.kill()
            if "port in use" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
            continue
        wait_for(lambda p=process: p.status()["leader"], 10, "the node to lead")
        return process
    raise AssertionError("unreachable")


def tls_extra(ca_file: Path) -> str:
    return f'\n[tls]\ncertificate = "{ca_file / "cert.pem"}"\nkey = "{ca_file / "key.pem"}"\n'
