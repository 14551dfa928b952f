"""vcard-temp (XEP-0054): each account's vCard, replicated; anyone may read, only the owner write."""

from __future__ import annotations

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.VCARD, get_vcard)
    router.register_iq("account", "set", ns.VCARD, set_vcard)
    router.server_features.add(ns.VCARD)


async def get_vcard(request: IqRequest) -> etree._Element:
    await request.router.store.fresh()  # a node cut off from the majority may hold an old one
    stored = request.router.store.vcard(str(request.to_jid))
    if stored is None:
        return etree.Element(f"{{{ns.VCARD}}}vCard", nsmap={None: ns.VCARD})
    return etree.fromstring(stored.encode(), _PARSER)


async def set_vcard(request: IqRequest) -> None:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="only the owner may change a vCard")
    if request.payload.tag != f"{{{ns.VCARD}}}vCard":
        raise StanzaError("bad-request", text="expected <vCard xmlns='vcard-temp'/>")
    await request.router.store.vcard_set(str(request.to_jid), etree.tostring(request.payload).decode())
    return None
