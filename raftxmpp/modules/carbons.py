"""Message carbons (XEP-0280): copies of chat messages to the account's other resources."""

from __future__ import annotations

import copy

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

HINTS = "urn:xmpp:hints"


def setup(router: Router) -> None:
    router.register_iq("account", "set", ns.CARBONS, toggle)
    router.server_features.add(ns.CARBONS)
    router.local.carbon_hook = lambda stanza, recipients: copy_to_others(
        router, stanza, recipients[0].bare_jid, "received", exclude=recipients)
    router.sent_hook = lambda stanza, session: copy_to_others(
        router, stanza, session.bare_jid, "sent", exclude=[session])


async def toggle(request: IqRequest) -> None:
    if request.to_jid != request.from_jid.bare or request.sender is None:
        raise StanzaError("forbidden")
    action = etree.QName(request.payload).localname
    if action not in ("enable", "disable"):
        raise StanzaError("bad-request")
    request.sender.carbons = action == "enable"
    request.router.sessions.publish(request.sender)
    return None


def eligible(stanza: etree._Element) -> bool:
    return (stanza.get("type") == "chat"
            and stanza.find(f"{{{ns.CARBONS}}}private") is None
            and stanza.find(f"{{{HINTS}}}no-copy") is None)


def copy_to_others(router: Router, stanza: etree._Element, bare: str, kind: str,
                   exclude: list[LocalSession]) -> None:
    """Wraps the message in <sent/> or <received/> for each other carbons-enabled resource."""
    if router.sessions.resource_count(bare) <= len(exclude):
        return  # no other resource: the common case, checked before building anything
    others = [s for s in router.sessions.resources(bare) if s.carbons and s not in exclude]
    if not others or not eligible(stanza):
        return
    for session in others:
        wrapper = make("message", {"from": bare, "to": session.full_jid, "type": "chat"})
        carbon = etree.SubElement(wrapper, f"{{{ns.CARBONS}}}{kind}", nsmap={None: ns.CARBONS})
        forwarded = etree.SubElement(carbon, f"{{{ns.FORWARD}}}forwarded", nsmap={None: ns.FORWARD})
        forwarded.append(copy.deepcopy(stanza))
        session.send_stanza(wrapper)
