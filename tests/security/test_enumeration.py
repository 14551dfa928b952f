"""Issue 13, finding 4: no account enumeration across a cluster.

RFC 5802 §5.1 has the server answer a client-first with the account's salt and
iteration count (`r=…,s=…,i=…`), so an account that does not exist must get a salt
that is just as stable: the same on every node and after a restart, as a real one
is (it lives in the replicated state). The fake salts are an HMAC of the name under
a key derived from the cluster secret (a single node's own persisted secret when no
cluster secret is configured). The exchange must then fail the same way too: after
the client-final, with <not-authorized/> (RFC 6120 §6.5.10), never earlier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
import trio

from tests.harness import Cluster, wait_for
from tests.security.conftest import HEADER, PASSWORD, SASL, node_process

pytestmark = pytest.mark.cluster

MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
EXTRA = """plaintext_auth_on_loopback = true

[limits]
auth_failures_per_account = 1000
"""


async def _read_until(stream: trio.SocketStream, data: bytes, *markers: bytes) -> bytes:
    with trio.fail_after(10):
        while not any(m in data for m in markers):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


def _payload(data: bytes, tag: bytes) -> bytes:
    return base64.b64decode(re.search(rb"<" + tag + rb"[^>]*>([^<]*)</" + tag + rb">",
                                      data).group(1))


async def scram(port: int, mechanism: str, user: str, password: str = "not-the-password"
                ) -> tuple[dict[str, str], str]:
    """A raw SCRAM exchange: the server-first's attributes, and how it ended after the
    client-final ('success', or the failure condition). Fails if it ends sooner."""
    digest = "sha1" if mechanism == "SCRAM-SHA-1" else "sha256"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        bare = f"n={user},r=enumerationnonce0123456789"
        await stream.send_all(HEADER + f"<auth xmlns='{SASL}' mechanism='{mechanism}'>"
                              f"{base64.b64encode(('n,,' + bare).encode()).decode()}</auth>"
                              .encode())
        data = await _read_until(stream, b"", b"</challenge>", b"</failure>")
        assert b"<challenge" in data, f"the exchange ended at the client-first: {data[-300:]!r}"
        server_first = _payload(data, b"challenge").decode()
        attributes = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(digest, password.encode(),
                                     base64.b64decode(attributes["s"]), int(attributes["i"]))
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        without_proof = f"c=biws,r={attributes['r']}"
        signature = hmac.new(hashlib.new(digest, client_key).digest(),
                             f"{bare},{server_first},{without_proof}".encode(), digest).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        final = f"{without_proof},p={proof.decode()}".encode()
        await stream.send_all(f"<response xmlns='{SASL}'>{base64.b64encode(final).decode()}"
                              "</response>".encode())
        data = await _read_until(stream, b"", b"</success>", b"<success", b"</failure>")
    if b"<success" in data:
        return attributes, "success"
    return attributes, re.search(rb"<failure[^>]*><([a-z-]+)/>", data).group(1).decode()


def _salts(results: dict) -> dict:
    return {key: (attributes["s"], attributes["i"]) for key, (attributes, _) in results.items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("enumeration"), 3, EXTRA)
    try:
        cluster.start()
        cluster.leader()
        wait_for(lambda: cluster.nodes[0].admin("user.add", jid="carol@localhost",
                                                password=PASSWORD), 20, "carol registered")
        for node in cluster.nodes:
            wait_for(lambda n=node: "carol@localhost" in n.admin("user.list", current=True),
                     15, f"{node.name} to know carol")
        yield cluster
    finally:
        cluster.kill_all()


async def _ask_every_node(cluster, user: str) -> dict:
    return {(node.name, mechanism): await scram(node.c2s_port, mechanism, user)
            for node in cluster.nodes for mechanism in MECHANISMS}


def test_an_unknown_account_answers_like_a_real_one_on_every_node(cluster):
    real = trio.run(_ask_every_node, cluster, "carol")
    ghost = trio.run(_ask_every_node, cluster, "ghost")
    for mechanism in MECHANISMS:
        real_salts = {_salts(real)[(n.name, mechanism)] for n in cluster.nodes}
        ghost_salts = {_salts(ghost)[(n.name, mechanism)] for n in cluster.nodes}
        assert len(real_salts) == 1, real_salts
        assert len(ghost_salts) == 1, f"an unknown account's salt differs by node: {ghost_salts}"
        (real_salt, real_i), (ghost_salt, ghost_i) = real_salts.pop(), ghost_salts.pop()
        assert len(base64.b64decode(ghost_salt)) == len(base64.b64decode(real_salt))
        assert ghost_i == real_i
    # Both fail at the same step, with the same condition, on every node.
    assert {outcome for _, outcome in real.values()} == {"not-authorized"}
    assert {outcome for _, outcome in ghost.values()} == {"not-authorized"}
    assert trio.run(scram, cluster.nodes[2].c2s_port, "SCRAM-SHA-256", "carol", PASSWORD)[1] \
        == "success"


def test_an_unknown_accounts_salt_survives_a_restart(cluster):
    node = cluster.nodes[1]
    before = trio.run(scram, node.c2s_port, "SCRAM-SHA-256", "nobody")[0]["s"]
    node.kill()
    node.start()
    wait_for(lambda: node.status().get("leader"), 20, f"{node.name} back in the cluster")
    assert trio.run(scram, node.c2s_port, "SCRAM-SHA-256", "nobody")[0]["s"] == before
    assert trio.run(scram, cluster.nodes[0].c2s_port, "SCRAM-SHA-256", "nobody")[0]["s"] == before


def test_a_single_node_without_a_cluster_secret_keeps_fake_salts_across_restarts(tmp_path):
    node = node_process(tmp_path, limits="exempt_ips = [\"127.0.0.0/8\"]\n")
    try:
        node.start()
        wait_for(lambda: node.status().get("leader"), 20, "the node to lead")
        before = trio.run(scram, node.c2s_port, "SCRAM-SHA-1", "nobody")[0]["s"]
        node.kill()
        node.start()
        wait_for(lambda: node.status().get("leader"), 20, "the node to lead again")
        assert trio.run(scram, node.c2s_port, "SCRAM-SHA-1", "nobody")[0]["s"] == before
        assert (node.data_dir / "raft.secret").exists()  # the key comes from it
    finally:
        node.kill()
