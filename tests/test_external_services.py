"""External service discovery (XEP-0215): STUN/TURN servers from [external_services],
with time-limited TURN credentials that a real coturn (use-auth-secret) accepts: a TURN
Allocate (RFC 5766) with them succeeds, with a forged password it is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import socket
import struct
import subprocess
import time

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.modules import external_services
from raftxmpp.node import Node
from tests.debian import ensure_command
from tests.harness import free_ports, listener_sections, wait_for
from tests.test_c2s_raw import PASSWORD, authenticated
from tests.test_sm_raw import attr

SECRET = "turn-shared-secret-for-tests"


def test_services_are_validated_at_start_up():
    with pytest.raises(config_mod.ConfigError, match="TYPE:HOST:PORT"):
        config_mod.from_dict({"external_services": {"services": ["ftp:x:1"]}}, "t.toml", ".")
    with pytest.raises(config_mod.ConfigError, match="needs secret"):
        config_mod.from_dict({"external_services": {"services": ["turn:x:3478"]}}, "t.toml", ".")
    cfg = config_mod.from_dict({"external_services": {"services": ["turns:x:5349", "stun:x:3478"],
                                                      "secret": "s"}}, "t.toml", ".")
    assert [(s.type, s.transport) for s in cfg.external_services.parsed()] == [
        ("turns", "tcp"), ("stun", "udp")]


def test_credentials_are_coturns_turn_rest_api_form():
    username, password = external_services.credentials("k", "a@b", 1700000000)
    assert username == "1700000000:a@b"
    import base64
    assert base64.b64decode(password) == hmac.new(b"k", username.encode(), hashlib.sha1).digest()


@pytest.fixture
def turn_port():
    return free_ports(1)[0]


@pytest.fixture
async def node(tmp_path, nursery, turn_port):
    raft, link, c2s, tls = free_ports(4)
    base = config_mod.embedded_default(tmp_path / "data")
    cfg = dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, raft=config_mod.Address("127.0.0.1", raft),
                                    link=config_mod.Address("127.0.0.1", link)),
        **{name: dataclasses.replace(getattr(base, name), listen=config_mod.Address("127.0.0.1", 0))
           for name in listener_sections()},
        c2s=dataclasses.replace(base.c2s, listen=config_mod.Address("127.0.0.1", c2s),
                                tls_listen=config_mod.Address("127.0.0.1", tls),
                                plaintext_auth_on_loopback=True),
        external_services=config_mod.ExternalServicesSection(
            services=(f"stun:127.0.0.1:{turn_port}", f"turn:127.0.0.1:{turn_port}:udp"),
            secret=config_mod.Secret(SECRET), credential_lifetime=600.0),
    )
    node = await nursery.start(Node(cfg).run)
    with trio.fail_after(10):
        while not node.raft.status().get("leader"):
            await trio.sleep(0.02)
    await node.store.register("alice@localhost", PASSWORD)
    yield node
    node.request_stop()


async def ask(node, payload: bytes) -> bytes:
    raw = await authenticated(node, "alice", "caller")
    await raw.send(b"<iq type='get' id='x1' to='localhost'>" + payload + b"</iq>")
    return await raw.until(b"</iq>")


async def test_services_are_listed_with_credentials_for_turn_only(node, turn_port):
    reply = await ask(node, b"<services xmlns='urn:xmpp:extdisco:2'/>")
    assert b'type="result"' in reply
    stun, turn = reply.split(b"<service ")[1:]
    assert b'type="stun"' in stun and b"username" not in stun and b"restricted" not in stun
    assert b'type="turn"' in turn and b'restricted="1"' in turn
    username = attr(turn, "username")
    expiry = int(username.split(":")[0])
    assert username.endswith(":alice@localhost") and 590 <= expiry - time.time() <= 610
    assert attr(turn, "expires").endswith("Z")


async def test_services_filter_by_type_and_credentials_name_one_service(node, turn_port):
    reply = await ask(node, b"<services xmlns='urn:xmpp:extdisco:2' type='stun'/>")
    assert reply.count(b"<service ") == 1 and b'type="stun"' in reply
    reply = await ask(node, b"<credentials xmlns='urn:xmpp:extdisco:2'><service host='127.0.0.1' "
                            b"type='turn'/></credentials>")
    assert b"<credentials" in reply and b"password=" in reply
    reply = await ask(node, b"<credentials xmlns='urn:xmpp:extdisco:2'><service host='elsewhere' "
                            b"type='turn'/></credentials>")
    assert b'type="error"' in reply and b"item-not-found" in reply


async def test_the_feature_is_in_disco(node):
    reply = await ask(node, b"<query xmlns='http://jabber.org/protocol/disco#info'/>")
    assert b"urn:xmpp:extdisco:2" in reply


# -- against coturn ------------------------------------------------------------------------------


@pytest.fixture
def coturn(tmp_path, turn_port):
    """Debian's coturn with use-auth-secret, on a loopback port, for the test only."""
    binary = ensure_command("turnserver", "coturn")
    relay_low = free_ports(1)[0]
    with open(tmp_path / "turn.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={turn_port}",
             "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=localhost",
             "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout", "--simple-log",
             f"--pidfile={tmp_path / 'turn.pid'}", f"--db={tmp_path / 'turndb'}",
             "--relay-ip=127.0.0.1", f"--min-port={relay_low}", f"--max-port={relay_low + 20}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _stun_binding(turn_port), 15, "coturn to answer a STUN binding")
        yield process
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)


async def test_coturn_accepts_the_credentials_and_refuses_forged_ones(node, coturn, turn_port):
    reply = await ask(node, b"<services xmlns='urn:xmpp:extdisco:2' type='turn'/>")
    username, password = attr(reply, "username"), attr(reply, "password")
    ok = await trio.to_thread.run_sync(_allocate, turn_port, username, password)
    assert ok == 0x0103, hex(ok)  # Allocate success response
    forged = await trio.to_thread.run_sync(_allocate, turn_port, username, password[::-1])
    assert forged == 0x0113  # Allocate error response (401)
    expired_user = f"{int(time.time()) - 10}:alice@localhost"
    _, expired_password = external_services.credentials(SECRET, "alice@localhost",
                                                        int(time.time()) - 10)
    expired = await trio.to_thread.run_sync(_allocate, turn_port, expired_user,
                                            expired_password)
    assert expired == 0x0113


# A TURN client of a dozen lines: STUN framing (RFC 5389) and Allocate (RFC 5766).
COOKIE = 0x2112A442


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _message(kind: int, tid: bytes, attrs: bytes) -> bytes:
    return struct.pack(">HHI", kind, len(attrs), COOKIE) + tid + attrs


def _parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, length = struct.unpack_from(">HH", data)
    attrs, offset = {}, 20
    while offset < 20 + length:
        a_kind, a_len = struct.unpack_from(">HH", data, offset)
        attrs[a_kind] = data[offset + 4:offset + 4 + a_len]
        offset += 4 + a_len + (-a_len % 4)
    return kind, attrs


def _exchange(port: int, message: bytes, sock: socket.socket | None = None) -> bytes:
    if sock is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
            return _exchange(port, message, own)
    sock.settimeout(3)
    sock.sendto(message, ("127.0.0.1", port))
    return sock.recvfrom(4096)[0]


def _stun_binding(port: int) -> bool:
    try:
        return _parse(_exchange(port, _message(0x0001, secrets.token_bytes(12), b"")))[0] == 0x0101
    except OSError:
        return False


def _allocate(port: int, username: str, password: str) -> int:
    """The Allocate's answer type, from one socket (the nonce belongs to its 5-tuple)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        transport = _attr(0x0019, bytes([17, 0, 0, 0]))  # REQUESTED-TRANSPORT: UDP
        _, attrs = _parse(_exchange(port, _message(0x0003, secrets.token_bytes(12), transport),
                                    sock))
        realm, nonce = attrs[0x0014], attrs[0x0015]  # the 401's REALM and NONCE
        body = transport + _attr(0x0006, username.encode()) + _attr(0x0014, realm) + \
            _attr(0x0015, nonce)
        key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()
        head = struct.pack(">HHI", 0x0003, len(body) + 24, COOKIE) + secrets.token_bytes(12)
        integrity = hmac.new(key, head + body, hashlib.sha1).digest()
        kind, _ = _parse(_exchange(port, head + body + _attr(0x0008, integrity), sock))
        return kind
