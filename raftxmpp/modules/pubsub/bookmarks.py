"""Bookmarks kept in step (XEP-0402 §5.3 "#compat" and "#compat-pep").

Three places hold an account's chatroom bookmarks, and clients use any of them:
- XEP-0402 (bookmarks 2): PEP node urn:xmpp:bookmarks:1, one item per room, id = room JID;
- XEP-0048 in private XML (XEP-0049): one <storage xmlns='storage:bookmarks'/>;
- XEP-0048 in PEP (XEP-0223): node storage:bookmarks, item "current", the same <storage/>.

The native node is the truth once it exists: a legacy write replaces its items in one
command (`pubsub_replace_items`, so the set changes atomically and each change is
notified), a read of the private XML is made from its items (the legacy <url/> entries
the native format dropped are kept from what the legacy client stored), and the
legacy PEP node, where someone uses it, is rewritten after each native change.
Conversions here never run the publish hooks again, so they cannot loop.
"""

from __future__ import annotations

from functools import partial

from lxml import etree

from raftxmpp.modules.pubsub import notify, protocol
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.router import IqRequest
from raftxmpp.xml import ns

STORAGE = f"{{{ns.BOOKMARKS}}}storage"
LEGACY_CONFERENCE = f"{{{ns.BOOKMARKS}}}conference"
CONFERENCE = f"{{{ns.BOOKMARKS2}}}conference"
PRIVATE_KEY = STORAGE  # raftxmpp.modules.private keys elements by their tag
LEGACY_NODE = ns.BOOKMARKS  # the XEP-0223 node name is the namespace
COMPAT = (f"{ns.BOOKMARKS2}#compat", f"{ns.BOOKMARKS2}#compat-pep")
TRUE = ("true", "1")


def setup(ctx: Pubsub) -> None:
    router = ctx.router
    ctx.account_features.update(COMPAT)
    for kind, handler in (("get", private_get), ("set", private_set)):
        previous = router.iq_handlers[("account", kind, ns.PRIVATE)]
        router.register_iq("account", kind, ns.PRIVATE, partial(handler, ctx, previous))
    ctx.publish_hooks.append(partial(on_publish, ctx))
    ctx.retract_hooks.append(partial(on_retract, ctx))


# -- conversions -------------------------------------------------------------------------------


def legacy_to_native(conference: etree._Element, kept: etree._Element | None) -> str:
    """A XEP-0048 <conference/> as a XEP-0402 item payload; `kept` is the native item it
    replaces, whose <extensions/> survive (XEP-0402 §3: clients preserve them)."""
    native = etree.Element(CONFERENCE, nsmap={None: ns.BOOKMARKS2})
    if conference.get("name"):
        native.set("name", conference.get("name"))
    native.set("autojoin", "true" if (conference.get("autojoin") or "").lower() in TRUE
               else "false")
    for name in ("nick", "password"):
        text = conference.findtext(f"{{{ns.BOOKMARKS}}}{name}")
        if text:
            etree.SubElement(native, f"{{{ns.BOOKMARKS2}}}{name}").text = text
    extensions = kept.find(f"{{{ns.BOOKMARKS2}}}extensions") if kept is not None else None
    if extensions is not None:
        native.append(extensions)
    return etree.tostring(native).decode()


def native_to_legacy(room: str, payload: str | None) -> etree._Element:
    conference = etree.Element(LEGACY_CONFERENCE, jid=room)
    native = notify.parse_payload(payload) if payload else etree.Element(CONFERENCE)
    if native.get("name"):
        conference.set("name", native.get("name"))
    conference.set("autojoin", "true" if (native.get("autojoin") or "").lower() in TRUE
                   else "false")
    for name in ("nick", "password"):
        text = native.findtext(f"{{{ns.BOOKMARKS2}}}{name}")
        if text:
            etree.SubElement(conference, f"{{{ns.BOOKMARKS}}}{name}").text = text
    return conference


def legacy_storage(ctx: Pubsub, owner: str) -> etree._Element | None:
    """The XEP-0048 <storage/> made from the native items, or None without a native node."""
    if ctx.store.pubsub_node(owner, ns.BOOKMARKS2) is None:
        return None
    storage = etree.Element(STORAGE, nsmap={None: ns.BOOKMARKS})
    for room, item in ctx.store.pubsub_items(owner, ns.BOOKMARKS2):
        storage.append(native_to_legacy(room, item.get("payload")))
    stored = ctx.store.private(owner, PRIVATE_KEY)
    if stored:
        for url in notify.parse_payload(stored).findall(f"{{{ns.BOOKMARKS}}}url"):
            storage.append(url)
    return storage


def native_node_config(ctx: Pubsub, owner: str) -> dict:
    """XEP-0402 §3's node configuration: private, persistent, as many items as allowed."""
    return {**ctx.settings.default_config(owner), "access_model": "whitelist",
            "max_items": "max", "send_last_published_item": "never"}


async def replace_native(ctx: Pubsub, owner: str, storage: etree._Element) -> None:
    """A legacy list replaces the native items; every change is notified."""
    kept = dict(ctx.store.pubsub_items(owner, ns.BOOKMARKS2))
    items = []
    for conference in storage.findall(LEGACY_CONFERENCE):
        room = conference.get("jid")
        if not room or any(room == i for i, _ in items):
            continue
        old = kept.get(room)
        old_payload = notify.parse_payload(old["payload"]) if old and old.get("payload") else None
        items.append([room, legacy_to_native(conference, old_payload)])
    changes = await ctx.store.pubsub_replace_items(
        owner, ns.BOOKMARKS2, items, native_node_config(ctx, owner),
        ctx.settings.limits(owner, ns.BOOKMARKS2))
    record = ctx.store.pubsub_node(owner, ns.BOOKMARKS2)
    if record is None:
        return
    by_id = dict(items)
    if changes["published"]:
        published = [(i, {"payload": by_id[i], "publisher": owner}) for i in changes["published"]]
        await protocol.fan_out(ctx, owner, ns.BOOKMARKS2, record,
                               notify.items_event(owner, ns.BOOKMARKS2, published,
                                                  record["config"]))
    if changes["retracted"]:
        await protocol.fan_out(ctx, owner, ns.BOOKMARKS2, record,
                               notify.retract_event(owner, ns.BOOKMARKS2, changes["retracted"],
                                                    record["config"]))


async def rewrite_legacy_pep(ctx: Pubsub, owner: str) -> None:
    """After a native change: the XEP-0223 node, if a legacy client uses it, follows."""
    record = ctx.store.pubsub_node(owner, LEGACY_NODE)
    storage = legacy_storage(ctx, owner)
    if record is None or storage is None:
        return
    payload = etree.tostring(storage).decode()
    await ctx.store.pubsub_publish(owner, LEGACY_NODE, owner, "current", payload, None, None,
                                   ctx.settings.limits(owner, LEGACY_NODE))
    await protocol.notify_items(ctx, owner, LEGACY_NODE,
                                [("current", {"payload": payload, "publisher": owner})])


# -- hooks ---------------------------------------------------------------------------------------


async def on_publish(ctx: Pubsub, owner: str, node: str, item_id: str,
                     payload: etree._Element | None) -> None:
    if node == ns.BOOKMARKS2:
        await rewrite_legacy_pep(ctx, owner)
    elif node == LEGACY_NODE and payload is not None and payload.tag == STORAGE:
        await replace_native(ctx, owner, payload)


async def on_retract(ctx: Pubsub, owner: str, node: str, item_ids: list[str]) -> None:
    if node == ns.BOOKMARKS2:
        await rewrite_legacy_pep(ctx, owner)


async def private_get(ctx: Pubsub, previous, request: IqRequest) -> etree._Element:
    wanted = [c for c in request.payload if isinstance(c.tag, str)]
    if len(wanted) == 1 and wanted[0].tag == STORAGE and request.to_jid == request.from_jid.bare:
        storage = legacy_storage(ctx, str(request.to_jid))
        if storage is not None:
            query = etree.Element(f"{{{ns.PRIVATE}}}query", nsmap={None: ns.PRIVATE})
            query.append(storage)
            return query
    return await previous(request)


async def private_set(ctx: Pubsub, previous, request: IqRequest) -> None:
    result = await previous(request)  # stored as given (and refused as private.py refuses)
    children = [c for c in request.payload if isinstance(c.tag, str)]
    if len(children) == 1 and children[0].tag == STORAGE:
        # The legacy write committed: a failed conversion is logged, not answered.
        owner = str(request.to_jid)
        await protocol.after_answer([replace_native(ctx, owner, children[0]),
                                     rewrite_legacy_pep(ctx, owner)])
    return result
