"""Owners and moderators (XEP-0045 §8–§10): the configuration form, destruction,
affiliation and role lists and their changes (kick, ban, voice, membership).

Affiliations are durable (a Raft op); roles are volatile, held in each occupant's
entry, which only the occupant's node writes. So a change is committed (affiliations)
or checked (roles) here, then announced to every node ("muc-affiliation", "muc-role",
"muc-destroyed"), and each node applies it to its own occupants, whose entries then
tell everyone.
"""

from __future__ import annotations

from dataclasses import replace

from lxml import etree

from raftxmpp.cluster.muc_state import AFFILIATIONS
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.modules.muc import config as room_config
from raftxmpp.modules.muc import history, ns
from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.muc.occupants import ROLES, Occupant
from raftxmpp.modules.muc.presence import leave, presence_of, role_for
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError

ROLE, AFFILIATION, DESTROYED = "muc-role", "muc-affiliation", "muc-destroyed"
_ITEM = f"{{{ns.MUC_ADMIN}}}item"
_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}
_AFF_RANK = {"outcast": 0, "none": 1, "member": 2, "admin": 3, "owner": 4}


async def handle(ctx: Muc, stanza: etree._Element, payload: etree._Element, room: str,
                 record: dict, sender: LocalSession) -> etree._Element | None:
    kind = stanza.get("type")
    affiliation = record["affiliations"].get(sender.bare_jid, "none")
    if payload.tag == f"{{{ns.MUC_OWNER}}}query":
        if affiliation != "owner":
            raise StanzaError("forbidden", text="only owners configure the room")
        return await _owner(ctx, kind, payload, room, record, sender)
    if kind == "get":
        return _list(ctx, payload, room, record, sender, affiliation)
    await _admin_set(ctx, payload, room, record, sender, affiliation)
    return None


# -- owners: §10 --------------------------------------------------------------------------------


async def _owner(ctx: Muc, kind: str, payload: etree._Element, room: str, record: dict,
                 sender: LocalSession) -> etree._Element | None:
    if kind == "get":
        query = etree.Element(f"{{{ns.MUC_OWNER}}}query", nsmap={None: ns.MUC_OWNER})
        query.append(room_config.form(record["config"]))
        return query
    destroy = payload.find(f"{{{ns.MUC_OWNER}}}destroy")
    if destroy is not None:
        await destroy_room(ctx, room, sender.bare_jid, destroy.get("jid"),
                           destroy.findtext(f"{{{ns.MUC_OWNER}}}reason"))
        return None
    form = payload.find(f"{{{ns.DATA_FORMS}}}x")
    if form is None:
        raise StanzaError("bad-request", text="a configuration form or <destroy/>")
    if form.get("type") == "cancel":
        if record["locked"]:  # §10.1.3: cancelling a new room's configuration destroys it
            await destroy_room(ctx, room, sender.bare_jid, None, None)
        return None
    if form.get("type") != "submit":
        raise StanzaError("bad-request", text="submit or cancel the form")
    old = record["config"]
    new = await ctx.store.muc_configure(room, sender.bare_jid,
                                        room_config.apply_form(old, form))
    if (new["membersonly"] and not old["membersonly"]) or \
            new["moderatedroom"] != old["moderatedroom"]:
        # The message carries what changed: a node may not have applied it yet.
        ctx.to_all({"t": AFFILIATION, "room": room, "changes": {},
                    "config": {k: v for k, v in new.items() if k != "secret"}})
    return None


async def destroy_room(ctx: Muc, room: str, actor: str, alternate: str | None,
                       reason: str | None) -> None:
    """§10.9: gone from the state first, then every node tells its occupants."""
    await ctx.store.muc_destroy(room, actor)
    ctx.to_all({"t": DESTROYED, "room": room, "alt": alternate or "", "re": reason or ""})


def on_destroyed(ctx: Muc, peer: str, message: dict) -> None:
    room = str(message["room"])
    for occupant in ctx.occupants.local_of_room(room):
        stanza = presence_of(ctx, {"whois": "moderators"},
                             Occupant(**{**occupant.__dict__, "leaving": {"c": []}}),
                             "moderator", occupant.real_jid)
        item = stanza.find(f"{{{ns.MUC_USER}}}x/{{{ns.MUC_USER}}}item")
        item.set("affiliation", "none")
        x = item.getparent()
        destroy = etree.SubElement(x, f"{{{ns.MUC_USER}}}destroy")
        if message.get("alt"):
            destroy.set("jid", str(message["alt"]))
        if message.get("re"):
            etree.SubElement(destroy, f"{{{ns.MUC_USER}}}reason").text = str(message["re"])
        ctx.send_to(occupant.real_jid, stanza)
        ctx.occupants.remove(occupant, {"c": [], "s": True})
    history.forget(ctx, room)


# -- lists: §8.5, §9.5, §9.8, §10.5, §10.8 ----------------------------------------------------


def _list(ctx: Muc, payload: etree._Element, room: str, record: dict, sender: LocalSession,
          affiliation: str) -> etree._Element:
    item = payload.find(_ITEM)
    if item is None:
        raise StanzaError("bad-request", text="ask for a role or an affiliation")
    query = etree.Element(f"{{{ns.MUC_ADMIN}}}query", nsmap={None: ns.MUC_ADMIN})
    wanted_aff, wanted_role = item.get("affiliation"), item.get("role")
    occupant = ctx.occupants.get(room, sender.full_jid)
    if wanted_aff is not None:
        if wanted_aff not in AFFILIATIONS or wanted_aff == "none":
            raise StanzaError("bad-request", text="no such affiliation list")
        if affiliation not in ("owner", "admin") and not (
                wanted_aff == "member" and affiliation == "member"):
            raise StanzaError("forbidden", text="admins and owners see this list")
        for jid, aff in sorted(record["affiliations"].items()):
            if aff == wanted_aff:
                etree.SubElement(query, _ITEM, affiliation=aff, jid=jid)
        return query
    if wanted_role not in ("moderator", "participant", "visitor"):
        raise StanzaError("bad-request", text="no such role list")
    if occupant is None or occupant.role != "moderator":
        raise StanzaError("forbidden", text="moderators see this list")
    for other in ctx.occupants.of_room(room):
        if other.role == wanted_role:
            etree.SubElement(query, _ITEM, role=other.role, nick=other.nick,
                             affiliation=other.affiliation, jid=other.real_jid)
    return query


# -- changes ----------------------------------------------------------------------------------


async def _admin_set(ctx: Muc, payload: etree._Element, room: str, record: dict,
                     sender: LocalSession, affiliation: str) -> None:
    items = payload.findall(_ITEM)
    if not items:
        raise StanzaError("bad-request", text="an item to change")
    actor = ctx.occupants.get(room, sender.full_jid)
    roles, affiliations, reasons = [], {}, {}
    for item in items:
        reason = (item.findtext(f"{{{ns.MUC_ADMIN}}}reason") or "")[:1024]
        if item.get("role") is not None:
            roles.append(_check_role_change(ctx, room, item, actor, affiliation))
            reasons[item.get("nick")] = reason
        elif item.get("affiliation") is not None:
            jid = _bare(item.get("jid"))
            if jid is None and item.get("nick"):
                jid = next((o.bare_jid for o in ctx.occupants.by_nick(room, item.get("nick"))),
                           None)
            if jid is None:
                raise StanzaError("bad-request", text="an affiliation change names a JID")
            affiliations[jid] = item.get("affiliation")
            reasons[jid] = reason
        else:
            raise StanzaError("bad-request", text="an item changes a role or an affiliation")
    if affiliations:
        changed = await ctx.store.muc_set_affiliations(room, sender.bare_jid, affiliations)
        if changed:
            ctx.to_all({"t": AFFILIATION, "room": room, "changes": changed,
                        "ac": actor.nick if actor else "", "re": reasons})
    for nick, role in roles:
        ctx.to_all({"t": ROLE, "room": room, "nick": nick, "role": role,
                    "ac": actor.nick if actor else "", "re": reasons.get(nick, "")})


def _check_role_change(ctx: Muc, room: str, item: etree._Element, actor: Occupant | None,
                       affiliation: str) -> tuple[str, str]:
    """§8.2–§8.6, §9.6–§9.7: moderators kick and give or take voice; admins and owners
    make and unmake moderators; nobody changes the role of a higher affiliation."""
    nick, role = item.get("nick"), item.get("role")
    if not nick or role not in ROLES:
        raise StanzaError("bad-request", text="a role change names a nick and a role")
    if actor is None or actor.role != "moderator":
        raise StanzaError("forbidden", text="only moderators change roles")
    targets = ctx.occupants.by_nick(room, nick)
    if not targets:
        raise StanzaError("item-not-found", text="no occupant with that nickname")
    target = targets[0]
    if (role == "moderator" or target.role == "moderator") and \
            affiliation not in ("owner", "admin"):
        raise StanzaError("not-allowed", text="only admins and owners change moderators")
    if _AFF_RANK[target.affiliation] >= _AFF_RANK["admin"] and \
            _AFF_RANK[target.affiliation] >= _AFF_RANK[affiliation] and target.bare_jid != \
            actor.bare_jid:
        raise StanzaError("not-allowed", text="you may not change the role of this occupant")
    return nick, role


def _bare(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(JID.parse(text).bare)
    except InvalidJID:
        raise StanzaError("jid-malformed") from None


# -- applied on each node to its own occupants ----------------------------------------------------


def on_role(ctx: Muc, peer: str, message: dict) -> None:
    room, nick, role = str(message["room"]), str(message["nick"]), str(message["role"])
    if role not in ROLES:
        return
    for occupant in ctx.occupants.local_of_room(room):
        if occupant.nick != nick:
            continue
        if role == "none":  # §8.2 kick: 307, with who and why
            leave(ctx, occupant, {"c": [307], "ac": message.get("ac", ""),
                                  "re": message.get("re", "")})
        elif occupant.role != role:
            ctx.occupants.put(replace(occupant, role=role))


def on_affiliation(ctx: Muc, peer: str, message: dict) -> None:
    """New affiliations (or a changed configuration: `sweep`) for this node's occupants:
    outcasts leave (301), non-members of a members-only room leave (321), the others
    take the role their affiliation gives (§9, §10)."""
    room = str(message["room"])
    record = ctx.store.muc_room(room)
    if record is None:
        return
    # What changed travels in the message: this node may not have applied it yet.
    changes = message.get("changes") or {}
    ctx.announced(room, changes)
    config = {**record["config"], **(message.get("config") or {})}
    reasons = message.get("re") or {}
    for occupant in ctx.occupants.local_of_room(room):
        if changes and occupant.bare_jid not in changes:
            continue
        affiliation = changes.get(occupant.bare_jid) or \
            record["affiliations"].get(occupant.bare_jid, "none")
        why = {"ac": message.get("ac", ""), "re": reasons.get(occupant.bare_jid, "")}
        if affiliation == "outcast":
            leave(ctx, occupant, {"c": [301], **why})
        elif config["membersonly"] and affiliation == "none":
            leave(ctx, occupant, {"c": [321], **why})
        else:
            role = role_for(config, affiliation)
            if occupant.role == "moderator" and affiliation not in ("owner", "admin") \
                    and occupant.affiliation not in ("owner", "admin"):
                role = "moderator"  # a moderator by role keeps it (§9.6)
            if (role, affiliation) != (occupant.role, occupant.affiliation):
                ctx.occupants.put(replace(occupant, role=role, affiliation=affiliation))
