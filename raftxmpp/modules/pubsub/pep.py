"""Personal Eventing Protocol (XEP-0163): every account is a pubsub service.

Answers XEP-0060 requests addressed to an account (protocol.py does the work with the
account as owner), tells disco what the account supports (§6.1: identity pubsub/pep),
and sends the last published items that presence calls for (§4.3.3): to a resource
that becomes available or announces new +notify interests, and to a contact that
became a presence subscriber. Those are sent by the node holding the session that the
event concerns; publish notifications by the node that handled the publish (notify.py).
"""

from __future__ import annotations

import contextlib
from functools import partial

from lxml import etree

from raftxmpp.cluster import roster_states
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.modules.pubsub import caps, node_config, notify, protocol
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.router import IqRequest
from raftxmpp.routing.sessions import LocalSession, RemoteSession, Session
from raftxmpp.xml import ns

IDENTITY = f"{{{ns.DISCO_INFO}}}identity"
FEATURE = f"{{{ns.DISCO_INFO}}}feature"
ITEM = f"{{{ns.DISCO_ITEMS}}}item"

# XEP-0060 §10 features of an account's PEP service (XEP-0163 §6.1).
COMMON_FEATURES = (
    "access-open", "access-whitelist", "config-node", "config-node-max",
    "create-and-configure", "create-nodes", "delete-items", "delete-nodes", "item-ids",
    "last-published", "manage-subscriptions", "member-affiliation", "modify-affiliations",
    "multi-items", "outcast-affiliation", "persistent-items", "publish", "publish-options",
    "publisher-affiliation", "purge-nodes", "retract-items", "retrieve-affiliations",
    "retrieve-default", "retrieve-items", "retrieve-subscriptions", "rsm", "subscribe",
    "subscription-notifications",
)
PEP_FEATURES = (*COMMON_FEATURES, "access-presence", "access-roster", "auto-create",
                "auto-subscribe", "filtered-notifications", "presence-notifications",
                "presence-subscribe")


def setup(ctx: Pubsub) -> None:
    router = ctx.router
    for kind in ("get", "set"):
        for namespace in (ns.PUBSUB, ns.PUBSUB_OWNER):
            router.register_iq("account", kind, namespace, partial(handle, ctx))
    _wrap(router, ("account", "get", ns.DISCO_INFO), partial(account_info, ctx))
    _wrap(router, ("account", "get", ns.DISCO_ITEMS), partial(account_items, ctx))
    ctx.caps.interest_handlers.append(partial(on_new_interest, ctx))
    router.add_hook("client-presence", partial(on_client_presence, ctx))
    router.add_hook("session-closed", partial(on_session_closed, ctx))
    router.sessions.on_remote_change.append(partial(on_remote_change, ctx))
    router.gossip_handlers[caps.GOSSIP_PREFIX] = ctx.caps.on_gossip
    router.gossip_messages[notify.DELIVER] = partial(notify.deliver_if_wanted, router,
                                                    ctx.caps.wants)


def _wrap(router, key: tuple[str, str, str], handler) -> None:
    """Registers `handler` for `key`, handing it the handler it replaces (disco's)."""
    previous = router.iq_handlers[key]
    router.register_iq(*key, partial(handler, previous))


async def handle(ctx: Pubsub, request: IqRequest) -> etree._Element | None:
    return await protocol.handle(ctx, request, str(request.to_jid))


# -- disco (XEP-0163 §6.1, XEP-0060 §5) ----------------------------------------------------------


async def account_info(ctx: Pubsub, previous, request: IqRequest) -> etree._Element:
    node = request.payload.get("node")
    owner = str(request.to_jid)
    if node:
        return node_info(ctx, owner, node, str(request.from_jid.bare), request.payload)
    query = await previous(request)
    etree.SubElement(query, IDENTITY, category="pubsub", type="pep")
    present = {f.get("var") for f in query.findall(FEATURE)}
    for feature in [ns.PUBSUB, *(f"{ns.PUBSUB}#{f}" for f in PEP_FEATURES),
                    *sorted(ctx.account_features)]:
        if feature not in present:
            etree.SubElement(query, FEATURE, var=feature)
    return query


def node_info(ctx: Pubsub, owner: str, node: str, requester: str,
              payload: etree._Element) -> etree._Element:
    """disco#info of one node (XEP-0060 §5.3, with meta-data §5.4)."""
    protocol.check_access(ctx, owner, node, requester)
    record = ctx.store.pubsub_node(owner, node)
    query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO}, node=node)
    etree.SubElement(query, IDENTITY, category="pubsub", type="leaf")
    etree.SubElement(query, FEATURE, var=ns.PUBSUB)
    query.append(node_config.meta_data_form(owner, record))
    return query


async def account_items(ctx: Pubsub, previous, request: IqRequest) -> etree._Element:
    return disco_items(ctx, str(request.to_jid), str(request.from_jid.bare),
                       request.payload.get("node"))


def disco_items(ctx: Pubsub, owner: str, requester: str, node: str | None) -> etree._Element:
    """The nodes a requester may see (XEP-0060 §5.2), or one node's item ids (§5.5)."""
    query = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
    if node:
        query.set("node", node)
        protocol.check_access(ctx, owner, node, requester)
        for item_id in ctx.store.pubsub_item_ids(owner, node):
            etree.SubElement(query, ITEM, jid=owner, name=item_id)
        return query
    for name, facts in ctx.store.pubsub_nodes(owner).items():
        if ctx.store.pubsub_access_refusal(owner, name, requester) is None:
            item = etree.SubElement(query, ITEM, jid=owner, node=name)
            if facts["title"]:
                item.set("name", facts["title"])
    return query


# -- the last published items (XEP-0163 §4.3.3) -------------------------------------------------------


def on_new_interest(ctx: Pubsub, session: LocalSession, namespaces: frozenset[str]) -> None:
    ctx.router.spawn(send_last_items_when_fresh, ctx, session, namespaces)


async def send_last_items_when_fresh(ctx: Pubsub, session: LocalSession,
                                     namespaces: frozenset[str]) -> None:
    """An item acknowledged through another node a moment ago may not be applied here
    yet: the last items are read after a linearizable read point (or, with no quorum,
    from what this node holds)."""
    with contextlib.suppress(RaftUnavailable):
        await ctx.store.fresh()
    if session.closing is None:
        send_last_items(ctx, session, namespaces)


def send_last_items(ctx: Pubsub, session: Session, namespaces: frozenset[str]) -> int:
    """The last item of each node, among the accounts whose presence `session` receives
    (its own included), that it may read and asks for (+notify in `namespaces`)."""
    bare = session.bare_jid
    owners = [bare]
    for contact, item in ctx.store.roster(bare)["items"].items():
        if roster_states.has_to(item["subscription"]) and _served(ctx, contact):
            owners.append(contact)
    sent = 0
    for owner in owners:
        sent += _send_last(ctx, owner, session, namespaces)
    return sent


def _send_last(ctx: Pubsub, owner: str, session: Session, namespaces: frozenset[str]) -> int:
    readable = ctx.store.pubsub_readable_nodes(owner, session.bare_jid, set(namespaces))
    sent = 0
    for node, last in sorted(readable.items()):
        record = ctx.store.pubsub_node(owner, node)
        if record is None or not record["config"]["deliver_notifications"]:
            continue
        message = notify.items_event(owner, node, [last], record["config"])
        message.set("to", session.full_jid)
        session.send_stanza(message)
        sent += 1
    return sent


def _served(ctx: Pubsub, jid: str) -> bool:
    try:
        return JID.parse(jid).domain in ctx.router.served_hosts()
    except InvalidJID:
        return False


async def on_client_presence(ctx: Pubsub, stanza: etree._Element, session: LocalSession) -> None:
    """After a client's presence was handled: its caps (caps.py), and for a subscription
    approval the contact's last items from this account (XEP-0163 §4.3.3: a new
    subscriber gets them)."""
    if stanza.get("type") == "subscribed" and stanza.get("to"):
        try:
            contact = str(JID.parse(stanza.get("to")).bare)
        except InvalidJID:
            return
        if _served(ctx, contact):
            with contextlib.suppress(RaftUnavailable):
                await ctx.store.fresh()  # the approver's items, published through any node
            for target in ctx.router.sessions.available(contact):
                namespaces = ctx.caps.namespaces(target.full_jid)
                if namespaces:
                    _send_last(ctx, session.bare_jid, target, namespaces)
        return
    ctx.caps.local_presence(session, stanza)


async def on_session_closed(ctx: Pubsub, session: LocalSession) -> None:
    ctx.caps.forget(session.full_jid)


def on_remote_change(ctx: Pubsub, session: RemoteSession, was_available: bool) -> None:
    ctx.caps.remote_change(session, was_available)

