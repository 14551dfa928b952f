"""Node links: authenticated handshake, AES-GCM records, and refusals, over real TCP."""

from __future__ import annotations

import pytest
import trio

from raftxmpp.cluster.links import STANZA, LinkError, Links, Opener, Sealer, session_key
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
