"""TLS for client streams: a self-signed certificate on first start, and the server context.

The generated certificate lets a fresh node speak STARTTLS at once; production
configs point [tls] at a real certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ensure_certificate(data_dir: Path, hosts: tuple[str, ...]) -> tuple[Path, Path]:
    """Returns (certificate, key) under data_dir/tls, generating them the first time."""
    tls_dir = data_dir / "tls"
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(tls_dir, 0o700)  # mkdir's mode passes through the umask
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:  # public, but like everything in the data dir: 0600
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.2+ (RFC 7590), no renegotiation (the CVE-2021-32920 CPU flood)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(cert_path, key_path)
    return context


def certificate_der(cert_path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


async def server_tls(stream: trio.abc.Stream, context: ssl.SSLContext) -> trio.abc.Stream:
    """The server side of a TLS handshake over `stream`, which it takes over: a TCP socket
    gets TLS in C on the socket itself, any other stream trio's SSLStream. The caller
    bounds the time and closes the returned stream."""
    if isinstance(stream, trio.SocketStream):
        return await SocketTLSStream.accept(stream, context)
    ssl_stream = trio.SSLStream(stream, context, server_side=True)
    await ssl_stream.do_handshake()
    return ssl_stream


class SocketTLSStream(trio.abc.Stream):
    """Server-side TLS on the socket itself (a non-blocking `ssl.SSLSocket`) for client
    streams: OpenSSL reads and writes the socket in C, where `trio.SSLStream` moves every
    record through Python (MemoryBIOs, its retry loop, a separate socket call): a third of
    a TLS login's CPU in the issue-22 profile. Errors keep trio's stream contract:
    `trio.BrokenResourceError` (or the socket's OSError), `trio.ClosedResourceError`."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._broken = False  # a cancelled write left OpenSSL holding part of a record

    @classmethod
    async def accept(cls, stream: trio.SocketStream, context: ssl.SSLContext) -> SocketTLSStream:
        """Takes over `stream`'s socket (the stream is unusable after) and handshakes;
        the caller bounds the time."""
        raw = stream.socket
        family, kind, proto = raw.family, raw.type, raw.proto
        plain = socket.socket(family, kind, proto, fileno=raw.detach())
        plain.setblocking(False)
        try:
            tls = cls(context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False))
        except BaseException:
            plain.close()
            raise
        try:
            await tls._call(tls._sock.do_handshake)
        except BaseException:
            tls._discard_unread()
            tls._sock.close()
            raise
        return tls

    def _discard_unread(self) -> None:
        """OpenSSL stops reading at the first bad record; closing on the client's unread
        bytes (plain HTTP or XMPP on a TLS port) would send a reset instead of a close."""
        with contextlib.suppress(OSError):
            for _ in range(16):
                if not socket.socket.recv(self._sock, 65536):  # the raw bytes, not TLS
                    break

    async def _call(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Runs a non-blocking SSL operation until it completes, waiting for the socket
        when OpenSSL asks; a checkpoint either way (trio's rule for stream methods)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._broken:
                raise trio.BrokenResourceError("TLS stream broken by a cancelled write")
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._sock)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS: {exc}") from exc
            else:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result
            waited = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError
        return await self._call(self._sock.recv, max_bytes or 65536)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError
        view = memoryview(data)
        try:
            while view:
                # OpenSSL wants the same bytes again after WANT_WRITE: `view` only
                # moves on by what a completed write took.
                view = view[await self._call(self._sock.send, view):]
        except trio.Cancelled:
            self._broken = bool(view)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            with contextlib.suppress(OSError):  # best effort: close_notify, no wait for the reply
                self._sock.unwrap()
            self._sock.close()
        await trio.lowlevel.checkpoint()
