"""Avatars both ways (XEP-0398): User Avatar (XEP-0084, PEP) and vCard-based avatars
(XEP-0153), and the avatar hash the server puts in its users' presence (§4).

- A metadata publish (urn:xmpp:avatar:metadata) copies the image its first <info/>
  without a URL names from urn:xmpp:avatar:data into the vCard's PHOTO (§3.1), if the
  image's SHA-1 is that id; an empty metadata (avatar off) removes the PHOTO.
- A vCard set with a PHOTO publishes the image and then its metadata (§3.2), and both
  are notified like any publish.
- Every available presence a client sends gets <x xmlns='vcard-temp:x:update'><photo/>
  </x> with the current hash, unless it carries a photo element already (§4).
Conversions write through the store and never run the publish hooks again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from functools import partial

from lxml import etree

from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.modules.pubsub import notify, protocol
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.router import IqRequest
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns

log = logging.getLogger("raftxmpp.pubsub.avatars")

INFO = f"{{{ns.AVATAR_METADATA}}}info"
METADATA = f"{{{ns.AVATAR_METADATA}}}metadata"
DATA = f"{{{ns.AVATAR_DATA}}}data"
UPDATE = f"{{{ns.VCARD_UPDATE}}}x"
PHOTO = f"{{{ns.VCARD_UPDATE}}}photo"
VCARD = f"{{{ns.VCARD}}}vCard"
V_PHOTO, V_TYPE, V_BINVAL = (f"{{{ns.VCARD}}}{n}" for n in ("PHOTO", "TYPE", "BINVAL"))


def setup(ctx: Pubsub) -> None:
    router = ctx.router
    ctx.account_features.add(ns.PEP_VCARD_CONVERSION)
    ctx.publish_hooks.append(partial(on_publish, ctx))
    previous = router.iq_handlers[("account", "set", ns.VCARD)]
    router.register_iq("account", "set", ns.VCARD, partial(vcard_set, ctx, previous))
    router.presence_filters.append(partial(add_photo_hash, ctx))


# -- the current avatar ------------------------------------------------------------------------


def current_info(ctx: Pubsub, owner: str) -> etree._Element | None | bool:
    """The <info/> of the account's avatar; False when it has none (metadata empty);
    None when it never published metadata."""
    last = ctx.store.pubsub_last_item(owner, ns.AVATAR_METADATA)
    if last is None or not last[1].get("payload"):
        return None
    metadata = notify.parse_payload(last[1]["payload"])
    for info in metadata.findall(INFO):
        if not info.get("url") and info.get("id"):
            return info
    return False


def add_photo_hash(ctx: Pubsub, stanza: etree._Element, session: LocalSession) -> None:
    """XEP-0398 §4, on every available presence a client sends (directed ones too)."""
    if stanza.get("type") is not None:
        return
    update = stanza.find(UPDATE)
    if update is not None and update.find(PHOTO) is not None:
        return  # the client said which photo, or (empty) that it does not know it yet
    info = current_info(ctx, session.bare_jid)
    if info is None:
        return
    if update is None:
        update = etree.SubElement(stanza, UPDATE, nsmap={None: ns.VCARD_UPDATE})
    photo = etree.SubElement(update, PHOTO)
    if info is not False:
        photo.text = info.get("id")


# -- PEP → vCard (§3.1) ---------------------------------------------------------------------------


async def on_publish(ctx: Pubsub, owner: str, node: str, item_id: str,
                     payload: etree._Element | None) -> None:
    if node != ns.AVATAR_METADATA or payload is None or payload.tag != METADATA:
        return
    info = next((i for i in payload.findall(INFO) if not i.get("url") and i.get("id")), None)
    vcard = _vcard(ctx, owner)
    photo = vcard.find(V_PHOTO)
    if info is None:
        if photo is None:
            return
        vcard.remove(photo)
    else:
        data = _image(ctx, owner, info.get("id"))
        if data is None:
            return
        if photo is not None:
            vcard.remove(photo)
        photo = etree.SubElement(vcard, V_PHOTO)
        etree.SubElement(photo, V_TYPE).text = info.get("type") or "image/png"
        etree.SubElement(photo, V_BINVAL).text = base64.b64encode(data).decode()
    try:
        await ctx.store.vcard_set(owner, etree.tostring(vcard).decode())
    except (StoreError, RaftUnavailable) as exc:
        log.warning("avatar of %s not copied to its vCard: %s", owner, exc)


def _vcard(ctx: Pubsub, owner: str) -> etree._Element:
    stored = ctx.store.vcard(owner)
    if stored:
        return notify.parse_payload(stored)
    return etree.Element(VCARD, nsmap={None: ns.VCARD})


def _image(ctx: Pubsub, owner: str, item_id: str) -> bytes | None:
    """The image the data node holds under `item_id`, if its SHA-1 is the id."""
    for stored_id, item in ctx.store.pubsub_items(owner, ns.AVATAR_DATA):
        if stored_id != item_id or not item.get("payload"):
            continue
        try:
            data = base64.b64decode(notify.parse_payload(item["payload"]).text or "",
                                    validate=False)
        except (binascii.Error, ValueError):
            return None
        return data if hashlib.sha1(data).hexdigest() == item_id else None
    return None


# -- vCard → PEP (§3.2) ---------------------------------------------------------------------------


async def vcard_set(ctx: Pubsub, previous, request: IqRequest) -> None:
    result = await previous(request)
    owner = str(request.to_jid)
    photo = request.payload.find(V_PHOTO)
    text = photo.findtext(V_BINVAL) if photo is not None else None
    if not text:
        return result
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return result  # not an image we can hash: the vCard keeps it, PEP does not
    image_id = hashlib.sha1(data).hexdigest()
    info = current_info(ctx, owner)
    if info is not None and info is not False and info.get("id") == image_id:
        return result
    mime = photo.findtext(V_TYPE) or "image/png"
    # The vCard committed: a failed conversion is logged, not answered.
    await protocol.after_answer([_publish_avatar(ctx, owner, image_id, data, mime)])
    return result


async def _publish_avatar(ctx: Pubsub, owner: str, image_id: str, data: bytes, mime: str) -> None:
    data_payload = etree.Element(DATA, nsmap={None: ns.AVATAR_DATA})
    data_payload.text = base64.b64encode(data).decode()
    metadata = etree.Element(METADATA, nsmap={None: ns.AVATAR_METADATA})
    etree.SubElement(metadata, INFO, id=image_id, bytes=str(len(data)), type=mime)
    for node, payload in ((ns.AVATAR_DATA, data_payload), (ns.AVATAR_METADATA, metadata)):
        text = etree.tostring(payload).decode()
        create = ctx.settings.default_config(owner)
        try:
            await ctx.store.pubsub_publish(owner, node, owner, image_id, text, create, None,
                                           ctx.settings.limits(owner, node))
        except StoreError as exc:
            log.info("vCard avatar of %s not published to PEP: %s", owner, exc.text)
            return
        await protocol.notify_items(ctx, owner, node,
                                    [(image_id, {"payload": text, "publisher": owner})])
