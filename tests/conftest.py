"""Shared fixtures: real node processes that are always killed at teardown."""

from __future__ import annotations

import pytest

from tests.harness import Cluster, NodeProcess, free_ports


@pytest.fixture
def make_cluster(tmp_path):
    clusters: list[Cluster] = []

    def factory(size: int = 3, extra: str = "") -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", size, extra)
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.kill_all()


@pytest.fixture
def single_node(tmp_path):
    ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
    node = NodeProcess(tmp_path, "solo", ports, [])
    yield node
    node.kill()
