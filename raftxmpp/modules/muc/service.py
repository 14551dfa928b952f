"""The MUC service on "<service>.<host>" (XEP-0045 §6): where room stanzas arrive.

Like the pubsub service it is a domain every node serves over the same replicated
state: a client reaches its rooms through whichever node it is connected to, and no
room lives on one node. Only sessions of this cluster's hosts join rooms.
"""

from __future__ import annotations

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules.muc import admin, forwarding, messages, ns, presence, registration
from raftxmpp.modules.muc import archive as room_archive
from raftxmpp.modules.muc.context import Muc
from raftxmpp.routing.local import IQ, MESSAGE, PRESENCE
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

NAME = "raftxmpp chat rooms"
SERVICE_FEATURES = (ns.DISCO_INFO, ns.DISCO_ITEMS, ns.MUC, ns.SELF_PING, ns.PING)


async def route(ctx: Muc, stanza: etree._Element, target: JID,
                sender: LocalSession | None) -> None:
    """A stanza for the service or one of its rooms, arriving on this node."""
    if stanza.get("type") in ("result", "error") and stanza.tag == IQ:
        if sender is not None and target.resource is not None:
            forwarding.answered(ctx, stanza, sender)
        return
    if sender is None:
        # From another server, or re-routed from a node link: rooms serve this cluster's
        # own sessions only (their occupant entries need a node that holds the session).
        if stanza.tag == IQ or (stanza.tag == MESSAGE and stanza.get("type") != "error"):
            raise StanzaError("service-unavailable", text="rooms here are for local accounts")
        return
    if target.local is None:
        if stanza.tag == IQ:
            await _service_iq(ctx, stanza, target, sender)
        return
    room, nick = str(target.bare), target.resource
    if stanza.tag == PRESENCE:
        await presence.handle(ctx, stanza, room, nick, sender)
    elif stanza.tag == MESSAGE:
        await messages.handle(ctx, stanza, room, nick, sender)
    elif stanza.tag == IQ:
        await _room_iq(ctx, stanza, room, nick, sender)


def _payload(stanza: etree._Element) -> etree._Element:
    kind = stanza.get("type")
    if kind not in ("get", "set") or stanza.get("id") is None:
        raise StanzaError("bad-request", text="an iq get or set with an id")
    children = [c for c in stanza if isinstance(c.tag, str)]
    if len(children) != 1:
        raise StanzaError("bad-request", text="an iq get or set carries exactly one payload")
    return children[0]


def answer(sender: LocalSession, stanza: etree._Element, payload: etree._Element | None) -> None:
    reply = make("iq", {"type": "result", "id": stanza.get("id"), "to": sender.full_jid,
                        "from": stanza.get("to")})
    if payload is not None:
        reply.append(payload)
    sender.send_stanza(reply)


async def _service_iq(ctx: Muc, stanza: etree._Element, target: JID,
                      sender: LocalSession) -> None:
    payload = _payload(stanza)
    key = (stanza.get("type"), payload.tag)
    if key == ("get", f"{{{ns.DISCO_INFO}}}query") and not payload.get("node"):
        query = _query(ns.DISCO_INFO)
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="conference",
                         type="text", name=NAME)
        for feature in SERVICE_FEATURES:
            etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
        answer(sender, stanza, query)
    elif key == ("get", f"{{{ns.DISCO_ITEMS}}}query") and not payload.get("node"):
        answer(sender, stanza, _public_rooms(ctx, target.domain))
    elif key == ("get", f"{{{ns.PING}}}ping"):
        answer(sender, stanza, None)
    else:
        raise StanzaError("service-unavailable")


def _query(namespace: str) -> etree._Element:
    return etree.Element(f"{{{namespace}}}query", nsmap={None: namespace})


def _public_rooms(ctx: Muc, domain: str) -> etree._Element:
    """§6.3: the public rooms, named, with their occupant counts."""
    query = _query(ns.DISCO_ITEMS)
    for room, info in ctx.store.muc_rooms(domain).items():
        config = info["config"]
        if info["locked"] or not config["publicroom"]:
            continue
        count = len(ctx.occupants.of_room(room))
        name = config["roomname"] or room.partition("@")[0]
        etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=room, name=f"{name} ({count})")
    return query


async def _room_iq(ctx: Muc, stanza: etree._Element, room: str, nick: str | None,
                   sender: LocalSession) -> None:
    payload = _payload(stanza)
    key = (stanza.get("type"), payload.tag)
    if nick is not None:
        if key == ("get", f"{{{ns.PING}}}ping"):
            _self_ping(ctx, stanza, room, nick, sender)
            return
        asker = ctx.occupants.get(room, sender.full_jid)
        if asker is None:
            raise StanzaError("not-acceptable", text="join the room to ask its occupants")
        targets = ctx.occupants.by_nick(room, nick)
        forwarding.refuse_without_targets(targets)
        await forwarding.forward(ctx, stanza, payload, asker, targets, sender)
        return
    record = ctx.store.muc_room(room)
    if not _visible(record, sender):
        await ctx.store.fresh()  # made or configured through another node a moment ago?
        record = ctx.store.muc_room(room)
        if not _visible(record, sender):
            raise StanzaError("item-not-found", text="no such room")
    if key == ("get", f"{{{ns.DISCO_INFO}}}query") and \
            payload.get("node") == registration.USER_ITEM:
        answer(sender, stanza, registration.user_item(record, payload.get("node"), sender))
    elif key == ("get", f"{{{ns.DISCO_INFO}}}query"):
        answer(sender, stanza, room_info(ctx, room, record))
    elif payload.tag == f"{{{registration.REGISTER}}}query":
        answer(sender, stanza, await registration.handle(ctx, stanza, payload, room, record,
                                                         sender))
    elif key == ("get", f"{{{ns.DISCO_ITEMS}}}query"):
        answer(sender, stanza, _query(ns.DISCO_ITEMS))  # §6.5: occupants are private
    elif key == ("get", f"{{{ns.PING}}}ping"):
        answer(sender, stanza, None)
    elif etree.QName(payload).namespace == room_archive.MAM:
        answer(sender, stanza, await room_archive.query(ctx, stanza, payload, room, record,
                                                        sender))
    elif payload.tag in (f"{{{ns.MUC_OWNER}}}query", f"{{{ns.MUC_ADMIN}}}query"):
        answer(sender, stanza, await admin.handle(ctx, stanza, payload, room, record, sender))
    else:
        raise StanzaError("service-unavailable")


def _visible(record: dict | None, sender: LocalSession) -> bool:
    """A locked room (being configured) exists for its owners only (§10.1.3)."""
    return record is not None and (not record["locked"] or
                                   record["affiliations"].get(sender.bare_jid) == "owner")


def _self_ping(ctx: Muc, stanza: etree._Element, room: str, nick: str,
               sender: LocalSession) -> None:
    """XEP-0410: answered by the service for the pinger's own occupant JID, on any node,
    from the cluster-wide occupant table; not joined (or not that nick) is
    <not-acceptable/>, so the client knows to join again."""
    occupant = ctx.occupants.get(room, sender.full_jid)
    if occupant is None or occupant.nick != nick:
        raise StanzaError("not-acceptable", text="you are not in this room with that nick")
    answer(sender, stanza, None)


def room_info(ctx: Muc, room: str, record: dict) -> etree._Element:
    """§6.4: the room's identity, features and muc#roominfo form."""
    config = record["config"]
    query = _query(ns.DISCO_INFO)
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="conference",
                     type="text", name=config["roomname"] or room.partition("@")[0])
    features = [ns.MUC, ns.SELF_PING, registration.REGISTER, "muc_persistent" if config["persistentroom"] else
                "muc_temporary", "muc_membersonly" if config["membersonly"] else "muc_open",
                "muc_moderated" if config["moderatedroom"] else "muc_unmoderated",
                "muc_passwordprotected" if config["passwordprotectedroom"] else "muc_unsecured",
                "muc_public" if config["publicroom"] else "muc_hidden",
                "muc_nonanonymous" if config["whois"] == "anyone" else "muc_semianonymous",
                ns.STANZA_ID]
    if room_archive.enabled(ctx):
        features.append(room_archive.MAM)
    for feature in features:
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    from raftxmpp.modules.pubsub.forms import Field, build
    subject = record["subject"]["text"] if record["subject"] else ""
    query.append(build(ns.ROOMINFO, [
        Field("muc#roominfo_description", "text-single", [config["roomdesc"]]),
        Field("muc#roominfo_subject", "text-single", [subject]),
        Field("muc#roominfo_occupants", "text-single",
              [str(len(ctx.occupants.of_room(room)))]),
        Field("muc#roomconfig_changesubject", "boolean",
              ["1" if config["changesubject"] else "0"]),
    ], kind="result"))
    return query
