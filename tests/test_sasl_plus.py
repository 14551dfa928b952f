"""SCRAM-SHA-256-PLUS end to end: channel binding (tls-server-end-point) over real STARTTLS."""

from __future__ import annotations

import base64
import ssl

import pytest
import trio
from scramp import ScramClient

from raftxmpp.c2s.sasl import tls_server_end_point

PASSWORD = "plus-password"
HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class Conversation:
    def __init__(self, stream) -> None:
        self.stream, self.buffer = stream, b""

    async def until(self, marker: bytes) -> bytes:
        with trio.fail_after(10):
            while marker not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                assert chunk, f"closed while waiting for {marker!r}: {self.buffer!r}"
                self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker


async def starttls(port: int, ca_file) -> tuple[trio.SSLStream, Conversation, bytes]:
    plain = Conversation(await trio.open_tcp_stream("127.0.0.1", port))
    await plain.stream.send_all(HEADER)
    await plain.until(b"</stream:features>")
    await plain.stream.send_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await plain.until(b"/>")
    context = ssl.create_default_context(cafile=str(ca_file / "ca.pem"))
    tls = trio.SSLStream(plain.stream, context, server_hostname="localhost")
    await tls.do_handshake()
    talk = Conversation(tls)
    await tls.send_all(HEADER)
    features = await talk.until(b"</stream:features>")
    return tls, talk, features


async def scram_plus(tls: trio.SSLStream, talk: Conversation, user: str, password: str,
                     binding: bytes) -> bytes:
    client = ScramClient(["SCRAM-SHA-256-PLUS"], user, password,
                         channel_binding=("tls-server-end-point", binding))
    first = base64.b64encode(client.get_client_first().encode()).decode()
    await tls.send_all(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>".encode())
    reply = await talk.until(b">")
    if b"<failure" in reply:
        return reply + await talk.until(b"</failure>")
    challenge = (await talk.until(b"</challenge>"))[:-len(b"</challenge>")]
    client.set_server_first(base64.b64decode(challenge).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    await tls.send_all(f"<response xmlns='{SASL}'>{final}</response>".encode())
    outcome = await talk.until(b">")
    if b"<success" in outcome:
        additional = (await talk.until(b"</success>"))[:-len(b"</success>")]
        client.set_server_final(base64.b64decode(additional).decode())  # verifies the server
        return outcome
    return outcome + await talk.until(b"</failure>")


@pytest.mark.parametrize("binding_matches", [True, False], ids=["same-channel", "other-channel"])
def test_scram_sha_256_plus_binds_to_the_tls_channel(node, ca_file, binding_matches):
    node.admin("user.add", jid=f"plus{int(binding_matches)}@localhost", password=PASSWORD)

    async def scenario():
        tls, talk, features = await starttls(node.c2s_port, ca_file)
        assert b"<mechanism>SCRAM-SHA-256-PLUS</mechanism>" in features
        server_cert = tls.getpeercert(binary_form=True)
        binding = tls_server_end_point(server_cert) if binding_matches else b"\0" * 32
        outcome = await scram_plus(tls, talk, f"plus{int(binding_matches)}", PASSWORD, binding)
        if binding_matches:
            assert b"<success" in outcome, outcome
        else:
            assert b"<not-authorized/>" in outcome, outcome
        await tls.aclose()

    trio.run(scenario)
