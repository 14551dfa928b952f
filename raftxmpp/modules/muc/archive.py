"""The room's archive (XEP-0313 on the room JID, XEP-0045 §7.2.14's durable companion),
through the message archive module (raftxmpp.modules.mam) when it is enabled.

The room's ordering node queues each message it orders as one archive row owned by the
room, with the stanza-id it stamped (XEP-0359 'by' the room), so the archive, every
occupant's copy and the history agree on ids. Rows are replicated in batches like any
archive row, so the room's archive survives any node and a full-cluster restart.
Who may query: whoever may enter the room (not outcasts; members in a members-only room).

Occupants get a message before its row commits (the row waits for a batch), so a query
first asks the room's ordering node to commit what it has queued ("muc-archive-drain"):
a newcomer on any node then finds every message the occupants saw.
"""

from __future__ import annotations

import itertools
import logging
import time

import trio
from lxml import etree

from raftxmpp.cluster import archive_state
from raftxmpp.cluster.archive import UnknownId
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.modules import mam
from raftxmpp.modules.muc.context import Muc
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError

MAM = mam.MAM
DRAIN, DRAINED = "muc-archive-drain", "muc-archive-drained"
DRAIN_WAIT = 5.0  # for the ordering node's answer; then the query shows what committed
log = logging.getLogger("raftxmpp.muc")
_tokens = itertools.count(1)


def enabled(ctx: Muc) -> bool:
    return mam.context(ctx.router) is not None


def keep(ctx: Muc, room: str, nick: str, sid: str, stanza: etree._Element) -> None:
    """On the ordering node, once per message."""
    archive = mam.context(ctx.router)
    if archive is None:
        return
    data = etree.tostring(stanza)
    if len(data) <= archive_state.MAX_STANZA:
        archive.writer.add((room, sid, time.time(), f"{room}/{nick}", False, data))


async def query(ctx: Muc, stanza: etree._Element, payload: etree._Element, room: str,
                record: dict, sender: LocalSession) -> etree._Element | None:
    archive = mam.context(ctx.router)
    if archive is None:
        raise StanzaError("service-unavailable", text="no archive on this service")
    affiliation = ctx.affiliation(room, sender.bare_jid, record)
    if affiliation == "outcast" or (record["config"]["membersonly"] and affiliation == "none"):
        raise StanzaError("forbidden", text="you may not read this room's archive")
    if stanza.get("type") == "get":
        return mam.query_form()
    if etree.QName(payload).localname != "query":
        raise StanzaError("feature-not-implemented")
    q, flip = mam.parse_query(payload, room, archive.config)
    await _orderer_drained(ctx, room)
    await ctx.store.fresh()
    try:
        page = ctx.store.archive_query(q)
    except UnknownId as exc:
        raise StanzaError("item-not-found", text=f"no message {exc} in the archive") from None
    rows = list(reversed(page.rows)) if flip else page.rows
    queryid = payload.get("queryid")
    for row in rows:
        sender.send_stanza(mam.result_message(room, sender.full_jid, queryid, row))
    return mam.fin_element(page, rows)


async def _orderer_drained(ctx: Muc, room: str) -> None:
    """The rows the room's ordering node queued before now are committed (or it did not
    answer in DRAIN_WAIT: a dead orderer's queue is gone, the query shows what is)."""
    orderer = ctx.orderer_of(room)
    if orderer == ctx.occupants.node_name:
        await mam.context(ctx.router).writer.drain()
        return
    token = next(_tokens)
    done = ctx.drains[token] = trio.Event()
    try:
        ctx.to_node(orderer, {"t": DRAIN, "n": token})
        with trio.move_on_after(DRAIN_WAIT):
            await done.wait()
    finally:
        del ctx.drains[token]


def on_drain(ctx: Muc, peer: str, message: dict) -> None:
    """On the ordering node: commit the queued rows, then tell the asking node."""
    ctx.router.spawn(_drain_and_answer, ctx, peer, message.get("n"))


async def _drain_and_answer(ctx: Muc, peer: str, token: object) -> None:
    archive = mam.context(ctx.router)
    if archive is not None:
        try:
            await archive.writer.drain()
        except RaftUnavailable:
            log.warning("room archive rows not committed in time for a query from %s", peer)
    ctx.to_node(peer, {"t": DRAINED, "n": token})


def on_drained(ctx: Muc, peer: str, message: dict) -> None:
    done = ctx.drains.get(message.get("n"))
    if done is not None:
        done.set()
