"""XEP-0060 requests, the same for an account's PEP service and for the pubsub service.

`handle(ctx, request, owner)` answers one IQ whose payload is a <pubsub/> element of
the pubsub or pubsub#owner namespace; `owner` is the account's bare JID (PEP) or the
service's domain. Every change goes through the store's named pubsub operations and
is answered only after it committed; notifications follow the answer (notify.py says
which node sends them).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable

from lxml import etree

from raftxmpp import metrics
from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.modules.pubsub import interest, node_config, notify
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.modules.pubsub.errors import PubsubError, from_store, unsupported
from raftxmpp.modules.pubsub.forms import find_form
from raftxmpp.routing.router import IqRequest
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

log = logging.getLogger("raftxmpp.pubsub")

P = f"{{{ns.PUBSUB}}}"
OWNER = f"{{{ns.PUBSUB_OWNER}}}"
RSM_SET = f"{{{ns.RSM}}}set"

Handler = Callable[[Pubsub, IqRequest, str, etree._Element], Awaitable[etree._Element | None]]


# -- entry point ---------------------------------------------------------------------------------------


async def handle(ctx: Pubsub, request: IqRequest, owner: str) -> etree._Element | None:
    payload = request.payload
    namespace = etree.QName(payload).namespace
    children = [c for c in payload if isinstance(c.tag, str)]
    if not children:
        raise PubsubError("bad-request", text="an empty pubsub request")
    action = children[0]
    kind = request.stanza.get("type")
    table = _OWNER_ACTIONS if namespace == ns.PUBSUB_OWNER else _ACTIONS
    handler = table.get((kind, etree.QName(action).localname))
    if handler is None:
        metrics.PUBSUB_REQUESTS.labels("other").inc()
        raise PubsubError("feature-not-implemented",
                          text=f"{kind} {etree.QName(action).localname} is not supported")
    try:
        return await handler(ctx, request, owner, action)
    except StoreError as exc:
        raise from_store(exc) from None


def _node(action: etree._Element) -> str:
    node = action.get("node")
    if not node:
        raise PubsubError("bad-request", "nodeid-required", "the request names no node")
    if len(node) > ps.NODE_NAME_CHARS:
        raise PubsubError("not-acceptable", text="node name too long")
    return node


def _actor(request: IqRequest) -> str:
    return str(request.from_jid.bare)


def _record(ctx: Pubsub, owner: str, node: str) -> dict:
    record = ctx.store.pubsub_node(owner, node)
    if record is None:
        raise PubsubError("item-not-found", text=f"no node {node!r}")
    return record


def _owner_only(owner: str, record: dict, request: IqRequest) -> None:
    if not ps.is_owner(owner, record, _actor(request)):
        raise PubsubError("forbidden", text="only an owner of the node may do this")


async def answer(ctx: Pubsub, request: IqRequest, payload: etree._Element | None) -> None:
    """Sends the IQ result now (so that what follows it, notifications or a last item,
    comes after), and tells the router it was sent."""
    stanza = request.stanza
    reply = make("iq", {"type": "result", "id": stanza.get("id"), "to": str(request.from_jid),
                        "from": stanza.get("to")})
    if payload is not None:
        reply.append(payload)
    request.replied = True
    if request.sender is not None:
        request.sender.send_stanza(reply)
    else:
        await ctx.router.route(reply, None)


async def after_answer(hooks: Iterable[Awaitable[None]]) -> None:
    """Runs the conversions that follow a change (avatars, bookmarks). The client has its
    answer already, so a failure here is logged and counted, never sent as a second one."""
    for hook in hooks:
        try:
            await hook
        except (StoreError, RaftUnavailable, StanzaError) as exc:
            log.warning("pubsub conversion after a change failed: %s", exc)


def pubsub_element(namespace: str = ns.PUBSUB) -> etree._Element:
    return etree.Element(f"{{{namespace}}}pubsub", nsmap={None: namespace})


# -- create, publish, retract ------------------------------------------------------------------


async def create(ctx: Pubsub, request: IqRequest, owner: str,
                 action: etree._Element) -> etree._Element | None:
    """XEP-0060 §8.1 (with §8.1.3 create-and-configure, §8.1.2 instant nodes)."""
    metrics.PUBSUB_REQUESTS.labels("create").inc()
    actor = _actor(request)
    node = action.get("node")
    if ps.is_pep(owner):
        if actor != owner:
            raise PubsubError("forbidden", text="only the account creates its PEP nodes")
        if not node:
            raise PubsubError("not-acceptable", "nodeid-required", "a PEP node needs a name")
    elif not may_create_service_node(ctx, request):
        raise PubsubError("forbidden", text="this service does not let you create nodes")
    instant = not node
    node = node or secrets.token_hex(8)
    if len(node) > ps.NODE_NAME_CHARS:
        raise PubsubError("not-acceptable", text="node name too long")
    configure = request.payload.find(P + "configure")
    config = node_config.apply_form(ctx.settings.default_config(owner), find_form(configure),
                                    ns.PUBSUB_NODE_CONFIG)
    await ctx.store.pubsub_create(owner, node, actor, config, ctx.settings.limits(owner, node))
    if not instant:
        return None
    result = pubsub_element()
    etree.SubElement(result, P + "create", node=node)
    return result


def may_create_service_node(ctx: Pubsub, request: IqRequest) -> bool:
    if ctx.settings.section.node_creation != "accounts":
        return False
    return request.from_jid.local is not None and \
        request.from_jid.domain in ctx.router.served_hosts()


def _item_payload(item: etree._Element | None) -> str | None:
    """The one payload of a published item, serialised (XEP-0060 §7.1.3.6)."""
    if item is None:
        raise PubsubError("bad-request", "item-required", "publish an <item/>")
    payloads = [c for c in item if isinstance(c.tag, str)]
    if len(payloads) > 1:
        raise PubsubError("bad-request", "invalid-payload", "an item holds one payload")
    if not payloads:
        return None
    return etree.tostring(payloads[0], with_tail=False).decode()


async def publish(ctx: Pubsub, request: IqRequest, owner: str,
                  action: etree._Element) -> None:
    """XEP-0060 §7.1 with publish-options (§7.1.5) and PEP auto-create (XEP-0163 §3)."""
    metrics.PUBSUB_REQUESTS.labels("publish").inc()
    node = _node(action)
    items = action.findall(P + "item")
    if len(items) > 1:
        raise PubsubError("bad-request", "invalid-payload", "publish one item at a time")
    item = items[0] if items else None
    payload = _item_payload(item)
    item_id = (item.get("id") if item is not None else None) or secrets.token_hex(12)
    options = request.payload.find(P + "publish-options")
    preconditions = node_config.preconditions(find_form(options)) if options is not None else None
    create = None
    if ps.is_pep(owner):
        create = {**ctx.settings.default_config(owner), **(preconditions or {})}
    record = ctx.store.pubsub_node(owner, node)
    config = record["config"] if record else create
    if payload is None and config is not None and config["deliver_payloads"]:
        raise PubsubError("bad-request", "payload-required", "this node needs a payload")
    actor = _actor(request)
    await ctx.store.pubsub_publish(owner, node, actor, item_id, payload, create,
                                   preconditions, ctx.settings.limits(owner, node))
    result = pubsub_element()
    etree.SubElement(etree.SubElement(result, P + "publish", node=node), P + "item", id=item_id)
    await answer(ctx, request, result)
    stored = {"payload": payload, "publisher": actor}
    await notify_items(ctx, owner, node, [(item_id, stored)])
    element = notify.parse_payload(payload) if payload else None
    await after_answer(hook(owner, node, item_id, element) for hook in ctx.publish_hooks)


async def retract(ctx: Pubsub, request: IqRequest, owner: str,
                  action: etree._Element) -> None:
    """XEP-0060 §7.2; retraction notifications per pubsub#notify_retract or notify='1'."""
    metrics.PUBSUB_REQUESTS.labels("retract").inc()
    node = _node(action)
    item = action.find(P + "item")
    if item is None or not item.get("id"):
        raise PubsubError("bad-request", "item-required", "name the item to retract")
    record = _record(ctx, owner, node)
    await ctx.store.pubsub_retract(owner, node, _actor(request), item.get("id"))
    await answer(ctx, request, None)
    if record["config"]["notify_retract"] or action.get("notify") in ("1", "true"):
        message = notify.retract_event(owner, node, [item.get("id")], record["config"])
        await fan_out(ctx, owner, node, record, message)
    await after_answer(hook(owner, node, [item.get("id")]) for hook in ctx.retract_hooks)


# -- subscribe, unsubscribe, items -------------------------------------------------------------


def _subscriber(request: IqRequest, action: etree._Element) -> str:
    text = action.get("jid")
    if not text:
        raise PubsubError("bad-request", "jid-required", "subscribe names a JID")
    try:
        jid = JID.parse(text)
    except InvalidJID:
        raise PubsubError("bad-request", "invalid-jid", "not a JID") from None
    return str(jid)


async def subscribe(ctx: Pubsub, request: IqRequest, owner: str,
                    action: etree._Element) -> None:
    """XEP-0060 §6.1; the last item follows the result (§6.1.7)."""
    metrics.PUBSUB_REQUESTS.labels("subscribe").inc()
    node = _node(action)
    subscriber = _subscriber(request, action)
    if JID.parse(subscriber).bare != request.from_jid.bare:
        raise PubsubError("bad-request", "invalid-jid", "you may subscribe only your own JID")
    subscription = await ctx.store.pubsub_subscribe(owner, node, _actor(request), subscriber,
                                                    secrets.token_hex(8))
    result = pubsub_element()
    etree.SubElement(result, P + "subscription", node=node, jid=subscriber,
                     subid=subscription["subid"], subscription=subscription["state"])
    await answer(ctx, request, result)
    record = ctx.store.pubsub_node(owner, node)
    if record is None or record["config"]["send_last_published_item"] == "never":
        return
    last = ctx.store.pubsub_last_item(owner, node)
    if last is not None:
        fan = notify.Fanout(ctx.router, notify.items_event(owner, node, [last], record["config"]))
        fan.add_jid(subscriber)
        await fan.send()


async def unsubscribe(ctx: Pubsub, request: IqRequest, owner: str,
                      action: etree._Element) -> None:
    """XEP-0060 §6.2."""
    metrics.PUBSUB_REQUESTS.labels("unsubscribe").inc()
    node = _node(action)
    subscriber = _subscriber(request, action)
    await ctx.store.pubsub_unsubscribe(owner, node, _actor(request), subscriber,
                                       action.get("subid"))
    return None


def check_access(ctx: Pubsub, owner: str, node: str, bare: str) -> None:
    refusal = ctx.store.pubsub_access_refusal(owner, node, bare)
    if refusal is not None:
        raise PubsubError(refusal.condition, refusal.app, refusal.text or None)


async def items(ctx: Pubsub, request: IqRequest, owner: str,
                action: etree._Element) -> etree._Element:
    """XEP-0060 §6.5: all items, some by id, the N most recent (max_items), or a page
    (XEP-0059 result set management, §6.5.4)."""
    metrics.PUBSUB_REQUESTS.labels("items").inc()
    node = _node(action)
    await ctx.store.fresh()  # an item acknowledged on another node is seen here too
    check_access(ctx, owner, node, _actor(request))
    stored = ctx.store.pubsub_items(owner, node)
    wanted = [i.get("id") for i in action.findall(P + "item") if i.get("id")]
    if wanted:
        by_id = dict(stored)
        stored = [(i, by_id[i]) for i in wanted if i in by_id]
    max_items = action.get("max_items")
    if max_items is not None:
        if not max_items.isdigit() or int(max_items) < 1:
            raise PubsubError("bad-request", text="max_items must be a positive integer")
        stored = stored[-int(max_items):]
    page = request.payload.find(RSM_SET)
    result = pubsub_element()
    element = etree.SubElement(result, P + "items", node=node)
    shown, rsm = _page(stored, page) if page is not None else (stored, None)
    for item_id, item in shown:
        entry = etree.SubElement(element, P + "item", id=item_id)
        if item.get("payload"):
            entry.append(notify.parse_payload(item["payload"]))
    if rsm is not None:
        result.append(rsm)
    return result


def _page(stored: list[tuple[str, dict]], page: etree._Element):
    """A XEP-0059 page of `stored` (oldest first) and its <set/> answer."""
    ids = [i for i, _ in stored]
    limit_text = page.findtext(f"{{{ns.RSM}}}max")
    limit = int(limit_text) if limit_text and limit_text.isdigit() else len(ids)
    after, before = page.find(f"{{{ns.RSM}}}after"), page.find(f"{{{ns.RSM}}}before")
    start, end = 0, len(ids)
    if after is not None and after.text:
        if after.text not in ids:
            raise PubsubError("item-not-found", text="no such item to page after")
        start = ids.index(after.text) + 1
        end = min(len(ids), start + limit)
    elif before is not None:
        if before.text:
            if before.text not in ids:
                raise PubsubError("item-not-found", text="no such item to page before")
            end = ids.index(before.text)
        start = max(0, end - limit)
    else:
        end = min(len(ids), limit)
    shown = stored[start:end]
    answer_set = etree.Element(RSM_SET, nsmap={None: ns.RSM})
    if shown:
        first = etree.SubElement(answer_set, f"{{{ns.RSM}}}first", index=str(start))
        first.text = shown[0][0]
        etree.SubElement(answer_set, f"{{{ns.RSM}}}last").text = shown[-1][0]
    etree.SubElement(answer_set, f"{{{ns.RSM}}}count").text = str(len(ids))
    return shown, answer_set


async def own_subscriptions(ctx: Pubsub, request: IqRequest, owner: str,
                            action: etree._Element) -> etree._Element:
    """XEP-0060 §5.6: the requester's subscriptions (at one node, or all)."""
    metrics.PUBSUB_REQUESTS.labels("other").inc()
    node = action.get("node")
    result = pubsub_element()
    element = etree.SubElement(result, P + "subscriptions")
    if node:
        element.set("node", node)
    for name, jid, subscription in ctx.store.pubsub_subscriptions_of(owner, _actor(request)):
        if node and name != node:
            continue
        etree.SubElement(element, P + "subscription", node=name, jid=jid,
                         subid=subscription["subid"], subscription=subscription["state"])
    return result


async def own_affiliations(ctx: Pubsub, request: IqRequest, owner: str,
                           action: etree._Element) -> etree._Element:
    """XEP-0060 §5.7: the requester's affiliations."""
    metrics.PUBSUB_REQUESTS.labels("other").inc()
    node = action.get("node")
    result = pubsub_element()
    element = etree.SubElement(result, P + "affiliations")
    if node:
        element.set("node", node)
    for name, aff in ctx.store.pubsub_affiliations_of(owner, _actor(request)):
        if not node or name == node:
            etree.SubElement(element, P + "affiliation", node=name, affiliation=aff)
    return result


async def subscription_options(ctx: Pubsub, request: IqRequest, owner: str,
                               action: etree._Element) -> None:
    raise unsupported("subscription-options", "subscription options are not supported")


# -- owner use cases (XEP-0060 §8) ----------------------------------------------------------------


async def configure_get(ctx: Pubsub, request: IqRequest, owner: str,
                        action: etree._Element) -> etree._Element:
    """§8.2.1: the node's configuration form."""
    metrics.PUBSUB_REQUESTS.labels("configure").inc()
    node = _node(action)
    record = _record(ctx, owner, node)
    _owner_only(owner, record, request)
    result = pubsub_element(ns.PUBSUB_OWNER)
    etree.SubElement(result, OWNER + "configure", node=node).append(
        node_config.config_form(record["config"]))
    return result


async def configure_set(ctx: Pubsub, request: IqRequest, owner: str,
                        action: etree._Element) -> None:
    """§8.2.4; subscribers hear of it per pubsub#notify_config (§8.2.5)."""
    metrics.PUBSUB_REQUESTS.labels("configure").inc()
    node = _node(action)
    record = _record(ctx, owner, node)
    _owner_only(owner, record, request)
    form = find_form(action)
    if form is None:
        raise PubsubError("bad-request", text="configure carries a data form")
    if form.get("type") == "cancel":
        return None
    config = node_config.apply_form(record["config"], form, ns.PUBSUB_NODE_CONFIG)
    await ctx.store.pubsub_configure(owner, node, _actor(request), config,
                                     ctx.settings.limits(owner, node))
    await answer(ctx, request, None)
    if config["notify_config"]:
        record["config"] = config
        await fan_out(ctx, owner, node, record,
                      notify.node_event(owner, node, "configuration", config))
    return None


async def default_config(ctx: Pubsub, request: IqRequest, owner: str,
                         action: etree._Element) -> etree._Element:
    """§8.3: the default node configuration."""
    metrics.PUBSUB_REQUESTS.labels("configure").inc()
    result = pubsub_element(ns.PUBSUB_OWNER)
    etree.SubElement(result, OWNER + "default").append(
        node_config.config_form(ctx.settings.default_config(owner)))
    return result


async def delete(ctx: Pubsub, request: IqRequest, owner: str, action: etree._Element) -> None:
    """§8.4; subscribers are told (§8.4.2) per pubsub#notify_delete."""
    metrics.PUBSUB_REQUESTS.labels("delete").inc()
    node = _node(action)
    record = _record(ctx, owner, node)
    _owner_only(owner, record, request)
    await delete_node(ctx, owner, node, _actor(request), record, request)


async def delete_node(ctx: Pubsub, owner: str, node: str, actor: str, record: dict,
                      request: IqRequest | None = None) -> None:
    """Deletes a node and tells its subscribers (also for the operator's CLI)."""
    await ctx.store.pubsub_delete(owner, node, actor)
    if request is not None:
        await answer(ctx, request, None)
    if record["config"]["notify_delete"]:
        await fan_out(ctx, owner, node, record,
                      notify.node_event(owner, node, "delete", record["config"]))


async def purge(ctx: Pubsub, request: IqRequest, owner: str, action: etree._Element) -> None:
    """§8.5; subscribers are told (§8.5.2) per pubsub#notify_retract."""
    metrics.PUBSUB_REQUESTS.labels("purge").inc()
    node = _node(action)
    record = _record(ctx, owner, node)
    _owner_only(owner, record, request)
    ids = ctx.store.pubsub_item_ids(owner, node)
    await ctx.store.pubsub_purge(owner, node, _actor(request))
    await answer(ctx, request, None)
    if record["config"]["notify_retract"]:
        await fan_out(ctx, owner, node, record,
                      notify.node_event(owner, node, "purge", record["config"]))
    await after_answer(hook(owner, node, ids) for hook in ctx.retract_hooks)


def _owner_listing(ctx: Pubsub, request: IqRequest, owner: str, action: etree._Element,
                   what: str) -> tuple[dict, etree._Element, etree._Element]:
    """(record, <pubsub/> result, its <subscriptions/> or <affiliations/>) of an owner's
    listing request (§8.8.1, §8.9.1)."""
    metrics.PUBSUB_REQUESTS.labels("other").inc()
    node = _node(action)
    record = _record(ctx, owner, node)
    _owner_only(owner, record, request)
    result = pubsub_element(ns.PUBSUB_OWNER)
    return record, result, etree.SubElement(result, OWNER + what, node=node)


async def node_subscriptions_get(ctx: Pubsub, request: IqRequest, owner: str,
                                 action: etree._Element) -> etree._Element:
    """§8.8.1: every subscription of a node."""
    record, result, element = _owner_listing(ctx, request, owner, action, "subscriptions")
    for jid, subscription in sorted(record["subscriptions"].items()):
        etree.SubElement(element, OWNER + "subscription", jid=jid, subid=subscription["subid"],
                         subscription=subscription["state"])
    return result


async def node_subscriptions_set(ctx: Pubsub, request: IqRequest, owner: str,
                                 action: etree._Element) -> None:
    """§8.8.2; each changed subscriber is told (§8.8.4)."""
    metrics.PUBSUB_REQUESTS.labels("other").inc()
    node = _node(action)
    changes = {}
    for entry in action.findall(OWNER + "subscription"):
        jid, state = entry.get("jid"), entry.get("subscription")
        if not jid or state not in ("subscribed", "none"):
            raise PubsubError("bad-request", text="subscription is subscribed or none")
        changes[_checked_jid(jid)] = state
    subids = {jid: secrets.token_hex(8) for jid in changes}
    changed = await ctx.store.pubsub_set_subscriptions(owner, node, _actor(request), changes,
                                                       subids)
    await answer(ctx, request, None)
    for jid, state in changed.items():
        fan = notify.Fanout(ctx.router, notify.subscription_event(owner, node, jid, state))
        fan.add_jid(jid)
        await fan.send()


async def node_affiliations_get(ctx: Pubsub, request: IqRequest, owner: str,
                                action: etree._Element) -> etree._Element:
    """§8.9.1: every affiliation of a node."""
    record, result, element = _owner_listing(ctx, request, owner, action, "affiliations")
    for jid, aff in sorted(record["affiliations"].items()):
        etree.SubElement(element, OWNER + "affiliation", jid=jid, affiliation=aff)
    return result


async def node_affiliations_set(ctx: Pubsub, request: IqRequest, owner: str,
                                action: etree._Element) -> None:
    """§8.9.2."""
    metrics.PUBSUB_REQUESTS.labels("other").inc()
    node = _node(action)
    changes = {}
    for entry in action.findall(OWNER + "affiliation"):
        jid, aff = entry.get("jid"), entry.get("affiliation")
        if not jid or aff not in ps.AFFILIATIONS:
            raise PubsubError("bad-request", text=f"affiliation is one of "
                              f"{', '.join(ps.AFFILIATIONS)}")
        changes[str(JID.parse(_checked_jid(jid)).bare)] = aff
    await ctx.store.pubsub_set_affiliations(owner, node, _actor(request), changes)
    return None


def _checked_jid(text: str) -> str:
    try:
        return str(JID.parse(text))
    except InvalidJID:
        raise PubsubError("jid-malformed") from None


_ACTIONS: dict[tuple[str, str], Handler] = {
    ("set", "create"): create,
    ("set", "publish"): publish,
    ("set", "retract"): retract,
    ("set", "subscribe"): subscribe,
    ("set", "unsubscribe"): unsubscribe,
    ("get", "items"): items,
    ("get", "subscriptions"): own_subscriptions,
    ("get", "affiliations"): own_affiliations,
    ("get", "options"): subscription_options,
    ("set", "options"): subscription_options,
    ("get", "default"): subscription_options,
}
_OWNER_ACTIONS: dict[tuple[str, str], Handler] = {
    ("get", "configure"): configure_get,
    ("set", "configure"): configure_set,
    ("get", "default"): default_config,
    ("set", "delete"): delete,
    ("set", "purge"): purge,
    ("get", "subscriptions"): node_subscriptions_get,
    ("set", "subscriptions"): node_subscriptions_set,
    ("get", "affiliations"): node_affiliations_get,
    ("set", "affiliations"): node_affiliations_set,
}


# -- notifications --------------------------------------------------------------------------------


async def notify_items(ctx: Pubsub, owner: str, node: str,
                       published: list[tuple[str, dict]]) -> int:
    """Notifies a publish (§7.1.2) to whoever should hear of it; returns copies sent."""
    record = ctx.store.pubsub_node(owner, node)
    if record is None or not published:
        return 0
    message = notify.items_event(owner, node, published, record["config"])
    return await fan_out(ctx, owner, node, record, message)


async def fan_out(ctx: Pubsub, owner: str, node: str, record: dict,
                  message: etree._Element) -> int:
    """Sends `message` to the node's subscribers and, for PEP, to the available
    resources that XEP-0163 §4.3 entitles to it (owner and presence subscribers, by
    access model, that ask for it with +notify)."""
    if not record["config"]["deliver_notifications"]:
        return 0
    fan = notify.Fanout(ctx.router, message)
    for jid in record["subscriptions"]:
        fan.add_jid(jid)
    if ps.is_pep(owner):
        wanted, undecided = interest.interested_sessions(ctx, owner, node, record)
        for session in wanted:
            fan.add_session(session)
        for session in undecided:
            fan.add_undecided(session, node)
    return await fan.send()
