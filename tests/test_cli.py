"""The command line: one-line errors with a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raftxmpp import config as config_mod
from tests.harness import free_ports, wait_for

ROOT = Path(__file__).resolve().parent.parent


def raftxmpp(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftxmpp_cli.main", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("raftxmpp: error: ")]
    # Log lines of a node that got as far as starting may come first; the error is last.
    assert errors == lines[-1:], result.stderr
    assert fragment in errors[0], errors[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_console_script_is_installed():
    script = shutil.which("raftxmpp")
    assert script is not None, "pip install did not put `raftxmpp` on PATH"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "node" in result.stdout and "cluster" in result.stdout


def test_every_command_has_help():
    for command in (["node", "start"], ["node", "stop"], ["node", "status"], ["user", "add"],
                    ["user", "remove"], ["user", "passwd"], ["user", "list"],
                    ["cluster", "status"], ["config", "check"]):
        result = raftxmpp(*command, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout, command


def test_node_start_help_says_where_the_data_lives():
    assert ".local/share/raftxmpp" in raftxmpp("node", "start", "--help").stdout


@pytest.mark.parametrize("text, fragment", [
    ("[node]\nnmae = 'x'\n", "[node] unknown key 'nmae'"),
    ("[nodes]\n", "unknown section [nodes]"),
    ("[c2s]\nmax_stanza_size = 'big'\n", "[c2s] max_stanza_size: expected an integer"),
    ("[c2s]\nrequire_tls = 'yes'\n", "expected true or false"),
    ("[cluster]\npeers = ['127.0.0.1:7002']\n", "needs a shared secret"),
    ("[cluster]\nraft = 'nowhere'\n", "expected HOST:PORT"),
    ("[cluster]\npeers = ['127.0.0.1:7002']\nsecret = 'short'\n", "at least 16 characters"),
    ("[c2s]\nscram_iterations = 100\n", "at least 4096"),
    ("this is = = not toml", "not valid TOML"),
])
def test_config_mistakes_are_one_line_errors(tmp_path, text, fragment):
    assert_one_line_error(raftxmpp("config", "check", str(write(tmp_path, text))), fragment)
    assert_one_line_error(raftxmpp("node", "start", "--config", str(write(tmp_path, text))),
                          fragment)


def test_missing_config_file_is_a_one_line_error(tmp_path):
    assert_one_line_error(raftxmpp("node", "start", "--config", str(tmp_path / "nope.toml")),
                          "no such file")


def test_example_configs_are_valid():
    for path in [ROOT / "config" / "single.toml", *sorted((ROOT / "config" / "cluster-3").glob("*.toml"))]:
        result = raftxmpp("config", "check", str(path))
        assert result.returncode == 0, result.stderr
    nodes = [config_mod.load(p) for p in sorted((ROOT / "config" / "cluster-3").glob("node*.toml"))]
    assert len(nodes) == 3
    assert len({n.cluster.raft for n in nodes}) == 3
    assert len({n.node.data_dir for n in nodes}) == 3
    assert len({n.cluster_secret() for n in nodes}) == 1
    for node in nodes:
        assert set(node.cluster.peers) == {n.cluster.raft for n in nodes} - {node.cluster.raft}


def config_on_free_ports(tmp_path: Path, busy_port: int | None = None) -> Path:
    raft, link, c2s, tls = free_ports(4)
    return write(tmp_path, f"""
[node]
data_dir = "{tmp_path / 'data'}"
[cluster]
raft = "127.0.0.1:{raft}"
link = "127.0.0.1:{link}"
[c2s]
listen = "127.0.0.1:{busy_port or c2s}"
tls_listen = "127.0.0.1:{tls}"
""")


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        path = config_on_free_ports(tmp_path, busy.getsockname()[1])
        assert_one_line_error(raftxmpp("node", "start", "--config", str(path)), "port in use")


def test_data_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    path = config_on_free_ports(tmp_path)
    assert_one_line_error(raftxmpp("node", "start", "--config", str(path), "--data-dir",
                                   str(blocker / "data")), "not writable")


def test_user_commands_without_a_running_node_are_one_line_errors(tmp_path):
    result = raftxmpp("user", "list", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "no running node")


def test_user_add_list_passwd_remove_against_a_running_node(single_node, tmp_path):
    single_node.start()
    wait_for(lambda: single_node.status()["leader"], 10, "the node to lead")
    data = ["--config", str(single_node.config_path)]
    pw = tmp_path / "pw"
    pw.write_text("s3cret-password\n")
    added = raftxmpp("user", "add", "alice@localhost", "--password-file", str(pw), *data)
    assert added.returncode == 0, added.stderr
    assert raftxmpp("user", "list", *data).stdout.split() == ["alice@localhost"]
    assert_one_line_error(raftxmpp("user", "add", "alice@localhost", *data, stdin="x\n"),
                          "already exists")
    assert_one_line_error(raftxmpp("user", "add", "bob@elsewhere.org", *data, stdin="x\n"),
                          "not served")
    assert_one_line_error(raftxmpp("user", "add", "not a jid@@", *data, stdin="x\n"),
                          "not a valid JID")
    assert raftxmpp("user", "passwd", "alice@localhost", *data, stdin="new-pw\n").returncode == 0
    assert raftxmpp("user", "remove", "alice@localhost", *data).returncode == 0
    assert raftxmpp("user", "list", *data).stdout.split() == []
    status = raftxmpp("cluster", "status", *data)
    assert status.returncode == 0 and "leader" in status.stdout


def test_a_second_node_on_the_same_data_dir_is_refused(single_node):
    single_node.start()
    result = raftxmpp("node", "start", "--config", str(single_node.config_path))
    assert_one_line_error(result, "another node is running")


def test_admin_socket_is_owner_only(single_node):
    single_node.start()
    mode = (single_node.data_dir / "admin.sock").stat().st_mode & 0o777
    assert mode == 0o600
    assert single_node.data_dir.stat().st_mode & 0o077 == 0


def test_every_package_is_listed_for_installation():
    """A package missing from pyproject.toml works from a checkout and breaks `pip install .`."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "raftxmpp").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml packages: {sorted(found - listed)}"


def test_single_toml_documents_every_key():
    """README promises that config/single.toml documents every key."""
    import dataclasses
    import re

    text = (ROOT / "config" / "single.toml").read_text()
    for name, section in config_mod._SECTION_TYPES.items():
        assert f"[{name}]" in text, f"[{name}] missing from config/single.toml"
        for field in dataclasses.fields(section):
            assert re.search(rf"^#?\s*{field.name}\s*=", text, re.M), f"[{name}] {field.name}"
