"""Entering, changing and leaving a room (XEP-0045 §7.1–§7.2, §7.6, §7.7, §7.14), and
the occupant presence every node sends its own occupants when the table changes.

A node answers a join from the room's durable record (replicated, so the same on every
node) and the occupant table (gossiped); it creates a missing room through Raft, so two
first joins on two nodes make one room. Then the joiner's own node publishes it, and
each node tells its own occupants (raftxmpp.modules.muc.occupants).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from lxml import etree

from raftxmpp.cluster.muc_state import default_config, registered_nick_owner
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.modules.muc import history, ns
from raftxmpp.modules.muc.config import password_matches
from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.muc.occupants import Occupant
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

log = logging.getLogger("raftxmpp.muc")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_WRAP = f"<r xmlns='{ns.CLIENT}'>"


async def handle(ctx: Muc, stanza: etree._Element, room: str, nick: str | None,
                 sender: LocalSession) -> None:
    kind = stanza.get("type")
    if kind == "error":
        # An occupant's client bounced room traffic: it is gone (§7.2.? ejabberd, Prosody).
        for occupant in _occupants_of(ctx, room, sender.full_jid):
            leave(ctx, occupant, {"c": [333]})
        return
    if kind not in (None, "unavailable"):
        return  # probes and subscriptions mean nothing to a room
    current = ctx.occupants.get(room, sender.full_jid)
    if kind == "unavailable":
        if current is not None:
            leave(ctx, current, {"c": [], "st": _status(stanza)})
        return
    if not nick:
        raise StanzaError("jid-malformed", text="join a room as room@service/nick")
    if current is None:
        await join(ctx, stanza, room, nick, sender)
    elif stanza.find(f"{{{ns.MUC}}}x") is not None and current.nick == nick:
        rejoin(ctx, stanza, current, sender)
    elif current.nick != nick:
        change_nick(ctx, current, nick)
    else:
        ctx.occupants.put(replace(current, presence=_children(stanza)))


def _occupants_of(ctx: Muc, room: str, real_jid: str) -> list[Occupant]:
    occupant = ctx.occupants.get(room, real_jid)
    return [occupant] if occupant is not None else []


async def join(ctx: Muc, stanza: etree._Element, room: str, nick: str,
               sender: LocalSession) -> None:
    muc_x = stanza.find(f"{{{ns.MUC}}}x")
    record, created = await _room_to_enter(ctx, room, sender.bare_jid, muc_x is not None)
    affiliation = ctx.affiliation(room, sender.bare_jid, record)
    try:
        _check_entry(ctx, record, room, nick, affiliation, sender.bare_jid, muc_x)
    except StanzaError:
        # This node may lag the log (a room configured or a member added through another
        # node a moment ago): a refusal is only given from a current read.
        await ctx.store.fresh()
        record = ctx.store.muc_room(room)
        if record is None:
            raise StanzaError("item-not-found", text="the room was destroyed meanwhile") \
                from None
        affiliation = ctx.affiliation(room, sender.bare_jid, record)
        _check_entry(ctx, record, room, nick, affiliation, sender.bare_jid, muc_x)
    role = role_for(record["config"], affiliation)
    for other in ctx.occupants.of_room(room):  # §7.2.3: the others first
        sender.send_stanza(presence_of(ctx, record["config"], other, role, sender.full_jid))
    occupant = Occupant(room, sender.full_jid, nick, role, affiliation, _children(stanza),
                        time.time())
    ctx.occupants.put(occupant)  # the others hear of it; the joiner, here:
    sender.send_stanza(_self_presence(ctx, record["config"], occupant, [201] if created else []))
    history.send_on_join(ctx, room, sender, muc_x)
    sender.send_stanza(subject_message(room, ctx.subject(room, record)))


def rejoin(ctx: Muc, stanza: etree._Element, current: Occupant, sender: LocalSession) -> None:
    """A join from a session already in the room (a client that lost track, after a
    failed self-ping, XEP-0410 §4): it gets the room again as on a first join."""
    record = ctx.store.muc_room(current.room)
    if record is None:
        raise StanzaError("item-not-found", text="no such room")
    for other in ctx.occupants.of_room(current.room):
        if other.real_jid != current.real_jid:
            sender.send_stanza(presence_of(ctx, record["config"], other, current.role,
                                           sender.full_jid))
    occupant = replace(current, presence=_children(stanza))
    if occupant != current:
        ctx.occupants.put(occupant)
    sender.send_stanza(_self_presence(ctx, record["config"], occupant, []))
    history.send_on_join(ctx, current.room, sender, stanza.find(f"{{{ns.MUC}}}x"))
    sender.send_stanza(subject_message(current.room, ctx.subject(current.room, record)))


async def _room_to_enter(ctx: Muc, room: str, bare: str, locked: bool) -> tuple[dict, bool]:
    """The room's record, created (owned by `bare`) if it does not exist; and whether
    this join created it."""
    record = ctx.store.muc_room(room)
    if record is not None:
        return record, False
    await ctx.store.fresh()  # created through another node a moment ago?
    record = ctx.store.muc_room(room)
    if record is not None:
        return record, False
    created = await _create(ctx, room, bare, locked)
    record = ctx.store.muc_room(room)
    if record is None:
        raise StanzaError("item-not-found", text="the room was destroyed meanwhile")
    return record, created


async def _create(ctx: Muc, room: str, owner: str, locked: bool) -> bool:
    if ctx.settings.room_creation != "accounts" or owner.partition("@")[2] not in \
            ctx.router.served_hosts():
        raise StanzaError("not-allowed", text="rooms are created by the operator here")
    return await ctx.store.muc_create(room, owner, default_config(), locked,
                                      ctx.settings.max_rooms, ctx.settings.max_rooms_per_owner)


def _check_entry(ctx: Muc, record: dict, room: str, nick: str, affiliation: str, bare: str,
                 muc_x: etree._Element | None) -> None:
    """The refusals of §7.2.6–§7.2.10, in the XEP's order."""
    config = record["config"]
    if affiliation == "outcast":
        raise StanzaError("forbidden", text="you are banned from this room")
    if record["locked"] and affiliation != "owner":
        raise StanzaError("item-not-found", text="the room is being configured")
    if config["membersonly"] and affiliation == "none":
        raise StanzaError("registration-required", text="this room is for members only")
    if config["passwordprotectedroom"] and affiliation != "owner":
        given = muc_x.findtext(f"{{{ns.MUC}}}password") if muc_x is not None else None
        if given is None or not password_matches(config["secret"], given):
            raise StanzaError("not-authorized", text="a password is required")
    others = [o for o in ctx.occupants.by_nick(room, nick) if o.bare_jid != bare]
    if others or registered_nick_owner(record, nick) not in (None, bare):
        raise StanzaError("conflict", text="that nickname is taken")
    limit = min(config["maxusers"], ctx.settings.max_occupants)
    if affiliation not in ("owner", "admin") and len(ctx.occupants.of_room(room)) >= limit:
        raise StanzaError("service-unavailable", text="the room is full")


def role_for(config: dict, affiliation: str) -> str:
    """The role an affiliation enters with (§5.1.2)."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if config["moderatedroom"] and affiliation == "none":
        return "visitor"
    return "participant"


def change_nick(ctx: Muc, occupant: Occupant, nick: str) -> None:
    """§7.6: the others see the old nick leave (303) and the new one come."""
    record = ctx.store.muc_room(occupant.room) or {}
    if any(o.bare_jid != occupant.bare_jid for o in ctx.occupants.by_nick(occupant.room, nick)) \
            or registered_nick_owner(record, nick) not in (None, occupant.bare_jid):
        raise StanzaError("conflict", text="that nickname is taken")
    ctx.occupants.put(replace(occupant, nick=nick))


def leave(ctx: Muc, occupant: Occupant, why: dict) -> None:
    ctx.occupants.remove(occupant, why)
    if not ctx.occupants.of_room(occupant.room):
        _destroy_if_temporary(ctx, occupant.room)


def _destroy_if_temporary(ctx: Muc, room: str) -> None:
    """§10.1.1: a temporary room ends with its last occupant."""
    ctx.router.spawn(_destroy_temporary, ctx, room)


async def _destroy_temporary(ctx: Muc, room: str) -> None:
    try:
        await ctx.store.muc_destroy(room, "", temporary_only=True)
    except (StoreError, RaftUnavailable) as exc:
        log.info("temporary room %s not destroyed now: %s", room, exc)
    else:
        history.forget(ctx, room)


# -- what occupants see ---------------------------------------------------------------------


def on_change(ctx: Muc, old: Occupant | None, new: Occupant | None) -> None:
    """Tells this node's occupants of a room about one occupant's change (any node's)."""
    occupant = new or old
    room = occupant.room
    record_config = _config(ctx, room)
    if record_config is None:
        return
    leaving = new is None or new.leaving is not None
    if leaving and (new is not None and new.leaving.get("s")):
        return  # destroyed: each occupant was told by its own node
    renamed = old is not None and new is not None and not leaving and old.nick != new.nick
    if not leaving and occupant.node != ctx.occupants.node_name:
        _settle_nick_race(ctx, occupant)
    if leaving and occupant.node != ctx.occupants.node_name and \
            not ctx.occupants.of_room(room) and ctx.orderer_of(room) == ctx.occupants.node_name:
        # The last occupants went with their node: the room's ordering node ends a
        # temporary room for them (one node does it, not every survivor).
        _destroy_if_temporary(ctx, room)
    recipients = ctx.occupants.local_of_room(room)
    if leaving and occupant.node == ctx.occupants.node_name:
        recipients.append(occupant)  # the leaver hears its own unavailable
    for recipient in recipients:
        if old is None and not leaving and recipient.real_jid == occupant.real_jid:
            continue  # the joiner's own presence comes from join(), with its codes
        if renamed:
            gone = Occupant(**{**old.__dict__, "leaving": {"c": [303], "nn": new.nick}})
            _send(ctx, record_config, gone, recipient)
        if not leaving and recipient.real_jid == occupant.real_jid and old is not None \
                and not renamed and old.role == new.role and old.affiliation == new.affiliation \
                and old.presence == new.presence:
            continue
        _send(ctx, record_config, new if new is not None else _gone(old), recipient)


def _settle_nick_race(ctx: Muc, remote: Occupant) -> None:
    """Two users took one nick on two nodes before either node heard of the other: the
    earlier join keeps it (ties by node name, the same on both nodes), and the node of the
    later one removes its occupant, as a kick that says why."""
    for local in ctx.occupants.local_of_room(remote.room):
        if local.nick == remote.nick and local.bare_jid != remote.bare_jid and \
                (local.joined, local.node) > (remote.joined, remote.node):
            leave(ctx, local, {"c": [307], "re": "this nickname was taken on another node"})


def _gone(old: Occupant) -> Occupant:
    return Occupant(**{**old.__dict__, "leaving": {"c": [333]}})


def _send(ctx: Muc, config: dict, occupant: Occupant, recipient: Occupant) -> None:
    if recipient.real_jid == occupant.real_jid:
        stanza = _self_presence(ctx, config, occupant, [])
    else:
        stanza = presence_of(ctx, config, occupant, recipient.role, recipient.real_jid)
    ctx.send_to(recipient.real_jid, stanza)


def _config(ctx: Muc, room: str) -> dict | None:
    record = ctx.store.muc_room(room)
    return record["config"] if record is not None else default_config()


def presence_of(ctx: Muc, config: dict, occupant: Occupant, viewer_role: str,
                to: str) -> etree._Element:
    """An occupant's presence as one occupant sees it (§7.2.3, §7.2.4: the real JID for
    moderators, or for all in a non-anonymous room)."""
    leaving = occupant.leaving
    stanza = make("presence", {"from": f"{occupant.room}/{occupant.nick}", "to": to,
                               "type": "unavailable" if leaving is not None else None})
    if leaving is None and occupant.presence:
        for child in etree.fromstring(f"{_WRAP}{occupant.presence}</r>", _PARSER):
            stanza.append(child)
    elif leaving is not None and leaving.get("st"):
        etree.SubElement(stanza, f"{{{ns.CLIENT}}}status").text = leaving["st"]
    x = etree.SubElement(stanza, f"{{{ns.MUC_USER}}}x", nsmap={None: ns.MUC_USER})
    gone = leaving is not None
    codes = list(leaving.get("c", [])) if gone else []
    removed = any(c in codes for c in (301, 307, 321, 322, 332, 333))
    item = etree.SubElement(x, f"{{{ns.MUC_USER}}}item",
                            affiliation="outcast" if 301 in codes else occupant.affiliation,
                            role="none" if gone else occupant.role)
    if config["whois"] == "anyone" or viewer_role == "moderator":
        item.set("jid", occupant.real_jid)
    if gone and leaving.get("nn"):
        item.set("nick", leaving["nn"])
    if removed and leaving.get("ac"):
        etree.SubElement(item, f"{{{ns.MUC_USER}}}actor", nick=leaving["ac"])
    if removed and leaving.get("re"):
        etree.SubElement(item, f"{{{ns.MUC_USER}}}reason").text = leaving["re"]
    for code in codes:
        etree.SubElement(x, f"{{{ns.MUC_USER}}}status", code=str(code))
    return stanza


def _self_presence(ctx: Muc, config: dict, occupant: Occupant, extra: list[int]) -> etree._Element:
    """The occupant's own presence, marked 110 (§7.2.3); 100 in a non-anonymous room;
    201 for the room just created."""
    stanza = presence_of(ctx, config, occupant, "moderator", occupant.real_jid)
    x = stanza.find(f"{{{ns.MUC_USER}}}x")
    codes = [110, *extra]
    if config["whois"] == "anyone" and occupant.leaving is None:
        codes.append(100)
    for code in codes:
        etree.SubElement(x, f"{{{ns.MUC_USER}}}status", code=str(code))
    return stanza


def subject_message(room: str, subject: dict | None) -> etree._Element:
    """§7.2.15: the subject closes the join; an empty one when none was set."""
    sender = f"{room}/{subject['nick']}" if subject and subject["nick"] else room
    message = make("message", {"from": sender, "type": "groupchat",
                               "id": f"subject-{int(time.time() * 1000)}"})
    etree.SubElement(message, f"{{{ns.CLIENT}}}subject").text = subject["text"] if subject else ""
    return message


def _children(stanza: etree._Element) -> str:
    """What of a client's presence the room passes on: all but the MUC join element."""
    parts = []
    for child in stanza:
        if not isinstance(child.tag, str) or child.tag == f"{{{ns.MUC}}}x":
            continue
        parts.append(etree.tostring(child, with_tail=False).decode())
    return "".join(parts)


def _status(stanza: etree._Element) -> str:
    return (stanza.findtext(f"{{{ns.CLIENT}}}status") or "")[:1024]


# -- sessions that end --------------------------------------------------------------------------


async def on_session_closed(ctx: Muc, session: LocalSession) -> None:
    """A connection ended: its occupants leave, as if it sent unavailable (§7.14)."""
    for occupant in ctx.occupants.of_session(session.full_jid):
        leave(ctx, occupant, {"c": [], "st": session.unavailable_status})


async def on_client_presence(ctx: Muc, stanza: etree._Element, session: LocalSession) -> None:
    """An unavailable broadcast (no 'to') ends the session's presence everywhere, rooms
    included (RFC 6121 §4.5.2: directed presence gets unavailable too)."""
    if stanza.get("to") is None and stanza.get("type") == "unavailable":
        for occupant in ctx.occupants.of_session(session.full_jid):
            leave(ctx, occupant, {"c": [], "st": _status(stanza)})
