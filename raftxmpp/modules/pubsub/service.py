"""The pubsub service (XEP-0060) on "<service>.<host>" for every served host.

It is a domain the cluster hosts itself, not an external component: every node runs
this module over the same replicated state, so a request is answered by whichever
node the client is connected to and the service looks the same from each, with no
instance to pick and none to lose. Its nodes are leaves (no collections).
"""

from __future__ import annotations

from functools import partial

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules.pubsub import protocol
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.modules.pubsub.pep import COMMON_FEATURES, FEATURE, IDENTITY, disco_items, node_info
from raftxmpp.routing.local import IQ
from raftxmpp.routing.router import IqRequest
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError

SERVICE_FEATURES = (*COMMON_FEATURES, "instant-nodes")
NAME = "raftxmpp publish-subscribe"


def setup(ctx: Pubsub) -> None:
    label = ctx.settings.section.service
    if not label:
        return
    router = ctx.router
    prefix = label + "."
    router.add_service(
        lambda domain: domain.startswith(prefix) and domain[len(prefix):] in router.served_hosts(),
        partial(route, ctx))
    # The server's disco#items lists its pubsub service (XEP-0060 §5.1).
    router.disco_items.append(lambda host: [f"{prefix}{host}"])


async def route(ctx: Pubsub, stanza: etree._Element, target: JID,
                sender: LocalSession | None) -> None:
    """A stanza for the service's domain, arriving on this node."""
    if stanza.tag != IQ:
        return  # messages and presence to the service carry nothing it acts on
    kind = stanza.get("type")
    if kind in ("result", "error"):
        return
    if kind not in ("get", "set") or stanza.get("id") is None:
        raise StanzaError("bad-request", text="an iq get or set with an id")
    children = [c for c in stanza if isinstance(c.tag, str)]
    if len(children) != 1:
        raise StanzaError("bad-request", text="an iq get or set carries exactly one payload")
    if target.local is not None or target.resource is not None:
        raise StanzaError("service-unavailable")
    payload = children[0]
    request = IqRequest(stanza, payload, sender, JID.parse(stanza.get("from")),
                        JID(None, target.domain, None), ctx.router)
    handler = _HANDLERS.get((kind, etree.QName(payload).namespace))
    if handler is None:
        raise StanzaError("service-unavailable")
    result = await handler(ctx, request)
    if not request.replied:
        await protocol.answer(ctx, request, result)


async def _pubsub(ctx: Pubsub, request: IqRequest) -> etree._Element | None:
    return await protocol.handle(ctx, request, request.to_jid.domain)


async def _info(ctx: Pubsub, request: IqRequest) -> etree._Element:
    """disco#info of the service (XEP-0060 §5.1) or of a node (§5.3, §5.4)."""
    owner = request.to_jid.domain
    node = request.payload.get("node")
    if node:
        return node_info(ctx, owner, node, str(request.from_jid.bare), request.payload)
    query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
    etree.SubElement(query, IDENTITY, category="pubsub", type="service", name=NAME)
    for feature in [ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PUBSUB,
                    *(f"{ns.PUBSUB}#{f}" for f in SERVICE_FEATURES)]:
        etree.SubElement(query, FEATURE, var=feature)
    return query


async def _items(ctx: Pubsub, request: IqRequest) -> etree._Element:
    return disco_items(ctx, request.to_jid.domain, str(request.from_jid.bare),
                       request.payload.get("node"))


async def _ping(ctx: Pubsub, request: IqRequest) -> None:
    return None


_HANDLERS = {
    ("get", ns.PUBSUB): _pubsub,
    ("set", ns.PUBSUB): _pubsub,
    ("get", ns.PUBSUB_OWNER): _pubsub,
    ("set", ns.PUBSUB_OWNER): _pubsub,
    ("get", ns.DISCO_INFO): _info,
    ("get", ns.DISCO_ITEMS): _items,
    ("get", ns.PING): _ping,
}
