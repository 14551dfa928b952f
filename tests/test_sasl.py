"""SASL negotiation (RFC 6120 §6) driven by real clients: scramp's ScramClient for SCRAM,
hand-built RFC 4616 messages for PLAIN, and a few lines of RFC 5802 §3 arithmetic where
scramp's client cannot say what we need (an authzid)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from scramp import ScramClient

from raftxmpp import credentials
from raftxmpp.c2s import sasl
from raftxmpp.c2s.sasl import SaslFailure, SaslServer, offered_mechanisms, tls_server_end_point

DOMAIN = "example.com"
PASSWORD = "correct horse battery staple"
ACCOUNTS = {
    "alice": credentials.derive(PASSWORD, 4096),
    "bob": credentials.derive("bob's password", 4096),
}
CB = ("tls-server-end-point", hashlib.sha256(b"the server certificate").digest())
SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256"]
SCRAM_PLUS = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"]


def sasl_server(mechanism, channel_binding=None, lookup=ACCOUNTS.get, tls=True):
    offered = offered_mechanisms(tls=tls, channel_binding=channel_binding is not None)
    return SaslServer(mechanism, DOMAIN, lookup, offered, channel_binding=channel_binding)


def scram_exchange(server, client):
    """Runs a whole SCRAM exchange; the client checks the server's signature at the end."""
    kind, server_first = server.start(client.get_client_first().encode())
    assert kind == "challenge"
    client.set_server_first(server_first.decode())
    kind, server_final = server.respond(client.get_client_final().encode())
    assert kind == "success"
    client.set_server_final(server_final.decode())
    return server_final


def scram_final_step_condition(server, client):
    kind, server_first = server.start(client.get_client_first().encode())
    assert kind == "challenge"
    client.set_server_first(server_first.decode())
    with pytest.raises(SaslFailure) as failure:
        server.respond(client.get_client_final().encode())
    return failure.value.condition


def plain(authzid, authcid, password):
    return f"{authzid}\0{authcid}\0{password}".encode()


def recording(lookup):
    calls = []

    def recorded(localpart):
        calls.append(localpart)
        return lookup(localpart)

    return recorded, calls


def rfc5802_client_final(
    hash_name, password, gs2_header, client_first_bare, server_first, cb_data=b""
):
    """RFC 5802 §3: ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage)."""
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        hash_name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    cbind_input = base64.b64encode(gs2_header.encode() + cb_data).decode()
    without_proof = f"c={cbind_input},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hash_name).digest()
    proof = bytes(k ^ s for k, s in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def scram_with_authzid(server, authzid, password=PASSWORD, channel_binding=None):
    cbind_flag = f"p={channel_binding[0]}" if channel_binding else "n"
    gs2_header, bare = f"{cbind_flag},a={authzid},", "n=alice,r=clientnonce123"
    _, server_first = server.start((gs2_header + bare).encode())
    cb_data = channel_binding[1] if channel_binding else b""
    final = rfc5802_client_final(
        "sha256", password, gs2_header, bare, server_first.decode(), cb_data
    )
    return server.respond(final.encode())


def certificate(key, algorithm):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


# --- what is offered --------------------------------------------------------------


def test_offered_mechanisms_put_channel_binding_first_then_strongest_hash():
    assert offered_mechanisms(tls=True, channel_binding=True) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]


def test_plain_is_not_offered_without_tls():
    assert offered_mechanisms(tls=False, channel_binding=False) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def test_plain_is_offered_without_tls_only_when_explicitly_allowed():
    offered = offered_mechanisms(tls=False, channel_binding=False, allow_plain_without_tls=True)
    assert "PLAIN" in offered


def test_plus_variants_are_not_offered_without_channel_binding_data():
    offered = offered_mechanisms(tls=True, channel_binding=False)
    assert offered == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


def test_mechanism_not_offered_is_invalid_mechanism():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN", tls=False)
    assert failure.value.condition == "invalid-mechanism"


def test_unknown_mechanism_is_invalid_mechanism_even_if_listed_as_offered():
    with pytest.raises(SaslFailure) as failure:
        SaslServer("DIGEST-MD5", DOMAIN, ACCOUNTS.get, ["DIGEST-MD5"])
    assert failure.value.condition == "invalid-mechanism"


def test_plus_mechanism_not_offered_without_channel_binding_is_invalid_mechanism():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("SCRAM-SHA-256-PLUS")
    assert failure.value.condition == "invalid-mechanism"


def test_tls_exporter_channel_binding_is_refused_at_construction():
    with pytest.raises(ValueError, match="tls-exporter"):
        sasl_server("SCRAM-SHA-256-PLUS", channel_binding=("tls-exporter", b"x" * 32))


# --- PLAIN ------------------------------------------------------------------------


def test_plain_correct_password_succeeds_with_no_additional_data():
    server = sasl_server("PLAIN")
    assert server.start(plain("", "alice", PASSWORD)) == ("success", b"")
    assert server.username == "alice"


def test_plain_empty_initial_response_draws_empty_challenge_then_accepts_response():
    server = sasl_server("PLAIN")
    assert server.start(b"") == ("challenge", b"")
    assert server.respond(plain("", "alice", PASSWORD)) == ("success", b"")
    assert server.username == "alice"


def test_plain_absent_initial_response_draws_empty_challenge():
    server = sasl_server("PLAIN")
    assert server.start(None) == ("challenge", b"")


def test_plain_accepts_authcid_given_as_bare_jid_of_this_domain():
    server = sasl_server("PLAIN")
    assert server.start(plain("", "alice@example.com", PASSWORD)) == ("success", b"")
    assert server.username == "alice"


def test_plain_authcid_of_another_domain_is_not_authorized():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").start(plain("", "alice@example.org", PASSWORD))
    assert failure.value.condition == "not-authorized"


def test_plain_username_is_precis_normalised_before_lookup():
    lookup, calls = recording(ACCOUNTS.get)
    server = sasl_server("PLAIN", lookup=lookup)
    assert server.start(plain("", "ＡＬＩＣＥ", PASSWORD)) == ("success", b"")
    assert calls == ["alice"]
    assert server.username == "alice"


def test_plain_username_failing_precis_is_not_authorized():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").start(plain("", "al ice", PASSWORD))
    assert failure.value.condition == "not-authorized"


def test_plain_accepts_authzid_equal_to_own_bare_jid():
    server = sasl_server("PLAIN")
    assert server.start(plain("Alice@example.com", "alice", PASSWORD)) == ("success", b"")
    assert server.username == "alice"


@pytest.mark.parametrize("authzid", ["bob@example.com", "alice@example.org", "alice", "x@"])
def test_plain_authzid_other_than_own_bare_jid_is_invalid_authzid(authzid):
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").start(plain(authzid, "alice", PASSWORD))
    assert failure.value.condition == "invalid-authzid"


def test_plain_wrong_password_is_not_authorized():
    server = sasl_server("PLAIN")
    with pytest.raises(SaslFailure) as failure:
        server.start(plain("", "alice", "wrong"))
    assert failure.value.condition == "not-authorized"
    assert server.username is None


def test_plain_unknown_user_fails_exactly_like_wrong_password():
    with pytest.raises(SaslFailure) as wrong_password:
        sasl_server("PLAIN").start(plain("", "alice", "wrong"))
    with pytest.raises(SaslFailure) as unknown_user:
        sasl_server("PLAIN").start(plain("", "mallory", "wrong"))
    assert (unknown_user.value.condition, unknown_user.value.text) == (
        wrong_password.value.condition,
        wrong_password.value.text,
    )


def test_plain_unknown_user_still_pays_for_a_password_verification(monkeypatch):
    verified = []
    real_verify = credentials.verify_password

    def spy(creds, password):
        verified.append(creds)
        return real_verify(creds, password)

    monkeypatch.setattr(credentials, "verify_password", spy)
    with pytest.raises(SaslFailure):
        sasl_server("PLAIN").start(plain("", "mallory", PASSWORD))
    assert len(verified) == 1
    assert verified[0]["SCRAM-SHA-256"]["iterations"] == 4096


def test_plain_password_is_saslprepped_like_the_stored_credentials():
    # SASLprep maps NO-BREAK SPACE to SPACE (RFC 4013 §2.1); derive() stored the mapped form.
    accounts = {"carol": credentials.derive("open\u00a0sesame", 4096)}
    server = sasl_server("PLAIN", lookup=accounts.get)
    assert server.start(plain("", "carol", "open\u00a0sesame")) == ("success", b"")


@pytest.mark.parametrize(
    "message",
    [
        b"alice\0" + PASSWORD.encode(),
        b"\0\0" + PASSWORD.encode(),
        b"\0alice\0",
        b"\0alice\0pass\0word",
        b"\0alice\0\xff\xfe",
        b"just some bytes",
    ],
    ids=["two-fields", "empty-authcid", "empty-password", "four-fields", "not-utf8", "no-nul"],
)
def test_plain_malformed_message_is_malformed_request(message):
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").start(message)
    assert failure.value.condition == "malformed-request"


def broken_lookup(localpart):
    raise OSError("state machine unavailable")


def test_plain_lookup_failure_is_temporary_auth_failure():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN", lookup=broken_lookup).start(plain("", "alice", PASSWORD))
    assert failure.value.condition == "temporary-auth-failure"


def test_scram_lookup_failure_is_temporary_auth_failure():
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    with pytest.raises(SaslFailure) as failure:
        sasl_server("SCRAM-SHA-256", lookup=broken_lookup).start(client.get_client_first().encode())
    assert failure.value.condition == "temporary-auth-failure"


# --- SCRAM ------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_success_carries_server_final_message_the_client_verifies(mechanism):
    server = sasl_server(mechanism)
    server_final = scram_exchange(server, ScramClient([mechanism], "alice", PASSWORD))
    assert server_final.startswith(b"v=")
    assert server.username == "alice"


def test_scram_empty_initial_response_draws_empty_challenge_then_runs_normally():
    server = sasl_server("SCRAM-SHA-256")
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    assert server.start(b"") == ("challenge", b"")
    kind, server_first = server.respond(client.get_client_first().encode())
    assert kind == "challenge"
    client.set_server_first(server_first.decode())
    kind, server_final = server.respond(client.get_client_final().encode())
    assert kind == "success"
    client.set_server_final(server_final.decode())


@pytest.mark.parametrize("mechanism", SCRAM_PLUS)
def test_scram_plus_succeeds_with_matching_channel_binding(mechanism):
    server = sasl_server(mechanism, channel_binding=CB)
    scram_exchange(server, ScramClient([mechanism], "alice", PASSWORD, channel_binding=CB))
    assert server.username == "alice"


def test_scram_plus_binds_to_tls_server_end_point_of_a_real_certificate():
    binding = (
        "tls-server-end-point",
        tls_server_end_point(certificate(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())),
    )
    server = sasl_server("SCRAM-SHA-256-PLUS", channel_binding=binding)
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "alice", PASSWORD, channel_binding=binding)
    scram_exchange(server, client)
    assert server.username == "alice"


def test_scram_plus_with_different_channel_binding_data_is_not_authorized():
    # What a man in the middle sees: the client's TLS session is not the server's.
    server = sasl_server("SCRAM-SHA-256-PLUS", channel_binding=CB)
    theirs = ("tls-server-end-point", hashlib.sha256(b"the attacker's certificate").digest())
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "alice", PASSWORD, channel_binding=theirs)
    assert scram_final_step_condition(server, client) == "not-authorized"


def test_scram_plus_with_another_channel_binding_type_is_not_authorized():
    server = sasl_server("SCRAM-SHA-256-PLUS", channel_binding=CB)
    client = ScramClient(
        ["SCRAM-SHA-256-PLUS"], "alice", PASSWORD, channel_binding=("tls-unique", b"x" * 12)
    )
    with pytest.raises(SaslFailure) as failure:
        server.start(client.get_client_first().encode())
    assert failure.value.condition == "not-authorized"


def test_scram_downgrade_y_flag_while_plus_offered_is_not_authorized():
    # The client can bind but did not see -PLUS: our <mechanisms/> was tampered with.
    server = sasl_server("SCRAM-SHA-256", channel_binding=CB)
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD, channel_binding=CB)
    client_first = client.get_client_first()
    assert client_first.startswith("y,,")
    with pytest.raises(SaslFailure) as failure:
        server.start(client_first.encode())
    assert failure.value.condition == "not-authorized"


def test_scram_y_flag_is_accepted_when_plus_was_not_offered():
    server = sasl_server("SCRAM-SHA-256")
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD, channel_binding=CB)
    scram_exchange(server, client)
    assert server.username == "alice"


def test_scram_n_flag_is_accepted_while_plus_offered():
    server = sasl_server("SCRAM-SHA-256", channel_binding=CB)
    scram_exchange(server, ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD))
    assert server.username == "alice"


def test_scram_p_flag_with_non_plus_mechanism_is_malformed_request():
    server = sasl_server("SCRAM-SHA-256", channel_binding=CB)
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "alice", PASSWORD, channel_binding=CB)
    with pytest.raises(SaslFailure) as failure:
        server.start(client.get_client_first().encode())
    assert failure.value.condition == "malformed-request"


def test_scram_plus_mechanism_without_binding_in_gs2_header_is_malformed_request():
    server = sasl_server("SCRAM-SHA-256-PLUS", channel_binding=CB)
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    with pytest.raises(SaslFailure) as failure:
        server.start(client.get_client_first().encode())
    assert failure.value.condition == "malformed-request"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_password_is_not_authorized(mechanism):
    server = sasl_server(mechanism)
    client = ScramClient([mechanism], "alice", "wrong")
    assert scram_final_step_condition(server, client) == "not-authorized"
    assert server.username is None


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_unknown_user_fails_only_at_the_proof_like_wrong_password(mechanism):
    server = sasl_server(mechanism)
    client = ScramClient([mechanism], "mallory", "wrong")
    assert scram_final_step_condition(server, client) == "not-authorized"


def server_first_attrs(username, mechanism="SCRAM-SHA-256"):
    client = ScramClient([mechanism], username, "whatever")
    _, server_first = sasl_server(mechanism).start(client.get_client_first().encode())
    return dict(a.split("=", 1) for a in server_first.decode().split(","))


def test_scram_unknown_user_gets_a_stable_salt_of_the_usual_shape():
    known, unknown = server_first_attrs("alice"), server_first_attrs("mallory")
    assert server_first_attrs("mallory")["s"] == unknown["s"]
    assert server_first_attrs("MALLORY")["s"] == unknown["s"]
    assert len(base64.b64decode(unknown["s"])) == len(base64.b64decode(known["s"]))
    assert unknown["i"] == known["i"] == "4096"


def test_scram_unknown_user_salt_differs_per_user_and_mechanism():
    assert server_first_attrs("mallory")["s"] != server_first_attrs("trent")["s"]
    assert (
        server_first_attrs("mallory", "SCRAM-SHA-1")["s"]
        != server_first_attrs("mallory", "SCRAM-SHA-256")["s"]
    )


def test_scram_username_is_precis_normalised_before_lookup():
    lookup, calls = recording(ACCOUNTS.get)
    server = sasl_server("SCRAM-SHA-256", lookup=lookup)
    scram_exchange(server, ScramClient(["SCRAM-SHA-256"], "ALICE", PASSWORD))
    assert calls == ["alice"]
    assert server.username == "alice"


def test_scram_username_failing_precis_is_not_authorized():
    server = sasl_server("SCRAM-SHA-256")
    client = ScramClient(["SCRAM-SHA-256"], "al ice", PASSWORD)
    assert scram_final_step_condition(server, client) == "not-authorized"


def test_scram_accepts_authzid_equal_to_own_bare_jid():
    server = sasl_server("SCRAM-SHA-256")
    kind, server_final = scram_with_authzid(server, "alice@example.com")
    assert kind == "success" and server_final.startswith(b"v=")
    assert server.username == "alice"


def test_scram_plus_accepts_authzid_equal_to_own_bare_jid():
    server = sasl_server("SCRAM-SHA-256-PLUS", channel_binding=CB)
    kind, _ = scram_with_authzid(server, "alice@example.com", channel_binding=CB)
    assert kind == "success"
    assert server.username == "alice"


def test_scram_authzid_of_another_user_is_invalid_authzid():
    with pytest.raises(SaslFailure) as failure:
        scram_with_authzid(sasl_server("SCRAM-SHA-256"), "bob@example.com")
    assert failure.value.condition == "invalid-authzid"


def test_scram_authzid_does_not_excuse_a_wrong_password():
    with pytest.raises(SaslFailure) as failure:
        scram_with_authzid(sasl_server("SCRAM-SHA-256"), "alice@example.com", password="wrong")
    assert failure.value.condition == "not-authorized"


@pytest.mark.parametrize(
    "client_first",
    [
        b"garbage",
        b"n,,r=clientnonce",
        b"x,,n=alice,r=clientnonce",
        b"p=,,n=alice,r=clientnonce",
        b"n,b=alice,n=alice,r=clientnonce",
        b"n,a=al=ice@example.com,n=alice,r=clientnonce",
        b"n,,n=alice,r=clientnonce,m=extension",
        b"n,,n=al\xffice,r=clientnonce",
    ],
    ids=[
        "no-gs2-header",
        "no-username",
        "bad-cbind-flag",
        "empty-cb-name",
        "not-an-authzid",
        "bad-saslname-escape",
        "mandatory-extension",
        "not-utf8",
    ],
)
def test_scram_malformed_client_first_is_malformed_request(client_first):
    with pytest.raises(SaslFailure) as failure:
        sasl_server("SCRAM-SHA-256").start(client_first)
    assert failure.value.condition == "malformed-request"


@pytest.mark.parametrize(
    "client_final",
    ["garbage", "c=biws,r=wrongnonce,p=AAAA", "c=!!!!,r={nonce},p=AAAA"],
    ids=["not-attributes", "nonce-mismatch", "bad-base64"],
)
def test_scram_malformed_client_final_is_malformed_request(client_final):
    server = sasl_server("SCRAM-SHA-256")
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    _, server_first = server.start(client.get_client_first().encode())
    nonce = server_first.decode().split(",")[0][2:]
    with pytest.raises(SaslFailure) as failure:
        server.respond(client_final.format(nonce=nonce).encode())
    assert failure.value.condition == "malformed-request"


# --- the exchange's own order -----------------------------------------------------


def test_start_twice_is_malformed_request():
    server = sasl_server("PLAIN")
    server.start(b"")
    with pytest.raises(SaslFailure) as failure:
        server.start(plain("", "alice", PASSWORD))
    assert failure.value.condition == "malformed-request"


def test_respond_before_start_is_malformed_request():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").respond(plain("", "alice", PASSWORD))
    assert failure.value.condition == "malformed-request"


def test_respond_after_success_is_malformed_request():
    server = sasl_server("SCRAM-SHA-256")
    scram_exchange(server, ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD))
    with pytest.raises(SaslFailure) as failure:
        server.respond(b"")
    assert failure.value.condition == "malformed-request"
    assert server.username == "alice"


def test_respond_after_failure_is_malformed_request():
    server = sasl_server("PLAIN")
    server.start(b"")
    with pytest.raises(SaslFailure):
        server.respond(plain("", "alice", "wrong"))
    with pytest.raises(SaslFailure) as failure:
        server.respond(plain("", "alice", PASSWORD))
    assert failure.value.condition == "malformed-request"
    assert server.username is None


def test_failure_condition_must_be_an_rfc_6120_condition():
    with pytest.raises(ValueError):
        SaslFailure("no-such-condition")


# --- tls-server-end-point (RFC 5929 §4.1) -----------------------------------------


def test_tls_server_end_point_hashes_the_certificate_with_its_signature_hash():
    der = certificate(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()


@pytest.mark.parametrize("weak_oid_last_byte", [0x05, 0x04], ids=["sha1", "md5"])
def test_tls_server_end_point_upgrades_md5_and_sha1_to_sha256(weak_oid_last_byte):
    # cryptography no longer signs with SHA-1 or MD5, so relabel a sha256WithRSAEncryption
    # certificate (1.2.840.113549.1.1.11) as sha1WithRSA (…1.5) or md5WithRSA (…1.4).
    der = certificate(rsa.generate_private_key(65537, 2048), hashes.SHA256())
    sha256_with_rsa = bytes.fromhex("06092a864886f70d01010b")
    weak = der.replace(sha256_with_rsa, sha256_with_rsa[:-1] + bytes([weak_oid_last_byte]))
    assert weak != der
    assert tls_server_end_point(weak) == hashlib.sha256(weak).digest()


def test_tls_server_end_point_is_undefined_for_ed25519_certificates():
    der = certificate(ed25519.Ed25519PrivateKey.generate(), None)
    with pytest.raises(ValueError):
        tls_server_end_point(der)


# --- the gs2 authzid (RFC 5802 §5.1, §7), read exactly -----------------------------


@pytest.mark.parametrize(("field", "authzid"), [
    ("a=x", "x"),  # one character is a saslname
    ("a=a=2Cb=3Dc@example.com", "a,b=c@example.com"),  # "=2C" is ",", "=3D" is "="
    ("a==3D=2C", "=,"),
])
def test_a_gs2_authzid_is_unescaped(field, authzid):
    gs2, bare = sasl._Gs2Header.parse(f"n,{field},n=alice,r=abc")
    assert (gs2.flag, gs2.authzid, gs2.raw, bare) == ("n", authzid, f"n,{field},", "n=alice,r=abc")


@pytest.mark.parametrize("field", ["b=alice", "a=", "a=al=ice"])
def test_a_bad_gs2_authzid_is_malformed_request_word_for_word(field):
    with pytest.raises(SaslFailure) as failure:
        sasl._Gs2Header.parse(f"n,{field},n=alice,r=abc")
    assert (failure.value.condition, failure.value.text) == ("malformed-request", "bad gs2 authzid")


def test_scram_with_a_one_character_authzid_is_invalid_authzid():
    with pytest.raises(SaslFailure) as failure:
        scram_with_authzid(sasl_server("SCRAM-SHA-256"), "x")
    assert failure.value.condition == "invalid-authzid"


# --- every failure's condition and text, word for word ------------------------------


def _failure(server, first: bytes, then: bytes | None = None) -> tuple[str, str | None]:
    with pytest.raises(SaslFailure) as failure:
        server.start(first)
        if then is not None:
            server.respond(then)
    return failure.value.condition, failure.value.text


@pytest.mark.parametrize(("mechanism", "channel_binding", "first", "expected"), [
    ("PLAIN", None, b"\xff\0alice\0pw", ("malformed-request", "PLAIN message is not UTF-8")),
    ("PLAIN", None, b"alice pw",
     ("malformed-request", "PLAIN message is not authzid NUL authcid NUL passwd")),
    ("PLAIN", None, plain("", "alice", "wrong"), ("not-authorized", None)),
    ("SCRAM-SHA-256", CB, b"p=tls-server-end-point,,n=alice,r=abc",
     ("malformed-request", "channel binding with a non-PLUS mechanism")),
    ("SCRAM-SHA-256-PLUS", CB, b"n,,n=alice,r=abc",
     ("malformed-request", "a -PLUS mechanism without channel binding")),
    ("SCRAM-SHA-256-PLUS", CB, b"p=tls-unique,,n=alice,r=abc",
     ("not-authorized", "channel binding type tls-unique unsupported")),
    ("SCRAM-SHA-256", CB, b"y,,n=alice,r=abc", ("not-authorized", "channel binding was offered")),
])
def test_a_failure_says_its_condition_and_text_word_for_word(mechanism, channel_binding, first,
                                                             expected):
    assert _failure(sasl_server(mechanism, channel_binding=channel_binding), first) == expected


def test_the_order_failures_say_what_was_out_of_order():
    with pytest.raises(SaslFailure) as failure:
        sasl_server("PLAIN").respond(b"")
    assert (failure.value.condition, failure.value.text) == \
        ("malformed-request", "no authentication in progress")
    server = sasl_server("PLAIN")
    server.start(b"")
    with pytest.raises(SaslFailure) as failure:
        server.start(b"")
    assert (failure.value.condition, failure.value.text) == \
        ("malformed-request", "authentication already started")
    with pytest.raises(SaslFailure):  # the exchange is over after a failure
        server.respond(plain("", "alice", PASSWORD))


def test_a_scram_proof_that_fails_says_nothing_more_and_a_broken_message_says_why():
    client = ScramClient(["SCRAM-SHA-256"], "alice", "wrong")
    server = sasl_server("SCRAM-SHA-256")
    kind, server_first = server.start(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    with pytest.raises(SaslFailure) as failure:
        server.respond(client.get_client_final().encode())
    assert (failure.value.condition, failure.value.text) == ("not-authorized", None)
    server = sasl_server("SCRAM-SHA-256")
    server.start(ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD).get_client_first().encode())
    with pytest.raises(SaslFailure) as failure:
        server.respond(b"garbage")
    assert failure.value.condition == "malformed-request"
    assert failure.value.text  # scramp's own reason, kept for the log


def test_a_sasl_failure_reads_as_its_condition_then_its_text():
    assert str(SaslFailure("aborted")) == "aborted"
    assert str(SaslFailure("aborted", "by the client")) == "aborted: by the client"
    assert SaslFailure("aborted", "by the client").text == "by the client"
    with pytest.raises(ValueError, match="^not an RFC 6120 SASL failure condition: 'nope'$"):
        SaslFailure("nope")


@pytest.mark.parametrize(("client_first", "text"), [
    ("n", "no gs2 header"),
    ("n,n=alice", "no gs2 header"),
    ("xyz,,n=alice,r=abc", "bad gs2-cbind-flag"),
    ("p=,,n=alice,r=abc", "bad gs2-cbind-flag"),
])
def test_a_bad_gs2_header_is_malformed_request_word_for_word(client_first, text):
    with pytest.raises(SaslFailure) as failure:
        sasl._Gs2Header.parse(client_first)
    assert (failure.value.condition, failure.value.text) == ("malformed-request", text)


def test_a_one_character_channel_binding_name_is_read():
    gs2, _ = sasl._Gs2Header.parse("p=x,,n=alice,r=abc")
    assert (gs2.flag, gs2.cb_name, gs2.authzid) == ("p", "x", "")


def test_a_scram_message_that_is_not_utf8_says_so():
    assert _failure(sasl_server("SCRAM-SHA-256"), b"n,,n=al\xffice,r=abc") == \
        ("malformed-request", "SCRAM message is not UTF-8")


@pytest.mark.parametrize(("mechanism", "channel_binding", "message"), [
    ("SCRAM-SHA-256-PLUS", ("tls-server-end-point", b""),
     "^channel binding data must be non-empty bytes$"),
    ("SCRAM-SHA-256-PLUS", ("tls-server-end-point", "not bytes"),
     "^channel binding data must be non-empty bytes$"),
    ("SCRAM-SHA-256-PLUS", None, "^SCRAM-SHA-256-PLUS needs channel binding data$"),
])
def test_a_server_built_with_bad_channel_binding_data_says_why(mechanism, channel_binding,
                                                               message):
    offered = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    with pytest.raises(ValueError, match=message):
        SaslServer(mechanism, DOMAIN, ACCOUNTS.get, offered, channel_binding=channel_binding)


def test_tls_server_end_point_says_why_it_is_undefined_for_ed25519():
    der = certificate(ed25519.Ed25519PrivateKey.generate(), None)
    with pytest.raises(ValueError, match="^tls-server-end-point is undefined for a signature "
                                         r"algorithm without a single hash function \(1\.3\.101\.112\)$"):
        tls_server_end_point(der)


def test_scram_with_an_authzid_on_a_server_that_could_bind_but_was_not_asked_to():
    server = sasl_server("SCRAM-SHA-256", channel_binding=CB)  # -PLUS offered, "n" flag used
    kind, _ = scram_with_authzid(server, "alice@example.com")
    assert kind == "success" and server.username == "alice"
