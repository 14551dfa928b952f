"""Entity time (XEP-0202): the server's clock, in UTC."""

from __future__ import annotations

import datetime

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.TIME, entity_time)


async def entity_time(request: IqRequest) -> etree._Element:
    now = datetime.datetime.now(datetime.UTC)
    time = etree.Element(f"{{{ns.TIME}}}time", nsmap={None: ns.TIME})
    etree.SubElement(time, f"{{{ns.TIME}}}tzo").text = "+00:00"
    etree.SubElement(time, f"{{{ns.TIME}}}utc").text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return time
