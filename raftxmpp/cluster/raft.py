"""The bridge between trio and pysyncobj's Raft thread.

pysyncobj runs one tick thread that does its socket I/O, journal writes, apply and
every callback. The rules that keep the two worlds apart (../shared/notes/pysyncobj.md):
- submissions are non-blocking calls with a callback; the callback only hands the
  result to trio with `TrioToken.run_sync_soon`, never blocks the Raft thread;
- every submission has a trio deadline, because queued commands never time out;
- an ambiguous outcome (leader changed, unknown) is retried with the *same* command
  id, and the state machine's dedup table makes it apply once;
- reads from trio take the same lock apply holds, so they never see half a command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from raftxmpp import metrics
from raftxmpp.cluster import raft_port
from raftxmpp.cluster.archive import ArchiveStore
from raftxmpp.cluster.journal import DurablePath, check_data_dir
from raftxmpp.cluster.replication import DurableSyncObj
from raftxmpp.cluster.state import VERSION, ClusterState, Command, Result
from raftxmpp.config import ClusterSection

log = logging.getLogger("raftxmpp.raft")

T = TypeVar("T")

# Outcomes after which the command may or may not have been applied, or surely was
# not: all safe to retry with the same id.
RETRYABLE = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.UNKNOWN_OUTCOME,
}


# Bounds on what a stranger can make the Raft port buffer (issue 13, finding 5).
raft_port.install()


class RaftUnavailable(Exception):
    """No commit within the deadline: no quorum, or the cluster is electing a leader."""


class StateConsumer(SyncObjConsumer):
    """Puts ClusterState behind pysyncobj, with one replicated entry point."""

    def __init__(self, state: ClusterState, on_applied: Callable[[Command, Result], None] | None):
        # Attributes set before SyncObjConsumer.__init__ are left out of snapshots.
        self.lock = threading.RLock()
        self.state = state
        self.on_applied = on_applied
        super().__init__()

    @replicated
    def apply(self, command: Command) -> Result:
        with self.lock:
            result = self.state.apply(command)
        if self.on_applied is not None:
            try:
                self.on_applied(command, result)
            except Exception:
                log.exception("apply hook failed for op %s", command.get("op"))
        return result

    def _serialize(self) -> dict:
        with self.lock:
            return self.state.snapshot()

    def _deserialize(self, data: dict) -> None:
        with self.lock:
            self.state.restore(data)


class _Handoff:
    """Carries one pysyncobj callback result from the Raft thread into trio."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()
        self.outcome: list[tuple[Any, int]] = []

    def callback(self, result: Any, reason: int) -> None:
        # Runs on the Raft thread (or on ours for QUEUE_FULL): hand over, never block.
        def deliver() -> None:
            self.outcome.append((result, reason))
            self.done.set()

        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(deliver)


def check_port_free(address: str) -> None:
    """pysyncobj retries a failed bind forever at 100% CPU; find out before it starts."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))


class RaftNode:
    """One member of the Raft group: submit commands, read state, report status."""

    def __init__(
        self,
        cluster: ClusterSection,
        data_dir: Path,
        secret: str,
        on_applied: Callable[[Command, Result], None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.self_address = str(cluster.raft)
        self.state = ClusterState()
        # The message archive lives beside the Raft files, written by apply only.
        self.state.archive = ArchiveStore(data_dir / "archive.sqlite3")
        self.consumer = StateConsumer(self.state, on_applied)
        self.node_tag = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._conf = SyncObjConf(
            password=secret,
            # Without it pysyncobj binds 0.0.0.0 whatever the configured host is.
            bindAddress=str(cluster.raft),
            # Synced before every acknowledgement: raftxmpp.cluster.journal.
            journalFile=DurablePath(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.dump"),
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=cluster.heartbeat_period,
            raftMinTimeout=cluster.election_timeout_min,
            raftMaxTimeout=cluster.election_timeout_max,
            connectionTimeout=max(2.0, cluster.election_timeout_max),
            connectionRetryTime=0.5,
            leaderFallbackTimeout=max(1.0, cluster.election_timeout_max * 2),
            logCompactionMinEntries=20_000,
            logCompactionMinTime=cluster.snapshot_interval,
            logCompactionSplit=True,
            commandsQueueSize=20_000,
            maxBindRetries=3,
            onReady=on_ready,
        )
        self._peers = [str(p) for p in cluster.peers]
        self._fresh_started = 0
        self._fresh_completed = 0
        self._fresh_running = False
        self._fresh_changed = trio.Event()
        self._syncobj: SyncObj | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, peers: list[str] | None = None) -> None:
        """Starts Raft with the configured peers, or `peers` (from a join) when given."""
        check_port_free(self.self_address)
        check_data_dir(Path(self._conf.journalFile), Path(self._conf.fullDumpFile))
        members = self._peers if peers is None else peers
        self._syncobj = DurableSyncObj(self.self_address, members, self._conf, consumers=[self.consumer])

    def members(self) -> set[str]:
        """Every Raft member's address, this node's included, as this node sees it."""
        for _ in range(5):
            try:
                return {self.self_address} | {node.id for node in self.syncobj.otherNodes}
            except RuntimeError:  # the set changed on the tick thread while we copied it
                continue
        return {self.self_address}

    def stop(self) -> None:
        if self._syncobj is not None:
            self._syncobj.destroy_synchronous()
            self._syncobj = None

    @property
    def syncobj(self) -> SyncObj:
        if self._syncobj is None:
            raise RuntimeError("raft node not started")
        return self._syncobj

    # -- writes ----------------------------------------------------------------------

    def command(self, op: str, **args: Any) -> Command:
        """A new command with a cluster-unique id and the wall-clock time it was made."""
        self._sequence += 1
        return {"v": VERSION, "id": f"{self.node_tag}:{self._sequence}", "ts": time.time(),
                "op": op, **args}

    async def submit(self, command: Command, timeout: float = 5.0) -> Result:
        """Commits a command and returns its result; raises RaftUnavailable on timeout."""
        started = time.perf_counter()
        with trio.move_on_after(timeout):
            delay = 0.02
            while True:
                result, reason = await self._submit_once(command)
                if reason == FAIL_REASON.SUCCESS:
                    metrics.RAFT_COMMIT_SECONDS.observe(time.perf_counter() - started)
                    return result
                if reason not in RETRYABLE:
                    raise RaftUnavailable(f"command refused by raft (reason {reason})")
                await trio.sleep(delay)
                delay = min(delay * 2, 0.25)
        raise RaftUnavailable(f"no commit within {timeout:g}s: the cluster has no quorum")

    async def _submit_once(self, command: Command) -> tuple[Result, int]:
        handoff = _Handoff()
        self.consumer.apply(command, callback=handoff.callback)
        await handoff.done.wait()
        return handoff.outcome[0]

    async def barrier(self, timeout: float = 5.0) -> None:
        """Returns once everything committed before the call is applied here."""
        await self.submit(self.command("barrier"), timeout)

    async def fresh(self, timeout: float = 5.0) -> None:
        """A linearizable read point, shared: concurrent callers ride one barrier.

        Reads are served from this node's applied state, which on a node cut off from
        the majority can be stale (an old password would still work there). Waiting
        for a barrier that *started after the call* makes the read that follows see
        every write acknowledged before it, or fail with RaftUnavailable.
        """
        if self.members() == {self.self_address}:
            return  # the only member applied every acknowledged write before acking it
        wanted = self._fresh_started + 1
        with trio.move_on_after(timeout):
            while self._fresh_completed < wanted:
                if self._fresh_running:
                    await self._fresh_changed.wait()
                    continue
                await self._run_fresh_barrier(timeout)
            return
        raise RaftUnavailable(f"no commit within {timeout:g}s: the cluster has no quorum")

    async def _run_fresh_barrier(self, timeout: float) -> None:
        self._fresh_running = True
        self._fresh_started += 1
        generation = self._fresh_started
        try:
            await self.barrier(timeout)
            self._fresh_completed = max(self._fresh_completed, generation)
        finally:
            self._fresh_running = False
            changed, self._fresh_changed = self._fresh_changed, trio.Event()
            changed.set()

    # -- reads -----------------------------------------------------------------------

    def read(self, query: Callable[[ClusterState], T]) -> T:
        """Runs a query against a consistent state; the query must return copies."""
        with self.consumer.lock:
            return query(self.state)

    # -- membership and status ---------------------------------------------------------

    async def change_membership(self, action: str, address: str, timeout: float = 10.0) -> None:
        handoff = _Handoff()
        syncobj = self.syncobj
        change = syncobj.addNodeToCluster if action == "add" else syncobj.removeNodeFromCluster
        change(address, callback=handoff.callback)
        with trio.move_on_after(timeout):
            await handoff.done.wait()
        if not handoff.outcome:
            raise RaftUnavailable(f"{action} {address}: no commit within {timeout:g}s")
        reason = handoff.outcome[0][1]
        if reason != FAIL_REASON.SUCCESS:
            if reason == FAIL_REASON.REQUEST_DENIED:
                raise RaftUnavailable(
                    f"{action} {address}: refused by the leader (a leader cannot remove "
                    "itself: stop it first, or wait until another node leads)")
            raise RaftUnavailable(f"{action} {address}: refused (reason {reason})")

    def status(self) -> dict:
        """Raft facts for `cluster status`; no secret, no key material."""
        for _ in range(5):
            try:
                raw = self.syncobj.getStatus()
                break
            except RuntimeError:  # a dict resized on the tick thread while we read it
                continue
        else:
            return {"self": self.self_address, "state": "unknown"}
        leader = raw.get("leader")
        members = {self.self_address: True}
        member_lag = {}
        for key, value in raw.items():
            if key.startswith("partner_node_status_server_"):
                members[key.removeprefix("partner_node_status_server_")] = value == 2
            elif key.startswith("match_idx_server_") and raw["state"] == 2:
                member_lag[key.removeprefix("match_idx_server_")] = max(
                    0, raw["commit_idx"] - value)
        return {
            "self": self.self_address,
            "role": {0: "follower", 1: "candidate", 2: "leader"}.get(raw["state"], "unknown"),
            "leader": str(leader) if leader is not None else None,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "applied_index": raw["last_applied"],
            "leader_commit_index": raw["leader_commit_idx"],
            "lag": max(0, (raw["leader_commit_idx"] or 0) - raw["last_applied"]),
            "member_lag": member_lag,
            "has_quorum": raw["has_quorum"],
            "ready": self.syncobj.isReady(),
            "members": members,
            "log_length": raw["log_len"],
        }


def load_or_create_local_secret(data_dir: Path) -> str:
    """A single node still protects its Raft port: with a random secret kept in the data dir."""
    path = data_dir / "raft.secret"
    if path.exists():
        return path.read_text().strip()
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret
