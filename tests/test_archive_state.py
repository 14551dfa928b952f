"""The message archive's ops and store (XEP-0313), without Raft: apply at a position,
idempotent replay, paging, retention, preferences, snapshot and restore of the store."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest

from raftxmpp import credentials
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.archive import ArchiveStore, Query, UnknownId
from raftxmpp.cluster.state import ClusterState

_ids = itertools.count()
CREDS = credentials.derive("pw", 4096)
ALICE, BOB = "alice@example.com", "bob@example.com"


def cmd(op: str, **args) -> dict:
    return {"v": sm.VERSION, "id": f"t:{next(_ids)}", "ts": 1700000000.0, "op": op, **args}


def ok(result):
    assert result[0] == "ok", result
    return result[1]


def row(owner: str, sid: str, ts: float, other: str = BOB + "/phone", outgoing: bool = True):
    return (owner, sid, ts, other, outgoing, f"<message><body>{sid}</body></message>".encode())


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for jid in (ALICE, BOB):
        ok(s.apply(cmd("register", jid=jid, credentials=CREDS)))
    return s


def fill(state: ClusterState, n: int, owner: str = ALICE, start: int = 0) -> list[str]:
    sids = [f"id{i}" for i in range(start, start + n)]
    ok(state.apply(cmd("archive_append", rows=[row(owner, s, 1000.0 + i)
                                               for i, s in zip(range(start, start + n), sids,
                                                               strict=True)])))
    return sids


def sids(page) -> list[str]:
    return [r.sid for r in page.rows]


def test_append_archives_rows_and_a_retry_applies_once(state):
    command = cmd("archive_append", rows=[row(ALICE, "a", 1.0), row(BOB, "a", 1.0, ALICE, False)])
    assert ok(state.apply(command)) == 2
    assert state.apply(copy.deepcopy(command)) == ("ok", 2)
    assert state.archive.count(ALICE) == 1 and state.archive.count(BOB) == 1


def test_a_replayed_position_writes_nothing():
    """A restart replays the journal over a store that is ahead of the snapshot."""
    store = ArchiveStore(":memory:")
    assert store.append(5, [row(ALICE, "a", 1.0)]) == 1
    assert store.append(5, [row(ALICE, "b", 2.0)]) == 0
    assert store.purge(4, ALICE, None) == 0
    assert store.count(ALICE) == 1 and store.position() == 5


def test_rows_of_an_unknown_account_are_not_archived(state):
    assert ok(state.apply(cmd("archive_append", rows=[row("nobody@example.com", "a", 1.0)]))) == 0


@pytest.mark.parametrize("rows", [[], [("x",)], [(ALICE, "", 1.0, BOB, True, b"x")],
                                  [(ALICE, "a", 1.0, BOB, True, "not bytes")]])
def test_malformed_batches_are_refused_without_change(state, rows):
    before = state.archive.position()
    assert state.apply(cmd("archive_append", rows=rows))[1] == "bad-request"
    assert state.archive.position() == before


def test_forward_paging_ends_with_complete(state):
    fill(state, 5)
    first = state.archive.query(Query(ALICE, max=2))
    assert sids(first) == ["id0", "id1"] and not first.complete
    assert first.count == 5 and first.first_index == 0
    second = state.archive.query(Query(ALICE, max=2, rsm_after="id1"))
    assert sids(second) == ["id2", "id3"] and second.first_index == 2
    last = state.archive.query(Query(ALICE, max=2, rsm_after="id3"))
    assert sids(last) == ["id4"] and last.complete


def test_backward_paging_from_the_last_page(state):
    fill(state, 5)
    last = state.archive.query(Query(ALICE, max=2, rsm_before=""))
    assert sids(last) == ["id3", "id4"] and not last.complete and last.first_index == 3
    earlier = state.archive.query(Query(ALICE, max=2, rsm_before="id3"))
    assert sids(earlier) == ["id1", "id2"]
    first = state.archive.query(Query(ALICE, max=2, rsm_before="id1"))
    assert sids(first) == ["id0"] and first.complete


def test_filters_with_start_end_and_ids(state):
    fill(state, 6)
    ok(state.apply(cmd("archive_append", rows=[row(ALICE, "carol", 2000.0, "carol@x/y")])))
    assert sids(state.archive.query(Query(ALICE, with_jid="carol@x"))) == ["carol"]
    assert sids(state.archive.query(Query(ALICE, with_jid="carol@x/z"))) == []
    assert sids(state.archive.query(Query(ALICE, with_jid=BOB))) == [f"id{i}" for i in range(6)]
    assert sids(state.archive.query(Query(ALICE, start=1002.0, end=1003.0))) == ["id2", "id3"]
    assert sids(state.archive.query(Query(ALICE, after_id="id3", before_id="id5"))) == ["id4"]
    assert sids(state.archive.query(Query(ALICE, ids=["id5", "id1"]))) == ["id1", "id5"]


def test_unknown_ids_are_item_not_found(state):
    fill(state, 2)
    with pytest.raises(UnknownId):
        state.archive.query(Query(ALICE, rsm_after="nope"))
    with pytest.raises(UnknownId):  # another account's id is not this one's
        state.archive.query(Query(BOB, after_id="id0"))


def test_max_zero_gives_only_the_count(state):
    fill(state, 3)
    page = state.archive.query(Query(ALICE, max=0))
    assert page.count == 3 and page.rows == []


def test_quota_per_account_drops_the_oldest(state):
    fill(state, 5)
    ok(state.apply(cmd("archive_append", rows=[row(ALICE, "new", 9999.0)], max_per_account=3)))
    assert sids(state.archive.query(Query(ALICE))) == ["id3", "id4", "new"]
    assert state.archive.count(ALICE) == 3


def test_retention_purge_by_time_for_everyone(state):
    fill(state, 4)
    fill(state, 2, owner=BOB, start=10)
    assert ok(state.apply(cmd("archive_purge", before=1002.0))) == 2
    assert sids(state.archive.query(Query(ALICE))) == ["id2", "id3"]
    assert sids(state.archive.query(Query(BOB))) == ["id10", "id11"]  # newer: kept


def test_unregister_removes_the_archive_and_preferences(state):
    fill(state, 3)
    ok(state.apply(cmd("archive_prefs_set", jid=ALICE, default="roster", always=[BOB])))
    ok(state.apply(cmd("unregister", jid=ALICE)))
    assert state.archive.count(ALICE) == 0 and ALICE not in state.archive_prefs


def test_preferences_are_validated_and_kept(state):
    prefs = ok(state.apply(cmd("archive_prefs_set", jid=ALICE, default="never",
                               always=[BOB, BOB], never=[])))
    assert prefs == {"default": "never", "always": [BOB], "never": []}
    assert state.apply(cmd("archive_prefs_set", jid=ALICE, default="sometimes"))[1] == "bad-request"


def test_snapshot_restore_carries_the_archive_to_a_fresh_node(state, tmp_path):
    state.archive = ArchiveStore(tmp_path / "a.sqlite3")
    fill(state, 4)
    ok(state.apply(cmd("archive_prefs_set", jid=ALICE, default="roster")))
    fresh = ClusterState()
    fresh.archive = ArchiveStore(tmp_path / "b.sqlite3")
    fresh.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert sids(fresh.archive.query(Query(ALICE))) == ["id0", "id1", "id2", "id3"]
    assert fresh.archive_prefs == state.archive_prefs
    assert fresh.digest() == state.digest()
    # The same log applied after the snapshot gives the same archive on both.
    command = cmd("archive_append", rows=[row(ALICE, "later", 5.0)])
    assert state.apply(copy.deepcopy(command)) == fresh.apply(command)
    assert sids(fresh.archive.query(Query(ALICE))) == sids(state.archive.query(Query(ALICE)))


def test_restore_keeps_a_local_store_that_is_ahead(state, tmp_path):
    state.archive = ArchiveStore(tmp_path / "a.sqlite3")
    fill(state, 2)
    snapshot = pickle.dumps(state.snapshot())
    fill(state, 2, start=2)  # applied after the snapshot, already on disk
    state.restore(pickle.loads(snapshot))
    assert state.archive.count(ALICE) == 4


def test_a_batch_with_rows_archived_already_counts_only_the_new_ones(state):
    """A batch retried under a new command id after an unknown outcome."""
    fill(state, 3)
    again = [row(ALICE, "id1", 1001.0), row(ALICE, "fresh", 5.0), row(BOB, "b", 6.0)]
    assert ok(state.apply(cmd("archive_append", rows=again))) == 2
    assert state.archive.count(ALICE) == 4 and state.archive.count(BOB) == 1
    assert sids(state.archive.query(Query(ALICE))) == ["id0", "id1", "id2", "fresh"]


def test_a_batch_stays_under_its_row_and_byte_bounds():
    from raftxmpp.config import ArchiveSection
    from raftxmpp.modules.mam import BATCH_BYTES, ArchiveWriter

    writer = ArchiveWriter(None, ArchiveSection(batch_rows=10))
    writer.rows = [(ALICE, f"s{i}", 1.0, BOB, True, b"x" * (BATCH_BYTES // 3)) for i in range(5)]
    assert len(writer._next_batch()) == 3  # a fourth would pass the byte bound
    writer.rows = [(ALICE, "big", 1.0, BOB, True, b"x" * (2 * BATCH_BYTES))]
    assert len(writer._next_batch()) == 1  # one row always goes
    writer.rows = [(ALICE, f"s{i}", 1.0, BOB, True, b"x") for i in range(25)]
    assert len(writer._next_batch()) == 10


def test_an_image_behind_the_store_is_not_even_unpacked(state, tmp_path):
    """A restart loads the node's own dump: its store is ahead, the image stays packed."""
    state.archive = ArchiveStore(tmp_path / "a.sqlite3")
    fill(state, 2)
    image = pickle.loads(pickle.dumps(state.snapshot()))["archive"]
    assert image.position == state.archive.position() and image.packed
    fill(state, 1, start=2)
    assert not state.archive.restore(image)
    assert image._data is None  # never decompressed
    fresh = ArchiveStore(tmp_path / "b.sqlite3")
    assert fresh.restore(image) and fresh.count(ALICE) == 2
