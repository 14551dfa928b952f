"""Signed, expiring upload URLs (XEP-0363 slots). Sans-IO.

A slot's PUT URL and its file's GET URL carry an expiry (`e`, Unix seconds; 0 = never)
and an HMAC-SHA256 (`s`) over the method, the slot, the file name, the expiry and, for
PUT, the size and content type the slot was granted for. The key is derived with HKDF
from the cluster secret, which every member holds and the Raft log never does: any
node can check a URL another node handed out, and a copy of the log or of a backup
cannot forge one. Changing the cluster secret invalidates every URL handed out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_SALT = b"raftxmpp cluster secret"
_INFO = b"raftxmpp upload url v1"


def upload_key(cluster_secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        cluster_secret.encode())


class UploadURLs:
    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def _sign(self, *fields: object) -> str:
        message = "\n".join(str(f) for f in fields).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _url(self, slot: str, name: str, expires: int, signature: str) -> str:
        return f"{self.base_url}/upload/{slot}/{quote(name, safe='')}?e={expires}&s={signature}"

    def put_url(self, slot: str, name: str, size: int, content_type: str, expires: int) -> str:
        return self._url(slot, name, expires,
                         self._sign("PUT", slot, name, size, content_type, expires))

    def get_url(self, slot: str, name: str, expires: int) -> str:
        return self._url(slot, name, expires, self._sign("GET", slot, name, expires))

    def check_put(self, slot: str, name: str, size: int, content_type: str, query: dict,
                  now: float) -> str | None:
        """None if the PUT URL is genuine and current, else why not."""
        expires = _expiry(query)
        if expires is None:
            return "the URL is not signed"
        wanted = self._sign("PUT", slot, name, size, content_type, expires)
        return _check(wanted, query.get("s", ""), expires, now)

    def check_get(self, slot: str, name: str, query: dict, now: float) -> str | None:
        expires = _expiry(query)
        if expires is None:
            return "the URL is not signed"
        return _check(self._sign("GET", slot, name, expires), query.get("s", ""), expires, now)


def _expiry(query: dict) -> int | None:
    text = query.get("e", "")
    return int(text) if text.isdigit() and len(text) < 16 else None


def _check(wanted: str, given: str, expires: int, now: float) -> str | None:
    if not hmac.compare_digest(wanted.encode(), given.encode()):
        return "the URL's signature is not valid"
    if expires and expires < now:
        return "the URL has expired"
    return None
