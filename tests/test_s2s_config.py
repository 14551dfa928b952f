"""[s2s] configuration: validated once, at start-up, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftxmpp import config as config_mod
from raftxmpp.config import ConfigError


def load(tmp_path: Path, body: str) -> config_mod.Config:
    path = tmp_path / "node.toml"
    path.write_text(body)
    return config_mod.load(path)


def test_defaults_federate_over_starttls_on_5269(tmp_path):
    s2s = load(tmp_path, "").s2s
    assert s2s.enabled and s2s.require_tls and not s2s.require_valid_certificates
    assert str(s2s.listen) == "127.0.0.1:5269" and s2s.tls_listen is None


@pytest.mark.parametrize(("body", "message"), [
    ("[s2s]\nconnect_timeout = 0\n", "[s2s] connect_timeout must be positive"),
    ("[s2s]\nmax_queue = 0\n", "[s2s] max_queue must be at least 1"),
    ("[s2s]\ndeny = ['user@example.org']\n", "[s2s] deny: 'user@example.org' is not a domain"),
    ("[s2s]\nallow = ['exa mple.org']\n", "[s2s] allow: 'exa mple.org' is not a domain"),
    ("[s2s]\nlisten = '127.0.0.1:5269'\ntls_listen = '127.0.0.1:5269'\n",
     "[s2s] listen and tls_listen must differ"),
    ("[s2s]\nca_file = 'missing.pem'\n", "is not a file"),
    ("[s2s]\nbidi = true\n", "[s2s] unknown key 'bidi'"),
])
def test_mistakes_are_one_line_errors(tmp_path, body, message):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, body)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_listener_set_to_empty_is_off(tmp_path):
    assert load(tmp_path, "[s2s]\nlisten = ''\n").s2s.listen is None
