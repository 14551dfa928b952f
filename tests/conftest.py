"""Shared fixtures: real node processes that are always killed at teardown."""

from __future__ import annotations

import pytest
import trustme

from tests.harness import Cluster, NodeProcess, free_ports, wait_for


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


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    return base


@pytest.fixture(scope="module")
def node(tmp_path_factory, ca_file):
    ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
    extra = f'\n[tls]\ncertificate = "{ca_file / "cert.pem"}"\nkey = "{ca_file / "key.pem"}"\n'
    process = NodeProcess(tmp_path_factory.mktemp("im"), "im", ports, [], extra)
    process.start()
    wait_for(lambda: process.status()["leader"], 10, "the node to lead")
    yield process
    process.kill()
