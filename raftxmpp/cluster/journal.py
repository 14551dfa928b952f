"""The Raft journal, its .meta and the snapshot written so that a power loss keeps them.

pysyncobj 0.3.17 never syncs anything: its journal is an mmap nobody msyncs, and its
`.meta` (term, vote) and dump are replaced by a rename without fsync. An acknowledged
write then lives in the page cache of a majority, and a cluster-wide power loss loses
it; a lost vote lets a node vote twice in one term; a dump torn after the journal was
compacted starts a node empty. This module is the storage pysyncobj is given instead:

- `DurableJournal` writes records with `pwrite` and syncs them with *one* fdatasync per
  Raft tick (`sync()`), called by `replication.DurableSyncObj` before a follower answers
  an append and before the leader counts itself toward a commit. Every record carries
  a CRC, so a record torn by a power loss ends the journal there instead of being read
  as an entry (only entries nobody acknowledged can be torn: the ack waits for sync).
- `.meta` is replaced with write + fsync + rename + directory fsync on every term or
  vote change, before the vote or the message that reflects it is sent.
- `durable_replace` is what pysyncobj's serializer renames the dump with: the dump is
  fsynced before its rename and the directory after it, so the journal is compacted
  only once the snapshot that replaces its entries is on disk.
- `check_data_dir` refuses to start on a torn dump (pysyncobj would log it and start
  with empty state) or on a compacted journal whose dump is missing.

Files are created 0600: the journal and the dump hold user data.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pysyncobj.journal as pysyncobj_journal
import pysyncobj.serializer as pysyncobj_serializer
import pysyncobj.syncobj as pysyncobj_syncobj
from pysyncobj.pickle import dumps, loads, to_bytes

from raftxmpp import metrics

log = logging.getLogger("raftxmpp.raft")

# pysyncobj's header: APP_NAME (24) + APP_VERSION (8) + FORMAT_VERSION (4) + END (4).
NAME_SIZE, VERSION_SIZE = 24, 8
FORMAT_OFFSET = NAME_SIZE + VERSION_SIZE
END_OFFSET = FORMAT_OFFSET + 4
FIRST_RECORD = END_OFFSET + 4
# Format 1 is pysyncobj's (len, idx+term+command, len); format 2 adds a CRC32 after the
# leading length. A format-1 journal is rewritten as format 2 when it is opened.
PYSYNCOBJ_FORMAT, FORMAT = 1, 2
APP_NAME = b"RAFTXMPP"
MAX_RECORD = 1 << 30
EXIT_STORAGE_FAILED = 74  # EX_IOERR
_exit = os._exit  # tests replace it


class DataDirError(Exception):
    """The Raft data on disk is damaged in a way that starting would hide or worsen."""


class DurablePath(str):
    """A journal path that asks for DurableJournal instead of pysyncobj's FileJournal."""


def timed_sync(sync: Callable[[int], None], fd: int) -> None:
    """os.fsync or os.fdatasync, its duration in raftxmpp_raft_fsync_seconds (an operator's
    first look when commits slow down: is it the disk?)."""
    started = time.perf_counter()
    sync(fd)
    metrics.observe_fsync(time.perf_counter() - started)


def fsync_dir(path: Path) -> None:
    """A created or renamed file's directory entry is only durable once its dir is synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        timed_sync(os.fsync, fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        timed_sync(os.fsync, fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def durable_replace(tmp: str, final: str) -> None:
    """pysyncobj's atomicReplace, made durable: data before the rename, dir after it."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        timed_sync(os.fsync, fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def _header(fmt: int = FORMAT) -> bytes:
    name = APP_NAME.ljust(NAME_SIZE, b"\0")
    version = b"1".ljust(VERSION_SIZE, b"\0")
    return name + version + struct.pack("<II", fmt, FIRST_RECORD)


def _record(command: bytes, idx: int, term: int) -> bytes:
    payload = struct.pack("<QQ", idx, term) + command
    size = len(payload)
    return struct.pack("<II", size, zlib.crc32(payload)) + payload + struct.pack("<I", size)


def _read_records(data: bytes, fmt: int, end: int) -> tuple[list[tuple[bytes, int, int]], list[int], int]:
    """Entries, their record offsets, and where the valid records end (a torn tail stops it)."""
    entries: list[tuple[bytes, int, int]] = []
    offsets: list[int] = []
    offset = FIRST_RECORD
    lead = 8 if fmt == FORMAT else 4
    end = min(end, len(data))
    while offset + lead <= end:
        (size,) = struct.unpack_from("<I", data, offset)
        stop = offset + lead + size + 4
        if size < 16 or size > MAX_RECORD or stop > end:
            break
        payload = data[offset + lead:offset + lead + size]
        if struct.unpack_from("<I", data, stop - 4)[0] != size:
            break
        if fmt == FORMAT and struct.unpack_from("<I", data, offset + 4)[0] != zlib.crc32(payload):
            break
        idx, term = struct.unpack_from("<QQ", payload)
        if entries and (idx != entries[-1][1] + 1 or term < entries[-1][2]):
            break
        entries.append((payload[16:], idx, term))
        offsets.append(offset)
        offset = stop
    return entries, offsets, offset


class DurableJournal(pysyncobj_journal.Journal):
    """pysyncobj's Journal interface over a file synced once per tick; see the module doc."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta")
        self.syncs = 0  # fdatasyncs done; tests and metrics read it
        self.dirty = False
        self._meta = self._load_meta()
        self._meta_saved = True
        self._fd = -1
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        self._open()

    # -- opening -----------------------------------------------------------------------

    def _open(self) -> None:
        data = self.path.read_bytes() if self.path.exists() else b""
        if not data:  # new, or created and never flushed before a power loss
            self._rewrite([])
        else:
            fmt = struct.unpack_from("<I", data, FORMAT_OFFSET)[0] if len(data) >= FIRST_RECORD else -1
            if fmt not in (PYSYNCOBJ_FORMAT, FORMAT):
                raise DataDirError(f"{self.path}: not a Raft journal (format {fmt})")
            (end,) = struct.unpack_from("<I", data, END_OFFSET)
            entries, offsets, valid_end = _read_records(data, fmt, end)
            if valid_end != end:
                log.warning("%s: records end at byte %d, the header says %d: the tail was "
                            "never synced (a power loss); %d entries kept",
                            self.path, valid_end, end, len(entries))
            if fmt != FORMAT:
                self._rewrite(entries)
                return
            self._entries, self._offsets, self._end = entries, offsets, valid_end
            if not self._meta and any(term for _, _, term in entries[-1:]):
                # Only a copy made without the .meta, or a version before 0.3.16, gets here.
                log.warning("%s is missing: this node's Raft vote is unknown and its term "
                            "is taken from the log", self.meta_path)
        os.chmod(self.path, 0o600)
        self._fd = os.open(self.path, os.O_RDWR)

    def _rewrite(self, entries: list[tuple[bytes, int, int]]) -> None:
        """Writes a new journal beside the old one, syncs it, then renames it over."""
        body = bytearray(_header())
        offsets = []
        for command, idx, term in entries:
            offsets.append(len(body))
            body += _record(to_bytes(command), idx, term)
        struct.pack_into("<I", body, END_OFFSET, len(body))
        durable_write(self.path, bytes(body))  # on failure the old file and fd stay valid
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._entries, self._offsets, self._end = list(entries), offsets, len(body)
        self.dirty = False

    # -- entries -----------------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        record = _record(to_bytes(command), idx, term)
        os.pwrite(self._fd, record, self._end)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._set_end(self._end + len(record))

    def _set_end(self, end: int) -> None:
        os.pwrite(self._fd, struct.pack("<I", end), END_OFFSET)
        self._end = end
        self.dirty = True

    def clear(self) -> None:
        self._entries, self._offsets = [], []
        self._set_end(FIRST_RECORD)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        if entryFrom >= len(self._entries):
            return
        end = self._offsets[entryFrom]
        del self._entries[entryFrom:], self._offsets[entryFrom:]
        self._set_end(end)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        # Log compaction: pysyncobj calls it once the dump (synced by durable_replace)
        # holds everything before entryTo. The rename makes the cut atomic.
        self._rewrite(self._entries[entryTo:])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def sync(self) -> bool:
        """Makes every entry added so far durable: one fdatasync however many there are."""
        if not self.dirty:
            return False
        try:
            timed_sync(os.fdatasync, self._fd)
        except OSError as exc:
            # After a failed fdatasync Linux may have dropped the dirty pages and marked
            # them clean: a retry would "succeed" without them (PostgreSQL's fsyncgate).
            # Nothing written since the last good sync may be acknowledged, ever: stop
            # the process (a service manager restarts it; the restart reads what is
            # really on disk and the leader sends the rest again).
            log.critical("fdatasync of %s failed (%s): exiting rather than acknowledging "
                         "entries that may not be on disk", self.path, exc)
            _exit(EXIT_STORAGE_FAILED)
        self.dirty = False
        self.syncs += 1
        return True

    def _destroy(self) -> None:
        if self._fd >= 0:
            self.sync()
            self.onOneSecondTimer()
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        self.sync()

    # -- meta: commit index, term and vote ---------------------------------------------

    def _load_meta(self) -> dict:
        try:
            raw = self.meta_path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            meta = loads(raw)
        except Exception as exc:
            # Starting without the vote could let this node vote twice in one term.
            raise DataDirError(f"{self.meta_path} is unreadable ({exc.__class__.__name__}); "
                               "the node's Raft vote is lost: restore it, or clear the data "
                               "dir so the node rejoins as an empty follower") from None
        if not isinstance(meta, dict):
            raise DataDirError(f"{self.meta_path} does not hold Raft metadata")
        return meta

    def _store_meta(self) -> None:
        self.sync()  # a commit index on disk never covers entries that are not
        durable_write(self.meta_path, dumps(self._meta))
        self._meta_saved = True

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        if self._meta.get("raftCommitIndex") != raftCommitIndex:
            self._meta["raftCommitIndex"] = raftCommitIndex
            self._meta_saved = False

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._meta.get("raftCommitIndex", 1)

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        # Raft: term and vote are on disk before any message that reflects them is sent.
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._meta.get("currentTerm", 0)

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if not self._meta_saved:
            self._store_meta()


def check_data_dir(journal: Path, dump: Path) -> None:
    """Refuses a data dir whose snapshot is torn, or missing under a compacted journal."""
    if dump.exists():
        try:
            with gzip.open(dump, "rb") as stream:
                while stream.read(1 << 20):  # reading to the end checks the gzip CRC
                    pass
        except (OSError, EOFError, zlib.error) as exc:
            raise DataDirError(
                f"{dump} is torn or damaged ({exc}); starting would lose the state it "
                "holds. Restore it from a backup, or clear the data dir so the node "
                "rejoins as an empty follower and receives the leader's snapshot") from None
        return
    first = _first_index(journal)
    if first is not None and first > 1:
        raise DataDirError(
            f"{journal} was compacted at entry {first} but {dump} is missing: the state "
            "before that entry is gone. Restore the dump, or clear the data dir so the "
            "node rejoins as an empty follower")


def _first_index(journal: Path) -> int | None:
    try:
        with open(journal, "rb") as f:
            head = f.read(FIRST_RECORD + 32)
    except FileNotFoundError:
        return None
    if len(head) < FIRST_RECORD + 24:
        return None
    fmt, end = struct.unpack_from("<II", head, FORMAT_OFFSET)
    if end <= FIRST_RECORD:
        return None
    lead = 8 if fmt == FORMAT else 4
    return struct.unpack_from("<Q", head, FIRST_RECORD + lead)[0]


_create_pysyncobj_journal = pysyncobj_syncobj.createJournal


def _create_journal(journal_file: str | None = None) -> pysyncobj_journal.Journal:
    if isinstance(journal_file, DurablePath):
        return DurableJournal(journal_file)
    return _create_pysyncobj_journal(journal_file)


def install() -> None:
    """Points pysyncobj at this module's storage (idempotent).

    Journals are chosen by path type, so a plain path still gets pysyncobj's own journal
    (bench/raft_raw.py measures it). Dumps are renamed durably for every SyncObj: the
    serializer runs in a forked child, so only a module-level hook reaches it.
    """
    pysyncobj_syncobj.createJournal = _create_journal
    pysyncobj_serializer.atomicReplace = durable_replace
