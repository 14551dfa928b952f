"""Blocking command (XEP-0191): replicated block lists, with pushes to every resource."""

from __future__ import annotations

import secrets

from lxml import etree

from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

ITEM = f"{{{ns.BLOCKING}}}item"


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.BLOCKING, get_blocklist)
    router.register_iq("account", "set", ns.BLOCKING, change_blocklist)
    router.server_features.add(ns.BLOCKING)


def _owner(request: IqRequest) -> str:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="a block list belongs to its account alone")
    return str(request.to_jid)


async def get_blocklist(request: IqRequest) -> etree._Element:
    owner = _owner(request)
    if request.payload.tag != f"{{{ns.BLOCKING}}}blocklist":
        raise StanzaError("bad-request")
    return _element("blocklist", sorted(request.router.store.blocklist(owner)))


async def change_blocklist(request: IqRequest) -> None:
    owner = _owner(request)
    action = etree.QName(request.payload).localname
    if action not in ("block", "unblock"):
        raise StanzaError("bad-request")
    items = [_item_jid(i.get("jid")) for i in request.payload.findall(ITEM)]
    store = request.router.store
    if action == "block":
        if not items:
            raise StanzaError("bad-request", text="block at least one JID")
        changed = await store.block(owner, items)
    else:
        changed = await store.unblock(owner, items)
        if not items:
            changed = []  # unblock-all is pushed as an empty <unblock/> (§3.4)
    _push(request.router, owner, action, changed)
    return None


def _item_jid(text: str | None) -> str:
    try:
        return str(JID.parse(text or ""))
    except InvalidJID:
        raise StanzaError("jid-malformed") from None


def _element(name: str, jids: list[str]) -> etree._Element:
    element = etree.Element(f"{{{ns.BLOCKING}}}{name}", nsmap={None: ns.BLOCKING})
    for jid in jids:
        etree.SubElement(element, ITEM, jid=jid)
    return element


def _push(router: Router, owner: str, action: str, jids: list[str]) -> None:
    for session in router.sessions.resources(owner):
        iq = make("iq", {"type": "set", "id": "block" + secrets.token_hex(6), "to": session.full_jid})
        iq.append(_element(action, jids))
        session.send_stanza(iq)
