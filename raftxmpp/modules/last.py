"""Last activity (XEP-0012): the server's uptime, and each account's last logout.

An IQ-get to the server domain answers how long this node has been up (§6). An IQ-get
to an account's bare JID is answered by the server on the user's behalf (§4): 0 seconds
while the user has an available resource, else the seconds since the last logout and the
status of the last unavailable presence — only to the user and to contacts entitled to
the user's presence, <forbidden/> to anyone else. IQs to a full JID go to that client.

The last logout is durable (a `last_logout` command when a session ends, one per logout,
never per stanza), so any node answers the same after any restart.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from lxml import etree

from raftxmpp.cluster import roster_states
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

log = logging.getLogger("raftxmpp.last")

_STARTED = time.monotonic()


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.LAST, uptime)
    router.register_iq("account", "get", ns.LAST, last_logout)
    router.add_hook("session-closed", partial(record_logout, router))


async def uptime(request: IqRequest) -> etree._Element:
    return _query(int(time.monotonic() - _STARTED))


async def last_logout(request: IqRequest) -> etree._Element:
    """§4: "a server MUST NOT return last activity information to an entity that is not
    authorized to view the user's presence information (normally via presence
    subscription), and MUST return a "Forbidden" error in response to such a request"."""
    router, account = request.router, str(request.to_jid)
    requester = str(request.from_jid.bare)
    if requester != account:
        item = router.store.roster_item(account, requester)
        if item is None or not roster_states.has_from(item["subscription"]):
            raise StanzaError("forbidden", text="subscribe to the user's presence first")
    if router.sessions.available(account):
        # "If the user has at least one available resource when the server receives the
        # request, the response SHOULD contain an empty <query/> element whose 'seconds'
        # attribute is set to a value of '0'."
        return _query(0)
    recorded = router.store.last_logout(account)
    if recorded is None:
        raise StanzaError("item-not-found", text="no logout recorded for this account")
    logged_out, status = recorded
    return _query(max(0, int(time.time() - logged_out)), status)


def _query(seconds: int, status: str = "") -> etree._Element:
    query = etree.Element(f"{{{ns.LAST}}}query", nsmap={None: ns.LAST}, seconds=str(seconds))
    if status:
        query.text = status
    return query


async def record_logout(router: Router, session: LocalSession) -> None:
    """A session ended: remember when, with the status of its last unavailable presence.
    Not for sessions ended by this node's shutdown (their clients reconnect elsewhere;
    thousands of writes would only slow the stop), nor for a removed account."""
    closing = session.closing
    if closing is not None and closing.condition in ("system-shutdown", "not-authorized"):
        return
    try:
        await router.store.record_logout(session.bare_jid, session.unavailable_status)
    except (StoreError, RaftUnavailable) as exc:
        log.info("last logout of %s not recorded: %s", session.full_jid, exc)
