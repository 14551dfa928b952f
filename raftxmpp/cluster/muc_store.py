"""The store's named multi-user chat operations (mixed into raftxmpp.cluster.store.Store).

Writes are the ops of raftxmpp.cluster.muc_state, returning after commit and apply
here; reads run under the Raft read lock and return copies. `actor` is the bare JID
acting, or "" for the operator.
"""

from __future__ import annotations

import copy
from typing import Any


class MucStore:
    """Named room operations; needs the Store's `_write` and `_read`."""

    async def _write(self, op: str, **args: Any) -> Any:  # provided by Store
        raise NotImplementedError

    def _read(self, query):  # provided by Store
        raise NotImplementedError

    # -- writes -----------------------------------------------------------------------------

    async def muc_create(self, room: str, actor: str, config: dict, locked: bool,
                         max_rooms: int, max_rooms_per_owner: int) -> bool:
        return await self._write("muc_create", jid=room, actor=actor, config=config,
                                 locked=locked, max_rooms=max_rooms,
                                 max_rooms_per_owner=max_rooms_per_owner)

    async def muc_configure(self, room: str, actor: str, config: dict) -> dict:
        return await self._write("muc_configure", jid=room, actor=actor, config=config)

    async def muc_destroy(self, room: str, actor: str, temporary_only: bool = False) -> bool:
        return await self._write("muc_destroy", jid=room, actor=actor,
                                 temporary_only=temporary_only)

    async def muc_set_affiliations(self, room: str, actor: str,
                                   changes: dict[str, str]) -> dict[str, str]:
        return await self._write("muc_set_affiliations", jid=room, actor=actor, changes=changes)

    async def muc_register_nick(self, room: str, actor: str, nick: str) -> dict[str, str]:
        return await self._write("muc_register_nick", jid=room, actor=actor, nick=nick)

    async def muc_subject(self, room: str, text: str, nick: str) -> bool:
        return await self._write("muc_subject", jid=room, text=text, nick=nick)

    # -- reads --------------------------------------------------------------------------------

    def muc_room(self, room: str) -> dict | None:
        """A room's record (config, affiliations, subject, created, locked), copied."""
        return self._read(lambda s: copy.deepcopy(s.muc_rooms.get(room)))

    def muc_affiliation(self, room: str, bare: str) -> str:
        return self._read(lambda s: s.muc_rooms.get(room, {}).get("affiliations", {})
                          .get(bare, "none"))

    def muc_rooms(self, domain: str | None = None) -> dict[str, dict]:
        """{room: {"config", "locked", "subject", "affiliations" count}} of a service."""
        def query(s) -> dict[str, dict]:
            return {room: {"config": dict(r["config"]), "locked": r["locked"],
                           "subject": copy.deepcopy(r["subject"]),
                           "affiliations": len(r["affiliations"])}
                    for room, r in sorted(s.muc_rooms.items())
                    if domain is None or room.rpartition("@")[2] == domain}

        return self._read(query)

    def muc_room_count(self) -> int:
        return self._read(lambda s: len(s.muc_rooms))
