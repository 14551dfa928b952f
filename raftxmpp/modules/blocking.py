"""Blocking command (XEP-0191): replicated block lists, enforced both ways.

Inbound: the local router drops or refuses what a blocked JID sends (LocalRouter.is_blocked).
Outbound: a client's stanza to a JID its account blocks is refused with <not-acceptable/>
and <blocked xmlns='urn:xmpp:blocking:errors'/> before anything routes it (§3.3).
Presence: blocking sends unavailable from each available resource to the blocked
contacts entitled to the user's presence; unblocking sends them the current presence
(§3.3, §3.4) — the presence module does both, from the cluster-wide session table.
Pushes go to the resources that asked for the block list (§3.3).
"""

from __future__ import annotations

import secrets

from lxml import etree

from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

ITEM = f"{{{ns.BLOCKING}}}item"
BLOCKED = f"{{{ns.BLOCKING_ERRORS}}}blocked"


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.BLOCKING, get_blocklist)
    router.register_iq("account", "set", ns.BLOCKING, change_blocklist)
    router.server_features.add(ns.BLOCKING)
    router.outbound_checks.append(lambda stanza, session: refuse_if_blocked(router, stanza, session))


def _owner(request: IqRequest) -> str:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="a block list belongs to its account alone")
    return str(request.to_jid)


async def get_blocklist(request: IqRequest) -> etree._Element:
    owner = _owner(request)
    if request.payload.tag != f"{{{ns.BLOCKING}}}blocklist":
        raise StanzaError("bad-request")
    session = request.sender
    if session is not None and not session.blocklist_requested:
        session.blocklist_requested = True
        request.router.sessions.publish(session)
    await request.router.store.fresh()  # never an old list from a node cut off from the majority
    return _element("blocklist", sorted(request.router.store.blocklist(owner)))


async def change_blocklist(request: IqRequest) -> None:
    owner = _owner(request)
    action = etree.QName(request.payload).localname
    if action not in ("block", "unblock"):
        raise StanzaError("bad-request")
    items = [_item_jid(i.get("jid")) for i in request.payload.findall(ITEM)]
    router = request.router
    presence = router.modules["presence"]
    if action == "block":
        if not items:
            raise StanzaError("bad-request", text="block at least one JID")
        changed = await router.store.block(owner, items)
        presence.blocked(router, owner, changed)
    else:
        changed = await router.store.unblock(owner, items)
        presence.unblocked(router, owner, changed)
        if not items:
            changed = []  # unblock-all is pushed as an empty <unblock/> (§3.5)
    _push(router, owner, action, changed)
    return None


def refuse_if_blocked(router: Router, stanza: etree._Element, session: LocalSession) -> None:
    """XEP-0191 §3.3: "If the user attempts to send an outbound stanza to the contact, the
    user's server MUST NOT route the stanza to the contact but instead MUST return a
    <not-acceptable/> error" with <blocked/>. (The router's bounce drops the error it
    would give to an error or an IQ result, which must never be answered.)"""
    if not router.store.has_blocklist(session.bare_jid):
        return  # the common case: one dict lookup
    to = stanza.get("to")
    if to is None:
        return  # to the user's own account
    try:
        target = JID.parse(to)
    except InvalidJID:
        return  # routing answers <jid-malformed/>
    if str(target.bare) == session.bare_jid:
        return
    if router.local.is_blocked(session.bare_jid, target):
        raise StanzaError("not-acceptable", text="you have blocked this JID",
                          app_condition=BLOCKED)


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
    """To "all of the user's resources that have requested the blocklist" (§3.3)."""
    for session in router.sessions.resources(owner):
        if not session.blocklist_requested:
            continue
        iq = make("iq", {"type": "set", "id": "block" + secrets.token_hex(6), "to": session.full_jid})
        iq.append(_element(action, jids))
        session.send_stanza(iq)
