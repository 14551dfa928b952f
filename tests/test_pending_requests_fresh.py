"""RFC 6121 §3.1.3: a subscription request stored while the contact had no available
resource is delivered when the contact sends initial presence. The request may have
been acknowledged through another node a moment ago, which did not deliver it live
because this session's availability had not reached it by gossip yet: the pending
requests are read after a linearizable read point, so it is among them (a full suite
run lost the request of test_pubsub_cluster's befriend step: the contact's node read
state that had not applied it yet). The node's store is replaced by one that, like a
follower, applies the request only when the read point is reached; everything else is
the real code."""

from __future__ import annotations

from types import SimpleNamespace

import trio
from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules import presence
from raftxmpp.routing.sessions import LocalSession

USER, CONTACT = "frank@localhost", "alice@localhost"
REQUEST = (f"<presence xmlns='jabber:client' type='subscribe' from='{CONTACT}' to='{USER}'>"
           "<status>befriend me</status></presence>")


class LaggingStore:
    """Applies the request acknowledged elsewhere when a read point is asked for."""

    def __init__(self) -> None:
        self.pending_in: dict[str, str] = {}
        self.read_points = 0

    async def fresh(self) -> None:
        await trio.sleep(0)
        self.read_points += 1
        self.pending_in[CONTACT] = REQUEST

    def roster(self, bare: str) -> dict:
        return {"items": {}, "pending_in": dict(self.pending_in) if bare == USER else {}}

    def subscribers(self, user: str) -> set[str]:
        return set()

    def subscribers_by_domain(self, user: str) -> dict[str, set[str]]:
        return {}

    def has_blocklist(self, user: str) -> bool:
        return False


async def test_an_initial_presence_gets_a_request_acknowledged_through_another_node():
    store = LaggingStore()
    frank = LocalSession(jid=JID.parse(f"{USER}/phone"))

    async def no_hooks(*args) -> None:
        pass

    async with trio.open_nursery() as nursery:
        router = SimpleNamespace(
            store=store, served_hosts=lambda: {"localhost"},
            spawn=lambda fn, *args: nursery.start_soon(fn, *args) or True,
            run_hooks=no_hooks,
            local=SimpleNamespace(is_blocked=lambda user, jid: False),
            sessions=SimpleNamespace(local_session=lambda jid: frank, publish=lambda s: None,
                                     accounts_among=lambda accounts: [],
                                     available_local=lambda bare: [frank],
                                     available=lambda bare: [frank]))
        initial = etree.fromstring("<presence xmlns='jabber:client'/>")
        await presence.broadcast(router, frank, initial)
    assert store.read_points == 1
    requests = [data for data in frank.outbox if b'type="subscribe"' in data]
    assert len(requests) == 1
    assert b"befriend me" in requests[0] and f'from="{CONTACT}"'.encode() in requests[0]
