"""Roster management (RFC 6121 §2) with roster versioning (XEP-0237).

Roster state lives in the replicated state machine; a change is pushed to the
account's interested resources only after Raft committed it.
"""

from __future__ import annotations

import secrets

from lxml import etree

from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

ITEM = f"{{{ns.ROSTER}}}item"
GROUP = f"{{{ns.ROSTER}}}group"


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.ROSTER, get_roster)
    router.register_iq("account", "set", ns.ROSTER, set_roster)
    router.stream_features.append(
        lambda: etree.Element(f"{{{ns.ROSTERVER}}}ver", nsmap={None: ns.ROSTERVER}))


def item_element(contact: str, item: dict | None) -> etree._Element:
    element = etree.Element(ITEM, jid=contact)
    if item is None:
        element.set("subscription", "remove")
        return element
    if item.get("name"):
        element.set("name", item["name"])
    element.set("subscription", item["subscription"])
    if item["ask"]:
        element.set("ask", "subscribe")
    if item.get("approved"):
        element.set("approved", "true")
    for group in item["groups"]:
        etree.SubElement(element, GROUP).text = group
    return element


def _own_roster(request: IqRequest) -> str:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="a roster belongs to its account alone")
    return str(request.to_jid)


async def get_roster(request: IqRequest) -> etree._Element | None:
    owner = _own_roster(request)
    if request.sender is not None and not request.sender.roster_requested:
        request.sender.roster_requested = True
        request.router.sessions.publish(request.sender)
    await request.router.store.fresh()  # never a stale roster from a cut-off node
    roster = request.router.store.roster(owner)
    if request.payload.get("ver") == str(roster["ver"]):
        return None  # unchanged since the client's copy (XEP-0237 §5.2)
    query = etree.Element(f"{{{ns.ROSTER}}}query", nsmap={None: ns.ROSTER}, ver=str(roster["ver"]))
    for contact, item in sorted(roster["items"].items()):
        query.append(item_element(contact, item))
    return query


async def set_roster(request: IqRequest) -> None:
    owner = _own_roster(request)
    items = request.payload.findall(ITEM)
    if len(items) != 1 or len(request.payload) != 1:
        raise StanzaError("bad-request", text="a roster set carries exactly one item")
    element = items[0]
    contact = _contact(element.get("jid"))
    router = request.router
    if element.get("subscription") == "remove":
        await remove_item(router, owner, contact)
        return None
    name = element.get("name")
    groups = [g.text or "" for g in element.findall(GROUP)]
    if any(not g for g in groups) or any(len(g) > 1023 for g in groups):
        raise StanzaError("not-acceptable", text="group names must be non-empty")
    if len(set(groups)) != len(groups):
        raise StanzaError("bad-request", text="duplicate group")
    if name is not None and len(name) > 1023:
        raise StanzaError("not-acceptable", text="name too long")
    result = await router.store.roster_set(owner, contact, name, groups)
    push(router, owner, contact, result["item"], result["ver"])
    return None


def _contact(text: str | None) -> str:
    if not text:
        raise StanzaError("bad-request", text="item without jid")
    try:
        jid = JID.parse(text)
    except InvalidJID:
        raise StanzaError("jid-malformed") from None
    if jid.resource is not None:
        raise StanzaError("bad-request", text="roster items are bare JIDs")
    return str(jid)


async def remove_item(router: Router, owner: str, contact: str) -> None:
    """Removes the item and cancels subscriptions both ways (RFC 6121 §2.5.2)."""
    item = await router.store.roster_remove(owner, contact)
    if item is None:
        raise StanzaError("item-not-found")
    presence = router.modules["presence"]
    sub = item["subscription"]
    if sub in ("to", "both") or item["ask"]:
        await presence.deliver_subscription(router, owner, contact, "unsubscribe")
    if sub in ("from", "both"):
        # §2.5.2 sends "unsubscribed"; §3.2.2 has the canceller's resources go unavailable
        # for the contact first, or the ex-contact keeps a ghost presence.
        presence.send_unavailable(router, owner, contact)
        await presence.deliver_subscription(router, owner, contact, "unsubscribed")
    roster = router.store.roster(owner)
    push(router, owner, contact, None, roster["ver"])


def push(router: Router, owner: str, contact: str, item: dict | None, ver: int) -> None:
    """Roster push (RFC 6121 §2.1.6) to every interested resource of the account."""
    for session in router.sessions.interested(owner):
        iq = make("iq", {"type": "set", "id": "push" + secrets.token_hex(6), "to": session.full_jid})
        query = etree.SubElement(iq, f"{{{ns.ROSTER}}}query", nsmap={None: ns.ROSTER}, ver=str(ver))
        query.append(item_element(contact, item))
        session.send_stanza(iq)
