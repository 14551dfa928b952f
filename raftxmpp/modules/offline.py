"""Offline messages (XEP-0160) with delayed-delivery stamps (XEP-0203).

A message for an account with no available resource is committed through Raft
before the sender is told nothing (an error goes back if it cannot be stored). On
the account's next available presence with non-negative priority, the queue is
taken in one command, so it is handed to exactly one session, once.
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
    if session.priority < 0 or router.store.offline_count(session.bare_jid) == 0:
        return
    domain = session.jid.domain
    for entry in await router.store.offline_take(session.bare_jid):
        stanza = etree.fromstring(entry["stanza"], _PARSER)
        delay = etree.SubElement(stanza, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY})
        delay.set("from", domain)
        delay.set("stamp", _stamp(entry["ts"]))
        delay.text = "Offline storage"
        session.send_stanza(stanza)


def _stamp(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
