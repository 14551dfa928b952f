"""Node links: authenticated handshake (the connector proves first), AES-GCM records, and
refusals, over real TCP."""

from __future__ import annotations

import json
import secrets

import pytest
import trio

from raftxmpp.cluster import links as links_module
from raftxmpp.cluster.links import (
    HANDSHAKE_MAX,
    STANZA,
    FrameReader,
    LinkError,
    Links,
    Opener,
    Sealer,
    frame,
    session_key,
)
from raftxmpp.config import Address
from tests.harness import free_ports

SECRET = "link-test-secret-0123456789abcdef"


def test_a_sealed_record_opens_to_the_same_bytes_and_hides_them():
    key = session_key(SECRET, "a" * 32, "b" * 32)
    record = Sealer(key).seal(b"<message><body>private</body></message>")
    assert b"private" not in record
    assert Opener(key).open(record) == b"<message><body>private</body></message>"


def test_a_record_split_over_many_reads_opens_once_complete():
    key = session_key(SECRET, "a" * 32, "b" * 32)
    record = Sealer(key).seal(b"x" * 1000)
    opener = Opener(key)
    assert b"".join(opener.open(record[i:i + 7]) for i in range(0, len(record), 7)) == b"x" * 1000


def test_a_tampered_record_ends_the_link():
    key = session_key(SECRET, "a" * 32, "b" * 32)
    record = bytearray(Sealer(key).seal(b"hello"))
    record[-1] ^= 1
    with pytest.raises(LinkError):
        Opener(key).open(bytes(record))


def test_a_replayed_or_reordered_record_ends_the_link():
    key = session_key(SECRET, "a" * 32, "b" * 32)
    sealer = Sealer(key)
    first, second = sealer.seal(b"one"), sealer.seal(b"two")
    with pytest.raises(LinkError):
        Opener(key).open(second + first)


def test_keys_differ_per_connection():
    assert session_key(SECRET, "a" * 32, "b" * 32) != session_key(SECRET, "a" * 32, "c" * 32)


async def _pair(secret_b: str = SECRET, encrypt_b: bool = True):
    """Node a dials node b; returns (a, b, frames b received, b's listener address)."""
    port_a, port_b = free_ports(2)
    received: list[tuple[str, bytes, bytes]] = []

    async def on_frame(peer: str, kind: bytes, payload: bytes) -> None:
        received.append((peer, kind, payload))

    async def ignore(peer: str, kind: bytes, payload: bytes) -> None:
        pass

    a = Links("a", SECRET, Address("127.0.0.1", port_a), ignore)
    b = Links("b", secret_b, Address("127.0.0.1", port_b), on_frame, encrypt=encrypt_b)
    return a, b, received, port_a, port_b


async def _run(a: Links, b: Links, port_a: int, port_b: int, nursery: trio.Nursery) -> None:
    for links, port in ((a, port_a), (b, port_b)):
        listener = (await trio.open_tcp_listeners(port, host="127.0.0.1"))[0]
        await nursery.start(links.serve, listener)
    a.set_peers({"b": Address("127.0.0.1", port_b)})


async def test_a_stanza_crosses_an_encrypted_link(nursery):
    a, b, received, port_a, port_b = await _pair()
    await _run(a, b, port_a, port_b, nursery)
    assert a.send_stanza("b", "bob@localhost/phone", b"<message><body>hi</body></message>")
    with trio.fail_after(5):
        while not received:
            await trio.sleep(0.01)
    peer, kind, payload = received[0]
    assert (peer, kind) == ("a", STANZA)
    assert payload.endswith(b"bob@localhost/phone\0<message><body>hi</body></message>")


@pytest.mark.parametrize("secret_b, encrypt_b", [("another-secret-0123456789abcdef", True),
                                                 (SECRET, False)],
                         ids=["wrong-secret", "encryption-setting-differs"])
async def test_a_link_is_refused_without_the_same_secret_and_setting(nursery, secret_b, encrypt_b):
    a, b, received, port_a, port_b = await _pair(secret_b, encrypt_b)
    await _run(a, b, port_a, port_b, nursery)
    a.send_stanza("b", "bob@localhost/phone", b"<message/>")
    with trio.move_on_after(1.5):
        while not received:
            await trio.sleep(0.01)
    assert received == []
    assert not a.connected("b")


async def _raw_frames(stream: trio.SocketStream, count: int, timeout: float = 3) -> list[dict]:
    """Up to `count` handshake frames (fewer if the peer closes), decoded."""
    reader, frames = FrameReader(HANDSHAKE_MAX), []
    with trio.move_on_after(timeout):
        while len(frames) < count:
            data = await stream.receive_some(65536)
            if not data:
                break
            frames += [json.loads(payload) for _, payload in reader.feed(data)]
    return frames


def _hello(name: str = "a") -> bytes:
    return frame(b"H", json.dumps({"v": 2, "node": name, "nonce": secrets.token_hex(16),
                                   "raft": "", "encrypt": True}).encode())


async def test_the_acceptor_shows_a_stranger_nothing_that_depends_on_the_secret(nursery):
    """A stranger gets a nonce, and after a wrong proof nothing but a closed socket:
    no HMAC of the secret to guess a weak secret from offline."""
    a, b, received, port_a, port_b = await _pair()
    await _run(a, b, port_a, port_b, nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port_b)
    async with stream:
        await stream.send_all(_hello())
        (challenge,) = await _raw_frames(stream, 1)
        assert set(challenge) == {"v", "nonce"}
        await stream.send_all(frame(b"H", json.dumps({"proof": "0" * 64}).encode()))
        assert await _raw_frames(stream, 1) == []  # closed, no welcome, no proof
    assert received == []


async def test_a_recorded_proof_does_not_open_another_connection(nursery):
    """The connector proves over the acceptor's fresh nonce: replaying a proof it gave
    to one acceptor (a fake one here) opens nothing on a real one."""
    fake = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    recorded: list[tuple[bytes, bytes]] = []

    async def fake_acceptor(stream: trio.SocketStream) -> None:
        async with stream:
            hello = await stream.receive_some(65536)
            await stream.send_all(frame(b"H", json.dumps(
                {"v": 2, "nonce": secrets.token_hex(16)}).encode()))
            recorded.append((hello, await stream.receive_some(65536)))

    nursery.start_soon(trio.serve_listeners, fake_acceptor, [fake])
    a, b, received, port_a, port_b = await _pair()
    await _run(a, b, port_a, port_b, nursery)
    a.set_peers({"b": Address("127.0.0.1", fake.socket.getsockname()[1])})
    with trio.fail_after(5):
        while not recorded:
            await trio.sleep(0.01)
    hello, proof = recorded[0]
    stream = await trio.open_tcp_stream("127.0.0.1", port_b)
    async with stream:
        await stream.send_all(hello)
        await _raw_frames(stream, 1)
        await stream.send_all(proof)
        assert await _raw_frames(stream, 1) == []
    assert received == []


async def test_the_connector_refuses_an_acceptor_that_cannot_prove_the_secret(nursery):
    fake = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def impostor(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(frame(b"H", json.dumps(
                {"v": 2, "nonce": secrets.token_hex(16)}).encode()))
            await stream.receive_some(65536)
            await stream.send_all(frame(b"H", json.dumps(
                {"node": "b", "proof": "0" * 64, "member": True, "encrypt": True}).encode()))
            await stream.receive_some(65536)

    nursery.start_soon(trio.serve_listeners, impostor, [fake])
    a, *_ = await _pair()
    stream = await trio.open_tcp_stream("127.0.0.1", fake.socket.getsockname()[1])
    async with stream:
        with pytest.raises(LinkError, match="failed to prove the cluster secret"):
            await a._handshake_out(stream, "b")


async def test_a_first_version_handshake_is_refused_with_a_log_line(nursery, caplog):
    a, b, received, port_a, port_b = await _pair()
    await _run(a, b, port_a, port_b, nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port_b)
    async with stream:
        await stream.send_all(frame(b"H", json.dumps(
            {"node": "old", "nonce": secrets.token_hex(16), "raft": ""}).encode()))
        assert await _raw_frames(stream, 1) == []
    assert any("another link handshake" in r.message for r in caplog.records)


async def test_handshakes_in_progress_are_capped_and_the_excess_closed_at_once(nursery):
    a, b, received, port_a, port_b = await _pair()
    await _run(a, b, port_a, port_b, nursery)
    idle = [await trio.open_tcp_stream("127.0.0.1", port_b)
            for _ in range(links_module.MAX_PENDING_HANDSHAKES)]
    with trio.fail_after(5):
        while b._handshaking < links_module.MAX_PENDING_HANDSHAKES:
            await trio.sleep(0.01)
    excess = await trio.open_tcp_stream("127.0.0.1", port_b)
    with trio.fail_after(2):  # closed without waiting for its handshake timeout
        assert await excess.receive_some(100) == b""
    for stream in idle:
        await stream.aclose()
    a.send_stanza("b", "bob@localhost/phone", b"<message/>")
    with trio.fail_after(10):  # a member still gets in once the strangers are gone
        while not received:
            await trio.sleep(0.05)
