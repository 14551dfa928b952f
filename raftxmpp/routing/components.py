"""Component manager: stanzas for registered external component domains (XEP-0114).

Registration (domain, sealed secret, balancing policy, buckets) is durable and lives in
the replicated state; which instances are connected where is volatile and gossiped,
like sessions: an instance accepted on this node is a LocalInstance with an outgoing
queue, and is published as gossip key "c:<domain>/<instance id>"; one on another node
is a RemoteInstance reached over the node link. Every node thus holds the same table
domain → live instances, and picks one per stanza by the domain's policy
(raftxmpp.component.balancing), with nothing but dictionary lookups and one hash on
the stanza path.

An instance whose connection drops is deleted from gossip at once; a dead node's
instances are purged by the gossip failure detector; a component removed with
`component remove` has its connections closed with <host-gone/>. Until the purge, an
instance behind a node link that is down is passed over, so a stanza goes to a
reachable instance rather than into a dead node's queue.

This module must never do I/O of its own: it queues bytes for connections and links.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from lxml import etree

from raftxmpp.cluster import secrets
from raftxmpp.cluster.raft import RaftUnavailable, write_failure
from raftxmpp.cluster.store import StoreError
from raftxmpp.component import balancing
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.sessions import MAX_HOPS, link_hops
from raftxmpp.xml.errors import StanzaError, StreamError, can_reply_with_error, error_reply
from raftxmpp.xml.ns import CLIENT
from raftxmpp.xml.stanza import serialize

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession

log = logging.getLogger("raftxmpp.components")

COMPONENT_KEY = "c:"
# Node-link target of a stanza for one component instance, "component:<domain>/<id>";
# a full JID never starts so (':' is allowed in neither a localpart nor a domain name).
LINK_TARGET = "component:"
# A component serves many users: it may hold more of our memory than one client.
MAX_OUTBOX_BYTES = 16 * 1024 * 1024
_IQ = f"{{{CLIENT}}}iq"


@dataclass(eq=False)
class LocalInstance:
    """One accepted component connection on this node and its outgoing byte queue.

    It is also the `sender` of the IQs the component sends, so the server's answers
    (disco, ping, version …) come back to it."""

    domain: str
    instance_id: str
    node: str
    since: float = field(default_factory=time.time)
    outbox: list[bytes] = field(default_factory=list)
    outbox_bytes: int = 0
    closing: StreamError | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    is_local = True
    # What IQ handlers may look at on a sender: a component is no account's resource.
    roster_requested = True
    carbons = False
    available = False
    priority = 0
    presence = None

    def __post_init__(self) -> None:
        self.jid = JID(None, self.domain, None)
        self.full_jid = self.bare_jid = self.domain
        self.directed: set[str] = set()

    def send(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        if self.outbox_bytes > MAX_OUTBOX_BYTES:
            log.warning("component %s (%s) stopped reading; closing it", self.domain,
                        self.instance_id)
            self.close(StreamError("policy-violation", "outgoing queue full: stopped reading"))
        self.wakeup.set()

    def send_stanza(self, stanza: etree._Element) -> None:
        self.send(serialize(stanza))

    def take_outbox(self) -> bytes:
        data = b"".join(self.outbox)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.wakeup = trio.Event()
        return data

    def close(self, error: StreamError | None) -> None:
        if self.closing is None:
            self.closing = error or StreamError("undefined-condition")
            self.wakeup.set()


@dataclass(eq=False)
class RemoteInstance:
    """An instance accepted on another node, as its gossip entry describes it."""

    domain: str
    instance_id: str
    node: str
    since: float = 0.0
    is_local = False


Instance = LocalInstance | RemoteInstance


class DomainInstances:
    """The live instances of one component domain, and its bucket → instance cache."""

    def __init__(self) -> None:
        self.by_id: dict[str, Instance] = {}
        self.ids: tuple[str, ...] = ()
        self.local_ids: tuple[str, ...] = ()
        self._owners: dict[int, str] = {}
        self._owners_buckets = 0

    def put(self, instance: Instance) -> None:
        self.by_id[instance.instance_id] = instance
        self._changed()

    def pop(self, instance_id: str) -> Instance | None:
        instance = self.by_id.pop(instance_id, None)
        if instance is not None:
            self._changed()
        return instance

    def _changed(self) -> None:
        self.ids = tuple(sorted(self.by_id))
        self.local_ids = tuple(i for i in self.ids if self.by_id[i].is_local)
        self._owners.clear()

    def bucket_owner(self, bucket: int, buckets: int) -> str:
        """Rendezvous owner of a bucket over every live instance; cached until they change."""
        if buckets != self._owners_buckets:
            self._owners.clear()
            self._owners_buckets = buckets
        owner = self._owners.get(bucket)
        if owner is None:
            owner = self._owners[bucket] = balancing.bucket_owner(bucket, self.ids)
        return owner


class ComponentManager:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.node_name = router.config.node.name
        self.tables: dict[str, DomainInstances] = {}
        self._cluster_secret: str | None = None

    # -- registration (replicated) -----------------------------------------------------------------

    def registration(self, domain: str) -> dict | None:
        """The committed record of a component domain; records are replaced whole, never
        changed in place, so it is read without a copy."""
        store = self.router.store
        return None if store is None else store.component(domain)

    def serves(self, domain: str) -> bool:
        return self.registration(domain) is not None

    def secret(self, domain: str) -> str | None:
        """The shared secret of a registered component, unsealed; None if not registered."""
        record = self.registration(domain)
        if record is None:
            return None
        if self._cluster_secret is None:
            self._cluster_secret = secrets.node_cluster_secret(self.router.config)
        try:
            return secrets.open_component_secret(self._cluster_secret, record["secret_hash"])
        except secrets.SealedSecretError as exc:
            log.error("component %s: %s", domain, exc)
            raise StreamError("internal-server-error", "the component secret is unreadable "
                              "here; register the component again") from None

    def unregistered(self, domain: str) -> None:
        """`component remove` committed: this node's instances of it are disconnected."""
        table = self.tables.get(domain)
        for instance in list(table.by_id.values()) if table else ():
            if instance.is_local:
                log.info("component %s removed: closing instance %s", domain,
                         instance.instance_id)
                instance.close(StreamError("host-gone", f"{domain} is no longer registered"))

    # -- the instance table ---------------------------------------------------------------------

    def connect(self, domain: str) -> LocalInstance:
        """A component was accepted here: a new instance, published to the cluster.

        Its id is this node's name and the smallest slot free for the domain here, so
        an instance that reconnects (or whose node restarts) gets its id back, and with
        it its buckets."""
        table = self.tables.setdefault(domain, DomainInstances())
        slot = 0
        while f"{self.node_name}#{slot}" in table.by_id:
            slot += 1
        instance = LocalInstance(domain, f"{self.node_name}#{slot}", self.node_name)
        table.put(instance)
        gossip = self._gossip()
        if gossip is not None:
            gossip.set(f"{COMPONENT_KEY}{domain}/{instance.instance_id}",
                       {"node": self.node_name, "since": instance.since})
        return instance

    def disconnect(self, instance: LocalInstance) -> None:
        table = self.tables.get(instance.domain)
        if table is not None and table.by_id.get(instance.instance_id) is instance:
            table.pop(instance.instance_id)
            if not table.by_id:
                del self.tables[instance.domain]
        gossip = self._gossip()
        if gossip is not None:
            gossip.delete(f"{COMPONENT_KEY}{instance.domain}/{instance.instance_id}")
        log.info("component %s instance %s disconnected", instance.domain, instance.instance_id)

    def on_gossip_change(self, node: str, key: str, old: Any, new: Any) -> None:
        """An instance on another node appeared, changed or went (or its node died)."""
        domain, sep, instance_id = key[len(COMPONENT_KEY):].partition("/")
        if not sep or not instance_id or node == self.node_name:
            return
        table = self.tables.get(domain)
        current = table.by_id.get(instance_id) if table else None
        if new is None:
            if current is not None and not current.is_local and current.node == node:
                table.pop(instance_id)
                if not table.by_id:
                    del self.tables[domain]
            return
        if current is not None and current.is_local:
            return  # ids carry the owner's name: only a misbehaving peer gets here
        since = float(new.get("since", 0.0)) if isinstance(new, dict) else 0.0
        if current is None:
            table = self.tables.setdefault(domain, DomainInstances())
            table.put(RemoteInstance(domain, instance_id, node, since))
        else:
            current.since = since

    def instances(self, domain: str) -> list[Instance]:
        table = self.tables.get(domain)
        return [table.by_id[i] for i in table.ids] if table else []

    def local_instances(self) -> list[LocalInstance]:
        return [i for t in self.tables.values() for i in t.by_id.values() if i.is_local]

    async def shutdown(self) -> None:
        """Ends every component stream here with <system-shutdown/>, letting writers flush."""
        instances = self.local_instances()
        for instance in instances:
            instance.close(StreamError("system-shutdown"))
        with trio.move_on_after(2):
            while any(i.outbox for i in instances):
                await trio.sleep(0.02)

    # -- routing to a component ----------------------------------------------------------------------

    async def route(self, stanza: etree._Element, target: JID, sender: LocalSession | None) -> None:
        instance = self.pick(stanza, target)
        data = serialize(stanza)
        if instance.is_local:
            instance.send(data)
            return
        hops = link_hops.get()
        if hops >= MAX_HOPS:
            log.debug("stanza for %s not forwarded to %s (hops %d)", target, instance.node, hops)
            return
        links = self._links()
        link_target = f"{LINK_TARGET}{instance.domain}/{instance.instance_id}"
        if links is None or not links.send_stanza(instance.node, link_target, data, hops):
            raise StanzaError("service-unavailable", text=f"{target.domain} is unreachable")

    def pick(self, stanza: etree._Element, target: JID) -> Instance:
        """The live instance of target's domain that gets `stanza`, by the domain's policy."""
        domain = target.domain
        table = self.tables.get(domain)
        record = self.registration(domain)
        if table is None or record is None:
            raise StanzaError("service-unavailable", text=f"no live instance of {domain}")
        policy, buckets = record.get("balancing", "random"), record.get("buckets", 0)
        key = balancing.balancing_key(policy, _sender(stanza), target)
        if key is not None and buckets > 0:
            instance_id = table.bucket_owner(balancing.bucket_of(key, buckets), buckets)
        else:
            instance_id = balancing.choose(policy, buckets, key, table.ids, table.local_ids)
        instance = table.by_id[instance_id]
        if not instance.is_local and not self._reachable(instance.node):
            instance = self._pick_reachable(table, policy, buckets, key) or instance
        return instance

    def _pick_reachable(self, table: DomainInstances, policy: str, buckets: int,
                        key: str | None) -> Instance | None:
        """The same choice over the instances whose node we can reach now (rare path)."""
        reachable = [i for i in table.ids
                     if table.by_id[i].is_local or self._reachable(table.by_id[i].node)]
        if not reachable:
            return None
        return table.by_id[balancing.choose(policy, buckets, key, reachable, table.local_ids)]

    def _reachable(self, node: str) -> bool:
        links = self._links()
        return links is None or links.connected(node)

    # -- stanzas from other nodes and from components --------------------------------------------------

    def deliver_from_link(self, target: str, data: bytes) -> bool:
        """A stanza another node routed to an instance here; False if that one is gone."""
        domain, _, instance_id = target[len(LINK_TARGET):].partition("/")
        table = self.tables.get(domain)
        instance = table.by_id.get(instance_id) if table else None
        if instance is None or not instance.is_local:
            return False
        instance.send(data)
        return True

    async def route_from_component(self, stanza: etree._Element, instance: LocalInstance) -> None:
        """A stanza an accepted component sent (its 'from' was checked to be in its domain)."""
        # IQ answers from the server need a way back; presence and messages need none,
        # and must not be taken for a client's own (subscriptions, broadcast).
        sender = instance if stanza.tag == _IQ else None
        try:
            await self.router.route(stanza, sender)
        except StanzaError as exc:
            self._bounce(stanza, exc, instance)
        except StoreError as exc:
            self._bounce(stanza, StanzaError(exc.condition, text=exc.text or None), instance)
        except RaftUnavailable as exc:
            condition, text = write_failure(exc)
            self._bounce(stanza, StanzaError(condition, type="wait", text=text), instance)

    def _bounce(self, stanza: etree._Element, error: StanzaError, instance: LocalInstance) -> None:
        if can_reply_with_error(stanza):
            with contextlib.suppress(ValueError):
                instance.send_stanza(error_reply(stanza, error))

    # -- for the admin API ------------------------------------------------------------------------------

    def describe(self, domain: str) -> list[dict]:
        return [{"id": i.instance_id, "node": i.node, "since": i.since}
                for i in self.instances(domain)]

    # -- cluster plumbing -------------------------------------------------------------------------------

    def _gossip(self):
        return self.router.sessions.gossip  # attached by the cluster membership

    def _links(self):
        return self.router.sessions.links


def _sender(stanza: etree._Element) -> JID | None:
    sender = stanza.get("from")
    if sender is None:
        return None
    try:
        return JID.parse(sender)
    except InvalidJID:
        return None
