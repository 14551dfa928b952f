"""The store's named archive operations (mixed into raftxmpp.cluster.store.Store).

Writes are the ops of raftxmpp.cluster.archive_state; reads come from this node's
on-disk archive (raftxmpp.cluster.archive) through its reader connection, which never
waits for apply, and preferences from the replicated state under the read lock.
"""

from __future__ import annotations

import copy
from typing import Any

from raftxmpp.cluster.archive import Archived, Page, Query, Row


class ArchiveStoreOps:
    """Named archive operations; needs the Store's `_write`, `_read` and `raft`."""

    async def _write(self, op: str, **args: Any) -> Any:  # provided by Store
        raise NotImplementedError

    def _read(self, query):  # provided by Store
        raise NotImplementedError

    async def archive_append(self, rows: list[Row], max_per_account: int = 0) -> int:
        return await self._write("archive_append", rows=rows, max_per_account=max_per_account)

    async def archive_purge(self, jid: str | None, before: float | None) -> int:
        return await self._write("archive_purge", jid=jid, before=before)

    async def archive_prefs_set(self, jid: str, default: str, always: list[str],
                                never: list[str]) -> dict:
        return await self._write("archive_prefs_set", jid=jid, default=default, always=always,
                                 never=never)

    def archive_prefs(self, jid: str) -> dict | None:
        return self._read(lambda s: copy.deepcopy(s.archive_prefs.get(jid)))

    def archive_wants(self, owner: str, other: str, default: str) -> bool:
        """Whether `owner` archives messages with the bare JID `other` (XEP-0313 §6);
        runs per message, so no copy is made."""
        def query(s) -> bool:
            prefs = s.archive_prefs.get(owner)
            if prefs is not None:
                if other in prefs["never"]:
                    return False
                if other in prefs["always"]:
                    return True
            mode = prefs["default"] if prefs is not None else default
            if mode == "roster":
                return other in s.rosters.get(owner, {}).get("items", {})
            return mode == "always"

        return self._read(query)

    def archive_query(self, query: Query) -> Page:
        return self.raft.state.archive.query(query)

    def archive_get(self, owner: str, sid: str) -> Archived | None:
        return self.raft.state.archive.get(owner, sid)

    def archive_bounds(self, owner: str):
        return self.raft.state.archive.bounds(owner)

    def archive_count(self, owner: str) -> int:
        return self.raft.state.archive.count(owner)

    def archive_totals(self) -> tuple[int, int]:
        return self.raft.state.archive.totals()
