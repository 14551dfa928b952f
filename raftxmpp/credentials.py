"""SCRAM credentials (RFC 5802, RFC 7677): what an account stores instead of a password.

A password enters here, is turned into salted keys, and goes no further: the keys are
what the Raft log, snapshots and the state machine hold. PLAIN logins are checked by
deriving the same keys and comparing in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from scramp import ScramMechanism

MECHANISMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

Credentials = dict[str, dict[str, object]]


def derive(password: str, iterations: int) -> Credentials:
    """Salted keys for every SCRAM mechanism we offer; a fresh salt for each."""
    creds: Credentials = {}
    for mechanism in MECHANISMS:
        salt, stored_key, server_key, count = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations
        )
        creds[mechanism] = {
            "salt": salt,
            "stored_key": stored_key,
            "server_key": server_key,
            "iterations": count,
        }
    return creds


def verify_password(creds: Credentials, password: str) -> bool:
    """Checks a PLAIN password against the stored SCRAM-SHA-256 keys, in constant time."""
    keys = creds.get("SCRAM-SHA-256") or creds.get("SCRAM-SHA-1")
    if keys is None:
        return False
    mechanism = "SCRAM-SHA-256" if "SCRAM-SHA-256" in creds else "SCRAM-SHA-1"
    return hmac.compare_digest(stored_key_for(mechanism, keys, password), keys["stored_key"])


def stored_key_for(mechanism: str, keys: dict, password: str) -> bytes:
    digest = MECHANISMS[mechanism]
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), keys["salt"], keys["iterations"])
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    return hashlib.new(digest, client_key).digest()


def is_valid(creds: object) -> bool:
    """Shape check used by the state machine before it accepts a credentials value."""
    if not isinstance(creds, dict) or not creds:
        return False
    for mechanism, keys in creds.items():
        if mechanism not in MECHANISMS or not isinstance(keys, dict):
            return False
        if not all(isinstance(keys.get(k), bytes) for k in ("salt", "stored_key", "server_key")):
            return False
        if not isinstance(keys.get("iterations"), int) or keys["iterations"] < 4096:
            return False
    return True
