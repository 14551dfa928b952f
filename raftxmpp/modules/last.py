"""Last activity (XEP-0012), for the server: seconds since this node started."""

from __future__ import annotations

import time

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns

_STARTED = time.monotonic()


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.LAST, uptime)


async def uptime(request: IqRequest) -> etree._Element:
    seconds = int(time.monotonic() - _STARTED)
    return etree.Element(f"{{{ns.LAST}}}query", nsmap={None: ns.LAST}, seconds=str(seconds))
