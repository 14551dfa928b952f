"""Server Dialback keys (XEP-0220 §2.1.1, generated as XEP-0185 recommends).

key = HMAC-SHA256(SHA256(secret) as hex, "Receiving Originating StreamID"), in hex.

Any node of the cluster must be able to check a key another node generated: the
peer's Receiving Server calls back whichever node the DNS of our domain gives it.
So the dialback secret is the same on every node, and it is *derived* from the cluster
secret with HKDF (a separate `info`, so it reveals nothing about the cluster secret
or the other keys derived from it), rather than a random value kept in the replicated
state: a derived secret never enters the Raft log, a snapshot or a log line, needs no
Raft write at start-up (a node cut off from the majority still federates), and has
nothing to seal. Changing the cluster secret changes it, which costs nothing: a
dialback key lives only as long as one stream negotiation.

This module does no I/O and never logs.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Changing these changes every key: nodes running different versions would refuse
# each other's keys during a rolling upgrade.
_SALT = b"raftxmpp cluster secret"
_INFO = b"raftxmpp dialback secret v1"


def dialback_secret(cluster_secret: str) -> str:
    """The dialback secret shared by every node that holds `cluster_secret`."""
    if not cluster_secret:
        raise ValueError("the cluster secret must not be empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        cluster_secret.encode()).hex()


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §2: the key the Originating Server sends in <db:result/>."""
    hashed = hashlib.sha256(secret.encode()).hexdigest().encode()
    message = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(hashed, message, hashlib.sha256).hexdigest()


def key_is_valid(secret: str, receiving: str, originating: str, stream_id: str,
                 key: str) -> bool:
    """The Authoritative Server's check of a <db:verify/> (constant time)."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), (key or "").strip().lower().encode())
