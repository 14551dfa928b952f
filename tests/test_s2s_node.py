"""The s2s listener of one node, in the test's nursery, over raw TCP: what a hostile or
broken peer gets (RFC 6120 §4.9 stream errors, the framer's limits, the authentication
deadline, the per-address throttle). No DNS is needed: nothing here leaves the node."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.harness import free_ports, listener_sections

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "from='peer.example' to='{to}' version='1.0'>")


@pytest.fixture
async def node(tmp_path, nursery):
    raft, link, c2s, tls, s2s = free_ports(5)
    base = config_mod.embedded_default(tmp_path / "data")
    cfg = dataclasses.replace(
        base,
        node=dataclasses.replace(base.node, hosts=("a.example",)),
        cluster=dataclasses.replace(base.cluster, raft=config_mod.Address("127.0.0.1", raft),
                                    link=config_mod.Address("127.0.0.1", link)),
        **{name: dataclasses.replace(getattr(base, name), listen=config_mod.Address("127.0.0.1", 0))
           for name in listener_sections() if name != "s2s"},
        c2s=dataclasses.replace(base.c2s, listen=config_mod.Address("127.0.0.1", c2s),
                                tls_listen=config_mod.Address("127.0.0.1", tls)),
        s2s=dataclasses.replace(base.s2s, listen=config_mod.Address("127.0.0.1", s2s),
                                max_stanza_size=2048, auth_timeout=1.0,
                                incoming_rate_per_ip=0.01, incoming_burst_per_ip=4),
    )
    node = await nursery.start(Node(cfg).run)
    node.s2s_port = s2s
    yield node


class Raw:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, text: str | bytes) -> None:
        await self.stream.send_all(text.encode() if isinstance(text, str) else text)

    async def until(self, marker: bytes, timeout: float = 10) -> bytes:
        with trio.fail_after(timeout):
            while marker not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"closed before {marker!r}: {self.buffer[-400:]!r}")
                self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def closed(self, timeout: float = 10) -> bytes:
        with trio.fail_after(timeout):
            while chunk := await self.stream.receive_some(65536):
                self.buffer += chunk
        return self.buffer


async def connect(node) -> Raw:
    return Raw(await trio.open_tcp_stream("127.0.0.1", node.s2s_port))


async def test_a_stream_for_a_domain_not_served_is_host_unknown(node):
    raw = await connect(node)
    await raw.send(HEADER.format(to="elsewhere.example"))
    assert b"<host-unknown" in await raw.until(b"</stream:error>")


async def test_not_well_formed_input_ends_the_stream(node):
    """RFC 6120 §4.9.3.13, via the shared framer."""
    raw = await connect(node)
    await raw.send(HEADER.format(to="a.example"))
    await raw.until(b"</stream:features>")
    await raw.send("<a><b></a>")
    assert b"<not-well-formed" in await raw.until(b"</stream:error>")


async def test_a_dtd_is_restricted_xml(node):
    """RFC 6120 §11.1."""
    raw = await connect(node)
    await raw.send("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]>")
    assert b"<restricted-xml" in await raw.until(b"</stream:error>")


async def test_an_oversized_stanza_is_a_policy_violation(node):
    """The framer's [s2s] max_stanza_size."""
    raw = await connect(node)
    await raw.send(HEADER.format(to="a.example"))
    await raw.until(b"</stream:features>")
    await raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>" + "x" * 4096)
    assert b"<policy-violation" in await raw.until(b"</stream:error>")


async def test_a_peer_that_does_not_authenticate_in_time_is_cut_off(node):
    """[s2s] auth_timeout → <connection-timeout/> (RFC 6120 §4.9.3.4)."""
    raw = await connect(node)
    await raw.send(HEADER.format(to="a.example"))
    await raw.until(b"</stream:features>")
    assert b"<connection-timeout" in await raw.closed(timeout=10)


async def test_incoming_streams_are_throttled_per_address(node):
    """[s2s] incoming_rate_per_ip / incoming_burst_per_ip: past the burst, a new
    connection is closed before a byte is read or written."""
    opened = [await connect(node) for _ in range(4)]
    for raw in opened:
        await raw.send(HEADER.format(to="a.example"))
        await raw.until(b"</stream:features>")
    refused = await connect(node)
    assert await refused.closed() == b""


async def test_stanzas_for_other_servers_bounce_when_nothing_resolves(node):
    """A name that never resolves (RFC 6761 .invalid) bounces at once, from the manager."""
    from lxml import etree

    from raftxmpp.jid import JID
    message = etree.fromstring(b"<message xmlns='jabber:client' from='alice@a.example/r' "
                               b"to='bob@far.invalid' type='chat' id='m1'/>")
    replies = []

    async def capture(stanza, sender):
        replies.append(stanza)

    node.router.route = capture  # the bounce goes back to the sender through the router
    await node.router.s2s.route(message, JID.parse("bob@far.invalid"), None)
    with trio.fail_after(10):
        while not replies:
            await trio.sleep(0.02)
    assert replies[0].get("type") == "error" and replies[0].get("to") == "alice@a.example/r"
    assert replies[0].find("{jabber:client}error")[0].tag.endswith("remote-server-not-found")
