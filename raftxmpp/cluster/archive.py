"""The message archive (XEP-0313) on each node's disk: SQLite, written only by apply.

What grows without bound stays out of the pickled state (../shared/DESIGN.md, "Large
durable data"): archive rows reach the Raft log in batches (`archive_append`), and
every node's apply writes them here. The store and the log meet at three points, as
in rqlite:

- apply: every archive op runs in one SQLite transaction that also records the op's
  *position* (the state machine's count of applied commands, the same on every node).
  An op whose position the store already holds is skipped, so replaying the journal
  over a store that is ahead of the snapshot (a restart) changes nothing, and a crash
  between the store's commit and the snapshot never leaves the two out of step.
- snapshot: `ArchiveImage` pickles the database file as SQLite serialises it inside a
  read transaction. pysyncobj forks to write its dump, so this read runs in the child
  process while the Raft thread goes on (a no-fork serializer would read it inline).
- restore: an image newer than the local store replaces it (a wiped or new node, or
  one that lagged past the leader's log); an older image is ignored, the log replays.

Queries are served from a second connection (WAL: readers never wait for apply).
Nothing here reads a clock or makes an id: times and ids arrive in the commands.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS archive (
    seq INTEGER PRIMARY KEY,          -- archive order: commit order, the same on every node
    owner TEXT NOT NULL,              -- the account whose archive this is (bare JID)
    sid TEXT NOT NULL,                -- the stanza-id (XEP-0359) clients page by
    ts REAL NOT NULL,                 -- when the routing node archived it
    with_bare TEXT NOT NULL,          -- the other party, bare …
    with_full TEXT NOT NULL,          -- … and full
    outgoing INTEGER NOT NULL,        -- 1: the owner sent it
    stanza BLOB NOT NULL              -- the message as delivered
);
CREATE UNIQUE INDEX IF NOT EXISTS archive_owner_sid ON archive(owner, sid);
CREATE INDEX IF NOT EXISTS archive_owner_seq ON archive(owner, seq);
CREATE INDEX IF NOT EXISTS archive_owner_with ON archive(owner, with_bare, seq);
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""

_INSERT = ("INSERT OR IGNORE INTO archive(owner, sid, ts, with_bare, with_full, outgoing, stanza) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")

# One archived message, as an `archive_append` command carries it:
# (owner, stanza-id, ts, with full JID, outgoing, stanza bytes).
Row = tuple[str, str, float, str, bool, bytes]


class UnknownId(LookupError):
    """A query named an archive id the owner's archive does not hold (item-not-found)."""


@dataclass
class Query:
    """One XEP-0313 query against one owner's archive, after parsing."""

    owner: str
    with_jid: str | None = None  # bare: any resource; full: that resource only
    start: float | None = None
    end: float | None = None
    after_id: str | None = None  # form fields of mam:2#extended: exclusive bounds
    before_id: str | None = None
    ids: list[str] | None = None
    rsm_after: str | None = None  # XEP-0059 paging
    rsm_before: str | None = None  # "" = the last page
    rsm_index: int | None = None
    max: int = 50


@dataclass
class Archived:
    sid: str
    ts: float
    stanza: bytes
    outgoing: bool


@dataclass
class Page:
    rows: list[Archived] = field(default_factory=list)
    count: int = 0
    first_index: int | None = None
    complete: bool = True


def _connect(path: str, cache_kib: int = 2048) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        # The Raft journal replays what a power cut takes from the WAL; the applied
        # position rolls back with the rows, so the store stays in step either way.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")  # negative: KiB
    return conn


class ArchiveStore:
    """Archive rows of every account on this node; one writer (apply), many readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._write_lock = threading.Lock()
        # The writer's index pages of many accounts stay cached: inserts spread over
        # every owner. Queries read few pages: the reader keeps SQLite's default.
        self.db = _connect(self.path, cache_kib=32768)
        self.db.executescript(SCHEMA)
        # A second connection for queries from the trio thread (an in-memory database
        # cannot be shared, so tests read through the writer's connection).
        self.reader = self.db if self.path == ":memory:" else _connect(self.path)
        self._read_lock = threading.Lock()

    def close(self) -> None:
        for conn in {self.db, self.reader}:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- the applied position ---------------------------------------------------------------

    def position(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='position'").fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def _transaction_at(self, position: int):
        """Runs the body in one transaction that records `position`; yields False (and
        writes nothing) when the store holds that position already."""
        with self._write_lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.position() >= position:
                    yield False
                else:
                    yield True
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)",
                                    (position,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- writes (from apply only) ----------------------------------------------------------------

    def append(self, position: int, rows: list[Row], max_per_owner: int = 0) -> int:
        """Archives rows (a stanza-id already in the owner's archive is kept once); then
        drops each touched owner's oldest rows past `max_per_owner` (0: no limit)."""
        added = 0
        with self._transaction_at(position) as fresh:
            if not fresh:
                return 0
            touched = self._insert(rows)
            added = sum(touched.values())
            for owner, n in touched.items():
                self.db.execute("INSERT INTO owners VALUES (?, ?) ON CONFLICT(owner) "
                                "DO UPDATE SET n = n + excluded.n", (owner, n))
                if max_per_owner:
                    self._trim(owner, max_per_owner)
        return added

    def _insert(self, rows: list[Row]) -> dict[str, int]:
        """Inserts rows (a stanza-id the owner has already is skipped); returns how many
        each owner got. One executemany in the common case of no duplicate."""
        values = [(owner, sid, ts, with_full.partition("/")[0], with_full, int(outgoing), stanza)
                  for owner, sid, ts, with_full, outgoing, stanza in rows]
        before = self.db.total_changes
        self.db.executemany(_INSERT, values)
        touched: dict[str, int] = {}
        if self.db.total_changes - before == len(rows):
            for row in rows:
                touched[row[0]] = touched.get(row[0], 0) + 1
            return touched
        # Some were there already (a batch retried under a new command id): count which
        # rows are ours now by asking for each one (rare, so the slow way is fine).
        for row in rows:
            touched.setdefault(row[0], 0)
        counts = {owner: self.db.execute("SELECT count(*) FROM archive WHERE owner=?",
                                         (owner,)).fetchone()[0] for owner in touched}
        known = dict(self.db.execute(
            f"SELECT owner, n FROM owners WHERE owner IN ({', '.join('?' * len(counts))})",  # noqa: S608
            tuple(counts)).fetchall())
        return {owner: n - known.get(owner, 0) for owner, n in counts.items()
                if n - known.get(owner, 0)}

    def _trim(self, owner: str, keep: int) -> None:
        (count,) = self.db.execute("SELECT n FROM owners WHERE owner=?", (owner,)).fetchone()
        if count <= keep:
            return
        row = self.db.execute("SELECT seq FROM archive WHERE owner=? ORDER BY seq LIMIT 1 "
                              "OFFSET ?", (owner, count - keep - 1)).fetchone()
        self._delete(owner, "seq <= ?", (row[0],))

    def _delete(self, owner: str | None, where: str, args: tuple) -> int:
        if owner is None:
            removed = self.db.execute(
                f"SELECT owner, count(*) FROM archive WHERE {where} GROUP BY owner",  # noqa: S608
                args).fetchall()
            self.db.execute(f"DELETE FROM archive WHERE {where}", args)  # noqa: S608
        else:
            cursor = self.db.execute(f"DELETE FROM archive WHERE owner=? AND {where}",  # noqa: S608
                                     (owner, *args))
            removed = [(owner, cursor.rowcount)]
        total = 0
        for who, n in removed:
            total += n
            self.db.execute("UPDATE owners SET n = n - ? WHERE owner=?", (n, who))
        self.db.execute("DELETE FROM owners WHERE n <= 0")
        return total

    def purge(self, position: int, owner: str | None, before: float | None) -> int:
        """Deletes an owner's rows (every owner's with None) older than `before` (all
        of them with None): retention, account removal, the operator's purge."""
        with self._transaction_at(position) as fresh:
            if not fresh:
                return 0
            if before is None:
                return self._delete(owner, "1", ())
            if owner is not None:
                return self._delete(owner, "ts < ?", (before,))
            # Retention over every account, without an index on time (one index less to
            # update per row): archive order follows time, so the expired rows are those
            # before the first one that is not; the scan stops there, the same on every node.
            row = self.db.execute("SELECT seq FROM archive WHERE ts >= ? ORDER BY seq LIMIT 1",
                                  (before,)).fetchone()
            if row is None:
                return self._delete(None, "1", ())
            return self._delete(None, "seq < ?", (row[0],))

    # -- snapshots ---------------------------------------------------------------------------------

    def image(self) -> ArchiveImage:
        if self.path == ":memory:":  # nobody else can open it: copied now
            with self._write_lock:
                return ArchiveImage("", self.db.serialize(), position=self.position())
        return ArchiveImage(self.path)

    def restore(self, image: ArchiveImage) -> bool:
        """A snapshot's image: taken when ahead of this store, else left packed (a restart
        from the node's own dump, whose store is ahead, decompresses nothing)."""
        if image.position is not None and image.position <= self.position():
            return False
        data = image.data
        return data is not None and self.load_image(data)

    def load_image(self, data: bytes) -> bool:
        """Replaces the store with an image taken on another node (or earlier here), when
        the image is ahead of it; returns whether it did."""
        image = bytearray(data)
        image[18:20] = b"\x01\x01"  # WAL mode in the header: an in-memory copy cannot open it
        source = sqlite3.connect(":memory:")
        try:
            source.deserialize(bytes(image))
            row = source.execute("SELECT value FROM meta WHERE key='position'").fetchone()
            if (int(row[0]) if row else 0) <= self.position():
                return False
            with self._write_lock, self._read_lock:
                source.backup(self.db)
            return True
        finally:
            source.close()

    # -- reads (any thread) -------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self.reader.execute(sql, args).fetchall()

    def count(self, owner: str) -> int:
        rows = self._read("SELECT n FROM owners WHERE owner=?", (owner,))
        return rows[0][0] if rows else 0

    def totals(self) -> tuple[int, int]:
        """(rows, owners) over the whole archive."""
        (rows, owners), = self._read("SELECT coalesce(sum(n), 0), count(*) FROM owners")
        return rows, owners

    def bounds(self, owner: str) -> tuple[tuple[str, float], tuple[str, float]] | None:
        """The owner's oldest and newest (id, time): XEP-0313 metadata."""
        first = self._read("SELECT sid, ts FROM archive WHERE owner=? ORDER BY seq LIMIT 1",
                           (owner,))
        if not first:
            return None
        last = self._read("SELECT sid, ts FROM archive WHERE owner=? ORDER BY seq DESC LIMIT 1",
                          (owner,))
        return (first[0][0], first[0][1]), (last[0][0], last[0][1])

    def get(self, owner: str, sid: str) -> Archived | None:
        rows = self._read("SELECT sid, ts, stanza, outgoing FROM archive WHERE owner=? AND sid=?",
                          (owner, sid))
        return Archived(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def _seq(self, owner: str, sid: str) -> int:
        rows = self._read("SELECT seq FROM archive WHERE owner=? AND sid=?", (owner, sid))
        if not rows:
            raise UnknownId(sid)
        return rows[0][0]

    def query(self, q: Query) -> Page:
        """One page of a query (XEP-0313 §4 filters, XEP-0059 paging)."""
        where, args = self._filter(q)
        (count,), = self._read(f"SELECT count(*) FROM archive WHERE {where}", tuple(args))  # noqa: S608
        page = Page(count=count)
        if q.max <= 0:  # XEP-0059 §2.6: only the count
            page.complete = count == 0
            return page
        backward = q.rsm_before is not None
        if q.rsm_after:
            where += " AND seq > ?"
            args.append(self._seq(q.owner, q.rsm_after))
        if q.rsm_before:
            where += " AND seq < ?"
            args.append(self._seq(q.owner, q.rsm_before))
        order = "DESC" if backward else "ASC"
        offset = q.rsm_index if q.rsm_index is not None and not backward else 0
        rows = self._read(
            f"SELECT seq, sid, ts, stanza, outgoing FROM archive WHERE {where} "  # noqa: S608
            f"ORDER BY seq {order} LIMIT ? OFFSET ?", (*args, q.max + 1, offset))
        page.complete = len(rows) <= q.max
        rows = rows[:q.max]
        if backward:
            rows.reverse()
        page.rows = [Archived(sid, ts, stanza, bool(out)) for _, sid, ts, stanza, out in rows]
        if rows:
            base, base_args = self._filter(q)
            (before,), = self._read(f"SELECT count(*) FROM archive WHERE {base} AND seq < ?",  # noqa: S608
                                    (*base_args, rows[0][0]))
            page.first_index = before
        return page

    def _filter(self, q: Query) -> tuple[str, list]:
        where, args = ["owner = ?"], [q.owner]
        if q.with_jid:
            if "/" in q.with_jid:
                where.append("with_full = ?")
            else:
                where.append("with_bare = ?")
            args.append(q.with_jid)
        if q.start is not None:
            where.append("ts >= ?")
            args.append(q.start)
        if q.end is not None:
            where.append("ts <= ?")
            args.append(q.end)
        if q.after_id:
            where.append("seq > ?")
            args.append(self._seq(q.owner, q.after_id))
        if q.before_id:
            where.append("seq < ?")
            args.append(self._seq(q.owner, q.before_id))
        if q.ids is not None:
            where.append(f"sid IN ({', '.join('?' * len(q.ids))})")
            args.extend(q.ids)
        return " AND ".join(where), args


class ArchiveImage:
    """The archive database in a snapshot.

    Pickling reads the file then (in pysyncobj's forked child: the Raft thread is not
    stopped), through a new connection inside one read transaction, so the image is a
    consistent state at least as new as the snapshot's position. Unpickling keeps the
    bytes; `ClusterState.restore` hands them to the live store."""

    def __init__(self, path: str, data: bytes | None = None, packed: bytes | None = None,
                 position: int | None = None) -> None:
        self.path = path
        self._data = data
        self.packed = packed
        # The store's position when read: at least the snapshot's, since apply commits
        # to the store before the state counts the op. None in images of older code.
        self.position = position

    @property
    def data(self) -> bytes | None:
        if self._data is None and self.packed is not None:
            self._data = zlib.decompress(self.packed)
        return self._data

    def __reduce__(self):
        # Packed with fast zlib first: pysyncobj then gzips the dump at level 9, which on
        # the raw database costs minutes per million messages (bench/RESULTS.md) and
        # little on already packed bytes.
        packed, position = self.packed, self.position
        if packed is None:
            data = self._data
            if data is None:
                conn = sqlite3.connect(self.path)
                try:
                    row = conn.execute("SELECT value FROM meta WHERE key='position'").fetchone()
                    position = int(row[0]) if row else 0  # read first: the data is as new
                    data = conn.serialize()
                finally:
                    conn.close()
            packed = zlib.compress(data, 1)
        return (ArchiveImage, ("", None, packed, position))
