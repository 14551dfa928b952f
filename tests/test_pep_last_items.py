"""XEP-0163 §4.3.3: the last items a new +notify interest calls for are read after a
linearizable read point, so an item acknowledged through another node a moment ago is
among them (CI once saw a node answer a caps change from state that had not applied
the publish yet). The node's store is replaced by one that, like a follower, applies
the item only when the read point is reached; everything else is the real code."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import trio
from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules.pubsub import caps, pep
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.sessions import LocalSession

OWNER, READER = "alice@localhost", "frank@localhost"
NODE = "urn:example:later"
CONFIG = {"deliver_notifications": True, "deliver_payloads": True, "itemreply": "owner",
          "notification_type": "headline"}


class LaggingStore:
    """Applies the publish acknowledged elsewhere when a read point is asked for."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[str, dict]] = {}
        self.read_points = 0

    async def fresh(self) -> None:
        await trio.sleep(0)
        self.read_points += 1
        self.items[NODE] = ("one", {"payload": f"<later xmlns='{NODE}'>first</later>"})

    def roster(self, bare: str) -> dict:
        return {"items": {OWNER: {"subscription": "both"}}} if bare == READER else {"items": {}}

    def pubsub_readable_nodes(self, owner: str, bare: str, names: set[str]) -> dict:
        return {n: last for n, last in self.items.items() if owner == OWNER and n in names}

    def pubsub_node(self, owner: str, node: str) -> dict:
        return {"config": CONFIG}


async def test_a_new_interest_gets_the_last_item_acknowledged_through_another_node():
    store = LaggingStore()
    async with trio.open_nursery() as nursery:
        router = SimpleNamespace(
            store=store, served_hosts=lambda: {"localhost"},
            spawn=lambda fn, *args: nursery.start_soon(fn, *args) or True,
            sessions=SimpleNamespace(gossip=None, on_remote_change=[]),
            iq_handlers=defaultdict(lambda: None), register_iq=lambda *args: None,
            add_hook=lambda *args: None, gossip_handlers={}, gossip_messages={})
        ctx = Pubsub(router=router, settings=None, caps=caps.Caps(router))
        pep.setup(ctx)  # the module's own interest handler
        frank = LocalSession(jid=JID.parse(f"{READER}/phone"))
        ctx.caps.by_key["sha-1:later="] = frozenset({NODE})
        presence = (f"<presence xmlns='jabber:client'><c xmlns='{caps.ns.CAPS}' hash='sha-1' "
                    "node='n' ver='later='/></presence>")
        ctx.caps.local_presence(frank, etree.fromstring(presence))
    assert store.read_points == 1
    assert len(frank.outbox) == 1
    assert b"<item id=\"one\"><later xmlns=\"urn:example:later\">first</later>" in frank.outbox[0]
