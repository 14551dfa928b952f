"""The cluster's internal surfaces against a running 3-node cluster: the Raft port and
the node-link port give nothing to a peer without the cluster secret and never unpickle
its bytes; the admin socket is for its owner only; no password, SCRAM key or secret
reaches a log line or `cluster status`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pickle
import re
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib

import pytest
import trio
from cryptography.fernet import Fernet

from tests.harness import SECRET, Cluster, wait_for
from tests.security.conftest import HEADER, SASL, plain_auth, rss_kib, with_free_listeners

pytestmark = pytest.mark.cluster

PASSWORD = "Tr0ub4dor&3-not-in-any-log"
WRONG = "wrong-guess-not-in-any-log"


class _CreateFile:
    """Unpickling this calls open(path, 'w'): the file appearing means code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pysyncobj_frame(payload: bytes) -> bytes:
    """pysyncobj's wire format: native int length, then the (encrypted) body."""
    return struct.pack("i", len(payload)) + payload


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("surfaces")
    cluster = Cluster(base, 3, extra="plaintext_auth_on_loopback = true\n"
                                     "[log]\nlevel = \"debug\"\n")
    for node in cluster.nodes:
        with_free_listeners(node)
    try:
        cluster.start()
        cluster.leader()
        node1 = cluster.nodes[0]
        wait_for(lambda: node1.admin("user.add", jid="alice@localhost", password=PASSWORD),
                 20, "alice registered")
        yield cluster
    finally:
        cluster.kill_all()


def _send_and_watch(port: int, data: bytes, linger: float = 1.0) -> bytes:
    """Sends `data` and returns whatever comes back before the peer closes."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(linger)
            while chunk := sock.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionError):
            pass
    return got


def _malicious_frames(marker: str) -> dict[str, bytes]:
    body = zlib.compress(pickle.dumps(_CreateFile(marker)), 3)
    wrong_key = Fernet(Fernet.generate_key())
    return {
        "plain": _pysyncobj_frame(body),
        "wrong-key": _pysyncobj_frame(wrong_key.encrypt_at_time(body, int(time.monotonic()))),
        "no-compression": _pysyncobj_frame(pickle.dumps(_CreateFile(marker))),
        "garbage": os.urandom(4096),
    }


def test_the_malicious_pickle_is_live(tmp_path):
    """The payload below is real: unpickled, it creates its file."""
    control = tmp_path / "control"
    body = _malicious_frames(str(control))["plain"][4:]
    pickle.loads(zlib.decompress(body)).close()
    assert control.exists()


def test_raft_and_link_ports_never_unpickle_a_strangers_bytes(cluster, tmp_path):
    marker = tmp_path / "pwned"
    for node in cluster.nodes:
        for name, data in _malicious_frames(str(marker)).items():
            for port in (node.ports["raft"], node.ports["link"]):
                reply = _send_and_watch(port, data)
                assert b"alice" not in reply and SECRET.encode() not in reply, (name, port)
    time.sleep(0.5)
    assert not marker.exists(), "a node unpickled bytes from a peer without the secret"
    assert all(node.alive() for node in cluster.nodes)
    # The cluster keeps serving: a write commits and every node sees it.
    cluster.nodes[1].admin("user.add", jid="after@localhost", password=PASSWORD)
    for node in cluster.nodes:
        wait_for(lambda n=node: "after@localhost" in n.admin("user.list", current=True), 15,
                 f"{node.name} to see the write made after the attack")


def test_link_port_drops_an_oversized_frame_before_buffering_it(cluster):
    node = cluster.nodes[2]
    before = rss_kib(node.process.pid)
    with socket.create_connection(("127.0.0.1", node.ports["link"]), timeout=5) as sock:
        sock.sendall(struct.pack(">I", 2**31))
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(64 * 16):  # 64 MiB, if nobody stopped us
                sock.sendall(b"\0" * 65536)
    assert rss_kib(node.process.pid) - before < 16 * 1024


def test_raft_port_does_not_buffer_a_strangers_huge_frame(cluster):
    node = cluster.nodes[2]
    before = rss_kib(node.process.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", node.ports["raft"]), timeout=5) as sock:
        try:
            sock.sendall(struct.pack("i", 2**31 - 1))
            while sent < 24 * 2**20:
                sock.sendall(b"\0" * 65536)
                sent += 65536
        except OSError:
            pass
        grown = rss_kib(node.process.pid) - before
    wait_for(lambda: node.status().get("leader"), 15, "a leader after the attempt")
    assert grown < 8 * 1024, f"RSS grew {grown} KiB for {sent >> 20} MiB from a stranger"


def test_admin_socket_is_for_its_owner_only(cluster):
    for node in cluster.nodes:
        sock_path = node.data_dir / "admin.sock"
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(node.data_dir).st_mode) == 0o700
        assert os.stat(sock_path).st_uid == os.getuid()


async def _scram_salt(port: int) -> tuple[bytes, int]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(HEADER)
        first = base64.b64encode(b"n,,n=alice,r=abcdefghijklmnop").decode()
        await stream.send_all(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>"
                              .encode())
        data = b""
        with trio.fail_after(10):
            while b"</challenge>" not in data:
                data += await stream.receive_some(65536)
    challenge = re.search(rb"<challenge[^>]*>([^<]*)</challenge>", data).group(1)
    params = dict(p.split("=", 1) for p in base64.b64decode(challenge).decode().split(","))
    return base64.b64decode(params["s"]), int(params["i"])


async def _plain_logins(port: int) -> None:
    for password in (PASSWORD, WRONG):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(HEADER + plain_auth("alice", password))
            data = b""
            with trio.fail_after(10):
                while b"<success" not in data and b"</failure>" not in data:
                    data += await stream.receive_some(65536)


async def test_no_password_key_or_secret_in_logs_or_cluster_status(cluster):
    node1 = cluster.nodes[0]
    node1.admin("user.passwd", jid="alice@localhost", password=PASSWORD)
    for node in cluster.nodes:
        await _plain_logins(node.c2s_port)
    salt, iterations = await _scram_salt(cluster.nodes[1].c2s_port)
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    keys = {"stored_key": hashlib.sha256(client_key).digest(),
            "server_key": hmac.new(salted, b"Server Key", "sha256").digest(),
            "salted_password": salted}
    forbidden = {"password": PASSWORD.encode(), "wrong password": WRONG.encode(),
                 "cluster secret": SECRET.encode(),
                 "PLAIN token": plain_auth("alice", PASSWORD).split(b">")[1].split(b"<")[0]}
    for name, key in keys.items():
        forbidden[f"{name} (hex)"] = key.hex().encode()
        forbidden[f"{name} (base64)"] = base64.b64encode(key)
        forbidden[f"{name} (repr)"] = repr(key)[2:-1].encode()
    status = subprocess.run(
        [sys.executable, "-m", "raftxmpp_cli.main", "cluster", "status", "--json",
         "--config", str(node1.config_path)], capture_output=True, timeout=30)
    assert status.returncode == 0, status.stderr
    texts = {"cluster status": status.stdout + status.stderr}
    for node in cluster.nodes:
        texts[f"{node.name} log"] = node.log_path.read_bytes()
        texts[f"{node.name} node.status"] = repr(node.admin("node.status")).encode()
    assert b"DEBUG" in texts["node1 log"]  # the logs are at their most verbose
    for where, text in texts.items():
        for what, value in forbidden.items():
            assert value not in text, f"{what} found in {where}"


def test_the_raft_port_listens_only_on_the_configured_address(cluster):
    """pysyncobj binds 0.0.0.0 unless told otherwise; a loopback config must stay loopback."""
    port = cluster.nodes[0].ports["raft"]
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout
    assert f"127.0.0.1:{port}" in listening, listening
    assert f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening, listening


def test_the_link_port_gives_a_stranger_nothing_to_guess_the_secret_from(cluster):
    """Issue 13, finding 6: the connecting side proves first. A stranger's hello gets a
    nonce only, and a wrong proof a closed socket: no HMAC of the cluster secret, from
    which a weak secret could be guessed offline."""
    node = cluster.nodes[1]
    hello = {"v": 2, "node": "node1", "nonce": os.urandom(16).hex(), "raft": "", "encrypt": True}
    with socket.create_connection(("127.0.0.1", node.ports["link"]), timeout=5) as sock:
        payload = json.dumps(hello).encode()
        sock.sendall(struct.pack(">I", len(payload) + 1) + b"H" + payload)
        size, kind = struct.unpack(">IB", _recv_exactly(sock, 5))
        challenge = json.loads(_recv_exactly(sock, size - 1))
        assert kind == ord("H") and set(challenge) == {"v", "nonce"}, challenge
        wrong = json.dumps({"proof": hmac.new(b"guess", b"x", "sha256").hexdigest()}).encode()
        sock.sendall(struct.pack(">I", len(wrong) + 1) + b"H" + wrong)
        assert _send_and_watch_rest(sock) == b""
    wait_for(lambda: "wrong cluster secret" in node.log(), 10, "the refusal in the log")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _send_and_watch_rest(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionError):
        pass
    return got
