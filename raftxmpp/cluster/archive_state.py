"""The message archive's state-machine ops (XEP-0313); ClusterState runs them.

Rows go to the node's on-disk ArchiveStore (raftxmpp.cluster.archive) at the op's
position in the log, so a replayed op writes nothing twice. Preferences are small and
stay in the replicated in-memory state. Like every op: no clock, no randomness; a
malformed command is refused before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raftxmpp.cluster.state import ClusterState, Command

MAX_ROWS = 2000  # rows of one archive_append: a batch, flushed by size and time
MAX_STANZA = 262144  # bytes of one archived stanza (the c2s stanza limit's default)
MAX_PREF_JIDS = 1000
DEFAULTS = ("always", "never", "roster")


class Refused(Exception):
    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text


def _position(state: ClusterState) -> int:
    """This command's place in the log: the same count on every node (apply adds one
    after the op ran)."""
    return state.applied + 1


def _jid(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 3071:
        raise Refused("bad-request", f"{what} must be a JID")
    return value


def _row(row: Any) -> tuple:
    if not isinstance(row, list | tuple) or len(row) != 6:
        raise Refused("bad-request", "an archive row has six fields")
    owner, sid, ts, with_full, outgoing, stanza = row
    _jid(owner, "owner")
    _jid(with_full, "with")
    if not isinstance(sid, str) or not 0 < len(sid) <= 64:
        raise Refused("bad-request", "stanza-id must be a string of 1 to 64 chars")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise Refused("bad-request", "ts must be a time")
    if not isinstance(outgoing, bool):
        raise Refused("bad-request", "outgoing must be true or false")
    if not isinstance(stanza, bytes) or len(stanza) > MAX_STANZA:
        raise Refused("bad-request", f"stanza must be at most {MAX_STANZA} bytes")
    return owner, sid, float(ts), with_full, outgoing, stanza


def op_archive_append(state: ClusterState, command: Command) -> int:
    """Archives a batch of messages (several accounts: the archive is append-only and
    per-row, so a batch needs no cross-account invariant); returns how many were new."""
    rows = command["rows"]
    keep = command.get("max_per_account", 0)
    if not isinstance(rows, list | tuple) or not 0 < len(rows) <= MAX_ROWS:
        raise Refused("bad-request", f"rows must be a list of 1 to {MAX_ROWS}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise Refused("bad-request", "max_per_account must be a non-negative integer")
    checked = [_row(row) for row in rows]
    # Rows of an account (or room, XEP-0045's archive) removed meanwhile are not archived
    # (it has no archive now).
    checked = [row for row in checked if row[0] in state.accounts or row[0] in state.muc_rooms]
    return state.archive.append(_position(state), checked, keep)


def op_archive_purge(state: ClusterState, command: Command) -> int:
    """Deletes archived messages: of one account (`jid`) or all, older than `before`
    (a time in the command: retention computed by the submitter) or all of them."""
    jid = command.get("jid")
    before = command.get("before")
    if jid is not None:
        _jid(jid, "jid")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int | float)):
        raise Refused("bad-request", "before must be a time")
    if jid is None and before is None:
        raise Refused("bad-request", "purging every archive needs a time")
    return state.archive.purge(_position(state), jid, before)


def op_archive_prefs_set(state: ClusterState, command: Command) -> dict:
    """XEP-0313 §6: the default (always, never, roster) and the JIDs always or never
    archived."""
    jid = _jid(command["jid"], "jid")
    default = command["default"]
    always, never = command.get("always", []), command.get("never", [])
    if default not in DEFAULTS:
        raise Refused("bad-request", "default must be always, never or roster")
    for name, jids in (("always", always), ("never", never)):
        if not isinstance(jids, list | tuple) or len(jids) > MAX_PREF_JIDS:
            raise Refused("bad-request", f"{name} must be a list of at most {MAX_PREF_JIDS} JIDs")
        for item in jids:
            _jid(item, name)
    if jid not in state.accounts:
        raise Refused("item-not-found", f"no account {jid}")
    prefs = {"default": default, "always": sorted(set(always)), "never": sorted(set(never))}
    state.archive_prefs[jid] = prefs
    return dict(prefs)


def forget_account(state: ClusterState, jid: str) -> None:
    """An account removed: its preferences and every archived message go."""
    state.archive_prefs.pop(jid, None)
    state.archive.purge(_position(state), jid, None)


OPS: dict[str, Callable[[ClusterState, Command], Any]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("op_") and callable(fn)
}
