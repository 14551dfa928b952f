"""The store's named pubsub operations (mixed into raftxmpp.cluster.store.Store).

Writes are the ops of raftxmpp.cluster.pubsub_state, returning after commit and apply
here; reads run under the Raft read lock and return copies, items only through
`ItemStore`. `actor` is the bare JID acting, or "" for the operator.
"""

from __future__ import annotations

import copy
from typing import Any

from raftxmpp.cluster import pubsub_state
from raftxmpp.cluster.pubsub_items import ItemStore
from raftxmpp.cluster.pubsub_state import Refused


class PubsubStore:
    """Named pubsub operations; needs the Store's `_write` and `_read`."""

    async def _write(self, op: str, **args: Any) -> Any:  # provided by Store
        raise NotImplementedError

    def _read(self, query):  # provided by Store
        raise NotImplementedError

    async def fresh(self) -> None:
        """A linearizable read point (RaftNode.fresh): reads after it see every write
        acknowledged before the call, or RaftUnavailable is raised."""
        await self.raft.fresh()

    # -- writes -----------------------------------------------------------------------------

    async def pubsub_create(self, owner: str, node: str, actor: str, config: dict,
                            limits: dict) -> bool:
        return await self._write("pubsub_create", jid=owner, node=node, actor=actor,
                                 config=config, limits=limits)

    async def pubsub_configure(self, owner: str, node: str, actor: str, config: dict,
                               limits: dict) -> list[str]:
        return await self._write("pubsub_configure", jid=owner, node=node, actor=actor,
                                 config=config, limits=limits)

    async def pubsub_delete(self, owner: str, node: str, actor: str) -> list[str]:
        return await self._write("pubsub_delete", jid=owner, node=node, actor=actor)

    async def pubsub_publish(self, owner: str, node: str, actor: str, item_id: str,
                             payload: str | None, create: dict | None,
                             preconditions: dict | None, limits: dict) -> dict:
        return await self._write("pubsub_publish", jid=owner, node=node, actor=actor,
                                 item_id=item_id, payload=payload, create=create,
                                 preconditions=preconditions, limits=limits)

    async def pubsub_replace_items(self, owner: str, node: str, items: list[list[str]],
                                   create: dict, limits: dict) -> dict:
        return await self._write("pubsub_replace_items", jid=owner, node=node, actor=owner,
                                 items=items, create=create, limits=limits)

    async def pubsub_retract(self, owner: str, node: str, actor: str, item_id: str) -> bool:
        return await self._write("pubsub_retract", jid=owner, node=node, actor=actor,
                                 item_id=item_id)

    async def pubsub_purge(self, owner: str, node: str, actor: str) -> int:
        return await self._write("pubsub_purge", jid=owner, node=node, actor=actor)

    async def pubsub_subscribe(self, owner: str, node: str, actor: str, subscriber: str,
                               subid: str) -> dict:
        return await self._write("pubsub_subscribe", jid=owner, node=node, actor=actor,
                                 subscriber=subscriber, subid=subid)

    async def pubsub_unsubscribe(self, owner: str, node: str, actor: str, subscriber: str,
                                 subid: str | None) -> bool:
        return await self._write("pubsub_unsubscribe", jid=owner, node=node, actor=actor,
                                 subscriber=subscriber, subid=subid)

    async def pubsub_set_subscriptions(self, owner: str, node: str, actor: str,
                                       changes: dict[str, str],
                                       subids: dict[str, str]) -> dict[str, str]:
        return await self._write("pubsub_set_subscriptions", jid=owner, node=node, actor=actor,
                                 changes=changes, subids=subids)

    async def pubsub_set_affiliations(self, owner: str, node: str, actor: str,
                                      changes: dict[str, str]) -> dict[str, str]:
        return await self._write("pubsub_set_affiliations", jid=owner, node=node, actor=actor,
                                 changes=changes)

    # -- reads --------------------------------------------------------------------------------

    def pubsub_node(self, owner: str, node: str) -> dict | None:
        """A node's record (config, affiliations, subscriptions, created), copied."""
        return self._read(lambda s: copy.deepcopy(s.pubsub.get(owner, {}).get(node)))

    def pubsub_nodes(self, owner: str) -> dict[str, dict]:
        """{node: {"title", "access_model", "items", "bytes", "subscribers"}} of an owner."""
        def query(s) -> dict[str, dict]:
            items = ItemStore(s.pubsub_items)
            return {name: {"title": r["config"]["title"],
                           "access_model": r["config"]["access_model"],
                           "items": items.count(owner, name),
                           "bytes": items.node_bytes(owner, name),
                           "subscribers": len(r["subscriptions"])}
                    for name, r in sorted(s.pubsub.get(owner, {}).items())}

        return self._read(query)

    def pubsub_owners(self, domain: str | None = None) -> list[str]:
        """Every owner with a node: accounts (PEP) and service domains."""
        return self._read(lambda s: sorted(
            o for o in s.pubsub if domain is None or o.rpartition("@")[2] == domain))

    def pubsub_items(self, owner: str, node: str) -> list[tuple[str, dict]]:
        """Every item of a node, oldest first; items are never changed in place, so a
        shallow copy of each is a copy."""
        return self._read(lambda s: [(i, dict(item)) for i, item in
                                     ItemStore(s.pubsub_items).list(owner, node)])

    def pubsub_item_ids(self, owner: str, node: str) -> list[str]:
        return self._read(lambda s: list(ItemStore(s.pubsub_items).ids(owner, node)))

    def pubsub_last_item(self, owner: str, node: str) -> tuple[str, dict] | None:
        def query(s) -> tuple[str, dict] | None:
            last = ItemStore(s.pubsub_items).last(owner, node)
            return None if last is None else (last[0], dict(last[1]))

        return self._read(query)

    def pubsub_access_refusal(self, owner: str, node: str, bare: str) -> Refused | None:
        """Why `bare` may not read the node (see pubsub_state.access_refusal), or None;
        a missing node is <item-not-found/>."""
        def query(s) -> Refused | None:
            record = s.pubsub.get(owner, {}).get(node)
            if record is None:
                return Refused("item-not-found", "", f"no node {node!r}")
            return pubsub_state.access_refusal(s, owner, record, bare)

        return self._read(query)

    def pubsub_readable_nodes(self, owner: str, bare: str,
                              names: set[str] | None = None) -> dict[str, tuple[str, dict]]:
        """{node: (last item id, item)} of the owner's nodes that `bare` may read, that
        have an item and (if given) whose name is in `names`: the last published items
        sent on presence (XEP-0163 §4.3.3)."""
        def query(s) -> dict[str, tuple[str, dict]]:
            found = {}
            items = ItemStore(s.pubsub_items)
            for name, record in s.pubsub.get(owner, {}).items():
                if names is not None and name not in names:
                    continue
                config = record["config"]
                if config["send_last_published_item"] != "on_sub_and_presence":
                    continue
                if pubsub_state.access_refusal(s, owner, record, bare) is not None:
                    continue
                last = items.last(owner, name)
                if last is not None:
                    found[name] = (last[0], dict(last[1]))
            return found

        return self._read(query)

    def pubsub_subscriptions_of(self, owner: str, bare: str) -> list[tuple[str, str, dict]]:
        """(node, JID, subscription) of every subscription of `bare`'s JIDs at an owner."""
        def query(s) -> list[tuple[str, str, dict]]:
            return [(name, jid, dict(sub)) for name, record in sorted(s.pubsub.get(owner, {}).items())
                    for jid, sub in sorted(record["subscriptions"].items())
                    if jid.partition("/")[0] == bare]

        return self._read(query)

    def pubsub_affiliations_of(self, owner: str, bare: str) -> list[tuple[str, str]]:
        """(node, affiliation) of `bare` at every node of an owner where it has one."""
        def query(s) -> list[tuple[str, str]]:
            found = []
            for name, record in sorted(s.pubsub.get(owner, {}).items()):
                aff = pubsub_state.affiliation(owner, record, bare)
                if aff != "none":
                    found.append((name, aff))
            return found

        return self._read(query)

    def pubsub_totals(self) -> dict[str, int]:
        """Cluster-wide counts for metrics: owners, nodes, items, bytes."""
        def query(s) -> dict[str, int]:
            items, size = ItemStore(s.pubsub_items).totals()
            return {"owners": len(s.pubsub), "nodes": sum(len(n) for n in s.pubsub.values()),
                    "items": items, "bytes": size}

        return self._read(query)
