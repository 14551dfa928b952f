"""Offline messages (XEP-0160) with delayed-delivery stamps (XEP-0203).

A message for an account with no available resource is committed through Raft
before the sender is told nothing (an error goes back if it cannot be stored). On
the account's next available presence with non-negative priority, one session
claims the queue, delivers it, then removes what it delivered by id (deliver_queue);
to a session with stream management only once its client acknowledged them (or they
were parked or routed on): the node's death before that delivers them again, a
duplicate, never a loss.
"""

from __future__ import annotations

import datetime
import logging
from functools import partial

from lxml import etree

from raftxmpp import metrics
from raftxmpp.c2s.sm import Custody
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID
from raftxmpp.routing.router import Router
from raftxmpp.routing.sessions import LocalSession, custody
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

log = logging.getLogger("raftxmpp.offline")

HINTS = "urn:xmpp:hints"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def setup(router: Router) -> None:
    router.local.offline_handler = partial(store_message, router)
    router.add_hook("initial-presence", partial(deliver_queue, router))
    router.server_features.add("msgoffline")


def worth_storing(stanza: etree._Element) -> bool:
    """Only messages a person would miss: with a body or subject, not marked no-store."""
    if stanza.find(f"{{{HINTS}}}no-store") is not None:
        return False
    return (stanza.find(f"{{{ns.CLIENT}}}body") is not None
            or stanza.find(f"{{{ns.CLIENT}}}subject") is not None)


async def store_message(router: Router, stanza: etree._Element, account: JID) -> bool:
    if not worth_storing(stanza):
        return False
    limit = router.config.limits.offline_queue
    try:
        await router.store.offline_store(str(account), etree.tostring(stanza), limit)
        metrics.ROUTED_OFFLINE.inc()
    except StoreError as exc:
        if exc.condition == "resource-constraint":
            raise StanzaError("service-unavailable", text="offline storage is full") from None
        raise
    return True


async def deliver_queue(router: Router, session: LocalSession) -> None:
    """Claim, deliver, then remove by id: the queue stays in the state until the
    messages are in the session's outbox, so a failed or lost step costs at most a
    counted duplicate (the claim lapses, the next session delivers again), never a
    message. The claim makes a second session (or a second trigger for this one)
    leave the claimed messages to the first."""
    if session.priority < 0:
        return
    if not await router.store.supports("offline_claim"):
        return  # mid-upgrade: the queue waits for a login once every member knows claims
    await router.store.raft.fresh()  # a stale count would miss messages stored elsewhere
    if router.store.offline_count(session.bare_jid) == 0:
        return
    entries, redelivered = await router.store.offline_claim(session.bare_jid,
                                                            claimer(router, session))
    if redelivered:
        metrics.OFFLINE_REDELIVERED.inc(redelivered)
    delivered: list[str] = []
    domain = session.jid.domain
    # With stream management the stored copies stay until the client acknowledged what
    # it got (custody, raftxmpp.c2s.sm): a node that dies before leaves them stored.
    table = router.custody
    record = Custody() if session.sm is not None and table is not None else None
    for entry in entries:
        if session.closing is not None:
            break  # the rest stays claimed; the claim lapses and another session gets them
        stanza = etree.fromstring(entry["stanza"], _PARSER)
        delay = etree.SubElement(stanza, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY})
        delay.set("from", domain)
        delay.set("stamp", _stamp(entry["ts"]))
        delay.text = "Offline storage"
        if record is None:
            session.send_stanza(stanza)
        else:
            token = custody.set((record, stanza, table))
            try:
                session.send_stanza(stanza)
            finally:
                custody.reset(token)
        delivered.append(entry["id"])
    if record is not None:
        bare = session.bare_jid
        record.on_settled = lambda: delivered and router.spawn(_remove, router, bare, delivered)
        record.release()
    elif delivered:
        await router.store.offline_remove(session.bare_jid, delivered)


async def _remove(router: Router, bare_jid: str, ids: list[str]) -> None:
    """The client acknowledged (or the copies were parked, routed on): the stored ones go."""
    try:
        await router.store.offline_remove(bare_jid, ids)
    except (StoreError, RaftUnavailable) as exc:
        # Left stored: the next session gets them again (a counted duplicate, not a loss).
        log.warning("delivered offline messages of %s not removed: %s", bare_jid, exc)
        metrics.OFFLINE_REDELIVERED.inc(len(ids))


def claimer(router: Router, session: LocalSession) -> str:
    """A name for this one session, unique in the cluster and over restarts."""
    return f"{router.store.raft.node_tag}/{session.full_jid}/{session.created!r}"


def _stamp(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
