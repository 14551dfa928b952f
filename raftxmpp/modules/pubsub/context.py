"""What every part of the pubsub package shares on one node: the router, the [pubsub]
settings, the entity-capabilities cache and the hooks features add on top of
XEP-0060 (avatar and bookmark conversion)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp.modules.pubsub.node_config import Settings

if TYPE_CHECKING:
    from raftxmpp.modules.pubsub.caps import Caps
    from raftxmpp.routing.router import Router

# After an item committed: (owner, node, item id, payload element or None).
PublishHook = Callable[[str, str, str, "etree._Element | None"], Awaitable[None]]
# After items were retracted or purged: (owner, node, item ids).
RetractHook = Callable[[str, str, list[str]], Awaitable[None]]


@dataclass
class Pubsub:
    router: Router
    settings: Settings
    caps: Caps
    publish_hooks: list[PublishHook] = field(default_factory=list)
    retract_hooks: list[RetractHook] = field(default_factory=list)
    # Features every account advertises besides PEP's own (XEP-0402 #compat, XEP-0398).
    account_features: set[str] = field(default_factory=set)

    @property
    def store(self):
        return self.router.store
