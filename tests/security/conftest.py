"""Fixtures for the hostile-input suite: nodes to attack, and a raw XML client.

`make_node` runs a node in the test's nursery (the tests/test_c2s_raw.py pattern) with
[c2s] and [limits] overridden per test; `node_process` starts a real node process
(tests.harness) when a test must measure the process itself (its RSS, its log).
Every limit that loopback is exempt from by default is applied to loopback here.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import socket
from pathlib import Path

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.harness import NodeProcess, free_ports, listener_sections, wait_for

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
PASSWORD = "s3cret-Passw0rd-for-tests"
ROOT_DIR = Path(__file__).resolve().parents[2]
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


@pytest.fixture
async def make_node(tmp_path, nursery):
    """make_node(c2s={...}, limits={...}, users=(...)) -> a running Node."""
    nodes: list[Node] = []

    async def factory(c2s: dict | None = None, limits: dict | None = None,
                      users: tuple[str, ...] = ("alice", "bob")) -> Node:
        raft, link, c2s_port, tls = free_ports(4)
        base = config_mod.embedded_default(tmp_path / f"data{len(nodes)}")
        overrides = {"plaintext_auth_on_loopback": True, "max_stanza_size": 4096, **(c2s or {})}
        changes = {
            "cluster": dataclasses.replace(
                base.cluster, raft=config_mod.Address("127.0.0.1", raft),
                link=config_mod.Address("127.0.0.1", link)),
            "c2s": dataclasses.replace(
                base.c2s, listen=config_mod.Address("127.0.0.1", c2s_port),
                tls_listen=config_mod.Address("127.0.0.1", tls), **overrides),
            "limits": dataclasses.replace(base.limits, **{"exempt_ips": (), **(limits or {})}),
        }
        for name in listener_sections():  # metrics, components …: ports of their own
            changes[name] = dataclasses.replace(
                getattr(base, name), listen=config_mod.Address("127.0.0.1", free_ports(1)[0]))
        cfg = dataclasses.replace(base, **changes)
        node = await nursery.start(Node(cfg).run)
        nodes.append(node)
        with trio.fail_after(10):
            while not node.raft.status().get("leader"):
                await trio.sleep(0.02)
        for user in users:
            await node.store.register(f"{user}@localhost", PASSWORD)
        return node

    yield factory
    for node in nodes:
        node.request_stop()


def node_process(base: Path, c2s: str = "", limits: str = "", log: str = "") -> NodeProcess:
    """A node process (not started) with extra [c2s] keys, a [limits] and [log] section,
    and its own free ports (the metrics listener's too, when the tree has one)."""
    ports = dict(zip(("raft", "link", "c2s", "c2s_tls"), free_ports(4), strict=True))
    extra = "plaintext_auth_on_loopback = true\n" + c2s
    if "exempt_ips" not in limits:
        limits = "exempt_ips = []\n" + limits
    extra += "\n[limits]\n" + limits
    if log:
        extra += "\n[log]\n" + log
    node = NodeProcess(base, "solo", ports, [], extra)
    return with_free_listeners(node)


def with_free_listeners(node: NodeProcess) -> NodeProcess:
    """Gives every other listener the node's config leaves at its default a free port,
    so nodes of parallel tests do not fight over 5280, 5347 …"""
    text = node.config_path.read_text()
    for name in listener_sections():
        if not re.search(rf"^\[{name}\]", text, re.M):
            text += f'\n[{name}]\nlisten = "127.0.0.1:{free_ports(1)[0]}"\n'
    node.config_path.write_text(text)
    return node


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node process for a whole module of tests that do not test per-address limits
    (loopback stays exempt from them), with alice and bob registered."""
    node = node_process(tmp_path_factory.mktemp("shared"),
                        c2s="max_stanza_size = 4096\nmax_stanza_depth = 16\n"
                            "max_idle_whitespace = 65536\n",
                        limits='exempt_ips = ["127.0.0.0/8"]\n')
    try:
        node.start()
        for user in ("alice", "bob"):
            wait_for(lambda u=user: node.admin("user.add", jid=f"{u}@localhost",
                                               password=PASSWORD), 20, f"{user} registered")
        yield node
    finally:
        node.kill()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Raw:
    """A raw XML client: send bytes, wait for a marker, or for the server to close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def until(self, marker: bytes, timeout: float = 5) -> bytes:
        with trio.fail_after(timeout):
            while marker not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    break
                self.buffer += chunk
        assert marker in self.buffer, f"{marker!r} not in {self.buffer[-2000:]!r}"
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def closed(self, timeout: float = 5) -> bytes:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset by the server
                    return self.buffer
                if not chunk:
                    return self.buffer
                self.buffer += chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(port: int, rcvbuf: int | None = None, source: str | None = None,
                  host: str = "127.0.0.1") -> Raw:
    """`source`: the client address (any of 127/8 on loopback), so one test can be many
    clients to the per-address limits."""
    sock = trio.socket.socket(trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET)
    if rcvbuf is not None:  # set before connect, so the TCP window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect((host, port))
    return Raw(trio.SocketStream(sock))


async def first_answer(port: int, source: str, kept: list, host: str = "127.0.0.1") -> str:
    """How the node answers a new client's stream header: 'features' (the connection
    stays open, in `kept`: it still counts against the limits), or the stream error."""
    raw = await connect(port, source=source, host=host)
    await raw.send(HEADER)
    with trio.move_on_after(5):
        while b"</stream:features>" not in raw.buffer and b"</stream:stream>" not in raw.buffer:
            chunk = await raw.stream.receive_some(65536)
            if not chunk:
                break
            raw.buffer += chunk
    if b"</stream:features>" in raw.buffer:
        kept.append(raw)
        return "features"
    error = re.search(rb"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]",
                      raw.buffer)
    await raw.aclose()
    return error.group(1).decode() if error else "closed"


def c2s_port(node: Node) -> int:
    return node.config.c2s.listen.port


def plain_auth(user: str, password: str = PASSWORD) -> bytes:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>".encode()


async def opened(port: int, **kwargs) -> Raw:
    raw = await connect(port, **kwargs)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    return raw


async def authenticated(port: int, user: str = "alice", resource: str = "raw",
                        **kwargs) -> Raw:
    raw = await opened(port, **kwargs)
    await raw.send(plain_auth(user))
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   f"<resource>{resource}</resource></bind></iq>".encode())
    reply = await raw.until(b"</iq>")
    assert b"type=\"result\"" in reply, reply
    return raw


def stream_error(data: bytes, condition: str) -> bool:
    return (f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode() in data
            or f'<{condition} xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'.encode() in data)


async def expect_stream_error(raw: Raw, condition: str, timeout: float = 5) -> bytes:
    data = await raw.closed(timeout)
    assert stream_error(data, condition), data[-2000:]
    assert data.rstrip().endswith(b"</stream:stream>"), data[-2000:]
    return data
