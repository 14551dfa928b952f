"""Node processes for the IM tests, started again on fresh ports when a port the harness
picked was taken by another process before the node bound it (free_ports cannot reserve:
on a shared machine another test's outgoing connection may land on it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.harness import Cluster, NodeProcess, free_ports, wait_for

ATTEMPTS = 3
# How a node says a port it was given is taken (c2s and other listeners; the Raft port).
BUSY = ("port in use", "Address already in use")
T = TypeVar("T")


def _on_free_ports(start: Callable[[Path], T], base: Path) -> T:
    """start(dir) again, on new ports, when a port it was given was taken meanwhile."""
    for attempt in range(ATTEMPTS):
        try:
            return start(base / f"attempt{attempt}")
        except AssertionError as exc:
            if not any(sign in str(exc) for sign in BUSY) or attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def start_cluster(base: Path, extra: str = "") -> Cluster:
    """A 3-node cluster whose nodes agree on a leader and see each other by gossip."""
    def start(where: Path) -> Cluster:
        cluster = Cluster(where, 3, extra)
        try:
            cluster.start()
        except AssertionError:
            cluster.kill_all()
            raise
        return cluster

    cluster = _on_free_ports(start, base)
    cluster.leader()
    wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes), 20,
             "every node to see the others by gossip")
    return cluster


def start_node(base: Path, name: str, extra: str = "", http: bool = False) -> NodeProcess:
    """A single node that leads (with `http`, its web listener on `ports["http"]`)."""
    names = ("raft", "link", "c2s", "c2s_tls") + (("http",) if http else ())

    def start(where: Path) -> NodeProcess:
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        process = NodeProcess(where, name, ports, [], extra)
        try:
            process.start()
        except AssertionError:
            process.kill()
            raise
        return process

    process = _on_free_ports(start, base)
    wait_for(lambda: process.status()["leader"], 10, "the node to lead")
    return process


def tls_extra(ca_file: Path) -> str:
    return f'\n[tls]\ncertificate = "{ca_file / "cert.pem"}"\nkey = "{ca_file / "key.pem"}"\n'
