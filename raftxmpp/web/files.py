"""Uploaded file bytes on this node's disk, and their copies on the other nodes.

Files live under `data_dir/uploads/files/<first two hex digits>/<slot id>`: the path is
built from the slot id alone (32 hex digits, checked before any path is made), never
from a name a client chose, so no URL can reach outside the directory. A file is
written to `uploads/tmp/` first, fsynced, and renamed into place (the directories that
name it synced too, so a power loss keeps it) only once whole and
(for a copy from a peer) once its SHA-256 matched.

Copies move over the authenticated node links (raftxmpp.cluster.rpc), in chunks of
FILE_CHUNK bytes, PUSH_WINDOW chunks in flight per peer (the link's bounded queue is shared
with stanzas, which must never be dropped for a file):
    upload.chunk   {slot, offset} + bytes   the receiver writes them into its temp file
    upload.commit  {slot, sha256, size}     the receiver checks, fsyncs and keeps it
    upload.read    {slot, offset}           → bytes of a kept file, for a node without it
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from raftxmpp.cluster.rpc import RpcError

log = logging.getLogger("raftxmpp.web.files")

FILE_CHUNK = 256 * 1024
PUSH_WINDOW = 4  # chunks in flight per peer: 1 MiB of the link's 8 MiB queue
READ_CHUNK = 256 * 1024
WRITE_BATCH = 1024 * 1024
SLOT = re.compile(r"[0-9a-f]{32}")
HASH = re.compile(r"[0-9a-f]{64}")
CALL_TIMEOUT = 30.0
ORPHAN_AGE = 3600.0  # seconds a file without a slot is kept before the sweep removes it

RpcCall = Callable[..., Awaitable[tuple[dict, bytes]]]


class FileError(Exception):
    """A file could not be stored, copied or found."""


class FileStore:
    def __init__(self, root: Path, call: RpcCall, max_size: int) -> None:
        self.root = root
        self.files = root / "files"
        self.tmp = root / "tmp"
        self.call = call
        self.max_size = max_size
        self._fetching: dict[str, trio.Lock] = {}
        for directory in (self.files, self.tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A new directory's name is durable only once the directory holding it is synced
        # (POSIX); without this a power loss took `files/` and every kept file with it.
        for directory in (root.parent, root):
            _fsync_directory(directory)
        for stale in self.tmp.iterdir():  # a crash mid-write leaves only temp files
            stale.unlink(missing_ok=True)

    def path(self, slot: str) -> Path:
        if not SLOT.fullmatch(slot):
            raise FileError("not a slot id")
        return self.files / slot[:2] / slot

    def has(self, slot: str) -> bool:
        return self.path(slot).is_file()

    def delete(self, slot: str) -> None:
        self.path(slot).unlink(missing_ok=True)

    def _temp(self, slot: str, tag: str) -> Path:
        return self.tmp / f"{slot}.{tag}"

    # -- receiving a PUT ------------------------------------------------------------------------------

    async def receive(self, slot: str, chunks: AsyncIterator[bytes], size: int) -> str:
        """Writes exactly `size` bytes from `chunks`; returns their SHA-256 (hex)."""
        temp = self._temp(slot, secrets.token_hex(4))
        digest, written = hashlib.sha256(), 0
        try:
            async with await trio.open_file(temp, "wb") as out:
                pending = bytearray()
                async for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise FileError(f"more than the {size} bytes of the slot")
                    digest.update(chunk)
                    pending += chunk
                    if len(pending) >= WRITE_BATCH:  # one thread hop per batch, not per read
                        await out.write(bytes(pending))
                        pending.clear()
                await out.write(bytes(pending))
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            if written != size:
                raise FileError(f"{written} bytes sent, the slot is for {size}")
            await self._keep(temp, slot)
        finally:
            temp.unlink(missing_ok=True)
        return digest.hexdigest()

    async def _keep(self, temp: Path, slot: str) -> None:
        final = self.path(slot)
        final.parent.mkdir(exist_ok=True, mode=0o700)
        os.replace(temp, final)
        await trio.to_thread.run_sync(_fsync_directory, final.parent)
        # The prefix directory may be new (made here or by a concurrent _keep that has not
        # synced it yet): its name in files/ must be durable before the file counts as kept.
        await trio.to_thread.run_sync(_fsync_directory, self.files)

    # -- copies on peers ------------------------------------------------------------------------------

    async def push(self, slot: str, sha256: str, size: int, peers: list[str]) -> list[str]:
        """Copies the file to `peers` at once; returns those that confirmed a verified copy."""
        confirmed: list[str] = []

        async def one(peer: str) -> None:
            try:
                await self._push_to(peer, slot, sha256, size)
                confirmed.append(peer)
            except (RpcError, FileError, OSError) as exc:
                log.warning("copy of upload %s to %s failed: %s", slot, peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        return confirmed

    async def _push_to(self, peer: str, slot: str, sha256: str, size: int) -> None:
        """Chunks to one peer, PUSH_WINDOW of them in flight (each at its own offset, so
        their order does not matter), then the commit that checks the hash."""
        window = trio.Semaphore(PUSH_WINDOW)
        failures: list[Exception] = []

        async def send(offset: int, chunk: bytes) -> None:
            try:
                await self.call(peer, "upload.chunk", {"slot": slot, "offset": offset}, chunk,
                                timeout=CALL_TIMEOUT)
            except RpcError as exc:
                failures.append(exc)
            finally:
                window.release()

        async with await trio.open_file(self.path(slot), "rb") as source, \
                trio.open_nursery() as nursery:
            offset = 0
            while offset < size and not failures:
                await window.acquire()
                chunk = await source.read(FILE_CHUNK)
                if not chunk:
                    window.release()
                    failures.append(FileError("the file is shorter than its slot"))
                    break
                nursery.start_soon(send, offset, chunk)
                offset += len(chunk)
        if failures:
            raise failures[0]
        await self.call(peer, "upload.commit", {"slot": slot, "sha256": sha256, "size": size},
                        timeout=CALL_TIMEOUT)

    async def fetch(self, slot: str, sha256: str, size: int, peers: list[str]) -> bool:
        """Brings a copy here from the first of `peers` that has it; False if none did."""
        lock = self._fetching.setdefault(slot, trio.Lock())
        try:
            async with lock:
                if self.has(slot):
                    return True
                for peer in peers:
                    try:
                        await self._fetch_from(peer, slot, sha256, size)
                        return True
                    except (RpcError, FileError, OSError) as exc:
                        log.info("fetching upload %s from %s failed: %s", slot, peer, exc)
                return False
        finally:
            if not lock.statistics().tasks_waiting:
                self._fetching.pop(slot, None)

    async def _fetch_from(self, peer: str, slot: str, sha256: str, size: int) -> None:
        temp = self._temp(slot, "fetch")
        digest, offset = hashlib.sha256(), 0
        try:
            async with await trio.open_file(temp, "wb") as out:
                while offset < size:
                    _, chunk = await self.call(peer, "upload.read",
                                               {"slot": slot, "offset": offset},
                                               timeout=CALL_TIMEOUT)
                    if not chunk:
                        raise FileError(f"{peer} sent a short file")
                    digest.update(chunk)
                    await out.write(chunk)
                    offset += len(chunk)
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            if offset != size or digest.hexdigest() != sha256:
                raise FileError(f"the copy from {peer} does not match its hash")
            await self._keep(temp, slot)
        finally:
            temp.unlink(missing_ok=True)

    # -- what peers ask of us -------------------------------------------------------------------------

    async def on_chunk(self, peer: str, args: dict, data: bytes) -> tuple[dict, bytes]:
        slot, offset = str(args["slot"]), int(args["offset"])
        self.path(slot)  # validates the slot id
        if offset < 0 or offset + len(data) > self.max_size:
            raise RpcError("chunk outside the largest file allowed")
        temp = self._temp(slot, _peer_tag(peer))
        # Chunks arrive in any order (several in flight): write each at its offset,
        # never truncating; the commit cuts the file to its size before hashing it.
        await trio.to_thread.run_sync(_write_at, temp, offset, data)
        return {}, b""

    async def on_commit(self, peer: str, args: dict, data: bytes) -> tuple[dict, bytes]:
        slot, sha256, size = str(args["slot"]), str(args["sha256"]), int(args["size"])
        self.path(slot)
        if not HASH.fullmatch(sha256):
            raise RpcError("bad hash")
        temp = self._temp(slot, _peer_tag(peer))
        try:
            await trio.to_thread.run_sync(os.truncate, temp, size)  # stale bytes of a retry
            digest, length = await trio.to_thread.run_sync(_hash_file, temp)
            if length != size or digest != sha256:
                raise RpcError("the copy does not match its hash")
            await trio.to_thread.run_sync(_fsync_file, temp)
            await self._keep(temp, slot)
        except FileNotFoundError:
            raise RpcError("no chunks received") from None
        finally:
            temp.unlink(missing_ok=True)
        return {}, b""

    async def discard(self, slot: str, peers: list[str]) -> None:
        """Best effort: copies of a file that never reached a majority go again."""
        for peer in peers:
            try:
                await self.call(peer, "upload.discard", {"slot": slot}, timeout=5)
            except RpcError as exc:
                log.info("could not discard upload %s on %s: %s", slot, peer, exc)

    async def on_discard(self, peer: str, args: dict, data: bytes) -> tuple[dict, bytes]:
        self.delete(str(args["slot"]))
        return {}, b""

    async def sweep_orphans(self, metadata: Callable[[str], dict | None], now: float) -> int:
        """Deletes files no slot in the replicated state knows of any more: a deletion
        this node missed (restored from a snapshot taken after it), a discard that never
        arrived. Only files older than ORPHAN_AGE, so a PUT in progress (its file is on
        disk before its slot is marked stored) is never touched."""
        removed = 0
        for path in await trio.to_thread.run_sync(lambda: list(self.files.glob("*/*"))):
            if not SLOT.fullmatch(path.name) or metadata(path.name) is not None:
                continue
            try:
                if now - path.stat().st_mtime > ORPHAN_AGE:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("removed %d upload files no slot refers to", removed)
        return removed

    async def on_read(self, peer: str, args: dict, data: bytes) -> tuple[dict, bytes]:
        slot, offset = str(args["slot"]), int(args["offset"])
        try:
            async with await trio.open_file(self.path(slot), "rb") as source:
                await source.seek(max(0, offset))
                return {}, await source.read(FILE_CHUNK)
        except FileNotFoundError:
            raise RpcError("no such file here") from None


def _peer_tag(peer: str) -> str:
    return "from-" + hashlib.sha256(peer.encode()).hexdigest()[:12]


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> tuple[str, int]:
    digest, length = hashlib.sha256(), 0
    with open(path, "rb") as source:
        while chunk := source.read(READ_CHUNK * 4):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
