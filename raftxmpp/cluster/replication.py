"""pysyncobj's SyncObj with durable acknowledgements and Raft-correct log replication.

A small layer over pysyncobj 0.3.17 (still the Raft library) that changes four things:

1. **Sync before acknowledging.** A follower's answer to an append (`next_node_idx`) is
   held until the entries it covers are synced, and every tick starts by syncing the
   journal, before the leader counts its own log toward a commit. One fdatasync
   therefore covers every entry that arrived or was appended since the last tick
   (grouped commit), instead of one per entry.
2. **Followers truncate only at a conflict.** pysyncobj deletes every entry after
   `prevLogIdx` whenever its log is longer, even when those entries match the leader's:
   entries it had acknowledged vanish for a while (the "truncating already-applied log
   entries" CRITICAL line), and a leader crash in that window can lose a committed
   write. Here entries already present with the same term are skipped, the log is cut
   only from the first entry whose term differs, and the commit index only advances
   over entries this append verified (Raft §5.3, receiver rules 3-5).
3. **The leader ignores stale answers.** Answers carry the follower's term and the
   sequence number of the append they answer. The leader drops answers from another
   term, and a "start again from N" answer to an append sent before its last reset,
   which otherwise sends it back to old points again and again.
4. **One append per drain.** The commands queued since the last tick go to the
   followers in one append (per batch size), not one append each.

The extra message fields are ignored by an unpatched pysyncobj, and answers without them
are handled as before, so a rolling upgrade mixes both.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pysyncobj.pickle as pickle
from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic
from pysyncobj.syncobj import _RAFT_STATE

from raftxmpp.cluster import journal

log = logging.getLogger("raftxmpp.raft")

journal.install()


class DurableSyncObj(SyncObj):
    """SyncObj whose acknowledgements are durable and whose followers keep matching entries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before SyncObj.__init__ so that pysyncobj leaves them out of snapshots.
        self._held: list[tuple[Any, dict]] = []
        self._reply_seq: int | None = None
        self._sent_seq: dict[Any, int] = {}
        self._reset_floor: dict[Any, int] = {}
        self._seq = itertools.count(1)
        self._draining = False
        self._append_pending = False
        super().__init__(*args, **kwargs)
        transport = self._SyncObj__transport
        send = transport.send

        def send_numbered(node: Any, message: dict) -> bool:
            # Runs on the tick thread only, as every pysyncobj send does.
            if message.get("type") == "append_entries":
                message["seq"] = self._sent_seq[node] = next(self._seq)
            return send(node, message)

        transport.send = send_numbered

    # -- 1. sync before acknowledging ---------------------------------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (pysyncobj's names)
        self.sync_journal()
        super()._onTick(timeToWait)

    # -- 4. one append per drain of the command queue ------------------------------------

    def _checkCommandsToApply(self) -> None:
        """pysyncobj without batching sends an append to every follower after *each*
        command it takes from the queue (each pickled, compressed and encrypted on its
        own). Here the queue is drained first and its entries go out together, still in
        the same tick, so the latency stays that of the unbatched mode."""
        self._draining = True
        try:
            super()._checkCommandsToApply()
        finally:
            self._draining = False
        if self._append_pending:
            self._append_pending = False
            if self._SyncObj__raftState == _RAFT_STATE.LEADER:
                SyncObj._SyncObj__sendAppendEntries(self)

    def _SyncObj__sendAppendEntries(self) -> None:  # pysyncobj's private name: overrides it
        if self._draining:
            self._append_pending = True  # sent once the drain ends
            return
        SyncObj._SyncObj__sendAppendEntries(self)

    def sync_journal(self) -> None:
        """Syncs the journal, then sends the answers that waited for it, in order."""
        raft_log = self._SyncObj__raftLog
        sync = getattr(raft_log, "sync", None)
        if sync is not None:
            sync()
        held, self._held = self._held, []
        for node, message in held:
            self._SyncObj__transport.send(node, message)

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False,  # noqa: N802
                                  nextNodeIdx: int | None = None,  # noqa: N803
                                  success: bool = False) -> None:
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        message = {"type": "next_node_idx", "next_node_idx": nextNodeIdx, "reset": reset,
                   "success": success, "term": self._SyncObj__raftCurrentTerm,
                   "seq": self._reply_seq}
        if self._held or getattr(self._SyncObj__raftLog, "dirty", False):
            self._held.append((node, message))  # sent by sync_journal, after the sync
        else:
            self._SyncObj__transport.send(node, message)

    # -- message dispatch ---------------------------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: dict) -> None:  # noqa: N802
        kind = message.get("type")
        if kind == "next_node_idx":
            self._on_append_answer(node, message)
            return
        self._reply_seq = message.get("seq")
        if (kind == "append_entries" and "prevLogIdx" in message
                and message["term"] >= self._SyncObj__raftCurrentTerm):
            self._follow(node, message)
            self._on_append(node, message)
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _follow(self, node: Any, message: dict) -> None:
        """What pysyncobj does on any append from a current leader (unchanged)."""
        if message["term"] > self._SyncObj__raftCurrentTerm:
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = monotonic() + self._SyncObj__generateRaftTimeout()
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        if message["term"] > self._SyncObj__raftCurrentTerm:
            self._SyncObj__setCurrentTerm(message["term"], None)
        self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        self._SyncObj__leaderCommitIndex = message["commit_index"]

    # -- 2. follower append -------------------------------------------------------------

    def _on_append(self, node: Any, message: dict) -> None:
        entries = self._received_entries(node, message)
        if entries is None:
            return
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        prev = self._SyncObj__getEntries(prev_idx, 1)
        if not prev:  # past our end, or inside our snapshot: tell where we are
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=True)
            return
        if prev[0][2] != prev_term:
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=prev_idx, success=False, reset=True)
            return
        self._append_from(self._first_new(entries))
        last_verified = entries[-1][1] if entries else prev_idx
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=last_verified + 1, success=True)
        self._advance_commit(message["commit_index"], last_verified)

    def _received_entries(self, node: Any, message: dict) -> list | None:
        """The append's entries; a large entry comes in pieces (None until the last)."""
        transmission = message.get("transmission")
        if transmission is None:
            return message.get("entries", [])
        if transmission == "start":
            self._SyncObj__recvTransmission = message["data"]
        elif transmission in ("process", "finish"):
            self._SyncObj__recvTransmission += message["data"]
        else:
            raise ValueError(f"unknown transmission {transmission!r}")
        if transmission != "finish":
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=False)
            return None
        entry = pickle.loads(self._SyncObj__recvTransmission)
        self._SyncObj__recvTransmission = ""
        return [entry]

    def _first_new(self, entries: list) -> list:
        """Drops entries we hold with the same term; cuts our log at the first conflict."""
        for position, entry in enumerate(entries):
            ours = self._SyncObj__getEntries(entry[1], 1)
            if ours and ours[0][2] == entry[2]:
                continue
            if ours:
                self._truncate_from(entry[1])
            return entries[position:]
        return []

    def _truncate_from(self, idx: int) -> None:
        if idx <= self._SyncObj__raftLastApplied:
            log.critical("truncating already-applied log entries from index %d (last "
                         "applied: %d): a committed entry conflicts with the leader's log",
                         idx, self._SyncObj__raftLastApplied)
        if self._SyncObj__conf.dynamicMembershipChange:
            for entry in reversed(self._SyncObj__getEntries(idx)):
                change = self._SyncObj__parseChangeClusterRequest(entry[0])
                if change is not None:
                    self._SyncObj__doChangeCluster(change, reverse=True)
        self._SyncObj__deleteEntriesFrom(idx)

    def _append_from(self, entries: list) -> None:
        raft_log = self._SyncObj__raftLog
        for entry in entries:
            raft_log.add(*entry)
        if self._SyncObj__conf.dynamicMembershipChange:
            for entry in entries:
                change = self._SyncObj__parseChangeClusterRequest(entry[0])
                if change is not None:
                    self._SyncObj__doChangeCluster(change)

    def _advance_commit(self, leader_commit: int, last_verified: int) -> None:
        # Only entries this append matched against the leader's log may be committed:
        # entries past them may be left over from an old term.
        last = self._SyncObj__getCurrentLogIndex()
        if self._SyncObj__raftCommitIndex > last:
            self._SyncObj__raftCommitIndex = last
        target = min(leader_commit, last_verified, last)
        if target > self._SyncObj__raftCommitIndex:
            self._SyncObj__raftCommitIndex = target
        self._SyncObj__raftLog.setRaftCommitIndex(self._SyncObj__raftCommitIndex)

    # -- 3. leader: answers to appends --------------------------------------------------

    def _on_append_answer(self, node: Any, message: dict) -> None:
        if self._SyncObj__raftState != _RAFT_STATE.LEADER:
            return
        next_index = self._SyncObj__raftNextIndex
        match_index = self._SyncObj__raftMatchIndex
        if node not in next_index:
            return
        term, seq = message.get("term"), message.get("seq")
        if term is not None and term != self._SyncObj__raftCurrentTerm:
            return  # an answer to an earlier leadership
        self._SyncObj__lastResponseTime[node] = monotonic()
        wanted = message["next_node_idx"]
        if message["reset"]:
            if seq is not None and seq <= self._reset_floor.get(node, 0):
                return  # answers an append sent before we last moved this follower
            next_index[node] = wanted
            self._reset_floor[node] = self._sent_seq.get(node, 0)
        if message["success"] and match_index[node] < wanted - 1:
            match_index[node] = wanted - 1
            # Appends sent since this one are in flight: do not send their entries again.
            next_index[node] = max(next_index[node], wanted)
