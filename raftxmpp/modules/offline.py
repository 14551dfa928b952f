"""Offline messages (XEP-0160) with delayed-delivery stamps (XEP-0203).

A message for an account with no available resource is committed through Raft
before the sender is told nothing (an error goes back if it cannot be stored). On
the account's next available presence with non-negative priority, one session
claims the queue, delivers it, then removes what it delivered by id (deliver_queue).
"""

from __future__ import annotations

import datetime
from functools import partial

from lxml import etree

from raftxmpp import metrics
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID
from raftxmpp.routing.router import Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

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
    delivered = []
    domain = session.jid.domain
    for entry in entries:
        if session.closing is not None:
            break  # the rest stays claimed; the claim lapses and another session gets them
        stanza = etree.fromstring(entry["stanza"], _PARSER)
        delay = etree.SubElement(stanza, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY})
        delay.set("from", domain)
        delay.set("stamp", _stamp(entry["ts"]))
        delay.text = "Offline storage"
        session.send_stanza(stanza)
        delivered.append(entry["id"])
    if delivered:
        await router.store.offline_remove(session.bare_jid, delivered)


def claimer(router: Router, session: LocalSession) -> str:
    """A name for this one session, unique in the cluster and over restarts."""
    return f"{router.store.raft.node_tag}/{session.full_jid}/{session.created!r}"


def _stamp(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
