"""Issue 13, finding 6: secrets others can read are refused, and what a node writes is
for its user alone.

- The example cluster's secret (committed in this repository, world-readable in every
  checkout) is refused unless the config opts in with `[cluster] allow_example_secret`,
  which the example configs set, and even then only on loopback; the CLI warns about it.
- A `secret_file` every user of the machine may read is refused (as sshd refuses such
  a key).
- Everything `raftxmpp node start` creates in the data dir is mode 0600 (files) or
  0700 (directories), the Raft journal included; a data dir found open is closed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from raftxmpp import config as config_mod
from tests.harness import NodeProcess, free_ports, wait_for
from tests.security.conftest import with_free_listeners
from tests.test_cli import ROOT, assert_one_line_error, raftxmpp

EXAMPLE = ROOT / "config" / "cluster-3"


def _example_copy(tmp_path: Path, edit=lambda text: text) -> Path:
    """node1.toml of the example, edited, beside a copy of the example's secret file."""
    (tmp_path / "cluster.secret").write_text((EXAMPLE / "cluster.secret").read_text())
    path = tmp_path / "node.toml"
    path.write_text(edit((EXAMPLE / "node1.toml").read_text()))
    return path


def _without_opt_in(text: str) -> str:
    return text.replace("allow_example_secret = true", "")


def test_every_committed_secret_is_known_as_an_example():
    committed = subprocess.run(["git", "ls-files", "*.secret"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    assert "config/cluster-3/cluster.secret" in committed
    for name in committed:
        digest = hashlib.sha256((ROOT / name).read_text().strip().encode()).hexdigest()
        assert digest in config_mod.EXAMPLE_SECRET_DIGESTS, f"{name} is not refused elsewhere"


def test_the_example_secret_is_refused_without_the_opt_in(tmp_path):
    path = _example_copy(tmp_path, _without_opt_in)
    assert_one_line_error(raftxmpp("config", "check", str(path)), "public example")
    assert_one_line_error(raftxmpp("node", "start", "--config", str(path), "--data-dir",
                                   str(tmp_path / "data")), "public example")
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_example_secret_is_refused_off_loopback_even_with_the_opt_in(tmp_path):
    path = _example_copy(tmp_path, lambda t: t.replace('link = "127.0.0.1:7101"',
                                                       'link = "10.0.0.1:7101"'))
    assert_one_line_error(raftxmpp("config", "check", str(path)), "loopback only")


def test_the_example_itself_starts_with_a_warning(tmp_path):
    checked = raftxmpp("config", "check", str(EXAMPLE / "node1.toml"))
    assert checked.returncode == 0, checked.stderr
    assert "warning" in checked.stderr and "public example cluster secret" in checked.stderr
    raft, link, c2s, tls, http, component = free_ports(6)
    path = _example_copy(tmp_path, lambda t: t
                         .replace("7001", str(raft)).replace("7101", str(link))
                         .replace('"127.0.0.1:7002", "127.0.0.1:7003"', "")
                         .replace("5222", str(c2s)).replace("5223", str(tls))
                         .replace("5280", str(http)).replace("5347", str(component)))
    node = subprocess.Popen([sys.executable, "-m", "raftxmpp_cli.main", "node", "start", "--config",
                             str(path), "--data-dir", str(tmp_path / "data")],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = node.stderr.readline()
        assert first.startswith("raftxmpp: warning:") and "example" in first, first
    finally:
        node.kill()
        node.wait(timeout=15)


def test_a_secret_file_every_user_may_read_is_refused(tmp_path):
    secret = tmp_path / "cluster.secret"
    secret.write_text(os.urandom(32).hex())
    secret.chmod(0o644)
    path = tmp_path / "node.toml"
    path.write_text(f'[cluster]\npeers = ["127.0.0.1:7002"]\nsecret_file = "{secret}"\n')
    assert_one_line_error(raftxmpp("config", "check", str(path)), "readable by every user")
    secret.chmod(0o640)  # a group the node's user shares is the operator's choice
    checked = raftxmpp("config", "check", str(path))
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr


@pytest.mark.cluster
def test_everything_a_node_creates_in_its_data_dir_is_for_its_user_only(tmp_path):
    ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
    node = with_free_listeners(NodeProcess(tmp_path, "solo", ports, []))
    node.data_dir.mkdir(mode=0o755)
    node.data_dir.chmod(0o755)  # made by someone with a lax umask
    try:
        node.start()
        wait_for(lambda: node.status().get("leader"), 20, "the node to lead")
        node.admin("user.add", jid="alice@localhost", password="written-to-the-journal")
        created = {p.relative_to(node.data_dir).as_posix(): stat.S_IMODE(p.lstat().st_mode)
                   for p in [node.data_dir, *node.data_dir.rglob("*")]}
        assert {"raft.journal", "raft.secret", "node.lock", "tls/key.pem",
                "tls/cert.pem"} <= set(created), sorted(created)
        exposed = {name: oct(mode) for name, mode in created.items() if mode & 0o077}
        assert exposed == {}, f"readable by others: {exposed}"
        assert "made it 0700" in node.log()
    finally:
        node.kill()
