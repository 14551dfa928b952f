"""Federation with real servers: a 3-node raftxmpp cluster (a.example) beside Debian's
Prosody (p.example) and a second raftxmpp cluster (b.example), in the test's own network
namespace, names resolved by the test's own DNS server (SRV records carry each node's
ephemeral port).

Certificates: a.example and p.example hold certificates from one test CA that both
trust, so they authenticate each other with SASL EXTERNAL (XEP-0178); b.example has a
self-signed certificate and trusts nobody's, so a.example and b.example fall back to
Server Dialback (XEP-0220) both ways, each calling back the other's authoritative
server. b.example also publishes a direct-TLS SRV record (XEP-0368), which a.example
prefers.

One environment per module (starting Prosody and two clusters costs ~15 s); the test
that kills a node runs last.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trustme

from raftxmpp import tls
from tests.federation import (
    DNS,
    Namespace,
    NetworkUnavailable,
    Prosody,
    ensure_prosody,
    issue_certificate,
)
from tests.harness import Cluster, free_ports, wait_for
from tests.xmpp_client import Client, run

# 600 s: the first test also pays for installing Prosody when the machine lacks it.
pytestmark = [pytest.mark.cluster, pytest.mark.federation, pytest.mark.timeout(600)]

PASSWORD = "federation-password"
A, B, P = "a.example", "b.example", "p.example"
Q = "q.example"  # a second Prosody host, with a self-signed certificate
STREAM = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "from='{frm}' to='{to}' version='1.0'>")


class Federation:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ns = Namespace()
        self.ca = trustme.CA()
        self.ca_file = base / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.dns: DNS | None = None
        self.prosody: Prosody | None = None
        self.a: Cluster | None = None
        self.b: Cluster | None = None
        self.silent: socket.socket | None = None

    def issue(self, domain: str) -> tuple[Path, Path]:
        return issue_certificate(self.ca, self.base, domain)

    def start(self) -> Federation:
        ensure_prosody()  # apt-get runs here, outside the namespace
        self.ns.create()
        self.ns.enter()
        self.dns = DNS(self.ns, self.base).start()
        a_cert = self.issue(A)
        a_s2s = (f'ca_file = "{self.ca_file}"\nconnect_timeout = 5.0\n'
                 f'incoming_burst_per_ip = 500\nincoming_rate_per_ip = 100.0\n'
                 f'deny = ["denied.example"]\n')
        a_tls = f'\n[tls]\ncertificate = "{a_cert[0]}"\nkey = "{a_cert[1]}"\n'
        self.a = Cluster(self.base / "a", 3, extra=a_tls, hosts=(A,), prefix=self.ns.prefix(),
                         s2s=a_s2s)
        self.b_tls_port = b_tls_port = free_ports(1)[0]
        self.b = Cluster(self.base / "b", 1, hosts=(B,), prefix=self.ns.prefix(),
                         s2s=f'tls_listen = "127.0.0.1:{b_tls_port}"\nconnect_timeout = 5.0\n'
                             f'incoming_burst_per_ip = 500\nincoming_rate_per_ip = 100.0\n')
        p_c2s, p_s2s = free_ports(2)
        (self.base / "q").mkdir()
        q_cert = tls.ensure_certificate(self.base / "q", (Q,))
        self.prosody = Prosody(self.ns, self.base / "prosody", {P: self.issue(P), Q: q_cert},
                               p_c2s, p_s2s, self.ca_file)
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(16)  # accepts TCP, never speaks: a server that hangs
        dns = self.dns
        for i in range(1, len(self.a.nodes) + 1):
            dns.set(f"node{i}.{A}", "A", ["127.0.0.1"])
        dns.set(A, "A", ["127.0.0.1"])
        dns.set(f"_xmpp-server._tcp.{A}", "SRV",
                [[0, 5, n.ports["s2s"], f"node{i}.{A}."] for i, n in enumerate(self.a.nodes, 1)])
        dns.set(B, "A", ["127.0.0.1"])
        dns.set(f"_xmpp-server._tcp.{B}", "SRV", [[0, 5, self.b.nodes[0].ports["s2s"], f"{B}."]])
        dns.set(f"_xmpps-server._tcp.{B}", "SRV", [[0, 5, b_tls_port, f"{B}."]])
        for domain in (P, Q):
            dns.set(domain, "A", ["127.0.0.1"])
            dns.set(f"_xmpp-server._tcp.{domain}", "SRV", [[0, 5, p_s2s, f"{domain}."]])
        dns.set("silent.example", "A", ["127.0.0.1"])
        dns.set("_xmpp-server._tcp.silent.example", "SRV",
                [[0, 5, self.silent.getsockname()[1], "silent.example."]])
        self.prosody.add_user("pat", P, PASSWORD)
        self.prosody.add_user("quinn", Q, PASSWORD)
        self.prosody.start()
        self.a.start()
        self.b.start()
        self.a.leader()
        self.b.leader()
        for i in range(3):
            self.a.nodes[0].admin("user.add", jid=f"alice{i}@{A}", password=PASSWORD)
        self.b.nodes[0].admin("user.add", jid=f"bob@{B}", password=PASSWORD)
        wait_for(lambda: all(n.admin("user.list", current=True) == [f"alice{i}@{A}"
                                                                     for i in range(3)]
                             for n in self.a.nodes), 20, "accounts on every node")
        return self

    def stop(self) -> None:
        for stop in (lambda: self.a and self.a.kill_all(), lambda: self.b and self.b.kill_all(),
                     lambda: self.prosody and self.prosody.stop(),
                     lambda: self.dns and self.dns.stop(),
                     lambda: self.silent and self.silent.close()):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - teardown goes on whatever fails
                print(f"teardown: {exc!r}", file=sys.stderr)
        self.ns.destroy()

    # -- clients ---------------------------------------------------------------------------------

    def alice(self, i: int, node: int | None = None) -> Client:
        port = self.a.nodes[i if node is None else node].c2s_port
        return Client(f"alice{i}@{A}", PASSWORD, port, self.ca_file)

    def pat(self) -> Client:
        return Client(f"pat@{P}", PASSWORD, self.prosody.c2s_port, self.ca_file)

    def quinn(self) -> Client:
        return Client(f"quinn@{Q}", PASSWORD, self.prosody.c2s_port, self.base / "q" / "tls" / "cert.pem")

    def bob(self) -> Client:
        b = self.b.nodes[0]
        return Client(f"bob@{B}", PASSWORD, b.c2s_port, b.data_dir / "tls" / "cert.pem")

    def streams(self, node: int = 0) -> list[dict]:
        return self.a.nodes[node].admin("s2s.list")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    try:
        Namespace.check()
    except NetworkUnavailable as exc:
        pytest.fail(str(exc))
    federation = Federation(tmp_path_factory.mktemp("federation"))
    try:
        yield federation.start()
    finally:
        federation.stop()


def _outgoing(rows: list[dict], remote: str) -> list[dict]:
    return [r for r in rows if r["direction"] == "out" and r["remote"] == remote]


def _incoming(rows: list[dict], remote: str) -> list[dict]:
    return [r for r in rows if r["direction"] == "in" and r["remote"] == remote]


async def _subscribe_and_talk(local: Client, remote: Client) -> None:
    """RFC 6121 §3: a subscription request, approved (slixmpp approves and subscribes
    back), the contact's presence, then a message each way."""
    local.send_presence_subscription(pto=remote.boundjid.bare)
    await local.presence_from(remote.boundjid.bare, timeout=20)
    deadline = time.monotonic() + 20  # both rosters record the mutual subscription (§3.1)
    while {local.client_roster[remote.boundjid.bare]["subscription"],
           remote.client_roster[local.boundjid.bare]["subscription"]} != {"both"}:
        assert time.monotonic() < deadline, (local.client_roster, remote.client_roster)
        await asyncio.sleep(0.05)
    body = f"hello from {local.boundjid.bare}"
    local.send_message(mto=remote.boundjid.bare, mbody=body, mtype="chat")
    message = await remote.next_message(timeout=20)
    assert (message["body"], message["from"].bare) == (body, local.boundjid.bare)
    reply = f"hello back to {local.boundjid}"
    remote.send_message(mto=local.boundjid.full, mbody=reply, mtype="chat")
    message = await local.next_message(timeout=20)
    assert (message["body"], message["from"].bare) == (reply, remote.boundjid.bare)


# -- users talk across servers ----------------------------------------------------------------------


def test_users_on_every_node_talk_with_prosody_over_sasl_external(fed):
    """RFC 6120 §13.7.1.2, XEP-0178: certificates both sides can verify → SASL EXTERNAL
    both ways; messages and presence subscriptions through each node of the cluster."""
    async def scenario():
        pat = fed.pat()
        assert await pat.start()
        for i in range(3):
            alice = fed.alice(i)
            assert await alice.start()
            await _subscribe_and_talk(alice, pat)
            await alice.stop()
        await pat.stop()

    run(scenario(), timeout=150)
    for node in range(3):
        rows = fed.streams(node)
        out = _outgoing(rows, P)
        assert len(out) == 1 and out[0]["state"] == "up", rows  # one stream for the cluster
        assert out[0]["auth"] == "external", rows
    wait_for(lambda: any(r["auth"] == "external" for r in _incoming(fed.streams(), P)), 10,
             "Prosody's stream to a.example, authenticated by its certificate")


def test_users_on_every_node_talk_with_another_cluster_over_dialback(fed):
    """XEP-0220: b.example's certificate is self-signed and it verifies nobody's, so
    both directions use dialback; a.example reaches b.example by direct TLS (XEP-0368)."""
    async def scenario():
        bob = fed.bob()
        assert await bob.start()
        for i in range(3):
            alice = fed.alice(i)
            assert await alice.start()
            await _subscribe_and_talk(alice, bob)
            await alice.stop()
        await bob.stop()

    run(scenario(), timeout=150)
    out = _outgoing(fed.streams(), B)
    assert len(out) == 1 and out[0]["auth"] == "dialback", out
    assert out[0]["peer"] == f"{B}:{fed.b_tls_port}", out  # the xmpps-server SRV record
    b_port = [p for p in fed.b.nodes[0].admin("s2s.list") if p["direction"] == "in"]
    assert b_port and all(r["auth"] == "dialback" for r in b_port), b_port
    wait_for(lambda: any(r["auth"] == "dialback" for r in _incoming(fed.streams(), B)), 10,
             "b.example's stream to a.example, authenticated by dialback")
    assert b_port[0]["remote"] == A


def test_iqs_cross_servers_and_their_answers_come_back(fed):
    """RFC 6120 §8.2.3: an IQ from a remote user to our server (XEP-0199 ping) and to one of
    our users' full JID (XEP-0030 disco#info, answered by the client) both get results."""
    async def scenario():
        pat, alice = fed.pat(), fed.alice(1)
        assert await pat.start() and await alice.start()
        await pat.plugin["xep_0199"].ping(jid=A, timeout=15)
        info = await pat.plugin["xep_0030"].get_info(jid=alice.boundjid.full, timeout=15)
        assert info["type"] == "result"
        await alice.plugin["xep_0199"].ping(jid=P, timeout=15)
        await alice.stop()
        await pat.stop()

    run(scenario())


def test_prosody_with_an_unverifiable_certificate_uses_dialback_and_answers_our_callback(fed):
    """XEP-0220 with Prosody as the Originating and the Authoritative Server: q.example's
    certificate is self-signed, so its stream to a.example is authenticated by calling
    q.example back; ours to q.example still uses EXTERNAL (Prosody trusts our CA)."""
    async def scenario():
        quinn, alice = fed.quinn(), fed.alice(2)
        assert await quinn.start() and await alice.start()
        await _subscribe_and_talk(alice, quinn)
        await alice.stop()
        await quinn.stop()

    run(scenario(), timeout=90)
    wait_for(lambda: any(r["auth"] == "dialback" for r in _incoming(fed.streams(), Q)), 10,
             "q.example's stream authenticated by dialback")
    assert _outgoing(fed.streams(), Q)[0]["auth"] == "external"


# -- what a hostile peer cannot do ----------------------------------------------------------------


class RawPeer:
    """A hand-driven server stream to one a.example node (blocking socket, in the netns)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.settimeout(10)
        self.buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def until(self, marker: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} in {self.buffer[-600:]!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before {marker!r}: {self.buffer[-600:]!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def starttls(self, claimed: str, context: ssl.SSLContext) -> None:
        self.send(STREAM.format(frm=claimed, to=A))
        self.until(b"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.until(b"<proceed")
        self.sock = context.wrap_socket(self.sock, server_hostname=A)
        self.buffer = b""
        self.send(STREAM.format(frm=claimed, to=A))

    def close(self) -> None:
        self.sock.close()


def _client_context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker does not care who we are
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_a_peer_cannot_send_for_a_domain_it_did_not_authenticate(fed):
    """RFC 6120 §4.9.3.9 <invalid-from/>: a stream authenticated (by its certificate) as
    evil.example may speak for evil.example only; a stanza 'from' p.example on it ends
    the stream, and never reaches the user (the dialback-spoofing CVE class)."""
    peer = RawPeer(fed.a.nodes[0].ports["s2s"])

    async def scenario():
        alice = fed.alice(0)
        assert await alice.start()
        peer.starttls("evil.example", _client_context(fed.issue("evil.example")))
        features = peer.until(b"</stream:features>")
        assert b"EXTERNAL" in features
        peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                  f"{base64.b64encode(b'evil.example').decode()}</auth>")
        peer.until(b"<success")
        peer.send(STREAM.format(frm="evil.example", to=A))
        peer.until(b"</stream:features>")
        peer.send(f"<message from='mallory@evil.example/x' to='alice0@{A}' type='chat'>"
                  "<body>from evil, honestly</body></message>")
        honest = await alice.next_message(timeout=15)
        assert honest["from"].bare == "mallory@evil.example"
        peer.send(f"<message from='pat@{P}/x' to='alice0@{A}' type='chat'>"
                  "<body>I am pat, trust me</body></message>")
        assert b"<invalid-from" in peer.until(b"</stream:error>")
        await alice.expect_no_message(within=2)
        await alice.stop()

    try:
        run(scenario())
    finally:
        peer.close()


def test_a_dialback_claim_the_authoritative_server_denies_is_refused(fed):
    """XEP-0220 §2.1.4: a stream claiming p.example with a key p.example never issued is
    checked with p.example's authoritative server (Prosody), answered type='invalid' and
    ended; stanzas for the claim are never routed."""
    peer = RawPeer(fed.a.nodes[1].ports["s2s"])
    try:
        peer.starttls(P, _client_context(None))
        features = peer.until(b"</stream:features>")
        assert b"urn:xmpp:features:dialback" in features and b"EXTERNAL" not in features
        peer.send(f"<db:result from='{P}' to='{A}'>0123456789abcdef0123456789abcdef</db:result>")
        answer = peer.until(b"/>", timeout=20)
        assert b"type='invalid'" in answer or b'type="invalid"' in answer, answer
        with pytest.raises((AssertionError, OSError)):  # the stream is over
            peer.send(f"<message from='pat@{P}/x' to='alice0@{A}'><body>x</body></message>")
            peer.until(b"never")
    finally:
        peer.close()


def test_stanzas_before_authentication_end_the_stream(fed):
    """RFC 6120 §4.9.3.12 <not-authorized/>."""
    peer = RawPeer(fed.a.nodes[2].ports["s2s"])
    try:
        peer.starttls(P, _client_context(None))
        peer.until(b"</stream:features>")
        peer.send(f"<message from='pat@{P}/x' to='alice0@{A}'><body>x</body></message>")
        assert b"<not-authorized" in peer.until(b"</stream:error>")
    finally:
        peer.close()


# -- bounces, limits, operators ----------------------------------------------------------------------


def test_undeliverable_stanzas_bounce_with_the_rfc_conditions(fed):
    """RFC 6120 §8.3.3.16 <remote-server-not-found/> (no such domain), §8.3.3.17
    <remote-server-timeout/> (a server that never answers, after [s2s] connect_timeout),
    and a domain on the [s2s] deny list."""
    async def scenario():
        alice = fed.alice(0)
        assert await alice.start()
        cases = [("nobody@nx.example", "remote-server-not-found"),
                 ("nobody@denied.example", "not-allowed"),
                 ("nobody@silent.example", "remote-server-timeout")]
        for to, _ in cases:
            alice.send_message(mto=to, mbody="anyone there?", mtype="chat")
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < len(cases) and time.monotonic() < deadline:
            message = await asyncio.wait_for(alice.messages.get(), 30)
            if message["type"] == "error":
                seen[message["from"].bare] = message["error"]["condition"]
        assert seen == {to: condition for to, condition in cases}
        await alice.stop()

    run(scenario())


def test_cli_lists_and_closes_streams_cluster_wide(fed):
    """`raftxmpp s2s list` shows the cluster's streams from any node; `s2s close DOMAIN`
    ends them on every node, and the next stanza opens a new one."""
    node = fed.a.nodes[2]

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "raftxmpp_cli.main", "s2s", *args,
                                 "--config", str(node.config_path)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    async def talk(body: str):
        pat, alice = fed.pat(), fed.alice(2)
        assert await pat.start() and await alice.start()
        alice.send_message(mto=f"pat@{P}", mbody=body, mtype="chat")
        assert (await pat.next_message(timeout=20))["body"] == body
        await alice.stop()
        await pat.stop()

    run(talk("before the close"))
    listed = cli("list")
    assert "out" in listed and P in listed and "external" in listed, listed
    assert "closing streams with p.example" in cli("close", P)
    wait_for(lambda: not _outgoing(fed.streams(2), P), 15, "the stream to p.example to close")
    run(talk("after the close"))
    assert _outgoing(fed.streams(2), P)


def test_metrics_count_stanzas_per_remote_domain(fed):
    """Prometheus: stanzas per direction and remote domain, streams per direction."""
    text = ""
    for node in fed.a.nodes:
        port = node.ports["http"]
        text += urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'raftxmpp_s2s_stanzas_total{direction="out",domain="p.example"}' in text
    assert 'raftxmpp_s2s_stanzas_total{direction="in",domain="p.example"}' in text
    assert 'raftxmpp_s2s_streams{direction="out"}' in text


# -- failover (last: it kills a node) -------------------------------------------------------------------


def test_stanzas_sent_after_the_stream_holder_dies_go_out_once_through_another_node(fed):
    """The node holding the outgoing stream to p.example is killed (-9); messages sent
    from another node meanwhile are held, then leave through a new stream opened by a
    surviving node: every one arrives, none twice."""
    async def warm_up():
        pat, alice = fed.pat(), fed.alice(0)
        assert await pat.start() and await alice.start()
        alice.send_message(mto=f"pat@{P}", mbody="warm-up", mtype="chat")
        assert (await pat.next_message(timeout=20))["body"] == "warm-up"
        await alice.stop()
        await pat.stop()

    run(warm_up())
    holder = _outgoing(fed.streams(), P)[0]["node"]
    index = next(i for i, n in enumerate(fed.a.nodes) if n.name == holder)
    sender = (index + 1) % 3
    count = 30

    async def scenario():
        pat, alice, doomed = fed.pat(), fed.alice(sender), fed.alice(index)
        assert await pat.start() and await alice.start()
        assert await doomed.start()  # on the holder; subscribed with pat since the first test
        await pat.presence_from(f"alice{index}@{A}", timeout=20)
        while not pat.presences.empty():  # only what comes after the kill counts below
            pat.presences.get_nowait()
        fed.a.nodes[index].kill()
        for n in range(count):
            alice.send_message(mto=f"pat@{P}", mbody=f"after the kill #{n}", mtype="chat")
            await asyncio.sleep(0.05)  # spread over the failure detector's window
        bodies = [(await pat.next_message(timeout=30))["body"] for _ in range(count)]
        assert sorted(bodies) == sorted(f"after the kill #{n}" for n in range(count))
        await pat.expect_no_message(within=3)  # and nothing twice
        # A survivor tells Prosody that the dead node's users are gone (RFC 6121 §4.5.2).
        await pat.presence_from(f"alice{index}@{A}", "unavailable", timeout=20)
        doomed.abort()
        await alice.stop()
        await pat.stop()

    run(scenario(), timeout=120)
    out = _outgoing(fed.streams(sender), P)
    assert len(out) == 1 and out[0]["node"] != holder and out[0]["state"] == "up", out
