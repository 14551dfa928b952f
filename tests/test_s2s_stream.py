"""The s2s negotiation cores (raftxmpp.s2s.stream), the dialback keys, certificate names
and SRV ordering: no network, one behaviour per test, from RFC 6120, XEP-0220, XEP-0178,
XEP-0185, XEP-0368 and RFC 2782."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

import pytest
import trio
import trustme
from lxml import etree

from raftxmpp.s2s import dialback, resolver
from raftxmpp.s2s.certs import (
    NO_CERTIFICATE,
    PeerCertificate,
    certificate_names_domain,
    dns_name_matches,
)
from raftxmpp.s2s.stream import (
    Authenticated,
    Close,
    Failed,
    IncomingSettings,
    IncomingStream,
    OutgoingStream,
    Ready,
    ResetFramer,
    Send,
    Stanza,
    StartTLS,
    Verified,
    VerifyDialback,
    VerifyRequest,
)
from raftxmpp.xml.framer import StreamFramer
from raftxmpp.xml.ns import CLIENT, SERVER

SECRET = dialback.dialback_secret("cluster-secret-for-tests-0123456789")
LOCAL, REMOTE = "a.example", "b.example"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "from='{frm}' to='{to}' version='1.0'{extra}>")


class Peer:
    """Feeds what a peer sends through a real framer into a core."""

    def __init__(self, core) -> None:
        self.core = core
        self.framer = StreamFramer(stream_ns=SERVER)

    def feed(self, text: str) -> list:
        actions = []
        for event in self.framer.feed(text.encode()):
            actions += self.core.receive(event)
        for action in actions:
            if isinstance(action, ResetFramer | StartTLS):
                self.framer.reset()
        return actions


def sent(actions: list) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def incoming(tls: bool = True, certificate: PeerCertificate = NO_CERTIFICATE,
             **settings) -> tuple[IncomingStream, Peer]:
    options = {"is_local": lambda d: d in (LOCAL, "chat.a.example"), "dialback_secret": SECRET,
               "allowed": lambda d: d != "denied.example", **settings}
    core = IncomingStream(IncomingSettings(**options))
    peer = Peer(core)
    if tls:
        core.tls_started(certificate)
    return core, peer


@dataclass
class FakeCertificate:
    domains: tuple[str, ...]

    def valid_for(self, domain: str) -> bool:
        return domain in self.domains


# -- incoming: TLS and features ----------------------------------------------------------------


def test_starttls_is_required_before_anything_else():
    """RFC 6120 §5.3.1: with TLS required the first features offer only <starttls/>."""
    core, peer = incoming(tls=False)
    out = sent(peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra="")))
    assert b"<starttls" in out and b"<required/>" in out
    assert b"dialback" not in out.split(b"<stream:features>")[1] and b"EXTERNAL" not in out


def test_anything_but_starttls_before_tls_is_a_policy_violation():
    core, peer = incoming(tls=False)
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed(f"<db:result from='{REMOTE}' to='{LOCAL}'>abc</db:result>")
    assert b"<policy-violation" in sent(actions) and isinstance(actions[-1], Close)


def test_starttls_is_answered_with_proceed():
    core, peer = incoming(tls=False)
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"<proceed" in sent(actions) and any(isinstance(a, StartTLS) for a in actions)


def test_a_stream_to_a_domain_not_served_is_host_unknown():
    """RFC 6120 §4.9.3.6."""
    core, peer = incoming()
    actions = peer.feed(HEADER.format(frm=REMOTE, to="elsewhere.example", extra=""))
    assert b"<host-unknown" in sent(actions)


def test_after_tls_dialback_with_errors_is_offered_and_external_only_with_a_valid_certificate():
    """XEP-0220 §2.3 (dialback, errors); XEP-0178 §3: EXTERNAL only when the certificate
    proves the header's 'from'."""
    _, peer = incoming()
    out = sent(peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra="")))
    assert b"urn:xmpp:features:dialback" in out and b"<errors/>" in out
    assert b"EXTERNAL" not in out
    _, peer = incoming(certificate=FakeCertificate((REMOTE,)))
    assert b"<mechanism>EXTERNAL</mechanism>" in sent(
        peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra="")))


def test_valid_certificates_only_offers_no_dialback_and_refuses_it():
    _, peer = incoming(dialback=False)
    out = sent(peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra="")))
    assert b"dialback" not in out.split(b"<stream:features")[1]
    actions = peer.feed(f"<db:result from='{REMOTE}' to='{LOCAL}'>abc</db:result>")
    assert b"<not-authorized" in sent(actions)


# -- incoming: SASL EXTERNAL ------------------------------------------------------------------------


def _auth(domain: str) -> str:
    return ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
            f"{base64.b64encode(domain.encode()).decode()}</auth>")


def test_sasl_external_authenticates_the_certificate_domain():
    """XEP-0178 §3: success, then a stream restart."""
    core, peer = incoming(certificate=FakeCertificate((REMOTE,)))
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed(_auth(REMOTE))
    assert b"<success" in sent(actions)
    assert Authenticated(LOCAL, REMOTE, "external") in actions
    assert any(isinstance(a, ResetFramer) for a in actions)
    out = sent(peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra="")))
    assert b"EXTERNAL" not in out  # once per stream


def test_sasl_external_for_another_domain_than_the_header_claims_fails():
    core, peer = incoming(certificate=FakeCertificate((REMOTE, "c.example")))
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed(_auth("c.example"))
    assert b"<not-authorized/>" in sent(actions) and not core.validated


# -- incoming: dialback (we are the Receiving Server) ------------------------------------------------


def _dialback_request(peer: Peer, remote: str = REMOTE, local: str = LOCAL,
                      key: str = "k3y") -> list:
    return peer.feed(f"<db:result from='{remote}' to='{local}'>{key}</db:result>")


def test_a_dialback_request_asks_the_authoritative_server():
    """XEP-0220 §2.1.2: the key goes to the originating domain's authoritative server."""
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = _dialback_request(peer)
    assert actions == [VerifyDialback(LOCAL, REMOTE, core.stream_id, "k3y")]
    assert not core.validated


def test_a_confirmed_key_authenticates_the_pair_and_its_stanzas_are_routed():
    """XEP-0220 §2.1.4 type='valid'; stanzas of the pair reach the router in jabber:client."""
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    actions = core.verified(LOCAL, REMOTE, True)
    assert b"type=\"valid\"" in sent(actions) and Authenticated(LOCAL, REMOTE, "dialback") in actions
    actions = peer.feed(f"<message from='bob@{REMOTE}/r' to='alice@{LOCAL}'><body>hi</body></message>")
    (stanza,) = [a.element for a in actions if isinstance(a, Stanza)]
    assert stanza.tag == f"{{{CLIENT}}}message" and stanza.findtext(f"{{{CLIENT}}}body") == "hi"


def test_a_denied_key_is_answered_invalid_and_ends_the_stream():
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    actions = core.verified(LOCAL, REMOTE, False)
    assert b"type=\"invalid\"" in sent(actions) and isinstance(actions[-1], Close)
    assert not core.validated


def test_an_unreachable_authoritative_server_is_a_dialback_error():
    """XEP-0220 §2.4: <db:result type='error'/> with the stanza error condition."""
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    out = sent(core.verified(LOCAL, REMOTE, "remote-server-timeout"))
    assert b"type=\"error\"" in out and b"<remote-server-timeout" in out


def test_a_dialback_request_for_a_domain_not_served_is_item_not_found():
    _, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    out = sent(_dialback_request(peer, local="other.example"))
    assert b"type=\"error\"" in out and b"<item-not-found" in out


def test_a_dialback_request_from_a_denied_domain_is_forbidden():
    _, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    out = sent(_dialback_request(peer, remote="denied.example"))
    assert b"<forbidden" in out


def test_a_certificate_valid_for_the_domain_spares_the_callback():
    """XEP-0344 §2.4: dialback over a stream whose certificate proves the domain."""
    core, peer = incoming(certificate=FakeCertificate((REMOTE,)))
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = _dialback_request(peer)
    assert Authenticated(LOCAL, REMOTE, "dialback+certificate") in actions
    assert not any(isinstance(a, VerifyDialback) for a in actions)


def test_piggybacked_domains_are_authenticated_one_by_one():
    """XEP-0220 §2.4: several domain pairs on one stream, each verified on its own; a
    domain not verified on the stream cannot send on it."""
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    _dialback_request(peer, remote="conference.b.example", local="chat.a.example")
    core.verified(LOCAL, REMOTE, True)
    core.verified("chat.a.example", "conference.b.example", True)
    for frm, to in ((f"bob@{REMOTE}", f"alice@{LOCAL}"),
                    ("room@conference.b.example/n", "x@chat.a.example")):
        assert any(isinstance(a, Stanza) for a in peer.feed(
            f"<presence from='{frm}' to='{to}'/>"))
    actions = peer.feed(f"<message from='mallory@c.example' to='alice@{LOCAL}'/>")
    assert b"<invalid-from" in sent(actions)


def test_a_domain_may_only_send_to_the_local_domain_it_was_verified_for():
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    core.verified(LOCAL, REMOTE, True)
    actions = peer.feed(f"<message from='bob@{REMOTE}' to='x@chat.a.example'/>")
    assert b"<host-unknown" in sent(actions)


def test_stanzas_before_any_authentication_are_not_authorized():
    """RFC 6120 §4.9.3.12."""
    _, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed(f"<message from='bob@{REMOTE}' to='alice@{LOCAL}'/>")
    assert b"<not-authorized" in sent(actions) and isinstance(actions[-1], Close)


def test_a_forged_verification_answer_on_an_incoming_stream_is_refused():
    """A peer cannot declare itself valid: results carry no type on incoming streams."""
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    actions = peer.feed(f"<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>")
    assert b"<bad-format" in sent(actions) and not core.validated


def test_dialback_requests_in_flight_are_bounded():
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    for i in range(10):
        _dialback_request(peer, remote=f"d{i}.example")
    assert b"<policy-violation" in sent(_dialback_request(peer, remote="d10.example"))


# -- incoming: db:verify (we are the Authoritative Server) -------------------------------------------


def test_a_key_any_node_generated_is_confirmed_and_a_wrong_one_is_not():
    """XEP-0220 §2.1.3: keys derive from the cluster secret, so any node can answer."""
    _, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    key = dialback.dialback_key(SECRET, REMOTE, LOCAL, "sid42")
    out = sent(peer.feed(f"<db:verify from='{REMOTE}' to='{LOCAL}' id='sid42'>{key}</db:verify>"))
    assert b"type=\"valid\"" in out and b"id=\"sid42\"" in out
    out = sent(peer.feed(f"<db:verify from='{REMOTE}' to='{LOCAL}' id='sid43'>{key}</db:verify>"))
    assert b"type=\"invalid\"" in out


# -- outgoing -----------------------------------------------------------------------------------


def outgoing(**options) -> tuple[OutgoingStream, Peer]:
    core = OutgoingStream(LOCAL, REMOTE, SECRET, **options)
    return core, Peer(core)


PEER_HEADER = HEADER.format(frm=REMOTE, to=LOCAL, extra=" id='their-id'")
TLS_FEATURES = ("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                "<required/></starttls></stream:features>")
DIALBACK_FEATURES = ("<stream:features><dialback xmlns='urn:xmpp:features:dialback'>"
                     "<errors/></dialback></stream:features>")
EXTERNAL_FEATURES = ("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                     "<mechanism>EXTERNAL</mechanism></mechanisms>"
                     "<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")


def _through_tls(core: OutgoingStream, peer: Peer) -> None:
    assert b"to='b.example'" in sent(core.start())
    assert b"<starttls" in sent(peer.feed(PEER_HEADER + TLS_FEATURES))
    assert any(isinstance(a, StartTLS) for a in peer.feed(
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"))
    assert b"<stream:stream" in sent(core.tls_started())


def test_outgoing_uses_sasl_external_when_offered():
    """XEP-0178 §3: authzid is our domain; after success a restart, then ready."""
    core, peer = outgoing()
    _through_tls(core, peer)
    out = sent(peer.feed(PEER_HEADER + EXTERNAL_FEATURES))
    assert b"mechanism=\"EXTERNAL\"" in out and base64.b64encode(LOCAL.encode()) in out
    actions = peer.feed("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    assert any(isinstance(a, ResetFramer) for a in actions) and b"<stream:stream" in sent(actions)
    assert peer.feed(PEER_HEADER + "<stream:features/>") == [Ready("external")]


def test_outgoing_sends_the_xep_0185_key_for_the_peers_stream_id():
    core, peer = outgoing()
    _through_tls(core, peer)
    out = sent(peer.feed(PEER_HEADER + DIALBACK_FEATURES))
    assert dialback.dialback_key(SECRET, REMOTE, LOCAL, "their-id").encode() in out
    assert peer.feed(f"<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>") == [Ready("dialback")]


def test_a_refused_certificate_falls_back_to_dialback():
    core, peer = outgoing()
    _through_tls(core, peer)
    peer.feed(PEER_HEADER + EXTERNAL_FEATURES)
    out = sent(peer.feed("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"))
    assert b"<db:result" in out


def test_an_invalid_dialback_answer_fails_the_stream():
    core, peer = outgoing()
    _through_tls(core, peer)
    peer.feed(PEER_HEADER + DIALBACK_FEATURES)
    actions = peer.feed(f"<db:result from='{REMOTE}' to='{LOCAL}' type='invalid'/>")
    assert any(isinstance(a, Failed) and a.condition == "remote-server-not-found" for a in actions)


def test_a_peer_without_tls_is_refused_when_tls_is_required():
    core, peer = outgoing()
    core.start()
    actions = peer.feed(PEER_HEADER + DIALBACK_FEATURES)
    assert any(isinstance(a, Failed) for a in actions) and b"<policy-violation" in sent(actions)


def test_a_verification_connection_sends_db_verify_and_reports_the_answer():
    """XEP-0220 §2.1.3 from the Receiving Server's side."""
    core, peer = outgoing(verify=VerifyRequest("sid7", "k3y"))
    _through_tls(core, peer)
    out = sent(peer.feed(PEER_HEADER + DIALBACK_FEATURES))
    assert b"<db:verify" in out and b"id=\"sid7\"" in out and b">k3y<" in out
    actions = peer.feed(f"<db:verify from='{REMOTE}' to='{LOCAL}' id='sid7' type='valid'/>")
    assert Verified(True) in actions


def test_a_stream_error_from_the_peer_fails_the_stream():
    core, peer = outgoing()
    core.start()
    actions = peer.feed(PEER_HEADER + "<stream:error><host-unknown "
                        "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    assert any(isinstance(a, Failed) and "host-unknown" in a.reason for a in actions)


# -- dialback keys (XEP-0185) ------------------------------------------------------------------------


def test_dialback_keys_bind_every_input_and_the_cluster_secret():
    key = dialback.dialback_key(SECRET, REMOTE, LOCAL, "id1")
    assert dialback.key_is_valid(SECRET, REMOTE, LOCAL, "id1", key)
    assert dialback.key_is_valid(SECRET, REMOTE, LOCAL, "id1", key.upper())
    for args in ((REMOTE, LOCAL, "id2"), (LOCAL, REMOTE, "id1"), ("c.example", LOCAL, "id1")):
        assert not dialback.key_is_valid(SECRET, *args, key)
    other = dialback.dialback_secret("another-cluster-secret-0123456789")
    assert not dialback.key_is_valid(other, REMOTE, LOCAL, "id1", key)


def test_the_dialback_secret_is_derived_not_the_cluster_secret():
    secret = dialback.dialback_secret("cluster-secret-for-tests-0123456789")
    assert secret == SECRET and "cluster-secret" not in secret and len(secret) == 64


def test_xep_0185_algorithm():
    """HMAC-SHA256 keyed with the hex SHA-256 of the secret, over 'Receiving Originating Id'."""
    import hashlib
    import hmac
    expected = hmac.new(hashlib.sha256(b"s3cr3t").hexdigest().encode(),
                        b"example.net example.com D60000229F", hashlib.sha256).hexdigest()
    assert dialback.dialback_key("s3cr3t", "example.net", "example.com", "D60000229F") == expected


# -- certificate names (RFC 6125, XEP-0178) ------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "domain", "matches"), [
    ("a.example", "a.example", True),
    ("A.Example.", "a.example", True),
    ("*.example", "a.example", False),  # a wildcard never covers a bare TLD-level label
    ("*.a.example", "chat.a.example", True),
    ("*.a.example", "a.example", False),
    ("*.a.example", "x.chat.a.example", False),
    ("chat.*.example", "chat.a.example", False),
])
def test_dns_names_match_as_rfc_6125_says(pattern, domain, matches):
    assert dns_name_matches(pattern, domain) is matches


def test_a_certificate_names_its_domains_and_no_other():
    cert = trustme.CA().issue_cert(LOCAL, "*.chat.a.example")
    der = _der(cert.cert_chain_pems[0].bytes())
    assert certificate_names_domain(der, LOCAL)
    assert certificate_names_domain(der, "x.chat.a.example")
    assert not certificate_names_domain(der, REMOTE)


def test_an_unverified_chain_proves_nothing():
    der = _der(trustme.CA().issue_cert(LOCAL).cert_chain_pems[0].bytes())
    assert not PeerCertificate(der, chain_valid=False).valid_for(LOCAL)
    assert PeerCertificate(der, chain_valid=True).valid_for(LOCAL)


def _der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# -- SRV order (RFC 2782, XEP-0368) ---------------------------------------------------------------------


def test_srv_targets_go_by_priority_and_direct_tls_first_at_equal_priority():
    records = [(10, 0, "c.example", 5269, False), (0, 5, "a.example", 5269, False),
               (0, 5, "a.example", 5270, True)]
    order = resolver.order(records, random.Random(1))
    assert [(t.port, t.direct_tls) for t in order] == [(5270, True), (5269, False), (5269, False)]
    assert order[-1].host == "c.example"


def test_srv_weights_spread_the_choice():
    records = [(0, 90, "heavy.example", 1, False), (0, 10, "light.example", 2, False)]
    firsts = [resolver.order(list(records), random.Random(seed))[0].host for seed in range(200)]
    assert 150 < firsts.count("heavy.example") < 200


async def test_names_that_never_resolve_fail_at_once():
    """RFC 6761 §6.4: .invalid; and localhost is never a federated server."""
    for name in ("x.invalid", "localhost"):
        with trio.fail_after(1), pytest.raises(resolver.ResolutionFailed) as failure:
            await resolver.resolve(name, 5.0)
        assert failure.value.condition == "remote-server-not-found"


def test_parsed_stanzas_keep_payload_namespaces():
    core, peer = incoming()
    peer.feed(HEADER.format(frm=REMOTE, to=LOCAL, extra=""))
    _dialback_request(peer)
    core.verified(LOCAL, REMOTE, True)
    actions = peer.feed(f"<iq type='get' id='1' from='bob@{REMOTE}/r' to='{LOCAL}'>"
                        "<ping xmlns='urn:xmpp:ping'/></iq>")
    (stanza,) = [a.element for a in actions if isinstance(a, Stanza)]
    assert etree.QName(stanza[0]).namespace == "urn:xmpp:ping"
