"""Node links: authenticated TCP connections that carry stanzas and gossip between nodes.

Each node dials every other member (its outgoing link carries its traffic to that
peer) and accepts the peers' links (their traffic to it). A link is usable only after
both sides proved the cluster secret with an HMAC challenge-response over fresh
nonces, so nobody without the secret can inject a stanza or a gossip entry; before
that, frames are capped at HANDSHAKE_MAX bytes, the exchange at a few seconds, and
the handshakes in progress at MAX_PENDING_HANDSHAKES.

The handshake (version 2), connector C and acceptor A:

    C → A  hello      {v, node, nonce_c, raft, encrypt}
    A → C  challenge  {v, nonce_a}                         nothing that depends on the secret
    C → A  proof      {proof: HMAC(secret, connector|nonce_c|nonce_a|node)}
    A → C  welcome    {node, proof: HMAC(secret, acceptor|…), member, encrypt}   only if C proved

The connecting side proves first, over the acceptor's fresh nonce (no replay), and the
acceptor answers nobody's challenge before they proved: a stranger who can reach the
link port gets no HMAC of the secret to guess it offline from (version 1 had the
acceptor prove first, to anyone). Only a peer that a node dials (a member's address)
sees a connector's proof. Records are then AES-GCM under a key derived from the
secret and both nonces, numbered so a replayed or reordered one ends the link.

Frames: 4-byte big-endian length, 1-byte kind, payload. Kinds:
  S  a stanza for a full JID on the receiving node: hops(1) target NUL bytes
  G  a gossip message (JSON)
  J  a join request from a node that is not a member yet (JSON), answered with J
  T  a stanza in custody: token(8, big-endian) hops(1) target NUL bytes

Queues are bounded per peer (MAX_QUEUE_BYTES): while a peer is slow or unreachable,
stanzas beyond that are dropped and counted, never buffered without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from raftxmpp.config import Address

log = logging.getLogger("raftxmpp.links")

HANDSHAKE_MAX = 4096
FRAME_MAX = 4 * 1024 * 1024
MAX_QUEUE_BYTES = 8 * 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0
JOIN_TIMEOUT = 60.0  # a join request, answered after a Raft membership change
READ_SIZE = 65536
HANDSHAKE_VERSION = 2
# Incoming connections not yet authenticated, per link listener: a cluster has a few
# members, each dialing once; the excess is closed at once (each holds a task and up
# to HANDSHAKE_MAX bytes until its HANDSHAKE_TIMEOUT).
MAX_PENDING_HANDSHAKES = 64

STANZA, GOSSIP, JOIN = b"S", b"G", b"J"
# A stanza in custody (XEP-0198 acks that mean "safe"): token(8) then a stanza payload;
# the receiving node reports the token settled in a gossip message.
CUSTODY = b"T"


FrameHandler = Callable[[str, bytes, bytes], Awaitable[None]]
JoinHandler = Callable[[dict], Awaitable[dict]]


class LinkError(Exception):
    pass


# What a broken, slow or hostile peer can raise; each ends that one link, nothing more.
_LINK_ERRORS = (LinkError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, ValueError, KeyError, TypeError)


def frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload) + 1) + kind + payload


class FrameReader:
    """Sans-IO: bytes in, (kind, payload) frames out, with a size cap."""

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.pending: list[tuple[bytes, bytes]] = []  # read during the handshake, not yet used

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        frames, self.pending = self.pending, []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack_from(">I", self.buffer)
            if size < 1 or size > self.limit:
                raise LinkError(f"frame of {size} bytes")
            if len(self.buffer) < 4 + size:
                break
            body = bytes(self.buffer[4:4 + size])
            del self.buffer[:4 + size]
            frames.append((body[:1], body[1:]))
        return frames


RECORD_MAX = 16 * 1024 * 1024


def session_key(secret: str, connector_nonce: str, acceptor_nonce: str) -> bytes:
    """A fresh AES-256 key per link connection, from the secret and both nonces."""
    return HKDF(algorithm=hashes.SHA256(), length=32,
                salt=(connector_nonce + acceptor_nonce).encode(),
                info=b"raftxmpp node link").derive(secret.encode())


class Sealer:
    """Connector side: bytes → AES-GCM records (4-byte length, 12-byte counter nonce, data)."""

    def __init__(self, key: bytes) -> None:
        self.aead, self.counter = AESGCM(key), 0

    def seal(self, data: bytes) -> bytes:
        self.counter += 1
        nonce = self.counter.to_bytes(12, "big")  # unique per key: one key per connection
        sealed = self.aead.encrypt(nonce, data, None)
        return struct.pack(">I", len(sealed) + 12) + nonce + sealed


class Opener:
    """Acceptor side: records in, plaintext out; a forged or replayed record ends the link."""

    def __init__(self, key: bytes) -> None:
        self.aead, self.counter, self.buffer = AESGCM(key), 0, bytearray()

    def open(self, data: bytes) -> bytes:
        self.buffer += data
        plain = []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack_from(">I", self.buffer)
            if not 12 < size <= RECORD_MAX:
                raise LinkError(f"record of {size} bytes")
            if len(self.buffer) < 4 + size:
                break
            nonce, sealed = bytes(self.buffer[4:16]), bytes(self.buffer[16:4 + size])
            del self.buffer[:4 + size]
            self.counter += 1
            if int.from_bytes(nonce, "big") != self.counter:
                raise LinkError("record out of order")
            try:
                plain.append(self.aead.decrypt(nonce, sealed, None))
            except InvalidTag:
                raise LinkError("record failed authentication") from None
        return b"".join(plain)


def _proof(secret: str, role: str, nonce_a: str, nonce_b: str, name: str) -> str:
    message = f"{role}|{nonce_a}|{nonce_b}|{name}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class Peer:
    name: str
    address: Address
    queue: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)
    connected: bool = False
    dropped: int = 0
    cancel: trio.CancelScope | None = None


class ProofRefused(LinkError):
    """The peer hung up right after our proof: most likely our secret is not its."""


class SecretMismatch(LinkError):
    """A member refused our join at the proof: our cluster secret is not its."""


class NotMember(LinkError):
    """The peer refused our link: we are not (any more) a member of its cluster."""


class Links:
    queue_limit = MAX_QUEUE_BYTES  # read by the metrics

    def __init__(self, name: str, secret: str, listen: Address, on_frame: FrameHandler,
                 on_join: JoinHandler | None = None, raft: str = "",
                 is_member: Callable[[str], bool] | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 encrypt: bool = True) -> None:
        self.name = name
        self.secret = secret
        self.listen = listen
        self.on_frame = on_frame
        self.on_join = on_join
        self.raft = raft  # our Raft address, by which peers check our membership
        self.is_member = is_member or (lambda raft: True)
        self.on_refused = on_refused or (lambda peer: None)
        self.encrypt = encrypt  # AES-GCM records after the handshake ([cluster] encrypt_links)
        self.peers: dict[str, Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._handshaking = 0  # incoming connections not yet authenticated
        self.wrong_secret_hint = ""  # what the operator should do, appended to that warning
        self._refused_pending = 0

    # -- sending ---------------------------------------------------------------------------------------

    def send(self, peer_name: str, kind: bytes, payload: bytes) -> bool:
        peer = self.peers.get(peer_name)
        if peer is None:
            return False
        data = frame(kind, payload)
        if peer.queued_bytes + len(data) > MAX_QUEUE_BYTES:
            peer.dropped += 1
            if peer.dropped in (1, 10, 100) or peer.dropped % 1000 == 0:
                log.warning("link to %s is full; dropped %d frames", peer_name, peer.dropped)
            return False
        peer.queue.append(data)
        peer.queued_bytes += len(data)
        peer.wakeup.set()
        return True

    def broadcast(self, kind: bytes, payload: bytes) -> None:
        for name in self.peers:
            self.send(name, kind, payload)

    def send_stanza(self, peer_name: str, target: str, data: bytes, hops: int = 0) -> bool:
        return self.send(peer_name, STANZA, bytes([hops]) + target.encode() + b"\0" + data)

    def send_custody(self, peer_name: str, token: int, target: str, data: bytes,
                     hops: int = 0) -> bool:
        return self.send(peer_name, CUSTODY, struct.pack(">Q", token) + bytes([hops])
                         + target.encode() + b"\0" + data)

    def drop_custody(self, peer_name: str) -> int:
        """Removes the custody stanzas still queued for `peer_name` (declared dead: the
        sending side routes its own copies again); returns how many."""
        peer = self.peers.get(peer_name)
        if peer is None:
            return 0
        kept = [data for data in peer.queue if data[4:5] != CUSTODY]
        dropped = len(peer.queue) - len(kept)
        if dropped:
            peer.queue = kept
            peer.queued_bytes = sum(map(len, kept))
        return dropped

    def take_stanzas(self, peer_name: str, wanted: Callable[[bytes], bool]) -> list[bytes]:
        """Removes the stanza frames still queued for `peer_name` whose payload `wanted`
        accepts and returns their payloads, in order (for a peer that died: they would
        otherwise wait for its next incarnation, which does not know their sessions)."""
        peer = self.peers.get(peer_name)
        if peer is None:
            return []
        kept, taken = [], []
        for data in peer.queue:
            if data[4:5] == STANZA and wanted(data[5:]):
                taken.append(data[5:])
            else:
                kept.append(data)
        if taken:
            peer.queue = kept
            peer.queued_bytes = sum(map(len, kept))
        return taken

    def connected(self, peer_name: str) -> bool:
        peer = self.peers.get(peer_name)
        return peer is not None and peer.connected

    def queue_depths(self) -> dict[str, int]:
        return {name: peer.queued_bytes for name, peer in self.peers.items()}

    # -- membership of the link mesh ---------------------------------------------------------------------

    def set_peers(self, members: dict[str, Address]) -> None:
        """Dials new members, hangs up on removed ones; called as the member table changes."""
        wanted = {n: a for n, a in members.items() if n != self.name}
        for name in list(self.peers):
            if name not in wanted or self.peers[name].address != wanted[name]:
                peer = self.peers.pop(name)
                if peer.cancel is not None:
                    peer.cancel.cancel()
        for name, address in wanted.items():
            if name not in self.peers and self._nursery is not None:
                peer = Peer(name, address)
                self.peers[name] = peer
                self._nursery.start_soon(self._dial_loop, peer)

    # -- running ---------------------------------------------------------------------------------------------

    async def serve(self, listener: trio.SocketListener, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.serve_listeners(self._accept, [listener])

    async def _dial_loop(self, peer: Peer) -> None:
        with trio.CancelScope() as scope:
            peer.cancel = scope
            delay = 0.1
            while True:
                try:
                    stream = await trio.open_tcp_stream(peer.address.host, peer.address.port)
                except OSError:
                    await trio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                try:
                    async with stream:
                        _, key = await self._handshake_out(stream, peer.name)
                        delay = 0.1
                        peer.connected = True
                        log.info("link to %s up", peer.name)
                        await self._write_loop(stream, peer, Sealer(key) if self.encrypt else None)
                except* NotMember:
                    self.on_refused(peer.name)
                except* _LINK_ERRORS as group:
                    if peer.connected:
                        log.info("link to %s down: %r", peer.name, group.exceptions[0])
                finally:
                    peer.connected = False
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _write_loop(self, stream: trio.SocketStream, peer: Peer,
                          sealer: Sealer | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_close, stream)
            while True:
                if not peer.queue:
                    await peer.wakeup.wait()
                    peer.wakeup = trio.Event()
                    continue
                data = b"".join(peer.queue)
                peer.queue.clear()
                peer.queued_bytes = 0
                await stream.send_all(sealer.seal(data) if sealer is not None else data)

    @staticmethod
    async def _watch_close(stream: trio.SocketStream) -> None:
        """The peer never writes on our outgoing link; EOF means it is gone."""
        while await stream.receive_some(READ_SIZE):
            pass
        raise LinkError("closed by peer")

    async def _accept(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._handshaking >= MAX_PENDING_HANDSHAKES:
                self._refused_pending += 1
                if self._refused_pending in (1, 100) or self._refused_pending % 10000 == 0:
                    log.warning("link port %s: %d handshakes in progress, the cap; closed %d "
                                "connections at once", self.listen, MAX_PENDING_HANDSHAKES,
                                self._refused_pending)
                return
            try:
                self._handshaking += 1
                try:
                    peer_name, reader, key = await self._handshake_in(stream)
                finally:
                    self._handshaking -= 1
                if peer_name is None:
                    return
                await self._read_loop(stream, peer_name, reader,
                                      Opener(key) if self.encrypt else None)
            except* _LINK_ERRORS as group:
                log.debug("incoming link closed: %r", group.exceptions[0])

    async def _read_loop(self, stream: trio.SocketStream, peer_name: str, reader: FrameReader,
                         opener: Opener | None) -> None:
        reader.limit = FRAME_MAX
        data = b""
        while True:
            for kind, payload in reader.feed(data):
                await self.on_frame(peer_name, kind, payload)
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            if opener is not None:
                data = opener.open(data)

    # -- handshake ------------------------------------------------------------------------------------------

    async def _handshake_out(self, stream: trio.SocketStream,
                             expected: str | None) -> tuple[str, bytes]:
        reader = FrameReader(HANDSHAKE_MAX)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            nonce = secrets.token_hex(16)
            await stream.send_all(frame(b"H", json.dumps(
                {"v": HANDSHAKE_VERSION, "node": self.name, "nonce": nonce, "raft": self.raft,
                 "encrypt": self.encrypt}).encode()))
            challenge = await _read_json(stream, reader)
            if "proof" in challenge or challenge.get("v") != HANDSHAKE_VERSION:
                raise LinkError("the peer runs a raftxmpp with another link handshake: "
                                "upgrade every node")
            their_nonce = _nonce(challenge)
            proof = _proof(self.secret, "connector", nonce, their_nonce, self.name)
            await stream.send_all(frame(b"H", json.dumps({"proof": proof}).encode()))
            try:
                welcome = await _read_json(stream, reader)
            except LinkError as exc:  # an acceptor hangs up on a wrong proof, silently
                raise ProofRefused(str(exc)) from None
            their_name = str(welcome["node"])
            if not hmac.compare_digest(str(welcome.get("proof", "")),
                                       _proof(self.secret, "acceptor", nonce, their_nonce, their_name)):
                raise LinkError("peer failed to prove the cluster secret")
            if expected is not None and their_name != expected:
                raise LinkError(f"expected {expected}, reached {their_name}")
            if expected is not None and welcome.get("member") is False:
                raise NotMember(f"{their_name} says we are not a member")
            _check_same_encryption(welcome, self.encrypt, their_name)
        return their_name, session_key(self.secret, nonce, their_nonce)

    async def _handshake_in(self, stream: trio.SocketStream
                            ) -> tuple[str | None, FrameReader, bytes]:
        reader = FrameReader(HANDSHAKE_MAX)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            hello = await _read_json(stream, reader)
            their_name, their_nonce = str(hello["node"]), _nonce(hello)
            if hello.get("v") != HANDSHAKE_VERSION:
                log.warning("refused a link from %s: it runs a raftxmpp with another link "
                            "handshake; upgrade every node", their_name)
                raise LinkError("another handshake version")
            nonce = secrets.token_hex(16)
            # The challenge says nothing that depends on the secret, not even our name.
            await stream.send_all(frame(b"H", json.dumps(
                {"v": HANDSHAKE_VERSION, "nonce": nonce}).encode()))
            answer = await _read_json(stream, reader)
            expected = _proof(self.secret, "connector", their_nonce, nonce, their_name)
            if not hmac.compare_digest(str(answer.get("proof", "")), expected):
                log.warning("refused a link claiming to be %s: wrong cluster secret%s",
                            their_name, self.wrong_secret_hint)
                raise LinkError("wrong cluster secret")
            joining = their_name.startswith("join:")
            member = joining or self.is_member(str(hello.get("raft", "")))
            proof = _proof(self.secret, "acceptor", their_nonce, nonce, self.name)
            await stream.send_all(frame(b"H", json.dumps(
                {"node": self.name, "proof": proof, "member": member,
                 "encrypt": self.encrypt}).encode()))
            key = session_key(self.secret, their_nonce, nonce)
            if not joining:
                _check_same_encryption(hello, self.encrypt, their_name)
        if joining:
            # Outside the handshake's deadline: admitting a node is a Raft membership
            # change, which can take longer than HANDSHAKE_TIMEOUT (it has its own).
            await self._answer_join(stream, reader, their_name.removeprefix("join:"))
            return None, reader, key
        if not member:
            return None, reader, key
        return their_name, reader, key

    # -- joining ------------------------------------------------------------------------------------------

    async def _answer_join(self, stream: trio.SocketStream, reader: FrameReader,
                           their_name: str) -> None:
        try:
            with trio.fail_after(JOIN_TIMEOUT):
                request = await _read_json(stream, reader, kind=JOIN)
                reply = (await self.on_join(request) if self.on_join
                         else {"error": "joining not served"})
                await stream.send_all(frame(JOIN, json.dumps(reply).encode()))
        except _LINK_ERRORS as exc:  # the joiner is told nothing: say it here
            log.warning("join request from %s failed: %r", their_name, exc)
            raise
        if "error" in reply:
            log.warning("refused the join of %s: %s", their_name, reply["error"])

    async def request_join(self, member: Address, request: dict, timeout: float = 60) -> dict:
        """Asks a member to add us to the cluster; returns its answer (the member list)."""
        stream = await trio.open_tcp_stream(member.host, member.port)
        async with stream:
            with trio.fail_after(timeout):
                self_name = self.name
                self.name = f"join:{self_name}"
                try:
                    await self._handshake_out(stream, None)
                except ProofRefused:
                    raise SecretMismatch(
                        "the member closed the connection after our proof of the cluster "
                        "secret: this node's [cluster] secret is not the cluster's") from None
                finally:
                    self.name = self_name
                await stream.send_all(frame(JOIN, json.dumps(request).encode()))
                return await _read_json(stream, FrameReader(FRAME_MAX), kind=JOIN)


def _nonce(message: dict) -> str:
    """A peer's nonce: 32 hex digits, as ours (a short or empty one would weaken both
    the freshness of the proofs and the per-connection key)."""
    nonce = str(message["nonce"])
    if len(nonce) != 32 or not all(c in "0123456789abcdef" for c in nonce):
        raise LinkError("malformed handshake nonce")
    return nonce


def _check_same_encryption(hello: dict, ours: bool, peer: str) -> None:
    if bool(hello.get("encrypt")) != ours:
        log.error("link with %s refused: [cluster] encrypt_links differs between the nodes", peer)
        raise LinkError("encrypt_links differs")


async def _read_json(stream: trio.SocketStream, reader: FrameReader, kind: bytes = b"H") -> dict:
    """One handshake frame; frames that came with it wait in reader.pending."""
    while True:
        frames = reader.feed(b"" if reader.pending else await _receive(stream))
        if frames:
            (got_kind, payload), reader.pending = frames[0], frames[1:]
            if got_kind != kind:
                raise LinkError(f"unexpected frame {got_kind!r}")
            message = json.loads(payload)
            if not isinstance(message, dict):
                raise LinkError("malformed handshake")
            return message


async def _receive(stream: trio.SocketStream) -> bytes:
    data = await stream.receive_some(READ_SIZE)
    if not data:
        raise LinkError("closed during handshake")
    return data
