"""SASL authentication of client streams (RFC 6120 §6): PLAIN and SCRAM, with no I/O.

The stream layer feeds in what the client sent, already base64-decoded, and gets back
either a challenge or a success (with its additional data) to encode and send; every
failure is a `SaslFailure` carrying the RFC 6120 §6.5 condition to put in <failure/>.

Rules this module keeps:
- It never tells "no such account" from "wrong password": both end in 'not-authorized',
  at the same step, after the same password-hashing work, so the login form cannot be
  used to list accounts.
- It never logs, stores or returns a password or a key; `username` is all that leaves.
- It never touches a socket, a clock or the cluster: accounts come from `lookup`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from precis_i18n import get_profile
from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError, saslprep

from raftxmpp import credentials
from raftxmpp.credentials import Credentials

__all__ = [
    "SaslFailure",
    "SaslServer",
    "claimed_localpart",
    "offered_mechanisms",
    "tls_server_end_point",
    "unknown_account_key",
]

log = logging.getLogger("raftxmpp.sasl")

CONDITIONS = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)

# Strongest first: RFC 6120 §6.3.3 lets the client pick, and clients take the first they know.
_SCRAM_PLUS = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS")
_SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-1")
SUPPORTED = frozenset((*_SCRAM_PLUS, *_SCRAM, "PLAIN"))

# scramp 1.5 implements these; 'tls-exporter' (RFC 9266) it refuses.
CHANNEL_BINDING_TYPES = frozenset({"tls-server-end-point", "tls-unique"})

# RFC 7622 §3.3.1: a localpart is UsernameCaseMapped minus these eight characters.
_LOCALPART_FORBIDDEN = frozenset("\"&'/:<>@")
_USERNAME = get_profile("UsernameCaseMapped")

# Fake SCRAM salts for unknown users must be stable (a salt that changes between attempts,
# between nodes or across a restart marks the user as unknown) and unguessable (a salt an
# attacker can compute does too): an HMAC of the name under a key every node derives from
# the cluster secret (`unknown_account_key`). This per-process key is only the fallback
# of a SaslServer built without one (unit tests); nodes always pass theirs.
_PROCESS_KEY = secrets.token_bytes(32)


def unknown_account_key(cluster_secret: str) -> bytes:
    """The key of fake SCRAM salts: the same on every node of a cluster and after every
    restart, and useless for anything else (HKDF with its own label)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"raftxmpp cluster secret",
                info=b"raftxmpp unknown-account SCRAM salt v1").derive(cluster_secret.encode())


def claimed_localpart(mechanism: str, message: bytes, domain: str) -> str | None:
    """The localpart a client's first SASL message names, read before the exchange runs
    it (so the login throttle can make the connection wait first); None if it names none.
    The mechanism's own lookup stays the authority: this only has to agree with it for
    well-formed names."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if mechanism == "PLAIN":
        fields = text.split("\0")
        name = fields[1] if len(fields) == 3 else ""
    elif mechanism in SUPPORTED:
        try:
            _, bare = _Gs2Header.parse(text)
        except SaslFailure:
            return None
        attribute = bare.split(",", 1)[0]
        if not attribute.startswith("n="):
            return None
        name = attribute[2:].replace("=2C", ",").replace("=3D", "=")
        try:
            name = saslprep(name)
        except ScramException:
            return None
    else:
        return None
    return _localpart_of(name, domain, bare_jid_required=False) if name else None


class SaslFailure(Exception):
    """Authentication failed; `condition` is the RFC 6120 §6.5 element name to send."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"not an RFC 6120 SASL failure condition: {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


def offered_mechanisms(
    tls: bool, channel_binding: bool, allow_plain_without_tls: bool = False
) -> list[str]:
    """The <mechanisms/> to advertise, strongest first.

    -PLUS only when the TLS layer gave channel binding data (RFC 5802 §6); PLAIN only
    under TLS (RFC 4616 §1: not without adequate data security) unless the operator
    explicitly allowed it.
    """
    offered = list(_SCRAM_PLUS) if channel_binding else []
    offered.extend(_SCRAM)
    if tls or allow_plain_without_tls:
        offered.append("PLAIN")
    return offered


@functools.lru_cache(maxsize=8)
def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 §4.1 channel binding data: the server certificate hashed with the hash of
    its signature algorithm, MD5 and SHA-1 replaced by SHA-256. Cached: every TLS
    connection asks for the node's one certificate (an X.509 parse each time before).

    Raises ValueError when the type is undefined for the certificate, as for Ed25519 and
    Ed448 signatures, which use no separate hash.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unknown certificate signature algorithm: {exc}") from exc
    if algorithm is None:
        raise ValueError(
            "tls-server-end-point is undefined for a signature algorithm without a single "
            f"hash function ({cert.signature_algorithm_oid.dotted_string})"
        )
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


class _Stage(enum.Enum):
    NEW = "new"  # start() not yet called
    RUNNING = "running"  # the mechanism is waiting for the next client response
    DONE = "done"  # succeeded or failed; nothing more is accepted


class SaslServer:
    """One authentication exchange with one mechanism, from <auth/> to <success/> or <failure/>."""

    def __init__(
        self,
        mechanism: str,
        domain: str,
        lookup: Callable[[str], Credentials | None],
        offered: list[str],
        channel_binding: tuple[str, bytes] | None = None,
        *,
        unknown_user_iterations: int = 4096,
        unknown_user_key: bytes | None = None,
    ) -> None:
        """`lookup(localpart)` gives the credentials of localpart@domain, or None.

        `unknown_user_iterations` is the SCRAM iteration count shown for accounts that do
        not exist; set it to the count new accounts are created with, or an attacker can
        tell real accounts from missing ones by it. `unknown_user_key`
        (`unknown_account_key`) makes their fake salts; give every node the same one.
        """
        if mechanism not in offered or mechanism not in SUPPORTED:
            raise SaslFailure("invalid-mechanism")
        if channel_binding is not None:
            cb_type, cb_data = channel_binding
            if cb_type not in CHANNEL_BINDING_TYPES:
                raise ValueError(f"unsupported channel binding type {cb_type!r}")
            if not isinstance(cb_data, bytes) or not cb_data:
                raise ValueError("channel binding data must be non-empty bytes")
        if mechanism.endswith("-PLUS") and channel_binding is None:
            raise ValueError(f"{mechanism} needs channel binding data")

        account = _AccountLookup(domain, lookup, unknown_user_iterations,
                                 unknown_user_key or _PROCESS_KEY)
        self._mechanism: _Plain | _Scram
        if mechanism == "PLAIN":
            self._mechanism = _Plain(account)
        else:
            plus_offered = any(name.endswith("-PLUS") for name in offered)
            self._mechanism = _Scram(mechanism, account, channel_binding, plus_offered)
        self.mechanism = mechanism
        self._stage = _Stage.NEW
        self._identity_seen = False
        self.username: str | None = None

    @property
    def expects_identity(self) -> bool:
        """True while the next client message is the one that names the user (after an
        <auth/> without an initial response)."""
        return self._stage is _Stage.RUNNING and not self._identity_seen

    def start(self, initial_response: bytes | None) -> tuple[str, bytes]:
        """Handles <auth/>. An absent or empty initial response draws an empty challenge."""
        if self._stage is not _Stage.NEW:
            self._stage = _Stage.DONE
            raise SaslFailure("malformed-request", "authentication already started")
        self._stage = _Stage.RUNNING
        if not initial_response:
            return "challenge", b""
        return self._step(initial_response)

    def respond(self, response: bytes) -> tuple[str, bytes]:
        """Handles <response/>."""
        if self._stage is not _Stage.RUNNING:
            self._stage = _Stage.DONE
            raise SaslFailure("malformed-request", "no authentication in progress")
        return self._step(response)

    def _step(self, data: bytes) -> tuple[str, bytes]:
        self._identity_seen = True
        try:
            kind, payload = self._mechanism.step(data)
        except SaslFailure:
            self._stage = _Stage.DONE
            raise
        if kind == "success":
            self._stage = _Stage.DONE
            self.username = self._mechanism.username
        return kind, payload


class _AccountLookup:
    """Turns what the client typed into an account, the same way for every mechanism."""

    def __init__(
        self, domain: str, lookup: Callable[[str], Credentials | None], unknown_iterations: int,
        unknown_key: bytes,
    ) -> None:
        self.domain = domain
        self.unknown_iterations = unknown_iterations
        self.unknown_key = unknown_key
        self._lookup = lookup

    def localpart(self, authcid: str) -> str | None:
        """The normalized localpart authcid names on this domain, or None if it names none.

        Clients send either the localpart or the bare JID (RFC 6120 §6.3.7 leaves the
        simple user name's form to the mechanism); both are accepted.
        """
        return _localpart_of(authcid, self.domain, bare_jid_required=False)

    def check_authzid(self, authzid: str, localpart: str | None) -> None:
        """RFC 6120 §6.3.8: we only let a user act as themselves."""
        if not authzid:
            return
        if localpart is None or _localpart_of(authzid, self.domain, True) != localpart:
            raise SaslFailure("invalid-authzid")

    def credentials(self, localpart: str | None) -> Credentials | None:
        if localpart is None:
            return None
        try:
            return self._lookup(localpart)
        except SaslFailure:
            raise  # the lookup refused on purpose (a throttled login): no traceback
        except Exception as exc:
            # A store that cannot answer is not the client's fault (RFC 6120 §6.5.11).
            log.exception("account lookup for %s@%s failed", localpart, self.domain)
            raise SaslFailure("temporary-auth-failure") from exc


def _localpart_of(name: str, domain: str, bare_jid_required: bool) -> str | None:
    local, at, host = name.partition("@")
    if at and host.lower() != domain.lower():
        return None
    if bare_jid_required and not at:
        return None
    try:
        local = _USERNAME.enforce(local)
    except UnicodeError:
        return None
    if _LOCALPART_FORBIDDEN.intersection(local):
        return None
    return local


class _Plain:
    """RFC 4616: message = [authzid] NUL authcid NUL passwd, in one client response."""

    def __init__(self, account: _AccountLookup) -> None:
        self._account = account
        self.username: str | None = None

    def step(self, data: bytes) -> tuple[str, bytes]:
        authzid, authcid, password = _split_plain(data)
        localpart = self._account.localpart(authcid)
        self._account.check_authzid(authzid, localpart)
        creds = self._account.credentials(localpart)
        if not self._password_matches(creds, password):
            raise SaslFailure("not-authorized")
        self.username = localpart
        return "success", b""

    def _password_matches(self, creds: Credentials | None, password: str) -> bool:
        # The stored keys were derived from the SASLprep'd password (scramp does so), so
        # PLAIN must prepare it the same way (RFC 4616 §2) before comparing.
        try:
            prepared: str | None = saslprep(password)
        except ScramException:
            prepared = None
        # Without an account the same PBKDF2 work is done against a dummy, so the reply
        # time does not say whether the account exists.
        keys = creds if creds is not None else _dummy_credentials(self._account.unknown_iterations)
        matched = credentials.verify_password(keys, prepared if prepared is not None else password)
        return matched and creds is not None and prepared is not None


def _split_plain(data: bytes) -> tuple[str, str, str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailure("malformed-request", "PLAIN message is not UTF-8") from None
    fields = text.split("\0")
    if len(fields) != 3 or not fields[1] or not fields[2]:
        raise SaslFailure(
            "malformed-request", "PLAIN message is not authzid NUL authcid NUL passwd"
        )
    authzid, authcid, password = fields
    return authzid, authcid, password


@functools.lru_cache(maxsize=4)
def _dummy_credentials(iterations: int) -> Credentials:
    return credentials.derive(secrets.token_urlsafe(32), iterations)


# scramp's reasons mapped to RFC 6120 conditions. Everything about who the user is or
# whether they proved it is 'not-authorized'; a broken message is 'malformed-request'.
_SCRAM_CONDITIONS = {
    ServerError.INVALID_PROOF: "not-authorized",
    ServerError.CHANNEL_BINDINGS_DONT_MATCH: "not-authorized",
    ServerError.SERVER_DOES_SUPPORT_CHANNEL_BINDING: "not-authorized",
    ServerError.CHANNEL_BINDING_NOT_SUPPORTED: "not-authorized",
    ServerError.UNSUPPORTED_CHANNEL_BINDING_TYPE: "not-authorized",
    ServerError.UNKNOWN_USER: "not-authorized",
    ServerError.INVALID_USERNAME_ENCODING: "not-authorized",
    ServerError.NO_RESOURCES: "temporary-auth-failure",
}


class _Scram:
    """RFC 5802 / RFC 7677 through scramp; the gs2 header is judged here first.

    scramp 1.5 refuses any authzid in the gs2 header, so the header is parsed here, the
    authzid checked against the user, and scramp given the header without it. Its check
    of the client's c= attribute must still see the header as the client sent it
    (RFC 5802 §7, cbind-input), so the server's gs2 header is swapped for one that gives
    those bytes back.
    """

    def __init__(
        self,
        mechanism: str,
        account: _AccountLookup,
        channel_binding: tuple[str, bytes] | None,
        plus_offered: bool,
    ) -> None:
        self._account = account
        self._keys_name = mechanism.removesuffix("-PLUS")
        self._binds = mechanism.endswith("-PLUS")
        self._plus_offered = plus_offered
        self._cb_type, self._cb_data = channel_binding if channel_binding else (None, b"")
        self._gs2: _Gs2Header | None = None
        self._localpart: str | None = None
        self.username: str | None = None
        self._server = ScramMechanism(mechanism).make_server(
            self._auth_info, channel_binding=channel_binding if self._binds else None
        )

    def step(self, data: bytes) -> tuple[str, bytes]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslFailure("malformed-request", "SCRAM message is not UTF-8") from None
        if self._gs2 is None:
            return "challenge", self._client_first(text).encode()
        return "success", self._client_final(text).encode()

    def _client_first(self, text: str) -> str:
        gs2, bare = _Gs2Header.parse(text)
        self._check_binding_choice(gs2)
        self._gs2 = gs2
        try:
            self._server.set_client_first(gs2.without_authzid() + bare)
            if gs2.authzid:
                cbind_data = self._cb_data if gs2.flag == "p" else b""
                self._server.gs2_header = _Gs2HeaderAsSent(gs2.raw, cbind_data)
            return self._server.get_server_first()
        except ScramException as exc:
            _raise_failure(exc)

    def _client_final(self, text: str) -> str:
        try:
            self._server.set_client_final(text)
            server_final = self._server.get_server_final()
        except ScramException as exc:
            _raise_failure(exc)
        self.username = self._localpart
        return server_final

    def _check_binding_choice(self, gs2: _Gs2Header) -> None:
        """RFC 5802 §6: the gs2-cbind-flag has to agree with the mechanism and with us."""
        if gs2.flag == "p":
            if not self._binds:
                raise SaslFailure("malformed-request", "channel binding with a non-PLUS mechanism")
            if gs2.cb_name != self._cb_type:
                raise SaslFailure(
                    "not-authorized", f"channel binding type {gs2.cb_name} unsupported"
                )
        elif self._binds:
            raise SaslFailure("malformed-request", "a -PLUS mechanism without channel binding")
        elif gs2.flag == "y" and self._plus_offered:
            # The client supports channel binding but believes we do not: someone stripped
            # the -PLUS mechanisms from our <mechanisms/>.
            raise SaslFailure("not-authorized", "channel binding was offered")

    def _auth_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        """scramp's auth_fn: called with the SASLprep'd username from client-first."""
        localpart = self._account.localpart(name)
        self._account.check_authzid(self._gs2.authzid if self._gs2 else "", localpart)
        creds = self._account.credentials(localpart)
        keys = creds.get(self._keys_name) if creds is not None else None
        if keys is None:
            # Answer as if the account existed, so it fails only at the proof; scramp's
            # 'unknown-user' error would tell anyone which accounts exist.
            return self._unknown_user_info(localpart if localpart is not None else name)
        self._localpart = localpart
        return keys["salt"], keys["stored_key"], keys["server_key"], keys["iterations"]

    def _unknown_user_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        salt = hmac.new(
            self._account.unknown_key, f"{self._keys_name}\0{name}".encode(), hashlib.sha256
        ).digest()  # 32 bytes, as scramp makes real ones
        size = hashlib.new(credentials.MECHANISMS[self._keys_name]).digest_size
        return (
            salt,
            secrets.token_bytes(size),
            secrets.token_bytes(size),
            self._account.unknown_iterations,
        )


def _raise_failure(exc: ScramException) -> NoReturn:
    if isinstance(exc.__cause__, SaslFailure):
        # Ours, raised inside auth_fn and wrapped by scramp: unwrap, keeping its own cause.
        raise exc.__cause__
    condition = _SCRAM_CONDITIONS.get(exc.server_error, "malformed-request")
    if condition == "not-authorized":
        raise SaslFailure(condition) from exc  # one face for every kind of wrong credential
    raise SaslFailure(condition, str(exc)) from exc


class _Gs2Header:
    """gs2-header = gs2-cbind-flag "," [ authzid ] "," (RFC 5802 §7)."""

    def __init__(self, flag: str, cb_name: str | None, authzid: str, raw: str) -> None:
        self.flag = flag  # 'n', 'y' or 'p'
        self.cb_name = cb_name
        self.authzid = authzid  # unescaped; '' when absent
        self.raw = raw  # exactly as sent, trailing comma included

    @classmethod
    def parse(cls, client_first: str) -> tuple[_Gs2Header, str]:
        """Splits client-first-message into its gs2 header and client-first-message-bare."""
        cbind_flag, comma1, rest = client_first.partition(",")
        authzid_field, comma2, bare = rest.partition(",")
        if not (comma1 and comma2):
            raise SaslFailure("malformed-request", "no gs2 header")
        if cbind_flag in ("n", "y"):
            flag, cb_name = cbind_flag, None
        elif cbind_flag.startswith("p=") and len(cbind_flag) > 2:
            flag, cb_name = "p", cbind_flag[2:]
        else:
            raise SaslFailure("malformed-request", "bad gs2-cbind-flag")
        authzid = _authzid_of(authzid_field) if authzid_field else ""
        return cls(flag, cb_name, authzid, f"{cbind_flag},{authzid_field},"), bare

    def without_authzid(self) -> str:
        return self.raw.partition(",")[0] + ",,"


_SASLNAME = re.compile(r"(?:[^=,\0]|=2C|=3D)+")


def _authzid_of(field: str) -> str:
    # authzid = "a=" saslname; saslname = 1*(value-safe-char / "=2C" / "=3D")
    if not field.startswith("a=") or not _SASLNAME.fullmatch(field, 2):
        raise SaslFailure("malformed-request", "bad gs2 authzid")
    return field[2:].replace("=2C", ",").replace("=3D", "=")


class _Gs2HeaderAsSent:
    """Stands in for scramp's Gs2Header in its c= check; see `_Scram`."""

    def __init__(self, raw: str, cbind_data: bytes) -> None:
        self._cbind_input = raw.encode() + cbind_data

    def make_cbind_input(self, _cb: object) -> bytes:
        return self._cbind_input
