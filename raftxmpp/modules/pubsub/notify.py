"""Event notifications (XEP-0060 §7.1.2, §7.2.2, §8.2.5, §8.4.2, §8.5.2) and who gets them.

Which node sends what, so that each subscriber gets each notification exactly once:
the node that handled the publish (or retract, delete, purge) sends every
notification, after the change committed, from its copy of the cluster's session
table: to a session here directly, to a session on another node over the node link
(one stanza, one link frame), to a bare JID through the router's own rules. Nothing is
sent when a command applies elsewhere, so a node applying the log (or replaying it
after a restart) never notifies; a crash between commit and fan-out loses those
notifications (never the item: a client that got no answer retries the publish).

The last published item that a presence or a caps change calls for (XEP-0163 §4.3.3)
is sent by the node that holds the session concerned, which alone sees that event.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp import metrics
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.sessions import RemoteSession, Session
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make, serialize

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
EVENT = f"{{{ns.PUBSUB_EVENT}}}event"
# Gossip message kind: a notification for a session whose node decides by its caps.
DELIVER = "pubsub-deliver"


def parse_payload(payload: str) -> etree._Element:
    """A stored payload as an element (it was serialised by us from a checked tree)."""
    return etree.fromstring(payload.encode(), _PARSER)


def _event(owner: str, notification_type: str) -> tuple[etree._Element, etree._Element]:
    message = make("message", {"from": owner, "id": secrets.token_hex(8)})
    if notification_type == "headline":
        message.set("type", "headline")
    event = etree.SubElement(message, EVENT, nsmap={None: ns.PUBSUB_EVENT})
    return message, event


def items_event(owner: str, node: str, items: Iterable[tuple[str, dict]], config: dict,
                with_payload: bool | None = None) -> etree._Element:
    """<event><items node><item id>payload</item></items></event> (§7.1.2.1, §7.1.2.2)."""
    message, event = _event(owner, config["notification_type"])
    element = etree.SubElement(event, f"{{{ns.PUBSUB_EVENT}}}items", node=node)
    deliver = config["deliver_payloads"] if with_payload is None else with_payload
    for item_id, item in items:
        entry = etree.SubElement(element, f"{{{ns.PUBSUB_EVENT}}}item", id=item_id)
        if config["itemreply"] == "publisher" and item.get("publisher"):
            entry.set("publisher", item["publisher"])
        if deliver and item.get("payload"):
            entry.append(parse_payload(item["payload"]))
    return message


def retract_event(owner: str, node: str, item_ids: Iterable[str], config: dict) -> etree._Element:
    """<items node><retract id/></items> (§7.2.2.1)."""
    message, event = _event(owner, config["notification_type"])
    element = etree.SubElement(event, f"{{{ns.PUBSUB_EVENT}}}items", node=node)
    for item_id in item_ids:
        etree.SubElement(element, f"{{{ns.PUBSUB_EVENT}}}retract", id=item_id)
    return message


def node_event(owner: str, node: str, what: str, config: dict) -> etree._Element:
    """<delete node/> (§8.4.2), <purge node/> (§8.5.2), <configuration node/> (§8.2.5)."""
    message, event = _event(owner, config["notification_type"])
    etree.SubElement(event, f"{{{ns.PUBSUB_EVENT}}}{what}", node=node)
    return message


def subscription_event(owner: str, node: str, jid: str, state: str) -> etree._Element:
    """<subscription node jid subscription/> to a subscriber the owner changed (§8.8.4)."""
    message, event = _event(owner, "normal")
    etree.SubElement(event, f"{{{ns.PUBSUB_EVENT}}}subscription", node=node, jid=jid,
                     subscription=state)
    return message


# -- delivery -------------------------------------------------------------------------------------


class Fanout:
    """One notification to many recipients, each reached once: sessions by full JID
    (PEP's presence-based delivery), JIDs as subscribed (bare or full, maybe remote)."""

    def __init__(self, router: Router, message: etree._Element) -> None:
        self.router = router
        self.message = message
        self.owner = message.get("from")
        self.sessions: dict[str, Session] = {}
        self.undecided: dict[str, tuple[RemoteSession, str]] = {}
        self.jids: set[str] = set()

    def add_session(self, session: Session) -> None:
        self.sessions.setdefault(session.full_jid, session)

    def add_jid(self, jid: str) -> None:
        self.jids.add(jid)

    def add_undecided(self, session: RemoteSession, node: str) -> None:
        """A resource on another node whose caps this node does not know: its node gets
        the notification and delivers it only if the resource asks for `node`."""
        self.undecided.setdefault(session.full_jid, (session, node))

    async def send(self) -> int:
        """Sends every copy; returns how many went out."""
        router = self.router
        covered = {j for j in self.jids if "/" not in j}  # bare subscriptions reach every resource
        sent = 0
        owner_jid = JID.parse(self.owner)
        for full_jid, session in self.sessions.items():
            if full_jid in self.jids or session.bare_jid in covered:
                continue
            if router.local.is_blocked(session.bare_jid, owner_jid):
                continue
            self.message.set("to", full_jid)
            session.send(serialize(self.message))
            _count(session.is_local)
            sent += 1
        gossip = router.sessions.gossip
        for full_jid, (session, node) in self.undecided.items():
            if full_jid in self.jids or session.bare_jid in covered or full_jid in self.sessions \
                    or gossip is None or router.local.is_blocked(session.bare_jid, owner_jid):
                continue
            self.message.set("to", full_jid)
            gossip.send(session.node, {"t": DELIVER, "jid": full_jid, "node": node,
                                       "stanza": serialize(self.message).decode()})
            metrics.PUBSUB_NOTIFICATIONS.labels("remote").inc()
            sent += 1
        for jid in sorted(self.jids):
            sent += await self._send_to_jid(jid)
        return sent

    async def _send_to_jid(self, jid: str) -> int:
        router = self.router
        try:
            target = JID.parse(jid)
        except InvalidJID:
            return 0
        if target.domain not in router.served_hosts():
            return await self._route(jid)  # another server's user (s2s) or a component
        if router.local.is_blocked(str(target.bare), JID.parse(self.owner)):
            return 0
        self.message.set("to", jid)
        data = serialize(self.message)
        if target.resource is not None:
            session = router.sessions.session(target)
            if session is None:
                return 0  # a full-JID subscription whose session is gone (§6.1.2 SHOULD)
            sessions = [session]
        elif self.message.get("type") == "headline":
            sessions = [s for s in router.sessions.available(jid) if s.priority >= 0]
        else:
            sessions = router.sessions.highest_priority(jid)
        for session in sessions:
            session.send(data)
            _count(session.is_local)
        return len(sessions)

    async def _route(self, jid: str) -> int:
        stanza = copy.copy(self.message)
        stanza.set("to", jid)
        try:
            await self.router.route(stanza, None)
        except StanzaError:
            metrics.PUBSUB_NOTIFICATIONS.labels("undeliverable").inc()
            return 0
        metrics.PUBSUB_NOTIFICATIONS.labels("routed").inc()
        return 1


def deliver_if_wanted(router: Router, wants, peer: str, message: dict) -> None:
    """Another node's notification for one of our sessions whose caps it did not know
    (Fanout.add_undecided): delivered if the session asks for the node (+notify)."""
    try:
        full_jid, node, stanza = str(message["jid"]), str(message["node"]), message["stanza"]
        session = router.sessions.local_session(JID.parse(full_jid))
    except (KeyError, InvalidJID):
        return
    if session is not None and isinstance(stanza, str) and wants(full_jid, node):
        session.send(stanza.encode())  # serialised by the sending node from a parsed tree


def _count(local: bool) -> None:
    metrics.PUBSUB_NOTIFICATIONS.labels("local" if local else "remote").inc()
