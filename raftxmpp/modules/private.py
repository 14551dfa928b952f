"""Private XML storage (XEP-0049): one element per (name, namespace), readable only by its owner."""

from __future__ import annotations

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
# XEP-0049 §3: these namespaces are never stored.
RESERVED = {ns.CLIENT, ns.SERVER, ns.PRIVATE, None}


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.PRIVATE, get_private)
    router.register_iq("account", "set", ns.PRIVATE, set_private)


def _element(request: IqRequest) -> etree._Element:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="private storage is the owner's alone")
    children = list(request.payload)
    if len(children) != 1:
        raise StanzaError("not-acceptable", text="exactly one child element")
    child = children[0]
    if etree.QName(child).namespace in RESERVED:
        raise StanzaError("not-acceptable", text="that namespace cannot be stored")
    return child


def _key(element: etree._Element) -> str:
    return element.tag  # "{namespace}name": unique per (name, namespace)


async def get_private(request: IqRequest) -> etree._Element:
    wanted = _element(request)
    query = etree.Element(f"{{{ns.PRIVATE}}}query", nsmap={None: ns.PRIVATE})
    await request.router.store.fresh()  # never an old copy from a node cut off from the majority
    stored = request.router.store.private(str(request.to_jid), _key(wanted))
    query.append(etree.fromstring(stored.encode(), _PARSER) if stored else
                 etree.Element(wanted.tag, nsmap={None: etree.QName(wanted).namespace}))
    return query


async def set_private(request: IqRequest) -> None:
    element = _element(request)
    xml = etree.tostring(element).decode()
    await request.router.store.private_set(str(request.to_jid), _key(element), xml)
    return None
