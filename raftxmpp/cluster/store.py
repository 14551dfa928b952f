"""The durable store as the XMPP layer sees it: named operations, awaited in trio.

Writes return only after Raft committed and applied them (so a client is never told
"done" early); reads come from this node's applied state and return copies. A
write the state machine refused raises `StoreError` carrying an XMPP error condition;
a write that could not commit raises `RaftUnavailable` (it never applies) or its
subclass `RaftOutcomeUnknown` (it may still apply, within the state machine's expiry
window; a retry with the same command id settles it: see `client_request`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import trio

from raftxmpp import credentials
from raftxmpp.cluster.archive_store import ArchiveStoreOps
from raftxmpp.cluster.muc_store import MucStore
from raftxmpp.cluster.presence_index import SubscriberIndex
from raftxmpp.cluster.pubsub_store import PubsubStore
from raftxmpp.cluster.quotas import QUOTAS_SINCE, Quotas
from raftxmpp.cluster.raft import RaftNode, RaftOutcomeUnknown, RaftUnavailable
from raftxmpp.cluster.state import ClusterState, cluster_version

__all__ = ["Store", "StoreError", "RaftUnavailable", "RaftOutcomeUnknown", "client_request"]


# The client request whose handling is under way in this task: [key, writes so far].
_request: contextvars.ContextVar[list | None] = contextvars.ContextVar("raftxmpp_request",
                                                                       default=None)


@contextlib.contextmanager
def client_request(key: str | None) -> Iterator[None]:
    """Writes made while handling one client request get command ids derived from `key`
    (unique per session and request id) and their order, so the client's retry of the
    same request after a "wait" error reuses them: the state machine's dedup then
    returns what the first attempt did, if it applied, instead of doing it twice."""
    token = _request.set([key, 0] if key else None)
    try:
        yield
    finally:
        _request.reset(token)


class StoreError(Exception):
    """The state machine refused a command; `condition` is an XMPP stanza error name."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text


class Store(PubsubStore, MucStore, ArchiveStoreOps):  # pubsub_store, muc_store, archive_store
    # Per-account quotas stamped on every command that grows an account's data; the
    # state machine enforces them (raftxmpp.cluster.quotas). The node sets its [limits].
    quotas = Quotas()

    def __init__(self, raft: RaftNode, scram_iterations: int = 4096, timeout: float = 5.0,
                 refuse_writes=None) -> None:
        self.raft = raft
        self.scram_iterations = scram_iterations
        self.timeout = timeout
        self.refuse_writes = refuse_writes or (lambda: False)

    async def _write(self, op: str, **args: Any) -> Any:
        if self.refuse_writes():
            raise RaftUnavailable("this node was removed from the cluster")
        await self._until_supported(op)
        command = self.raft.command(op, **args)
        request = _request.get()
        if request is not None:
            request[1] += 1
            derived = f"{request[0]}\0{request[1]}\0{op}".encode()
            command["id"] = "q:" + hashlib.sha256(derived).hexdigest()[:32]
        result = await self.raft.submit(command, self.timeout)
        if result[0] == "error":
            raise StoreError(result[1], result[2])
        return result[1]

    async def _until_supported(self, op: str) -> None:
        if not await self.supports(op):
            raise RaftUnavailable(f"not every cluster member runs a version that knows {op} yet")

    async def supports(self, op: str) -> bool:
        """Whether every member runs code that knows `op`, waiting a little for it (the
        members advertise their version right after start). A newer op sent earlier
        would be rejected by older nodes and applied by newer ones: a split state."""
        if self.raft.supports(op):
            return True  # the usual case, without a cancel scope per call (every login)
        with trio.move_on_after(self.timeout):
            while not self.raft.supports(op):
                await trio.sleep(0.1)
            return True
        return False

    def _gated(self, limit: int) -> int:
        """A quota field new in version QUOTAS_SINCE, stamped once every member applies
        it: a member running older code would ignore it and accept what the others
        refuse (raftxmpp.cluster.quotas)."""
        members = self.raft.members()
        return limit if self._read(lambda s: cluster_version(s, members)) >= QUOTAS_SINCE else 0

    def _read(self, query):
        return self.raft.read(query)

    async def _derive(self, password: str) -> credentials.Credentials:
        # PBKDF2 costs milliseconds: off the trio thread, and the password goes no further.
        return await trio.to_thread.run_sync(credentials.derive, password, self.scram_iterations)

    # -- accounts -----------------------------------------------------------------------

    async def register(self, jid: str, password: str) -> None:
        await self._write("register", jid=jid, credentials=await self._derive(password))

    async def set_password(self, jid: str, password: str) -> None:
        await self._write("set_credentials", jid=jid, credentials=await self._derive(password))

    async def unregister(self, jid: str) -> None:
        await self._write("unregister", jid=jid)

    def credentials(self, jid: str) -> credentials.Credentials | None:
        return self._read(lambda s: copy.deepcopy(s.accounts.get(jid, {}).get("credentials")))

    def account_exists(self, jid: str) -> bool:
        return self._read(lambda s: jid in s.accounts)

    def accounts(self, host: str | None = None) -> list[str]:
        def query(s: ClusterState) -> list[str]:
            return sorted(j for j in s.accounts if host is None or j.endswith("@" + host))

        return self._read(query)

    async def check_password(self, jid: str, password: str) -> bool:
        creds = self.credentials(jid)
        if creds is None:
            return False
        return await trio.to_thread.run_sync(credentials.verify_password, creds, password)

    # -- roster -------------------------------------------------------------------------

    def roster(self, jid: str) -> dict:
        """{"ver": int, "items": {contact: item}, "pending_in": {contact: request}}.

        A pending request is the serialised <presence type='subscribe'/> to deliver (or,
        stored by older versions, only its status text)."""
        empty = {"ver": 0, "items": {}, "pending_in": {}}
        return self._read(lambda s: copy.deepcopy(s.rosters.get(jid, empty)))

    def subscribers(self, jid: str) -> frozenset[str]:
        """The contacts entitled to the account's presence (subscription from or both);
        no copy of the roster (raftxmpp.cluster.presence_index)."""
        index = self.__dict__.setdefault("_subscriber_index", SubscriberIndex())
        return self._read(lambda s: index.subscribers(s.rosters, jid))

    def subscribers_by_domain(self, jid: str) -> dict[str, tuple[str, ...]]:
        """The same, grouped by the contacts' domain (read-only)."""
        index = self.__dict__.setdefault("_subscriber_index", SubscriberIndex())
        return self._read(lambda s: index.by_domain(s.rosters, jid))

    def roster_item(self, jid: str, contact: str) -> dict | None:
        return self._read(
            lambda s: copy.deepcopy(s.rosters.get(jid, {}).get("items", {}).get(contact))
        )

    async def roster_set(self, jid: str, contact: str, name: str | None, groups: list[str],
                         limit: int | None = None) -> dict:
        limit = self.quotas.roster_items if limit is None else limit
        return await self._write("roster_set", jid=jid, contact=contact, name=name,
                                 groups=groups, limit=limit)

    async def roster_remove(self, jid: str, contact: str) -> dict | None:
        return await self._write("roster_remove", jid=jid, contact=contact)

    async def roster_subscription(self, jid: str, contact: str, event: str,
                                  request: str = "") -> dict:
        """One subscription event; `request` is kept if it becomes a pending request
        (at most quotas.pending_subscriptions of them wait; an item it creates counts
        against quotas.roster_items)."""
        return await self._write("roster_subscription", jid=jid, contact=contact, event=event,
                                 request=request, limit=self.quotas.pending_subscriptions,
                                 item_limit=self._gated(self.quotas.roster_items))

    # -- offline messages ------------------------------------------------------------------

    async def offline_store(self, jid: str, stanza: bytes, limit: int = 0,
                            message_id: str | None = None) -> int:
        return await self._write("offline_store", jid=jid, stanza=stanza, limit=limit,
                                 message_id=message_id or secrets.token_hex(12))

    async def offline_claim(self, jid: str, session: str) -> tuple[list[dict], int]:
        """Claims the account's undelivered offline messages for one session.

        Returns ([{"id", "ts", "stanza"}, ...], redelivered): the messages this session
        now delivers, in queue order, and how many of them an earlier claimer may have
        delivered already (its claim lapsed: it died before `offline_remove`). Another
        session claiming at the same time gets none of them. `session` must be unique
        cluster-wide (raftxmpp.modules.offline uses the node's tag and the bind time).
        """
        claim = await self._write("offline_claim", jid=jid, session=session)
        wanted = set(claim["ids"])

        def query(s: ClusterState) -> list[dict]:
            return [{"id": m["id"], "ts": m["ts"], "stanza": m["stanza"]}
                    for m in s.offline.get(jid, ()) if m["id"] in wanted]

        return self._read(query), claim["redelivered"]

    async def offline_remove(self, jid: str, ids: list[str]) -> int:
        """Deletes delivered offline messages by id; returns how many were still there."""
        return await self._write("offline_remove", jid=jid, ids=list(ids))

    def offline_messages(self, jid: str) -> list[dict]:
        """The queue as this node applied it ({"id", "ts", "stanza"}), claimed or not;
        call `raft.fresh()` first for a read that sees every acknowledged store."""
        return self._read(lambda s: [{"id": m["id"], "ts": m["ts"], "stanza": m["stanza"]}
                                     for m in s.offline.get(jid, ())])

    def offline_count(self, jid: str) -> int:
        return self._read(lambda s: len(s.offline.get(jid, ())))

    # -- vCard, private XML, blocking ---------------------------------------------------------

    def vcard(self, jid: str) -> str | None:
        return self._read(lambda s: s.vcards.get(jid))

    async def vcard_set(self, jid: str, vcard: str) -> None:
        await self._write("vcard_set", jid=jid, vcard=vcard,
                          vcard_bytes=self._gated(self.quotas.vcard_bytes))

    def private(self, jid: str, key: str) -> str | None:
        return self._read(lambda s: s.private.get(jid, {}).get(key))

    async def private_set(self, jid: str, key: str, xml: str) -> None:
        await self._write("private_set", jid=jid, key=key, xml=xml,
                          private_keys=self._gated(self.quotas.private_keys),
                          private_bytes=self._gated(self.quotas.private_bytes))

    def blocklist(self, jid: str) -> set[str]:
        return self._read(lambda s: set(s.blocklists.get(jid, ())))

    def has_blocklist(self, owner: str) -> bool:
        """Cheap pre-check for the stanza path: one dict lookup, atomic under the GIL, so
        it needs no lock (an apply in flight makes it at most one command early or late)."""
        return owner in self.raft.state.blocklists

    def blocks_any(self, owner: str, candidates: tuple[str, ...]) -> bool:
        """Whether `owner` blocks any of `candidates`; no copy, it runs per stanza."""
        def query(s: ClusterState) -> bool:
            blocked = s.blocklists.get(owner)
            return blocked is not None and any(c in blocked for c in candidates)

        return self._read(query)

    async def block(self, jid: str, items: list[str]) -> list[str]:
        return await self._write("block", jid=jid, items=items,
                                 blocklist_items=self._gated(self.quotas.blocklist_items))

    async def unblock(self, jid: str, items: list[str]) -> list[str]:
        return await self._write("unblock", jid=jid, items=items)

    # -- last activity (XEP-0012), message of the day (XEP-0133) -------------------------------

    async def record_logout(self, jid: str, status: str = "") -> None:
        await self._write("last_logout", jid=jid, status=status)

    def last_logout(self, jid: str) -> tuple[float, str] | None:
        """(time of the account's last logout, its last unavailable status), if recorded."""
        def query(s: ClusterState) -> tuple[float, str] | None:
            account = s.accounts.get(jid)
            if account is None or "last_logout" not in account:
                return None
            return account["last_logout"], account.get("last_status", "")

        return self._read(query)

    async def motd_set(self, text: str, edit: bool = False) -> int:
        return await self._write("motd_set", text=text, edit=edit)

    async def motd_delete(self) -> bool:
        return await self._write("motd_delete")

    def motd(self) -> tuple[str, int] | None:
        """(text, version) of the message of the day, if one is set."""
        def query(s: ClusterState) -> tuple[str, int] | None:
            motd = s.motd
            return None if motd is None or motd["text"] is None else (motd["text"], motd["version"])

        return self._read(query)

    def motd_seen(self, jid: str) -> int:
        return self._read(lambda s: s.accounts.get(jid, {}).get("motd_seen", 0))

    async def record_motd_seen(self, jid: str, version: int) -> None:
        await self._write("motd_seen", jid=jid, version=version)

    # -- cluster data -------------------------------------------------------------------------

    def hosts(self) -> set[str]:
        return self._read(lambda s: set(s.hosts))

    async def host_add(self, host: str) -> bool:
        return await self._write("host_add", host=host)

    def components(self) -> dict[str, dict]:
        return self._read(lambda s: copy.deepcopy(s.components))

    def component(self, domain: str) -> dict | None:
        """One component's committed record; records are replaced whole, never changed
        in place, so it is read without a copy (the router asks for every stanza)."""
        return self._read(lambda s: s.components.get(domain))

    async def digest(self) -> str:
        """The state's digest, computed off the apply lock (RaftNode.read_frozen)."""
        return await self.raft.read_frozen(ClusterState.digest)

    # -- registered components (XEP-0114) ---------------------------------------------------------

    async def component_add(self, domain: str, sealed_secret: bytes, balancing: str = "random",
                            buckets: int = 0) -> bool:
        """Registers or updates a component; True when it is new.

        The state machine's `secret_hash` field holds the secret sealed with the cluster
        secret (raftxmpp.cluster.secrets), never the secret itself."""
        return await self._write("component_add", domain=domain, secret_hash=sealed_secret,
                                 balancing=balancing, buckets=buckets)

    async def component_remove(self, domain: str) -> bool:
        """Unregisters a component; False when it was not registered."""
        return await self._write("component_remove", domain=domain)

    # -- cluster membership ---------------------------------------------------------------------

    async def member_set(self, name: str, raft: str, link: str, version: int) -> None:
        await self._write("member_set", name=name, raft=raft, link=link, version=version)

    async def member_remove(self, raft: str) -> str | None:
        return await self._write("member_remove", raft=raft)

    async def membership_lock(self, owner: str, ttl: float) -> None:
        await self._write("membership_lock", owner=owner, ttl=ttl)

    async def membership_unlock(self, owner: str) -> None:
        await self._write("membership_unlock", owner=owner)

    # -- HTTP File Upload (XEP-0363) ----------------------------------------------------------

    def upload(self, slot: str) -> dict | None:
        """A slot or stored file's metadata (raftxmpp.cluster.state, op_upload_slot)."""
        return self._read(lambda s: copy.deepcopy(s.uploads.get(slot)))

    def upload_usage(self, jid: str) -> int:
        return self._read(lambda s: s.upload_usage.get(jid, 0))

    def uploads_expired(self, now: float, limit: int = 1000) -> list[tuple[str, str]]:
        """(account, slot) of slots and files whose time is up, for the expiry sweep."""
        def query(s: ClusterState) -> list[tuple[str, str]]:
            found = []
            for slot, upload in s.uploads.items():
                expiry = upload["file_expires"] if upload["stored"] else upload["expires"]
                if expiry is not None and expiry <= now:
                    found.append((upload["jid"], slot))
                    if len(found) >= limit:
                        break
            return found

        return self._read(query)

    async def upload_slot(self, jid: str, slot: str, name: str, size: int, content_type: str,
                          expires: float, max_size: int, quota: int) -> dict:
        return await self._write("upload_slot", jid=jid, slot=slot, name=name, size=size,
                                 type=content_type, expires=expires, max_size=max_size,
                                 quota=quota)

    async def upload_stored(self, jid: str, slot: str, sha256: str, holders: list[str],
                            file_expires: float | None) -> bool:
        return await self._write("upload_stored", jid=jid, slot=slot, sha256=sha256,
                                 holders=holders, file_expires=file_expires)

    async def upload_delete(self, jid: str, slot: str, before: float | None = None) -> bool:
        return await self._write("upload_delete", jid=jid, slot=slot, before=before)
