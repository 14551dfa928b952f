"""The sans-IO parts of issue 13's login defences: which account a SASL message names
before it is processed (the throttle's key), and the key of fake SCRAM salts."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from raftxmpp.c2s import sasl
from raftxmpp.c2s.stream import ClientStream, State, StreamSettings
from raftxmpp.xml import ns
from raftxmpp.xml.framer import StanzaReceived


@pytest.mark.parametrize("mechanism, message, expected", [
    ("PLAIN", b"\0alice\0pw", "alice"),
    ("PLAIN", b"alice@localhost\0Alice@localhost\0pw", "alice"),
    ("PLAIN", b"\0bob@elsewhere\0pw", None),
    ("PLAIN", b"no separators", None),
    ("SCRAM-SHA-256", b"n,,n=Alice,r=abc", "alice"),
    ("SCRAM-SHA-1", b"y,,n=a=2Cb=3Dc,r=abc", "a,b=c"),  # RFC 5802 §5.1 escapes
    ("SCRAM-SHA-1-PLUS", b"p=tls-server-end-point,,n=carol,r=abc", "carol"),
    ("SCRAM-SHA-256", b"n,a=alice@localhost,n=alice,r=abc", "alice"),
    ("SCRAM-SHA-256", b"garbage", None),
    ("SCRAM-SHA-256", b"\xff\xfe", None),
    ("DIGEST-MD5", b"anything", None),
])
def test_the_account_a_first_message_names(mechanism, message, expected):
    assert sasl.claimed_localpart(mechanism, message, "localhost") == expected


def _sasl_element(name: str, text: str | None, **attrs) -> StanzaReceived:
    element = etree.Element(f"{{{ns.SASL}}}{name}", nsmap={None: ns.SASL}, **attrs)
    element.text = text
    return StanzaReceived(element, len(etree.tostring(element)))


def test_the_stream_names_the_account_of_auth_or_of_the_first_response_only():
    core = ClientStream(StreamSettings(hosts=lambda: {"localhost"},
                                       lookup_credentials=lambda user, domain: None,
                                       tls_available=False, require_tls=False))
    core.domain, core.state = "localhost", State.AUTH
    first = base64.b64encode(b"n,,n=carol,r=abc").decode()
    assert core.claimed_account(_sasl_element("auth", first, mechanism="SCRAM-SHA-256")) \
        == "carol@localhost"
    assert core.claimed_account(_sasl_element("auth", "!!", mechanism="PLAIN")) is None
    core.receive(_sasl_element("auth", None, mechanism="SCRAM-SHA-256"))  # empty challenge
    assert core.state is State.SASL
    assert core.claimed_account(_sasl_element("response", first)) == "carol@localhost"
    core.receive(_sasl_element("response", first))  # now the salt went out
    assert core.claimed_account(_sasl_element("response", first)) is None


def test_fake_salts_are_stable_for_one_cluster_secret_and_differ_for_another():
    def salt(secret: str, user: str = "ghost") -> bytes:
        server = sasl.SaslServer("SCRAM-SHA-256", "localhost", lambda _: None,
                                 ["SCRAM-SHA-256"],
                                 unknown_user_key=sasl.unknown_account_key(secret))
        _, first = server.start(f"n,,n={user},r=abc".encode())
        return dict(p.split("=", 1) for p in first.decode().split(","))["s"].encode()

    secret = "a-cluster-secret-of-32-characters"
    assert salt(secret) == salt(secret)
    assert salt(secret) != salt("another-cluster-secret-entirely")
    assert salt(secret) != salt(secret, "ghost2")
    assert len(base64.b64decode(salt(secret))) == 32  # scramp's real salts are 32 bytes


def test_the_fake_salt_key_is_rfc_5869_hkdf_sha256_with_its_own_salt_and_label():
    # HKDF-SHA256(ikm = the secret, salt = b"raftxmpp cluster secret",
    # info = b"raftxmpp unknown-account SCRAM salt v1", L = 32), computed once with
    # RFC 5869's two HMAC steps in a script that does not import raftxmpp: every node of
    # a cluster, whatever its version, must derive the same key.
    assert sasl.unknown_account_key("a-cluster-secret-of-32-characters").hex() == \
        "c5142f4f133ebd4b034e62a71811353f06bf2f6b169547df0f1806a964d5c7a7"


def test_the_account_of_a_first_message_with_extensions_after_the_nonce():
    # client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    assert sasl.claimed_localpart("SCRAM-SHA-256", b"n,,n=carol,r=abc,x=ext", "localhost") \
        == "carol"


def test_names_that_are_no_localpart_of_this_domain_get_fake_salts_of_their_own():
    def salt(user: str) -> bytes:
        server = sasl.SaslServer("SCRAM-SHA-256", "localhost", lambda _: None,
                                 ["SCRAM-SHA-256"], unknown_user_key=b"k" * 32)
        _, first = server.start(f"n,,n={user},r=abc".encode())
        return dict(p.split("=", 1) for p in first.decode().split(","))["s"].encode()

    assert salt("ghost@elsewhere") != salt("other@elsewhere")
