"""Component manager: stanzas for registered external component domains (XEP-0114).

Components are registered in the replicated state; live instances and the
balancing policies come with the components issue. Until an instance is connected a
registered domain answers <service-unavailable/>.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.xml.errors import StanzaError

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession


class ComponentManager:
    def __init__(self, router: Router) -> None:
        self.router = router

    def serves(self, domain: str) -> bool:
        store = self.router.store
        return store is not None and domain in store.components()

    def on_gossip_change(self, node: str, key: str, old, new) -> None:
        """A component instance on another node appeared, changed or went (key "c:...")."""

    async def route(self, stanza: etree._Element, target: JID, sender: LocalSession | None) -> None:
        raise StanzaError("service-unavailable", text=f"no live instance of {target.domain}")
