"""Messages in a room (XEP-0045 §7.4, §7.5, §7.8, §8.1): groupchat, private messages,
invitations and the subject.

Ordering. Each room has one ordering node: the live node that ranks highest for the
room by rendezvous hashing (Muc.orderer_of). An occupant's node hands every groupchat
message to it ("muc-order"); it stamps the message (XEP-0359 stanza-id) and sends it to
every live node ("muc-deliver"), each of which keeps it in the room's history and
passes it to its own occupants. Node links keep order per link, so every occupant gets
the room's messages in the order the ordering node sent them. When that node dies,
gossip drops it within DEAD_AFTER and every node names the same next one; messages
handed to the dead node and not yet sent on are lost (their senders never see them
echoed, which is how a MUC client learns a message went through).
"""

from __future__ import annotations

import logging
import secrets
import time
from xml.sax.saxutils import quoteattr

from lxml import etree

from raftxmpp import metrics
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.modules.muc import archive as room_archive
from raftxmpp.modules.muc import history, ns
from raftxmpp.modules.muc.admin import AFFILIATION, ROLE
from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.muc.occupants import Occupant
from raftxmpp.modules.muc.presence import subject_message
from raftxmpp.modules.pubsub.forms import Field, build, submitted
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make, serialize

log = logging.getLogger("raftxmpp.muc")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
ORDER, DELIVER = "muc-order", "muc-deliver"
# Stands for the recipient in a message serialised once for all. Only its first occurrence
# as a whole attribute is replaced: the start tag comes before any content, and inside
# it other attribute values have their quotes escaped, so that is the "to" attribute.
_TO_MARK = "recipient"
_TO_ATTRIBUTE = b' to="recipient"'
# Elements a room never passes on from a sender (it stamps its own).
_DROPPED = (f"{{{ns.STANZA_ID}}}stanza-id", f"{{{ns.MUC_USER}}}x", f"{{{ns.DELAY}}}delay")


async def handle(ctx: Muc, stanza: etree._Element, room: str, nick: str | None,
                 sender: LocalSession) -> None:
    kind = stanza.get("type") or "normal"
    if kind == "error":
        return
    occupant = ctx.occupants.get(room, sender.full_jid)
    if nick is not None:
        if kind == "groupchat":
            raise StanzaError("bad-request", text="groupchat goes to the room, not to a nick")
        await private_message(ctx, stanza, room, nick, occupant)
        return
    form = stanza.find(f"{{{ns.DATA_FORMS}}}x")
    if form is not None and kind != "groupchat" and submitted(form)[0] == ns.REQUEST:
        await voice_request(ctx, room, form, occupant)
        return
    x = stanza.find(f"{{{ns.MUC_USER}}}x")
    if x is not None and kind != "groupchat":
        await invitation(ctx, stanza, room, x, occupant, sender)
        return
    if kind != "groupchat":
        raise StanzaError("bad-request", text="a message to a room is groupchat")
    if occupant is None:
        metrics.MUC_REFUSED.inc()
        raise StanzaError("not-acceptable", text="join the room before you speak in it")
    subject = stanza.find(f"{{{ns.CLIENT}}}subject")
    if subject is not None and stanza.find(f"{{{ns.CLIENT}}}body") is None:
        await set_subject(ctx, room, occupant, subject.text or "")
        return
    if occupant.role == "visitor":
        metrics.MUC_REFUSED.inc()
        raise StanzaError("forbidden", text="visitors have no voice in this moderated room")
    if not _within_rate(ctx, occupant):
        metrics.MUC_REFUSED.inc()
        raise StanzaError("resource-constraint", type="wait",
                          text="you are sending messages too fast")
    submit(ctx, room, occupant.nick, stanza)


def _within_rate(ctx: Muc, occupant: Occupant) -> bool:
    """A token bucket per occupant: [muc] max_message_rate with message_burst."""
    key = (occupant.room, occupant.real_jid)
    now = time.monotonic()
    tokens, last = ctx.buckets.get(key, (float(ctx.settings.message_burst), now))
    tokens = min(float(ctx.settings.message_burst),
                 tokens + (now - last) * ctx.settings.max_message_rate)
    if tokens < 1:
        ctx.buckets[key] = (tokens, now)
        return False
    ctx.buckets[key] = (tokens - 1, now)
    if len(ctx.buckets) > 100_000:  # occupants that left keep no bucket for long
        ctx.buckets.clear()
    return True


def submit(ctx: Muc, room: str, nick: str, stanza: etree._Element) -> None:
    """Hands a groupchat message to the room's ordering node."""
    message = make("message", {"from": f"{room}/{nick}", "type": "groupchat",
                               "id": stanza.get("id")})
    lang = stanza.get("{http://www.w3.org/XML/1998/namespace}lang")
    if lang:
        message.set("{http://www.w3.org/XML/1998/namespace}lang", lang)
    for child in stanza:
        if isinstance(child.tag, str) and child.tag not in _DROPPED:
            message.append(_copy(child))
    ctx.to_node(ctx.orderer_of(room), {"t": ORDER, "room": room,
                                       "x": etree.tostring(message).decode()})


def _copy(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element, with_tail=False), _PARSER)


def on_order(ctx: Muc, peer: str, message: dict) -> None:
    """This node orders the room: stamp the message and send it to every node."""
    room, xml = str(message["room"]), str(message["x"])
    stanza = etree.fromstring(xml, _PARSER)
    if stanza.find(f"{{{ns.CLIENT}}}body") is not None:
        sid = secrets.token_urlsafe(12)
        etree.SubElement(stanza, f"{{{ns.STANZA_ID}}}stanza-id", nsmap={None: ns.STANZA_ID},
                         id=sid, by=room)
        room_archive.keep(ctx, room, JID.parse(stanza.get("from")).resource or "", sid, stanza)
    metrics.MUC_ORDERED.inc()
    ctx.to_all({"t": DELIVER, "room": room, "x": etree.tostring(stanza).decode(),
                "ts": time.time(), "h": stanza.find(f"{{{ns.CLIENT}}}body") is not None})


def on_deliver(ctx: Muc, peer: str, message: dict) -> None:
    """An ordered message: into the history, and to this node's occupants."""
    room, xml = str(message["room"]), str(message["x"])
    if message.get("h"):
        history.remember(ctx, room, xml, float(message["ts"]))
    stanza = etree.fromstring(xml, _PARSER)
    subject = stanza.find(f"{{{ns.CLIENT}}}subject")
    if subject is not None and not message.get("h"):
        ctx.subject_ordered(room, {"text": subject.text or "",
                                   "nick": JID.parse(stanza.get("from")).resource or ""})
    recipients = ctx.occupants.local_of_room(room)
    if not recipients:
        return
    # Serialised once per node, not once per occupant: only "to" differs (the hot path:
    # one room message is as many writes as the room has occupants).
    stanza.set("to", _TO_MARK)
    data = serialize(stanza)
    sessions = ctx.router.sessions
    for occupant in recipients:
        session = sessions.local_session(JID.parse(occupant.real_jid))
        if session is not None:
            session.send(data.replace(
                _TO_ATTRIBUTE, b" to=" + quoteattr(occupant.real_jid).encode(), 1))
    metrics.MUC_DELIVERED.inc(len(recipients))


async def set_subject(ctx: Muc, room: str, occupant: Occupant, text: str) -> None:
    """§8.1: by moderators, or by participants where the room lets them."""
    record = ctx.store.muc_room(room)
    if record is None:
        raise StanzaError("item-not-found")
    allowed = occupant.role == "moderator" or (
        record["config"]["changesubject"] and occupant.role == "participant")
    if not allowed:
        raise StanzaError("forbidden", text="you may not change the subject")
    await ctx.store.muc_subject(room, text[:4096], occupant.nick)
    stanza = subject_message(room, {"text": text[:4096], "nick": occupant.nick})
    ctx.to_node(ctx.orderer_of(room), {"t": ORDER, "room": room,
                                       "x": etree.tostring(stanza).decode()})


async def private_message(ctx: Muc, stanza: etree._Element, room: str, nick: str,
                          occupant: Occupant | None) -> None:
    """§7.5: to every session of the occupant with that nick, from the sender's nick."""
    if occupant is None:
        raise StanzaError("not-acceptable", text="join the room to send private messages")
    record = ctx.store.muc_room(room)
    if record is None:
        raise StanzaError("item-not-found")
    allowpm = record["config"]["allowpm"]
    if allowpm == "none" or (allowpm == "moderators" and occupant.role != "moderator") or \
            (allowpm == "participants" and occupant.role == "visitor"):
        raise StanzaError("not-allowed", text="private messages are not allowed here")
    targets = ctx.occupants.by_nick(room, nick)
    if not targets:
        raise StanzaError("item-not-found", text="no occupant with that nickname")
    for target in targets:
        copy = make("message", {"from": f"{room}/{occupant.nick}", "to": target.real_jid,
                                "type": stanza.get("type"), "id": stanza.get("id")})
        for child in stanza:
            if isinstance(child.tag, str) and child.tag != f"{{{ns.MUC_USER}}}x":
                copy.append(_copy(child))
        etree.SubElement(copy, f"{{{ns.MUC_USER}}}x", nsmap={None: ns.MUC_USER})
        await ctx.router.route(copy, None)


async def invitation(ctx: Muc, stanza: etree._Element, room: str, x: etree._Element,
                     occupant: Occupant | None, sender: LocalSession) -> None:
    """§7.8.2 mediated invitations (and their declines, §7.8.2 end)."""
    record = ctx.store.muc_room(room)
    if record is None:
        raise StanzaError("item-not-found")
    for decline in x.findall(f"{{{ns.MUC_USER}}}decline"):
        to = _jid(decline.get("to"))
        message = make("message", {"from": room, "to": to})
        out = etree.SubElement(message, f"{{{ns.MUC_USER}}}x", nsmap={None: ns.MUC_USER})
        element = etree.SubElement(out, f"{{{ns.MUC_USER}}}decline", attrib={"from": sender.bare_jid})
        _reason(decline, element)
        await ctx.router.route(message, None)
    invites = x.findall(f"{{{ns.MUC_USER}}}invite")
    if not invites:
        return
    if occupant is None:
        raise StanzaError("not-acceptable", text="join the room to invite others")
    config = record["config"]
    affiliation = record["affiliations"].get(sender.bare_jid, "none")
    if config["membersonly"] and not config["allowinvites"] and \
            affiliation not in ("owner", "admin"):
        raise StanzaError("forbidden", text="only admins invite to this room")
    for invite in invites:
        to = _jid(invite.get("to"))
        if config["membersonly"] and record["affiliations"].get(to, "none") == "none":
            # §9.3: an invitation to a members-only room makes the invitee a member.
            await ctx.store.muc_set_affiliations(room, "", {to: "member"})
            ctx.to_all({"t": AFFILIATION, "room": room, "changes": {to: "member"}})
        message = make("message", {"from": room, "to": to})
        out = etree.SubElement(message, f"{{{ns.MUC_USER}}}x", nsmap={None: ns.MUC_USER})
        element = etree.SubElement(out, f"{{{ns.MUC_USER}}}invite",
                                   attrib={"from": sender.bare_jid})
        _reason(invite, element)
        etree.SubElement(message, f"{{{ns.CONFERENCE}}}x", nsmap={None: ns.CONFERENCE},
                         jid=room)
        await ctx.router.route(message, None)


async def voice_request(ctx: Muc, room: str, form: etree._Element,
                        occupant: Occupant | None) -> None:
    """§7.13 a visitor asks for voice: the request goes to every moderator as a form;
    §8.6 a moderator's approval (muc#request_allow) gives the visitor voice."""
    if occupant is None:
        raise StanzaError("not-acceptable", text="join the room first")
    _, values = submitted(form)
    nick = (values.get("muc#roomnick") or [""])[0]
    if occupant.role == "moderator" and nick:
        if (values.get("muc#request_allow") or ["false"])[0] in ("1", "true"):
            ctx.to_all({"t": ROLE, "room": room, "nick": nick, "role": "participant",
                        "ac": occupant.nick, "re": ""})
        return
    if occupant.role != "visitor":
        return  # a participant has voice already; nothing to ask
    request = build(ns.REQUEST, [
        Field("muc#role", "list-single", ["participant"], label="Requested role",
              options=("participant",)),
        Field("muc#jid", "jid-single", [occupant.real_jid], label="User ID"),
        Field("muc#roomnick", "text-single", [occupant.nick], label="Room Nickname"),
        Field("muc#request_allow", "boolean", ["false"],
              label="Grant voice to this person?")])
    request.set("type", "form")
    for moderator in ctx.occupants.of_room(room):
        if moderator.role == "moderator":
            message = make("message", {"from": room, "to": moderator.real_jid})
            message.append(_copy(request))
            await ctx.router.route(message, None)


def _jid(text: str | None) -> str:
    try:
        jid = JID.parse(text or "")
    except InvalidJID:
        raise StanzaError("jid-malformed", text="an invitation names a JID") from None
    return str(jid.bare)


def _reason(source: etree._Element, target: etree._Element) -> None:
    reason = source.findtext(f"{{{ns.MUC_USER}}}reason")
    if reason:
        etree.SubElement(target, f"{{{ns.MUC_USER}}}reason").text = reason[:1024]
