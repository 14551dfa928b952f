"""Software version (XEP-0092)."""

from __future__ import annotations

from lxml import etree

from raftxmpp import __version__
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.VERSION, software_version)


async def software_version(request: IqRequest) -> etree._Element:
    query = etree.Element(f"{{{ns.VERSION}}}query", nsmap={None: ns.VERSION})
    etree.SubElement(query, f"{{{ns.VERSION}}}name").text = "raftxmpp"
    etree.SubElement(query, f"{{{ns.VERSION}}}version").text = __version__
    return query
