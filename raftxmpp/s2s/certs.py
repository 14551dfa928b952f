"""TLS for server-to-server streams, and whether a peer's certificate proves its domain.

A server federating with the public network meets three kinds of peers: those whose
certificate is valid for their domain (they may authenticate with SASL EXTERNAL,
XEP-0178), those with a self-signed or otherwise unverifiable one, and those with none.
The last two must still be able to connect and fall back to Server Dialback (XEP-0220):
a TLS handshake must never fail *because* of the peer's certificate, yet we must know
afterwards whether it was valid.

Python's ssl module cannot say that: with CERT_OPTIONAL or CERT_REQUIRED an
unverifiable certificate aborts the handshake, and with CERT_NONE the server does not
even ask for one. OpenSSL itself can (a verify callback that records the verdict and
lets the handshake go on), so this module installs one on the contexts it builds,
through ctypes on the libssl the ssl module already loaded, and reads the verdict after
the handshake with SSL_get_verify_result. Every pointer taken from a Python object is
cross-checked against another before use (the SSL* of a connection must belong to the
SSL_CTX of its context, which must be the one we configured); if anything does not
match, the certificate is treated as unverified (dialback still works) and never as
valid.

Name checks follow RFC 6125 as XEP-0178 §3 and RFC 6120 §13.7.1.2 use it: a DNS-ID
(one wildcard label at most), an SRV-ID for _xmpp-server, or an XmppAddr; the subject
CN only when the certificate has no subjectAltName at all.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier

log = logging.getLogger("raftxmpp.s2s")

_XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # id-on-xmppAddr (RFC 6120 §13.7.1.4)
_SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # id-on-dnsSRV (RFC 4985)

_SSL_VERIFY_PEER = 0x01
_X509_V_OK = 0
# PySSLContext and PySSLSocket (Modules/_ssl.c, CPython 3.11-3.13): PyObject_HEAD, then
# `SSL_CTX *ctx` for a context; `PyObject *Socket; SSL *ssl; PySSLContext *ctx` for a socket.
_HEAD = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
_PTR = ctypes.sizeof(ctypes.c_void_p)


@dataclass(frozen=True)
class PeerCertificate:
    """What the TLS handshake told us about the peer's certificate."""

    der: bytes | None  # None: the peer sent none
    chain_valid: bool  # it chains to a trust anchor we hold, and is in date

    def valid_for(self, domain: str) -> bool:
        """True when the certificate proves `domain` (XEP-0178 §3, RFC 6125 §6)."""
        return self.der is not None and self.chain_valid and certificate_names_domain(
            self.der, domain)


NO_CERTIFICATE = PeerCertificate(None, False)


# -- the verify callback ---------------------------------------------------------------------

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VerifyCallback
def _continue_whatever_the_verdict(preverify_ok: int, store_ctx: int) -> int:
    # OpenSSL keeps the verdict in the connection's verify result; we read it later.
    return 1


def _load_libssl() -> ctypes.CDLL | None:
    """The libssl the ssl module uses (never a second copy), or None."""
    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "/libssl.so" in line:
                    path = line.split()[-1]
                    break
    except OSError:
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
        lib.SSL_get_verify_result.restype = ctypes.c_long
    except (OSError, AttributeError):
        return None
    return lib


_libssl = _load_libssl()


def _context_pointer(context: ssl.SSLContext) -> int | None:
    return ctypes.c_void_p.from_address(id(context) + _HEAD).value


def _accept_any_certificate(context: ssl.SSLContext) -> bool:
    """Makes `context` ask for (server) or check (client) the peer's certificate without
    ever failing the handshake over it. False when that cannot be done safely here."""
    if _libssl is None:
        return False
    pointer = _context_pointer(context)
    # The ssl module set SSL_VERIFY_PEER (CERT_OPTIONAL/REQUIRED) just before: the
    # pointer is the context's SSL_CTX only if OpenSSL reports the same mode back.
    if not pointer or _libssl.SSL_CTX_get_verify_mode(pointer) & _SSL_VERIFY_PEER == 0:
        return False
    _libssl.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, _continue_whatever_the_verdict)
    return True


def _chain_verified(ssl_object: ssl.SSLObject) -> bool:
    """SSL_get_verify_result of a finished handshake, with every pointer cross-checked."""
    if _libssl is None:
        return False
    inner = getattr(ssl_object, "_sslobj", None)
    context = getattr(ssl_object, "context", None)
    if inner is None or context is None:
        return False
    base = id(inner) + _HEAD
    ssl_pointer = ctypes.c_void_p.from_address(base + _PTR).value
    context_object = ctypes.c_void_p.from_address(base + 2 * _PTR).value
    if not ssl_pointer or context_object != id(inner.context):
        return False
    if _libssl.SSL_get_SSL_CTX(ssl_pointer) != _context_pointer(inner.context):
        return False
    return _libssl.SSL_get_verify_result(ssl_pointer) == _X509_V_OK


# -- contexts ---------------------------------------------------------------------------------


@dataclass
class S2SContexts:
    """The TLS contexts of one node's s2s streams, both ways."""

    server: ssl.SSLContext  # for streams peers open to us
    client: ssl.SSLContext  # for streams we open; presents our certificate too
    judges_certificates: bool  # False: peers' certificates cannot be checked here

    def peer_certificate(self, stream) -> PeerCertificate:
        """What the handshake of `stream` (a trio.SSLStream, or an ssl.SSLObject) showed."""
        # trio keeps its ssl.SSLObject private; OpenSSL's verdict can only be read there.
        ssl_object = getattr(stream, "_ssl_object", stream)
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            return NO_CERTIFICATE
        return PeerCertificate(der, self.judges_certificates and _chain_verified(ssl_object))


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7590
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION


def build_contexts(cert_path: Path, key_path: Path, ca_file: Path | None) -> S2SContexts:
    """Contexts presenting our certificate, trusting the system store plus `ca_file`."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    client.check_hostname = False  # the name is checked against the XMPP domain, below
    judged = True
    for context in (server, client):
        _harden(context)
        context.load_cert_chain(cert_path, key_path)
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        context.verify_mode = ssl.CERT_OPTIONAL if context is server else ssl.CERT_REQUIRED
        judged = _accept_any_certificate(context) and judged
    if not judged:
        log.warning("peers' TLS certificates cannot be checked on this platform: every "
                    "s2s peer authenticates with dialback, none with SASL EXTERNAL")
        server.verify_mode = ssl.CERT_NONE
        client.verify_mode = ssl.CERT_NONE
    return S2SContexts(server, client, judged)


# -- names --------------------------------------------------------------------------------------


def certificate_names_domain(der: bytes, domain: str) -> bool:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return False
    domain = domain.lower().rstrip(".")
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return any(isinstance(n, str) and dns_name_matches(n, domain) for n in names)
    except ValueError:
        return False
    if any(dns_name_matches(n, domain) for n in san.get_values_for_type(x509.DNSName)):
        return True
    for other in san.get_values_for_type(x509.OtherName):
        text = _utf8_string(other.value)
        if text is None:
            continue
        if other.type_id == _XMPP_ADDR and text.lower() == domain:
            return True
        if other.type_id == _SRV_NAME and text.lower() == f"_xmpp-server.{domain}":
            return True
    return False


def dns_name_matches(pattern: str, domain: str) -> bool:
    """RFC 6125 §6.4.3: exact, or a wildcard standing for exactly the leftmost label."""
    pattern = pattern.lower().rstrip(".")
    if pattern == domain:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return False


def _utf8_string(value: bytes) -> str | None:
    """The text of a DER UTF8String or IA5String (an otherName's value, possibly
    wrapped in its [0] EXPLICIT tag); None for anything else."""
    if value[:1] == b"\xa0":
        value = _der_content(value)
        if value is None:
            return None
    if value[:1] not in (b"\x0c", b"\x16"):
        return None
    content = _der_content(value)
    try:
        return None if content is None else content.decode()
    except UnicodeDecodeError:
        return None


def _der_content(value: bytes) -> bytes | None:
    if len(value) < 2:
        return None
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3 or len(value) < 2 + count:
            return None
        length, offset = int.from_bytes(value[2:2 + count], "big"), 2 + count
    content = value[offset:offset + length]
    return content if len(content) == length else None
