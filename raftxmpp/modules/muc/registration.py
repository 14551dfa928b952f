"""Registering with a room (XEP-0045 §7.10–§7.12): a user reserves a nick, which makes
it a member; nobody else may enter with that nick; disco#info node "x-roomuser-item"
tells a user its registered nick. The nicks live in the room's replicated record."""

from __future__ import annotations

from lxml import etree

from raftxmpp.jid import JID, InvalidJID
from raftxmpp.modules.muc import ns
from raftxmpp.modules.muc.admin import AFFILIATION
from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.pubsub.forms import Field, build, submitted
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns as xml_ns
from raftxmpp.xml.errors import StanzaError

REGISTER = xml_ns.REGISTER
FORM_TYPE = "http://jabber.org/protocol/muc#register"
NICK_FIELD = "muc#register_roomnick"
USER_ITEM = "x-roomuser-item"


async def handle(ctx: Muc, stanza: etree._Element, payload: etree._Element, room: str,
                 record: dict, sender: LocalSession) -> etree._Element | None:
    registered = record.get("nicks", {}).get(sender.bare_jid)
    if stanza.get("type") == "get":
        query = etree.Element(f"{{{REGISTER}}}query", nsmap={None: REGISTER})
        if registered:
            etree.SubElement(query, f"{{{REGISTER}}}registered")
            etree.SubElement(query, f"{{{REGISTER}}}username").text = registered
        form = build(FORM_TYPE, [Field(NICK_FIELD, "text-single",
                                       [registered] if registered else [],
                                       label="Desired Nickname")])
        query.append(form)
        return query
    if payload.find(f"{{{REGISTER}}}remove") is not None:
        await ctx.store.muc_register_nick(room, sender.bare_jid, "")
        return None
    form = payload.find(f"{{{xml_ns.DATA_FORMS}}}x")
    if form is None or form.get("type") == "cancel":
        return None
    form_type, values = submitted(form)
    nick = (values.get(NICK_FIELD) or [""])[0]
    if form_type not in (None, FORM_TYPE) or not nick:
        raise StanzaError("bad-request", text=f"submit {NICK_FIELD}")
    try:
        nick = JID.from_parts(room.partition("@")[0], room.partition("@")[2], nick).resource
    except InvalidJID:
        raise StanzaError("jid-malformed", text="not a valid nickname") from None
    await ctx.store.muc_register_nick(room, sender.bare_jid, nick)
    if ctx.affiliation(room, sender.bare_jid, record) == "none":
        # Registering made a member (§7.10): every node gives its occupants that role.
        ctx.to_all({"t": AFFILIATION, "room": room, "changes": {sender.bare_jid: "member"}})
    return None


def user_item(record: dict, node: str, sender: LocalSession) -> etree._Element:
    """§7.12: the requester's registered nick as the identity of node x-roomuser-item."""
    query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO}, node=node)
    nick = record.get("nicks", {}).get(sender.bare_jid)
    if nick:
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="conference",
                         name=nick, type="text")
    return query
