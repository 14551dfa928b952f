"""Raw XML against a node running in the test's nursery: the negative cases, byte for byte."""

from __future__ import annotations

import base64
import dataclasses

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.harness import free_ports, listener_sections

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
PASSWORD = "raw-password"


@pytest.fixture
async def node(tmp_path, nursery):
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
                                plaintext_auth_on_loopback=True, max_stanza_size=4096),
    )
    node = await nursery.start(Node(cfg).run)
    with trio.fail_after(10):
        while not node.raft.status().get("leader"):
            await trio.sleep(0.02)
    await node.store.register("alice@localhost", PASSWORD)
    await node.store.register("bob@localhost", PASSWORD)
    yield node
    node.request_stop()


class Raw:
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
        assert marker in self.buffer, f"{marker!r} not in {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def closed(self, timeout: float = 5) -> bytes:
        with trio.fail_after(timeout):
            while True:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    return self.buffer
                self.buffer += chunk


async def connect(node: Node) -> Raw:
    port = node.config.c2s.listen.port
    return Raw(await trio.open_tcp_stream("127.0.0.1", port))


async def authenticated(node: Node, user: str = "alice", resource: str = "raw") -> Raw:
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    await raw.until(b"<success")
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   f"<resource>{resource}</resource></bind></iq>".encode())
    await raw.until(b"</iq>")
    return raw


async def expect_stream_error(raw: Raw, condition: str) -> None:
    data = await raw.closed()
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode() in data or \
        f"<{condition} xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>".encode() in data, data
    assert data.rstrip().endswith(b"</stream:stream>"), data


@pytest.mark.parametrize("payload, condition", [
    (HEADER.replace(b"to='localhost'", b"to='elsewhere.example'"), "host-unknown"),
    (HEADER.replace(b"xmlns='jabber:client'", b"xmlns='jabber:server'"), "invalid-namespace"),
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaa'>]>" + HEADER[21:], "restricted-xml"),
    (HEADER + b"<!-- a comment -->", "restricted-xml"),
    (HEADER + b"<?evil instruction?>", "restricted-xml"),
    (HEADER + b"<message>&custom;</message>", "restricted-xml"),
    (HEADER + b"<message><body>unclosed</message>", "not-well-formed"),
    (HEADER + b"<message>\xff\xfe</message>", "not-well-formed"),
    (HEADER + b"<message><body>" + b"x" * 10000 + b"</body></message>", "policy-violation"),
    (HEADER + b"<message to='bob@localhost'><body>hi</body></message>", "not-authorized"),
    (HEADER.replace(b"version='1.0'>", b"version='2.0'>"), "unsupported-version"),
], ids=["unknown-host", "server-namespace", "doctype", "comment", "processing-instruction",
        "entity", "malformed", "invalid-utf8", "oversized-stanza", "stanza-before-auth",
        "version-2"])
async def test_bad_streams_end_with_the_rfc_stream_error(node, payload, condition):
    raw = await connect(node)
    await raw.send(payload)
    await expect_stream_error(raw, condition)


async def test_features_before_auth_offer_mechanisms_and_registration(node):
    raw = await connect(node)
    await raw.send(HEADER)
    features = await raw.until(b"</stream:features>")
    assert b"<mechanism>PLAIN</mechanism>" in features  # plaintext on loopback allowed here
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features
    assert b"<starttls" in features and b"<required" not in features
    assert b"http://jabber.org/features/iq-register" in features


async def test_sasl_failure_for_wrong_password_and_unknown_mechanism(node):
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    await raw.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-MAGIC'/>")
    assert b"<invalid-mechanism/>" in await raw.until(b"</failure>")
    token = base64.b64encode(b"\0alice\0wrong").decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    assert b"<not-authorized/>" in await raw.until(b"</failure>")


async def test_unknown_user_and_wrong_password_fail_alike(node):
    replies = []
    for user, password in (("alice", "wrong"), ("nobody", PASSWORD)):
        raw = await connect(node)
        await raw.send(HEADER)
        await raw.until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        replies.append(await raw.until(b"</failure>"))
    assert replies[0] == replies[1]


async def test_bind_result_carries_the_full_jid(node):
    raw = await connect(node)
    await raw.send(HEADER)
    await raw.until(b"</stream:features>")
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    await raw.until(b"<success")
    await raw.send(HEADER)
    features = await raw.until(b"</stream:features>")
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    await raw.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    reply = await raw.until(b"</iq>")
    assert b"<jid>alice@localhost/" in reply and b"type=\"result\"" in reply


async def test_iq_with_unknown_namespace_gets_service_unavailable(node):
    raw = await authenticated(node)
    await raw.send(b"<iq type='get' id='q1' to='localhost'><query xmlns='urn:example:nothing'/></iq>")
    reply = await raw.until(b"</iq>")
    assert b"type=\"error\"" in reply and b"<service-unavailable" in reply and b"id=\"q1\"" in reply


async def test_iq_get_with_two_payloads_is_bad_request(node):
    raw = await authenticated(node)
    await raw.send(b"<iq type='get' id='q2' to='localhost'><ping xmlns='urn:xmpp:ping'/>"
                   b"<ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"<bad-request" in await raw.until(b"</iq>")


async def test_message_to_unknown_account_bounces_with_service_unavailable(node):
    raw = await authenticated(node)
    await raw.send(b"<message to='ghost@localhost' id='m1' type='chat'><body>boo</body></message>")
    reply = await raw.until(b"</message>")
    assert b"type=\"error\"" in reply and b"<service-unavailable" in reply


async def test_message_to_other_domain_bounces_with_remote_server_not_found(node):
    # .invalid never resolves (RFC 6761 §6.4): the s2s manager says so without asking DNS.
    raw = await authenticated(node)
    await raw.send(b"<message to='x@far.invalid' id='m2' type='chat'><body>hi</body></message>")
    assert b"<remote-server-not-found" in await raw.until(b"</message>")


async def test_malformed_jid_is_jid_malformed(node):
    raw = await authenticated(node)
    await raw.send(b"<message to='a@b@c/d' id='m3' type='chat'><body>x</body></message>")
    assert b"<jid-malformed" in await raw.until(b"</message>")


async def test_roster_set_with_two_items_is_bad_request(node):
    raw = await authenticated(node)
    await raw.send(b"<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
                   b"<item jid='a@localhost'/><item jid='b@localhost'/></query></iq>")
    assert b"<bad-request" in await raw.until(b"</iq>")


async def test_whitespace_keepalives_are_harmless(node):
    raw = await authenticated(node)
    await raw.send(b" \n \n ")
    await raw.send(b"<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"<iq type=\"result\" id=\"p1\"" in await raw.until(b"id=\"p1\"")


async def test_a_broken_client_does_not_affect_other_sessions(node):
    bob = await authenticated(node, "bob", "stay")
    await bob.send(b"<presence/>")
    broken = await authenticated(node, "alice", "broken")
    await broken.send(b"<message></presence>")
    await expect_stream_error(broken, "not-well-formed")
    alice = await authenticated(node, "alice", "fine")
    await alice.send(b"<message to='bob@localhost/stay' type='chat'><body>still here</body></message>")
    assert b"still here" in await bob.until(b"</message>")


async def test_client_close_is_answered_with_stream_close(node):
    raw = await authenticated(node)
    await raw.send(b"</stream:stream>")
    data = await raw.closed()
    assert data.rstrip().endswith(b"</stream:stream>")


async def test_a_roster_change_is_not_acknowledged_when_raft_cannot_commit(node, monkeypatch):
    from raftxmpp.cluster.raft import RaftUnavailable

    async def no_quorum(command, timeout=5.0):
        raise RaftUnavailable("no commit within 5s: the cluster has no quorum")

    raw = await authenticated(node)
    monkeypatch.setattr(node.raft, "submit", no_quorum)
    await raw.send(b"<iq type='set' id='r2'><query xmlns='jabber:iq:roster'>"
                   b"<item jid='carol@localhost'/></query></iq>")
    reply = await raw.until(b"</iq>")
    assert b"type=\"error\"" in reply and b"type=\"wait\"" in reply
    assert node.store.roster_item("alice@localhost", "carol@localhost") is None


async def test_an_unknown_outcome_is_a_wait_error_and_the_retry_with_the_same_id_settles_it(
        node, monkeypatch):
    """Issue 12: a write whose commit was not confirmed in time may still apply; the
    client gets remote-server-timeout (type wait), and resending the same IQ reuses the
    command id, so it gets the first result instead of a second change."""
    from raftxmpp.cluster.raft import RaftOutcomeUnknown

    real_submit = node.raft.submit
    submitted: list[str] = []

    async def answer_lost_once(command, timeout=5.0):
        result = await real_submit(command, timeout)
        submitted.append(command["id"])
        if len(submitted) == 1:
            raise RaftOutcomeUnknown("applied, but the answer came too late")
        return result

    raw = await authenticated(node)
    monkeypatch.setattr(node.raft, "submit", answer_lost_once)
    request = (b"<iq type='set' id='r3'><query xmlns='jabber:iq:roster'>"
               b"<item jid='dave@localhost' name='Dave'/></query></iq>")
    await raw.send(request)
    reply = await raw.until(b"</iq>")
    assert b"remote-server-timeout" in reply and b"type=\"wait\"" in reply
    version = node.store.roster("alice@localhost")["ver"]
    await raw.send(request)
    reply = await raw.until(b'type="result" id="r3"')
    assert submitted[0] == submitted[1]
    assert node.store.roster("alice@localhost")["ver"] == version  # not applied twice


async def test_session_iq_after_bind_gets_a_result(node):
    """RFC 3921 §3 session establishment, still sent by older clients after bind."""
    raw = await authenticated(node)
    await raw.send(b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    reply = await raw.until(b'id="sess1"')
    assert b'<iq type="result" id="sess1"' in reply
