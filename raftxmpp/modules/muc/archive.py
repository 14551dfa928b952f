"""The room's archive (XEP-0313 on the room JID, XEP-0045 §7.2.14's durable companion),
through the message archive module (raftxmpp.modules.mam) when it is enabled.

The room's ordering node queues each message it orders as one archive row owned by the
room, with the stanza-id it stamped (XEP-0359 'by' the room), so the archive, every
occupant's copy and the history agree on ids. Rows are replicated in batches like any
archive row, so the room's archive survives any node and a full-cluster restart.
Who may query: whoever may enter the room (not outcasts; members in a members-only room).
"""

from __future__ import annotations

import time

from lxml import etree

from raftxmpp.cluster import archive_state
from raftxmpp.cluster.archive import UnknownId
from raftxmpp.modules import mam
from raftxmpp.modules.muc.context import Muc
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml.errors import StanzaError

MAM = mam.MAM


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
    await archive.writer.drain()
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
