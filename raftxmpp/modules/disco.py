"""Service discovery (XEP-0030) with extended information (XEP-0128), and the server's
entity capabilities (XEP-0115). Other modules add nodes and forms through the router."""

from __future__ import annotations

import base64
import hashlib

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import forms, ns
from raftxmpp.xml.errors import StanzaError

CAPS_NODE = "https://github.com/raftxmpp/raftxmpp"
IDENTITY = ("server", "im", "raftxmpp")


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.DISCO_INFO, server_info)
    router.register_iq("server", "get", ns.DISCO_ITEMS, server_items)
    router.register_iq("account", "get", ns.DISCO_INFO, account_info)
    router.register_iq("account", "get", ns.DISCO_ITEMS, account_items)
    router.server_features.update({ns.DISCO_INFO, ns.DISCO_ITEMS})
    router.stream_features.append(lambda: caps_element(router))


def server_features(router: Router) -> list[str]:
    namespaces = {namespace for scope, _, namespace in router.iq_handlers if scope == "server"}
    return sorted(namespaces | router.server_features)


def _query(namespace: str, node: str | None) -> etree._Element:
    query = etree.Element(f"{{{namespace}}}query", nsmap={None: namespace})
    if node:
        query.set("node", node)
    return query


async def server_info(request: IqRequest) -> etree._Element:
    router = request.router
    node = request.payload.get("node")
    if node in router.disco_info_nodes:
        return await router.disco_info_nodes[node](request)
    if node and node != f"{CAPS_NODE}#{caps_ver(router)}":
        raise StanzaError("item-not-found")
    query = _query(ns.DISCO_INFO, node)
    category, kind, name = IDENTITY
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category=category, type=kind, name=name)
    for feature in server_features(router):
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    for extended in server_forms(router):  # XEP-0128
        query.append(extended)
    return query


def server_forms(router: Router) -> list[etree._Element]:
    """The extended-information forms of the server's disco#info (XEP-0128)."""
    return [x for make_form in router.server_info_forms if (x := make_form()) is not None]


async def server_items(request: IqRequest) -> etree._Element:
    node = request.payload.get("node")
    if node in request.router.disco_items_nodes:
        return await request.router.disco_items_nodes[node](request)
    if node:
        raise StanzaError("item-not-found")
    query = _query(ns.DISCO_ITEMS, None)
    for domain in sorted(request.router.store.components()):
        etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=domain)
    for items in request.router.disco_items:  # services on their own domains (upload, pubsub …)
        for jid in items(request.to_jid.domain):
            etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=jid)
    return query


async def account_info(request: IqRequest) -> etree._Element:
    query = _query(ns.DISCO_INFO, request.payload.get("node"))
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="account", type="registered")
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=ns.DISCO_INFO)
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=ns.DISCO_ITEMS)
    for feature in sorted(request.router.account_features):
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    return query


async def account_items(request: IqRequest) -> etree._Element:
    return _query(ns.DISCO_ITEMS, request.payload.get("node"))


def caps_ver(router: Router) -> str:
    """The XEP-0115 §5.1 verification string over our identity, features and extended
    information forms (sorted by FORM_TYPE, §5.4 step 3.6)."""
    category, kind, name = IDENTITY
    text = f"{category}/{kind}//{name}<" + "".join(f + "<" for f in server_features(router))
    text += "".join(sorted(forms.caps_string(x) for x in server_forms(router)))
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def caps_element(router: Router) -> etree._Element:
    return etree.Element(f"{{{ns.CAPS}}}c", nsmap={None: ns.CAPS}, hash="sha-1", node=CAPS_NODE,
                         ver=caps_ver(router))
