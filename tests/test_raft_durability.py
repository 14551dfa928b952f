"""Issue 12 (points 2 and 3): what a node acknowledges is on disk, and replication is Raft's.

Storage is tested through the journal's API with the syscalls recorded (a power loss
cannot be simulated by reopening a file the page cache still holds), plus a simulated
disk that keeps only what was synced. Replication is tested sans-IO: a DurableSyncObj on
a transport that records what it sends, driven message by message.
"""

from __future__ import annotations

import gzip
import os
import stat
import threading
from pathlib import Path

import pytest
from pysyncobj import SyncObjConf
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from raftxmpp.cluster import journal as journal_mod
from raftxmpp.cluster.journal import DataDirError, DurableJournal, DurablePath, check_data_dir
from raftxmpp.cluster.replication import DurableSyncObj
from tests.harness import wait_for
from tests.test_cli import assert_one_line_error, raftxmpp

# -- the journal -------------------------------------------------------------------------


def test_entries_term_and_vote_survive_a_reopen(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(path)
    for idx in range(1, 6):
        journal.add(b"cmd%d" % idx, idx, 1 + idx // 3)
    journal.setCurrentTerm(7, "127.0.0.1:7002")
    journal._destroy()
    again = DurableJournal(path)
    assert [e[1:] for e in again] == [(i, 1 + i // 3) for i in range(1, 6)]
    assert again[2][0] == b"cmd3"
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (7, "127.0.0.1:7002")


def test_one_fdatasync_covers_every_entry_added_since_the_last(tmp_path, monkeypatch):
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    for idx in range(1, 50):
        journal.add(b"x", idx, 1)
    assert journal.dirty and synced == []
    assert journal.sync() and len(synced) == 1 and not journal.dirty
    assert not journal.sync() and len(synced) == 1  # nothing new: no syscall


def test_a_vote_is_fsynced_and_renamed_before_set_current_term_returns(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"rename {Path(b).name}"),
                                                       real_replace(a, b)))
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    events.clear()
    journal.setCurrentTerm(3, "127.0.0.1:7003")
    # data, rename, then the directory entry
    assert events == ["fsync", "rename raft.journal.meta", "fsync"]


def test_a_crash_between_writing_and_renaming_the_meta_keeps_the_previous_vote(
        tmp_path, monkeypatch):
    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(path)
    journal.setCurrentTerm(4, "127.0.0.1:7002")

    def crash(*_):
        raise KeyboardInterrupt("power lost before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        journal.setCurrentTerm(5, "127.0.0.1:7003")
    monkeypatch.undo()
    assert (tmp_path / "raft.journal.meta.tmp").exists()
    again = DurableJournal(path)
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (4, "127.0.0.1:7002")


def test_an_unreadable_meta_refuses_to_start_rather_than_forget_the_vote(tmp_path):
    path = str(tmp_path / "raft.journal")
    DurableJournal(path).setCurrentTerm(4, "127.0.0.1:7002")
    (tmp_path / "raft.journal.meta").write_bytes(b"\x00garbage")
    with pytest.raises(DataDirError, match="vote is lost"):
        DurableJournal(path)


def test_a_torn_tail_ends_the_journal_at_the_last_whole_record(tmp_path):
    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    for idx in range(1, 4):
        journal.add(b"entry", idx, 1)
    journal._destroy()
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the last record's command byte: its CRC no longer matches
    path.write_bytes(bytes(data))
    again = DurableJournal(str(path))
    assert [e[1] for e in again] == [1, 2]
    again.add(b"next", 3, 2)  # written where the torn record was
    again._destroy()
    assert [e[1:] for e in DurableJournal(str(path))] == [(1, 1), (2, 1), (3, 2)]


def test_truncation_and_compaction_are_kept_across_a_reopen(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(path)
    for idx in range(1, 11):
        journal.add(b"e", idx, 1)
    journal.deleteEntriesFrom(8)  # keeps 1..8
    journal.deleteEntriesTo(3)  # compaction: keeps 4..8
    journal.add(b"f", 9, 2)
    journal._destroy()
    assert [e[1:] for e in DurableJournal(path)] == [(4, 1), (5, 1), (6, 1), (7, 1), (8, 1),
                                                     (9, 2)]


def test_a_pysyncobj_journal_is_read_and_rewritten_in_the_synced_format(tmp_path):
    path = str(tmp_path / "raft.journal")
    old = FileJournal(path)
    old.add(b"\x00", 1, 0)
    old.add(b"cmd", 2, 3)
    old.setCurrentTerm(3, "127.0.0.1:7002")
    old._destroy()
    journal = DurableJournal(path)
    assert list(journal) == [(b"\x00", 1, 0), (b"cmd", 2, 3)]
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (3, "127.0.0.1:7002")
    assert Path(path).read_bytes().startswith(b"RAFTXMPP")


def test_journal_and_meta_are_for_the_node_user_only(tmp_path):
    os.umask(0o022)  # as a careless service manager might leave it
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    journal.setCurrentTerm(1, None)
    for name in ("raft.journal", "raft.journal.meta"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_creating_the_journal_syncs_its_directory(tmp_path, monkeypatch):
    synced_dirs = []
    real = journal_mod.fsync_dir
    monkeypatch.setattr(journal_mod, "fsync_dir", lambda p: (synced_dirs.append(p), real(p)))
    DurableJournal(str(tmp_path / "raft.journal"))
    assert synced_dirs == [tmp_path]


# -- the dump --------------------------------------------------------------------------


def test_the_dump_is_fsynced_before_its_rename_and_its_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"),
                                                       real_replace(a, b)))
    (tmp_path / "raft.dump.tmp").write_bytes(gzip.compress(b"state"))
    journal_mod.durable_replace(str(tmp_path / "raft.dump.tmp"), str(tmp_path / "raft.dump"))
    assert events == ["fsync", "rename", "fsync"]
    assert stat.S_IMODE((tmp_path / "raft.dump").stat().st_mode) == 0o600


def test_pysyncobj_renames_its_dump_durably():
    import pysyncobj.serializer

    assert pysyncobj.serializer.atomicReplace is journal_mod.durable_replace


def test_a_torn_dump_is_refused(tmp_path):
    dump = tmp_path / "raft.dump"
    whole = gzip.compress(os.urandom(4096))
    dump.write_bytes(whole)
    check_data_dir(tmp_path / "raft.journal", dump)  # a whole dump passes
    dump.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataDirError, match="torn"):
        check_data_dir(tmp_path / "raft.journal", dump)


def test_a_compacted_journal_without_its_dump_is_refused(tmp_path):
    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    for idx in range(1, 6):
        journal.add(b"e", idx, 1)
    check_data_dir(path, tmp_path / "raft.dump")  # uncompacted: the journal holds it all
    journal.deleteEntriesTo(3)
    journal._destroy()
    with pytest.raises(DataDirError, match="missing"):
        check_data_dir(path, tmp_path / "raft.dump")


# -- replication, sans-IO ------------------------------------------------------------------

LEADER, SELF, OTHER = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"


class RecordingTransport(Transport):
    """A transport that is always ready and only records what is sent."""

    def __init__(self, syncObj, selfNode, otherNodes, events):  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self.events = events

    def send(self, node, message):
        self.events.append(("send", node.id, dict(message)))
        return True


class PowerLossDisk:
    """Records the journal file's bytes at each fdatasync: what a power loss would keep."""

    def __init__(self, monkeypatch, events):
        self.synced: dict[int, bytes] = {}
        real = os.fdatasync

        def fdatasync(fd):
            real(fd)
            events.append(("sync",))
            self.synced[fd] = os.pread(fd, 1 << 24, 0)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


def make_node(tmp_path: Path, events: list, name: str = "node") -> DurableSyncObj:
    conf = SyncObjConf(autoTick=False, journalFile=DurablePath(tmp_path / f"{name}.journal"),
                       fullDumpFile=str(tmp_path / f"{name}.dump"), dynamicMembershipChange=True,
                       appendEntriesUseBatch=False)
    transport = RecordingTransport(None, TCPNode(SELF), {TCPNode(LEADER), TCPNode(OTHER)}, events)
    node = DurableSyncObj(SELF, [LEADER, OTHER], conf, transport=transport)
    transport._syncObj = node
    return node


def append(prev_idx, prev_term, entries, term=1, commit=1, seq=None):
    message = {"type": "append_entries", "term": term, "commit_index": commit,
               "entries": entries, "prevLogIdx": prev_idx, "prevLogTerm": prev_term}
    if seq is not None:
        message["seq"] = seq
    return message


def answers(events):
    return [e[2] for e in events if e[0] == "send" and e[2]["type"] == "next_node_idx"]


def entries(first, last, term=1):
    return [(b"\x01", idx, term) for idx in range(first, last + 1)]  # NO_OP commands


def raft_log(node):
    return [(e[1], e[2]) for e in node._SyncObj__raftLog]


@pytest.fixture
def follower(tmp_path):
    events: list = []
    node = make_node(tmp_path, events)
    yield node, events
    node._doDestroy()


def test_a_follower_answers_an_append_only_after_syncing_it(follower, monkeypatch, tmp_path):
    node, events = follower
    disk = PowerLossDisk(monkeypatch, events)
    node._SyncObj__onMessageReceived(TCPNode(LEADER), append(1, 0, entries(2, 4), seq=9))
    assert answers(events) == []  # held: the entries are only in the page cache
    node.doTick(0)
    kinds = [e[0] for e in events]
    assert kinds.index("sync") < next(i for i, e in enumerate(events)
                                      if e[0] == "send" and e[2]["type"] == "next_node_idx")
    (answer,) = answers(events)
    assert answer["success"] and answer["next_node_idx"] == 5
    assert answer["term"] == 1 and answer["seq"] == 9
    # What a power loss right after the answer would leave holds every answered entry.
    on_disk = tmp_path / "after-power-loss.journal"
    on_disk.write_bytes(next(iter(disk.synced.values())))
    assert [e[1] for e in DurableJournal(str(on_disk))] == [1, 2, 3, 4]


def test_a_follower_keeps_entries_that_match_a_repeated_append(follower):
    node, events = follower
    leader = TCPNode(LEADER)
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 6)))
    # A resend from an older point (a stale answer moved the leader back), then a heartbeat.
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 3)))
    node._SyncObj__onMessageReceived(leader, append(2, 1, []))
    assert raft_log(node) == [(1, 0)] + [(i, 1) for i in range(2, 7)]
    node.sync_journal()
    assert [(a["success"], a["next_node_idx"]) for a in answers(events)] == [
        (True, 7), (True, 4), (True, 3)]


def test_a_follower_truncates_from_the_first_conflicting_entry(follower):
    node, events = follower
    leader = TCPNode(LEADER)
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 6)))
    # A new leader at term 2 whose log has our 2..3 and its own 4..5.
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 3) + entries(4, 5, 2),
                                                    term=2))
    assert raft_log(node) == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]


def test_a_follower_commits_only_entries_the_append_verified(follower):
    node, _ = follower
    leader = TCPNode(LEADER)
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 6)))
    # Term 2: a heartbeat that verified only up to 3, with the leader's commit at 6.
    node._SyncObj__onMessageReceived(leader, append(3, 1, [], term=2, commit=6))
    assert raft_log(node)[-1] == (6, 1)  # kept: nothing conflicted
    assert node.raftCommitIndex == 3  # but 4..6 may be an old term's: not committed


def test_no_critical_truncation_when_a_duplicate_append_covers_applied_entries(
        follower, caplog):
    node, _ = follower
    leader = TCPNode(LEADER)
    node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 5), commit=5))
    node.doTick(0)  # applies 2..5
    assert node.raftLastApplied == 5
    node._SyncObj__onMessageReceived(leader, append(2, 1, entries(3, 3), commit=5))
    assert "truncating" not in caplog.text
    assert raft_log(node)[-1] == (5, 1)


def become_leader(node, events):
    for other in (LEADER, OTHER):
        node._SyncObj__onNodeConnected(TCPNode(other))
    node._SyncObj__raftElectionDeadline = 0
    node.doTick(0)
    node._SyncObj__onMessageReceived(TCPNode(OTHER), {"type": "response_vote",
                                                      "term": node.raftCurrentTerm})
    assert node._isLeader()


def appends_to(events, address):
    return [e[2] for e in events if e[0] == "send" and e[1] == address
            and e[2]["type"] == "append_entries"]


def next_index(node, address):
    return node.getStatus()[f"next_node_idx_server_{address}"]


def test_a_leader_ignores_stale_answers(tmp_path):
    events: list = []
    node = make_node(tmp_path, events)
    try:
        become_leader(node, events)
        follower = TCPNode(LEADER)
        for _ in range(3):  # three appends in flight before any answer
            node._SyncObj__sendAppendEntries()
        seqs = [m["seq"] for m in appends_to(events, LEADER)]
        assert len(seqs) >= 3 and seqs == sorted(seqs)
        # The follower has only entry 1: every one of them is answered "start at 2".
        answer = {"type": "next_node_idx", "next_node_idx": 2, "reset": True,
                  "success": False, "term": node.raftCurrentTerm}
        node._SyncObj__onMessageReceived(follower, dict(answer, seq=seqs[0]))
        assert next_index(node, LEADER) == 2
        node._SyncObj__sendAppendEntries()  # resends from 2: the follower is told everything
        assert next_index(node, LEADER) == 3
        for seq in seqs[1:]:  # the answers to the appends sent before the reset
            node._SyncObj__onMessageReceived(follower, dict(answer, seq=seq))
        assert next_index(node, LEADER) == 3
        # An answer from an earlier term does not move the leader either.
        node._SyncObj__onMessageReceived(follower, dict(answer, seq=10**6, term=0))
        assert next_index(node, LEADER) == 3
        # A fresh answer to the resend is taken.
        resend = appends_to(events, LEADER)[-1]["seq"]
        node._SyncObj__onMessageReceived(follower, dict(answer, next_node_idx=3, success=True,
                                                        reset=False, seq=resend))
        assert node.getStatus()[f"match_idx_server_{LEADER}"] == 2
    finally:
        node._doDestroy()


def test_a_leader_sends_the_commands_of_one_drain_in_one_append(tmp_path):
    """Without batching pysyncobj sends an append per command taken from the queue;
    DurableSyncObj sends the whole drain at once, to every follower, in the same tick."""
    events: list = []
    node = make_node(tmp_path, events)
    try:
        become_leader(node, events)
        events.clear()
        for _ in range(5):
            node._applyCommand(b"\x01", None)  # NO_OP commands, as a submit queues them
        node._checkCommandsToApply()
        for follower in (LEADER, OTHER):
            sent = appends_to(events, follower)
            assert len(sent) == 1
            assert [e[1] for e in sent[0]["entries"]][-5:] == list(range(3, 8))
        assert raft_log(node)[-1] == (7, node.raftCurrentTerm)
        events.clear()
        node._checkCommandsToApply()  # an empty queue sends nothing
        assert appends_to(events, LEADER) == []
    finally:
        node._doDestroy()


def test_a_leader_counts_itself_only_for_synced_entries(tmp_path, monkeypatch):
    events: list = []
    PowerLossDisk(monkeypatch, events)
    node = make_node(tmp_path, events)
    try:
        become_leader(node, events)
        events.clear()
        raft_log_file = node._SyncObj__raftLog
        assert raft_log_file.dirty  # the leader's no-op, not yet synced
        node._SyncObj__onMessageReceived(TCPNode(OTHER), {
            "type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True,
            "term": node.raftCurrentTerm})
        node.doTick(0)
        assert events[0] == ("sync",)  # before the commit index moved
        assert node.raftCommitIndex == 2 and not raft_log_file.dirty
    finally:
        node._doDestroy()


# -- real node processes -------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.mark.cluster
def test_writes_a_node_acknowledged_are_in_its_synced_journal_after_kill_9(single_node):
    node = single_node.start()
    wait_for(lambda: node.status().get("leader"), 20, "the node to lead")
    acknowledged = [f"user{i}@localhost" for i in range(10)]
    for jid in acknowledged:
        node.admin("user.add", jid=jid, password=PASSWORD)
    node.kill()
    journal = node.data_dir / "raft.journal"
    assert journal.read_bytes().startswith(b"RAFTXMPP")  # the synced format, not pysyncobj's
    assert DurableJournal(str(journal)).getCurrentTerm() >= 1  # its vote and term too
    node.start()
    wait_for(lambda: set(acknowledged) <= set(node.admin("user.list", current=True)), 20,
             "every acknowledged account after the restart")


@pytest.mark.cluster
def test_a_node_whose_dump_is_torn_refuses_to_start_instead_of_starting_empty(single_node):
    node = single_node.start()
    wait_for(lambda: node.status().get("leader"), 20, "the node to lead")
    node.admin("user.add", jid="alice@localhost", password=PASSWORD)
    node.kill()
    whole = gzip.compress(os.urandom(64 * 1024))
    (node.data_dir / "raft.dump").write_bytes(whole[: len(whole) // 2])
    refused = raftxmpp("node", "start", "--config", str(node.config_path), timeout=60)
    assert_one_line_error(refused, "raft.dump is torn")


@pytest.mark.cluster
def test_followers_never_truncate_acknowledged_entries_under_concurrent_writes(make_cluster):
    cluster = make_cluster(3).start()
    cluster.leader()
    failures = []

    def writer(node, prefix):
        try:
            for i in range(25):
                node.admin("user.add", jid=f"{prefix}{i}@localhost", password=PASSWORD)
        except Exception as exc:  # reported below; a thread must not die silently
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(node, f"w{n}-{k}-"))
               for n, node in enumerate(cluster.nodes) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failures == []
    wanted = len(threads) * 25
    for node in cluster.nodes:
        wait_for(lambda n=node: len(n.admin("user.list", current=True)) >= wanted, 30,
                 f"{node.name} to hold every account")
    digests = {node.admin("state.digest")["digest"] for node in cluster.nodes}
    assert len(digests) == 1
    for node in cluster.nodes:
        assert "truncating already-applied" not in node.log(), node.name


def test_compaction_leaves_a_synced_dump_that_a_restart_accepts(tmp_path):
    events: list = []
    node = make_node(tmp_path, events)
    try:
        leader = TCPNode(LEADER)
        node._SyncObj__onMessageReceived(leader, append(1, 0, entries(2, 30), commit=30))
        node.doTick(0)
        assert node.raftLastApplied == 30
        node.forceLogCompaction()
        node.doTick(0)  # forks the serializer: the child fsyncs and renames the dump
        wait_for(lambda: (node.doTick(0), len(node._SyncObj__raftLog) < 29)[1], 20,
                 "the journal to be compacted after the dump")
    finally:
        node._doDestroy()
    dump = tmp_path / "node.dump"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert not (tmp_path / "node.dump.tmp").exists()
    check_data_dir(tmp_path / "node.journal", dump)  # whole, and it covers the cut
    assert DurableJournal(str(tmp_path / "node.journal"))[0][1] > 1
    restarted = make_node(tmp_path, [])
    try:
        restarted.doTick(0)  # loads the dump, then replays the journal
        assert restarted.raftLastApplied == 30
    finally:
        restarted._doDestroy()


def test_a_failed_fdatasync_stops_the_node_instead_of_acknowledging(tmp_path, monkeypatch):
    def eio(fd):
        raise OSError(5, "Input/output error")

    exits = []

    def record_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "fdatasync", eio)
    monkeypatch.setattr(journal_mod, "_exit", record_exit)
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    journal.add(b"x", 1, 1)
    with pytest.raises(SystemExit):
        journal.sync()
    assert exits == [journal_mod.EXIT_STORAGE_FAILED] and journal.dirty


@pytest.mark.cluster
def test_a_follower_whose_journal_tail_was_torn_drops_it_and_catches_up(make_cluster):
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    for i in range(20):
        leader.admin("user.add", jid=f"before{i}@localhost", password=PASSWORD)
    wait_for(lambda: len(follower.admin("user.list", current=True)) >= 20, 20,
             "the follower to apply every account")
    follower.kill()
    # What a power loss does to writes the disk had not flushed: the tail is cut mid-record.
    journal = follower.data_dir / "raft.journal"
    kept = DurableJournal(str(journal))
    cut = kept._offsets[-3] + 7
    kept._destroy()
    with open(journal, "r+b") as f:
        f.truncate(cut)
    leader.admin("user.add", jid="after@localhost", password=PASSWORD)
    follower.start()
    wanted = {f"before{i}@localhost" for i in range(20)} | {"after@localhost"}
    wait_for(lambda: wanted <= set(follower.admin("user.list", current=True)), 30,
             "the follower to fetch the lost tail again")
    assert "the tail was never synced" in follower.log()
    wait_for(lambda: len({n.admin("state.digest")["digest"] for n in cluster.nodes}) == 1, 20,
             "equal digests")


def test_an_empty_journal_file_is_a_new_journal(tmp_path):
    (tmp_path / "raft.journal").write_bytes(b"")  # created, never flushed, power lost
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    assert len(journal) == 0
    journal.add(b"x", 1, 1)
    journal._destroy()
    assert len(DurableJournal(str(tmp_path / "raft.journal"))) == 1


def test_a_journal_without_its_meta_says_the_vote_is_unknown(tmp_path, caplog):
    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    journal.add(b"x", 1, 0)
    journal.add(b"y", 2, 3)
    journal.setCurrentTerm(3, "127.0.0.1:7002")
    journal._destroy()
    (tmp_path / "raft.journal.meta").unlink()  # e.g. a backup that left it out
    DurableJournal(str(path))
    assert "vote is unknown" in caplog.text


def test_a_leader_takes_answers_from_a_peer_without_the_new_fields(tmp_path):
    # A rolling upgrade: a follower still on plain pysyncobj answers without term and seq.
    events: list = []
    node = make_node(tmp_path, events)
    try:
        become_leader(node, events)
        node._SyncObj__sendAppendEntries()
        old_style = {"type": "next_node_idx", "next_node_idx": 2, "reset": True,
                     "success": False}
        node._SyncObj__onMessageReceived(TCPNode(LEADER), old_style)
        assert next_index(node, LEADER) == 2
        node._SyncObj__onMessageReceived(TCPNode(LEADER), dict(
            old_style, next_node_idx=3, reset=False, success=True))
        assert node.getStatus()[f"match_idx_server_{LEADER}"] == 2
        # and what the follower side sends an old leader carries only extra keys
        appended = append(1, 0, entries(2, 2), term=node.raftCurrentTerm + 1)
        node._SyncObj__onMessageReceived(TCPNode(LEADER), appended)
        node.sync_journal()
        answer = answers(events)[-1]
        assert {"type", "next_node_idx", "reset", "success"} <= set(answer)
    finally:
        node._doDestroy()
