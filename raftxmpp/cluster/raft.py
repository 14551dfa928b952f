"""The bridge between trio and pysyncobj's Raft thread.

pysyncobj runs one tick thread that does its socket I/O, journal writes, apply and
every callback. The rules that keep the two worlds apart (../shared/notes/pysyncobj.md):
- submissions are non-blocking calls with a callback; the callback only hands the
  result to trio with `TrioToken.run_sync_soon`, never blocks the Raft thread;
- definite outcomes (issue 12): pysyncobj fails a command at once when no leader is
  known (commandsWaitLeader=False: nothing waits in its queue for a future leader),
  and the state machine rejects a command older than its replicated clock's expiry
  window. So a write ends as committed, RaftUnavailable (surely never applies) or
  RaftOutcomeUnknown (may still apply, but only until the window passes); the leader
  ticks that clock (`run_clock`);
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
from raftxmpp.cluster.journal import DurablePath, check_data_dir, durable_write
from raftxmpp.cluster.replication import DurableSyncObj
from raftxmpp.cluster.state import (
    EXPIRED,
    EXPIRY_SECONDS,
    OP_VERSIONS,
    VERSION,
    ClusterState,
    Command,
    Result,
    cluster_version,
)
from raftxmpp.config import ClusterSection

log = logging.getLogger("raftxmpp.raft")

T = TypeVar("T")

# pysyncobj outcomes after which the command surely was not appended anywhere (or was
# overwritten), and those after which it may have been: all safe to retry with the
# same id, but only the first kind lets us tell the caller "not applied".
NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER,
}
AMBIGUOUS = {FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME}
RETRYABLE = NOT_APPLIED | AMBIGUOUS
# A submit deadline must end well inside the state machine's expiry window.
MAX_SUBMIT_SECONDS = EXPIRY_SECONDS - 10.0
TICK_SECONDS = 1.0
ANSWER_GRACE = 0.5


# Bounds on what a stranger can make the Raft port buffer (issue 13, finding 5).
raft_port.install()


class RaftUnavailable(Exception):
    """The write did not commit; as raised for this class itself, it never will.

    Its subclass RaftOutcomeUnknown is the one case where it still may: catch that
    first where the difference matters. Both mean "try again" to a client (a stanza
    error of type wait)."""


class RaftOutcomeUnknown(RaftUnavailable):
    """No answer within the deadline after the command may have reached the log: it
    may still apply, until the cluster clock passes its time + EXPIRY_SECONDS. A retry
    with the same command id settles it (applied once, or rejected as expired)."""


def write_failure(exc: RaftUnavailable) -> tuple[str, str]:
    """(stanza error condition, text) for a write that did not commit; the error type
    is always "wait": the client should try again, with the same request id."""
    if isinstance(exc, RaftOutcomeUnknown):
        return ("remote-server-timeout", "the cluster did not confirm this in time; send the "
                "same request again to learn whether it was done")
    return ("resource-constraint", "the cluster cannot commit now; nothing was changed; "
            "try again")


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
            try:
                result = self.state.apply(command)
            except Exception as exc:  # pysyncobj would retry the entry forever
                log.exception("apply failed for a command")
                result = ("error", "internal-server-error", f"apply failed: {exc!r}")
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


def _clock_rejected(result: Result) -> bool:
    return (isinstance(result, tuple) and len(result) == 3 and result[0] == "error"
            and isinstance(result[2], str) and result[2].startswith(EXPIRED + ":"))


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
            # Fail at once without a leader instead of queueing for whichever comes next.
            commandsWaitLeader=False,
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
        return {"v": OP_VERSIONS.get(op, VERSION), "id": f"{self.node_tag}:{self._sequence}",
                "ts": time.time(), "op": op, **args}

    def supports(self, op: str) -> bool:
        """Whether every member runs code that applies `op` (rolling upgrades: a newer
        op waits until the last member has been upgraded)."""
        wanted = OP_VERSIONS.get(op, VERSION)
        if wanted == VERSION:
            return True
        members = self.members()
        return self.read(lambda s: cluster_version(s, members)) >= wanted

    async def submit(self, command: Command, timeout: float = 5.0) -> Result:
        """Commits a command and returns its result.

        Raises RaftUnavailable when it surely never applies (no leader, refused, or
        rejected as expired), RaftOutcomeUnknown when it may still apply."""
        if timeout > MAX_SUBMIT_SECONDS:
            raise ValueError(f"a submit deadline above {MAX_SUBMIT_SECONDS:g}s could outlive "
                             "the expiry window")
        started = time.perf_counter()
        deadline = trio.current_time() + timeout
        ambiguous: list[bool] = []  # set once an attempt may have reached a log
        delay = 0.02
        while True:
            # The last attempt gets a moment past the deadline: pysyncobj answers "no
            # leader" within a tick, and that answer is worth a definite outcome.
            answer = await self._submit_once(command, deadline + ANSWER_GRACE, ambiguous)
            if answer is not None:
                result, reason = answer
                if reason == FAIL_REASON.SUCCESS and not _clock_rejected(result):
                    metrics.RAFT_COMMIT_SECONDS.observe(time.perf_counter() - started)
                    return result
                if reason == FAIL_REASON.SUCCESS and "behind" in result[2]:
                    # Every copy carries the same time: none of them can apply any more.
                    metrics.RAFT_WRITE_FAILURES.labels("unavailable").inc()
                    raise RaftUnavailable(result[2])
                if reason != FAIL_REASON.SUCCESS and reason not in RETRYABLE:
                    metrics.RAFT_WRITE_FAILURES.labels("unavailable").inc()
                    raise RaftUnavailable(f"command refused by raft (reason {reason})")
            # Not applied (no leader yet, a clock not yet ticked after a restart) or
            # ambiguous: the same id again, so it applies at most once.
            if answer is None or trio.current_time() + delay >= deadline:
                break
            await trio.sleep(delay)
            delay = min(delay * 2, 0.25)
        if ambiguous:
            metrics.RAFT_WRITE_FAILURES.labels("unknown").inc()
            raise RaftOutcomeUnknown(
                f"no commit within {timeout:g}s (no quorum, or a slow cluster): the write may "
                f"still apply within {EXPIRY_SECONDS:g}s; retry to learn whether it did")
        metrics.RAFT_WRITE_FAILURES.labels("unavailable").inc()
        raise RaftUnavailable(f"no commit within {timeout:g}s: the cluster has no leader "
                              "(no quorum); nothing was applied")

    async def _submit_once(self, command: Command, until: float,
                           ambiguous: list[bool]) -> tuple[Result, int] | None:
        """One attempt; None when no answer came by `until` (then it may apply)."""
        handoff = _Handoff()
        self.consumer.apply(command, callback=handoff.callback)
        try:
            with trio.move_on_at(until):
                await handoff.done.wait()
        finally:
            if not handoff.outcome:
                ambiguous.append(True)  # the command may be in some log
        if not handoff.outcome:
            return None
        result, reason = handoff.outcome[0]
        if reason in AMBIGUOUS:
            ambiguous.append(True)
        return result, reason

    async def run_clock(self) -> None:
        """While this node leads, ticks the state machine's clock (EXPIRY_SECONDS)."""
        while True:
            await trio.sleep(TICK_SECONDS)
            if self._syncobj is None or not self._syncobj._isLeader() or not self.supports("tick"):
                continue
            with contextlib.suppress(RaftUnavailable):
                await self.submit(self.command("tick"), timeout=TICK_SECONDS * 3)

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

    async def read_frozen(self, query: Callable[[ClusterState], str]) -> str:
        """Runs a query over the whole state without holding up the Raft thread.

        A query that walks every account (the digest: seconds at 100,000 accounts) must
        not hold the apply lock: no heartbeats meanwhile, an election. The state is
        frozen by fork() under the lock instead (copy-on-write: the lock is held for the
        fork itself, page tables only) and the query runs in the child, which sends its
        text back through a pipe.
        """
        return await trio.to_thread.run_sync(self._read_in_child, query)

    def _read_in_child(self, query: Callable[[ClusterState], str]) -> str:
        read_end, write_end = os.pipe()
        with self.consumer.lock:
            pid = os.fork()
            if pid == 0:  # the child: only the query, no locks, no I/O but the pipe
                status = 1
                try:
                    os.close(read_end)
                    answer = memoryview(query(self.state).encode())
                    while answer:
                        answer = answer[os.write(write_end, answer):]
                    status = 0
                finally:
                    os._exit(status)
        os.close(write_end)
        chunks = []
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(65536):
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"the state query failed in its child (status {status})")
        return b"".join(chunks).decode()

    # -- membership and status ---------------------------------------------------------

    async def change_membership(self, action: str, address: str, timeout: float = 10.0) -> None:
        handoff = _Handoff()
        syncobj = self.syncobj
        change = syncobj.addNodeToCluster if action == "add" else syncobj.removeNodeFromCluster
        change(address, callback=handoff.callback)
        with trio.move_on_after(timeout):
            await handoff.done.wait()
        if not handoff.outcome:
            # pysyncobj applies a change as soon as it is appended: it may still commit.
            raise RaftOutcomeUnknown(f"{action} {address}: no commit within {timeout:g}s; "
                                     "it may still take effect")
        reason = handoff.outcome[0][1]
        if reason in AMBIGUOUS:
            raise RaftOutcomeUnknown(f"{action} {address}: the leader changed meanwhile; it "
                                     "may still take effect")
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
        secret = path.read_text().strip()
        if secret:
            return secret
        # Empty: created, then a power loss before its contents reached the disk (found by
        # chaos' power_loss). Only a single node uses it, for its own Raft port: a new one.
        log.warning("%s is empty (a power loss?); making a new one", path)
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    durable_write(path, secret.encode())  # synced, with its directory entry
    return secret
