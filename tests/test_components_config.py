"""The [components] section: the XEP-0114 listener's address and bounds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from raftxmpp import config as config_mod
from raftxmpp.config import Address, ConfigError
from tests.harness import free_ports
from tests.test_cli import assert_one_line_error, raftxmpp


def load(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return config_mod.load(path)


def test_component_listener_is_on_5347_on_loopback_by_default(tmp_path):
    components = load(tmp_path, "").components
    assert components.listen == Address("127.0.0.1", 5347)
    assert config_mod.embedded_default().components.listen == Address("127.0.0.1", 5347)


def test_empty_listen_turns_the_component_listener_off(tmp_path):
    assert load(tmp_path, '[components]\nlisten = ""\n').components.listen is None


@pytest.mark.parametrize(("text", "message"), [
    ('[components]\nlisten = "nowhere"\n', "[components] listen"),
    ("[components]\nhandshake_timeout = 0\n", "[components] handshake_timeout must be positive"),
    ("[components]\nmax_stanza_size = 0\n", "[components] max_stanza_size must be at least 1"),
    ("[components]\nsecret = 'x'\n", "[components] unknown key 'secret'"),
])
def test_bad_components_settings_are_one_line_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, text)


def test_busy_component_port_is_a_one_line_start_error(tmp_path):
    raft, link, c2s, tls, http = free_ports(5)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        path = tmp_path / "node.toml"
        path.write_text(f"""
[node]
data_dir = "{tmp_path / 'data'}"
[cluster]
raft = "127.0.0.1:{raft}"
link = "127.0.0.1:{link}"
[c2s]
listen = "127.0.0.1:{c2s}"
tls_listen = "127.0.0.1:{tls}"
[http]
listen = "127.0.0.1:{http}"
[components]
listen = "127.0.0.1:{busy.getsockname()[1]}"
""")
        result = raftxmpp("node", "start", "--config", str(path))
    assert_one_line_error(result, "cannot listen for components")
    assert "port in use" in result.stderr
