"""s2s manager: stanzas for domains this cluster neither serves nor hosts a component for.

Server-to-server federation is not built yet; until it is, such stanzas bounce
with <remote-server-not-found/> (RFC 6120 §8.3.3.16) rather than vanish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.xml.errors import StanzaError

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession


class S2SManager:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def route(self, stanza: etree._Element, target: JID, sender: LocalSession | None) -> None:
        raise StanzaError("remote-server-not-found", text=f"no route to {target.domain}")
