"""Component secrets in the replicated state, sealed with the cluster secret.

A XEP-0114 component proves itself with SHA1(stream id + shared secret), and the
stream id is fresh on every connection: the server must compute that digest itself,
so it needs the secret, not a one-way hash of it. Yet no secret may sit readable in
the Raft log, a snapshot or a backup of `raft.dump`.

So the state machine's `secret_hash` field of a component holds the secret
*sealed*: encrypted and authenticated (Fernet: AES-128-CBC + HMAC-SHA256, a random
IV per seal) with a key derived by HKDF-SHA256 from the cluster secret. Every member
holds the cluster secret and can open it at handshake time; a copy of the log or of
a backup alone reveals nothing. Consequences an operator must know:
- changing the cluster secret makes every sealed component secret unreadable: add
  the components again (`raftxmpp component add`) after such a change;
- a single node without a configured cluster secret seals with its own random one
  (`data_dir/raft.secret`), which must be kept together with a backup of its data.

Sealing happens before a command is submitted (the randomness stays outside apply);
opening happens where a handshake is checked. This module does no I/O but reading
the node's own secret file, and never logs.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from raftxmpp.config import Config

# Changing these makes every sealed secret unreadable: a new scheme needs a new version.
_SALT = b"raftxmpp cluster secret"
_INFO = b"raftxmpp component secret v1"
MAX_SECRET_LENGTH = 1024


class SealedSecretError(Exception):
    """A sealed component secret cannot be opened: another cluster secret, or corrupt."""


def _fernet(cluster_secret: str) -> Fernet:
    if not cluster_secret:
        raise ValueError("the cluster secret must not be empty")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        cluster_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal_component_secret(cluster_secret: str, secret: str) -> bytes:
    """The component secret encrypted for the cluster; different bytes on every call."""
    if not secret or len(secret) > MAX_SECRET_LENGTH:
        raise ValueError(f"a component secret must be 1 to {MAX_SECRET_LENGTH} characters")
    return _fernet(cluster_secret).encrypt(secret.encode())


def open_component_secret(cluster_secret: str, blob: bytes) -> str:
    """The component secret back from `seal_component_secret`'s output."""
    try:
        return _fernet(cluster_secret).decrypt(blob).decode()
    except (InvalidToken, TypeError, UnicodeDecodeError):
        raise SealedSecretError(
            "cannot open the component secret: it was sealed with another cluster secret "
            "(add the component again) or is damaged") from None


def node_cluster_secret(config: Config) -> str:
    """The secret this node's Raft port uses: the configured one, or a single node's own."""
    from raftxmpp.cluster.raft import load_or_create_local_secret

    return config.cluster_secret() or load_or_create_local_secret(config.node.data_dir)
