"""The lazy disk of the power-loss fault (chaos/lazyfs.py): what survives a power loss.

Real FUSE mounts (root, /dev/fuse, pyfuse3): where they cannot be made the tests FAIL,
never skip, like the rest of the chaos suite.
"""

from __future__ import annotations

import mmap
import os
import socket
from pathlib import Path

import pytest

from chaos import lazyfs
from chaos.lazyfs import LazyDisk

pytestmark = pytest.mark.chaos


@pytest.fixture
def disk(tmp_path):
    why = lazyfs.available()
    if why is not None:
        pytest.fail(f"the power-loss fault cannot run here: {why}")
    d = LazyDisk(tmp_path / "disk", tmp_path / "mnt", tmp_path / "lazyfs.log")
    d.mount()
    yield d
    d.unmount()


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    sync_dir(path.parent)


def power_cycle(disk: LazyDisk) -> None:
    disk.lose_power()
    disk.mount()


def test_unsynced_writes_are_lost_synced_ones_kept(disk):
    m = disk.mountpoint
    durable_file(m / "journal", b"0123456789")
    fd = os.open(m / "journal", os.O_RDWR)
    os.pwrite(fd, b"AB", 2)
    os.fdatasync(fd)
    os.pwrite(fd, b"lost", 6)  # never synced
    os.pwrite(fd, b"-tail", 10)
    os.close(fd)  # closing is not syncing
    assert (m / "journal").read_bytes() == b"01AB45lost-tail"  # the page cache's view
    power_cycle(disk)
    assert (m / "journal").read_bytes() == b"01AB456789"


def test_an_unsynced_truncate_is_lost(disk):
    m = disk.mountpoint
    durable_file(m / "meta", b"term=7")
    with open(m / "meta", "r+b") as f:
        f.truncate(0)
    assert (m / "meta").read_bytes() == b""
    power_cycle(disk)
    assert (m / "meta").read_bytes() == b"term=7"


def test_a_new_file_needs_its_directory_synced(disk):
    m = disk.mountpoint
    os.mkdir(m / "sub")
    sync_dir(m)  # "sub" is durable, its entries are not yet
    with open(m / "sub" / "unnamed", "wb") as f:  # contents synced, the name never
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    durable_file(m / "named", b"y")  # contents and directory synced
    os.mkdir(m / "newdir")
    power_cycle(disk)
    assert sorted(os.listdir(m)) == ["named", "sub"]
    assert os.listdir(m / "sub") == []
    assert "sub/unnamed" in disk.log.read_text()  # the mount says what the loss took


def test_replace_by_rename_keeps_old_or_new_never_a_torn_file(disk):
    """write + fsync + rename + directory fsync, as a durable .meta is written."""
    m = disk.mountpoint
    durable_file(m / "meta", b"old")
    with open(m / "meta.tmp", "wb") as f:
        f.write(b"new")
        f.flush()
        os.fsync(f.fileno())
    os.replace(m / "meta.tmp", m / "meta")
    sync_dir(m)
    power_cycle(disk)
    assert (m / "meta").read_bytes() == b"new"
    # The same without the fsync of the data: the rename survives, the contents do not.
    with open(m / "meta.tmp", "wb") as f:
        f.write(b"newer")
    os.replace(m / "meta.tmp", m / "meta")
    sync_dir(m)
    power_cycle(disk)
    assert (m / "meta").read_bytes() == b""


def test_msync_of_a_shared_mapping_is_a_sync(disk):
    m = disk.mountpoint
    durable_file(m / "mapped", b"a" * 4096)
    with open(m / "mapped", "r+b") as f:
        mapping = mmap.mmap(f.fileno(), 0)
        mapping[0:4] = b"sync"
        mapping.flush()  # msync(MS_SYNC)
        mapping[4:8] = b"lost"
        mapping.close()
    power_cycle(disk)
    assert (m / "mapped").read_bytes()[:8] == b"syncaaaa"


def test_a_unix_socket_in_the_mount_works(disk):
    """A node's admin socket lives in its data dir, on the lazy disk."""
    path = str(disk.mountpoint / "admin.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    peer, _ = server.accept()
    client.sendall(b"ping")
    assert peer.recv(4) == b"ping"
    for s in (peer, client, server):
        s.close()


def test_a_wiped_disk_is_empty_and_mounted(disk):
    durable_file(disk.mountpoint / "journal", b"data")
    disk.wipe()
    assert os.listdir(disk.mountpoint) == []
    durable_file(disk.mountpoint / "journal", b"fresh")
    assert (disk.mountpoint / "journal").read_bytes() == b"fresh"


def test_a_single_node_keeps_its_accounts_through_a_power_loss(disk, tmp_path):
    """Found by this fault: raft.secret was written without fsync, so after a power loss a
    single node found it empty and refused to start ("the cluster secret must not be
    empty"). Now it is written durably (and an empty one, from before, is replaced)."""
    from tests.harness import NodeProcess, free_ports, wait_for

    ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
    node = NodeProcess(tmp_path / "solo", "solo", ports, [])
    disk.unmount()
    disk.mountpoint = node.data_dir  # the node's data dir is the lazy disk
    disk.mount()
    try:
        node.start()
        wait_for(lambda: node.status()["leader"], 10, "the node to lead")
        for i in range(5):
            node.admin("user.add", jid=f"u{i}@localhost", password="power-loss-pw")
        node.kill()
        power_cycle(disk)
        node.start()
        wait_for(lambda: node.status()["leader"], 10, "the node to lead again")
        assert len(node.admin("user.list")) == 5
    finally:
        node.kill()
