"""The Raft port before the key exchange (issue 13, finding 5), against a real node
process: a stranger's connections may hold a few KiB each, for a few seconds, and only
so many at once; the node's memory stays flat and the cluster keeps committing.

On the code before this, each unauthenticated connection could buffer up to the 8 MiB
frame limit, trickle forever and come in any number (40 held about 200 MB)."""

from __future__ import annotations

import select
import socket
import struct
import time

import pytest

from raftxmpp.cluster import raft_port
from tests.harness import wait_for
from tests.security.conftest import PASSWORD, node_process, rss_kib

pytestmark = pytest.mark.cluster  # a real node process

MiB = 1024 * 1024


@pytest.fixture
def raft_node(tmp_path):
    node = node_process(tmp_path)
    node.start()
    wait_for(lambda: node.admin("user.add", jid="alice@localhost", password=PASSWORD), 20,
             "alice registered")
    yield node
    node.kill()


def _stranger(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _closed_within(socks: list[socket.socket], wait: float, enough: int) -> list[bool]:
    """Which of `socks` the node closed: watched together until `enough` of them are, or
    `wait` seconds passed (less than the pre-auth deadline, which closes them all)."""
    closed = [False] * len(socks)
    deadline = time.monotonic() + wait
    while sum(closed) < enough and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([s for s, c in zip(socks, closed, strict=True) if not c], [], [], left)
        for sock in readable:
            closed[socks.index(sock)] = _closed_by_peer(sock, 0.01)
    return closed


def _still_commits(node, name: str) -> None:
    wait_for(lambda: node.admin("user.add", jid=f"{name}@localhost", password=PASSWORD), 20,
             "a write commits")


def test_partial_frames_of_many_strangers_do_not_grow_memory(raft_node):
    port = raft_node.ports["raft"]
    before = rss_kib(raft_node.process.pid)
    held, sent = [], 0
    for i in range(40):  # each from its own address: the per-source cap is another test
        sock = _stranger(port, f"127.0.1.{i + 1}")
        held.append(sock)
        try:
            sock.sendall(struct.pack("i", 4 * MiB))  # a frame it will never finish …
            for _ in range(16):
                sock.sendall(b"\0" * 65536)  # … of which it sends 1 MiB and holds
                sent += 65536
        except OSError:
            pass  # closed by the node: what should happen
    time.sleep(0.5)  # let the node read what the kernel still holds for it
    grown = rss_kib(raft_node.process.pid) - before
    for sock in held:
        sock.close()
    assert grown < 12 * 1024, f"RSS grew {grown} KiB while strangers sent {sent >> 20} MiB"
    _still_commits(raft_node, "after-frames")


def test_unauthenticated_connections_are_capped_per_port_and_per_source(raft_node):
    port = raft_node.ports["raft"]
    from_one = [_stranger(port, "127.0.2.1") for _ in range(raft_port.PRE_AUTH_PER_SOURCE + 4)]
    closed = _closed_within(from_one, 3.0, enough=4)
    assert closed.count(False) == raft_port.PRE_AUTH_PER_SOURCE, closed
    for sock in from_one:
        sock.close()
    spread = [_stranger(port, f"127.0.3.{i % 200 + 1}")
              for i in range(raft_port.PRE_AUTH_PER_PORT + 16)]
    closed = _closed_within(spread, 3.0, enough=16)
    assert closed.count(False) <= raft_port.PRE_AUTH_PER_PORT, closed.count(False)
    assert closed.count(True) >= 16
    for sock in spread:
        sock.close()
    _still_commits(raft_node, "after-cap")


def test_a_stranger_trickling_a_small_frame_is_cut_at_the_deadline(raft_node):
    sock = _stranger(raft_node.ports["raft"], "127.0.4.1")
    sock.sendall(struct.pack("i", 1000))
    started = time.monotonic()
    cut = False
    while time.monotonic() - started < raft_port.PRE_AUTH_DEADLINE + 10:
        try:
            sock.sendall(b"\0")  # one byte every 0.2 s: never idle for pysyncobj
        except OSError:
            cut = True
            break
        if _closed_by_peer(sock, 0.2):
            cut = True
            break
    sock.close()
    assert cut, "a trickling stranger kept its connection"
    assert time.monotonic() - started < raft_port.PRE_AUTH_DEADLINE + 10
