"""IQs to an occupant's JID (XEP-0045 §7.5 end, Prosody's and ejabberd's practice):
passed to the occupant's real JID as if from the asker's occupant JID, and the answer
passed back, so clients can ask occupants for their software version, entity time …
without learning their real JIDs.

A vCard request (XEP-0054, clients fetch occupants' avatars that way, XEP-0153) is
answered from the replicated vCard of the occupant's account: the account's server
answers vCards, not the client.

The forwarded IQ's id names the asking node and a number there: the answer reaches
the answerer's node (it comes from that client), which hands it to the asking node
("muc-iq-answer"), which alone knows whom it is for. Unanswered entries expire.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from lxml import etree

from raftxmpp.modules.muc.context import Muc
from raftxmpp.modules.muc.occupants import Occupant
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns as xml_ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

ANSWER = "muc-iq-answer"
PREFIX = "muc-fwd:"
EXPIRY = 60.0
MAX_PENDING = 10_000  # per node; older entries go first
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_numbers = itertools.count(1)


@dataclass
class Pending:
    asker: str  # the real full JID that asked
    asker_id: str  # its IQ id
    answerer: str  # the real full JID asked
    occupant_jid: str  # room/nick of the one asked: the answer's "from"
    until: float


async def forward(ctx: Muc, stanza: etree._Element, payload: etree._Element, asker: Occupant,
                  targets: list[Occupant], sender: LocalSession) -> None:
    target = targets[0]
    if payload.tag == f"{{{xml_ns.VCARD}}}vCard" and stanza.get("type") == "get":
        _answer_vcard(ctx, stanza, target, sender)
        return
    table = ctx.forwarded
    now = time.monotonic()
    for key in [k for k, p in table.items() if p.until < now][:100]:
        del table[key]
    while len(table) >= MAX_PENDING:
        del table[next(iter(table))]
    forward_id = f"{PREFIX}{ctx.occupants.node_name}:{next(_numbers)}"
    table[forward_id] = Pending(sender.full_jid, stanza.get("id"), target.real_jid,
                                f"{target.room}/{target.nick}", now + EXPIRY)
    iq = make("iq", {"type": stanza.get("type"), "id": forward_id,
                     "from": f"{asker.room}/{asker.nick}", "to": target.real_jid})
    iq.append(etree.fromstring(etree.tostring(payload, with_tail=False), _PARSER))
    await ctx.router.route(iq, None)


def _answer_vcard(ctx: Muc, stanza: etree._Element, target: Occupant,
                  sender: LocalSession) -> None:
    stored = ctx.store.vcard(target.bare_jid)
    vcard = etree.fromstring(stored.encode(), _PARSER) if stored else \
        etree.Element(f"{{{xml_ns.VCARD}}}vCard", nsmap={None: xml_ns.VCARD})
    reply = make("iq", {"type": "result", "id": stanza.get("id"), "to": sender.full_jid,
                        "from": stanza.get("to")})
    reply.append(vcard)
    sender.send_stanza(reply)


def answered(ctx: Muc, stanza: etree._Element, sender: LocalSession) -> bool:
    """An IQ result or error a client sent to an occupant JID: an answer to a forwarded
    IQ goes to the node that asked; True when it was one."""
    forward_id = stanza.get("id") or ""
    if not forward_id.startswith(PREFIX):
        return False
    node = forward_id[len(PREFIX):].rpartition(":")[0]
    stanza.set("from", sender.full_jid)
    ctx.to_node(node, {"t": ANSWER, "x": etree.tostring(stanza).decode()})
    return True


def on_answer(ctx: Muc, peer: str, message: dict) -> None:
    stanza = etree.fromstring(str(message["x"]), _PARSER)
    entry = ctx.forwarded.get(stanza.get("id") or "")
    if entry is None or stanza.get("from") != entry.answerer:
        return  # expired, or not from the one asked
    del ctx.forwarded[stanza.get("id")]
    stanza.set("id", entry.asker_id)
    stanza.set("from", entry.occupant_jid)
    ctx.send_to(entry.asker, stanza)


def refuse_without_targets(targets: list[Occupant]) -> None:
    if not targets:
        raise StanzaError("item-not-found", text="no occupant with that nickname")
