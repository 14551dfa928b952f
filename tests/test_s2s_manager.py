"""The cluster-wide s2s manager (raftxmpp.routing.s2s) without sockets: who holds a
domain pair's outgoing stream, where a stanza goes meanwhile, how a race between two
nodes settles, what happens when the holder dies, and what bounces."""

from __future__ import annotations

import dataclasses
import time

import pytest

from raftxmpp import config as config_mod
from raftxmpp.jid import JID
from raftxmpp.routing.s2s import LINK_TARGET, OutgoingRoute, S2SManager
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

LOCAL, REMOTE = "a.example", "p.example"
PAIR = (LOCAL, REMOTE)
KEY = f"o:{LOCAL}|{REMOTE}"


class FakeComponents:
    def serves(self, domain: str) -> bool:
        return domain == "chat.a.example"


class FakeRouter:
    def __init__(self, **s2s) -> None:
        base = config_mod.Config()
        self.config = dataclasses.replace(
            base, node=dataclasses.replace(base.node, name="node1"),
            s2s=dataclasses.replace(base.s2s, **s2s))
        self.components = FakeComponents()
        self.routed: list = []

    def served_hosts(self):
        return {LOCAL}

    async def route(self, stanza, sender):
        self.routed.append(stanza)


class FakeGossip:
    def __init__(self) -> None:
        self.items: dict = {}
        self.views: dict = {"node2": object(), "node0": object()}  # the live other nodes
        self.messages: list[tuple[str, dict]] = []

    def send(self, node, message):
        self.messages.append((node, message))

    def set(self, key, value):
        self.items[key] = value

    def delete(self, key):
        self.items.pop(key, None)


class FakeLinks:
    def __init__(self) -> None:
        self.up: set[str] = set()
        self.sent: list[tuple[str, str, bytes]] = []

    def connected(self, node):
        return node in self.up

    def send_stanza(self, node, target, data, hops=0):
        self.sent.append((node, target, data))
        return True


@pytest.fixture
def env():
    router = FakeRouter(max_queue=5, connect_timeout=3.0, deny=("denied.example",))
    manager = S2SManager(router)
    gossip, links = FakeGossip(), FakeLinks()
    opened: list[OutgoingRoute] = []
    spawned: list = []
    manager.attach(gossip, links)
    manager.bind_edge(opened.append, lambda fn, *args: spawned.append(args[0]))
    return manager, gossip, links, opened, spawned


def message(n: int, to: str = f"pat@{REMOTE}", frm: str = f"alice@{LOCAL}/r"):
    stanza = make("message", {"from": frm, "to": to, "type": "chat", "id": f"m{n}"})
    stanza.text = None
    return stanza


async def send(manager: S2SManager, n: int, **kwargs) -> None:
    stanza = message(n, **kwargs)
    await manager.route(stanza, JID.parse(stanza.get("to")), None)


def ids(chunks) -> list[str]:
    return [c.split(b"id=\"")[1].split(b"\"")[0].decode() for c in chunks]


def bounced(spawned) -> list[tuple[str, str]]:
    return [(s.get("id"), s.find("{jabber:client}error")[0].tag.split("}")[1]) for s in spawned]


async def test_the_first_stanza_opens_the_stream_and_publishes_the_claim(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    (route,) = opened
    assert route.pair == PAIR and ids(route.queue) == ["m1"]
    assert gossip.items[KEY]["state"] == "connecting"
    await send(manager, 2)
    assert len(opened) == 1 and ids(route.queue) == ["m1", "m2"]
    manager.route_up(route, "external", "p.example:5269")
    assert gossip.items[KEY] == {"state": "up", "since": route.since, "auth": "external",
                                 "peer": "p.example:5269"}


async def test_a_stream_up_on_another_node_gets_the_stanza_over_the_link(env):
    manager, gossip, links, opened, _ = env
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    await send(manager, 1)
    assert not opened
    assert [(n, t) for n, t, _ in links.sent] == [("node2", f"{LINK_TARGET}{LOCAL}|{REMOTE}|node1|1")]


async def test_stanzas_wait_while_another_node_connects_then_follow_in_order(env):
    manager, gossip, links, opened, _ = env
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "connecting", "since": 1.0})
    for n in range(3):
        await send(manager, n)
    assert not links.sent and not opened
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    assert ids(data for _, _, data in links.sent) == ["m0", "m1", "m2"]


async def test_two_nodes_opening_at_once_settle_on_the_earlier_claim(env):
    """Both see both entries; the earlier (since, node) wins everywhere; the loser hands
    over what it had not written, in order, and stops publishing."""
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    await send(manager, 2)
    (route,) = opened
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "connecting", "since": route.since - 1})
    assert PAIR not in manager.routes and KEY not in gossip.items
    assert route.closing is not None and route.closing.condition == "conflict"
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": route.since - 1})
    assert ids(data for _, _, data in links.sent) == ["m1", "m2"]


async def test_a_later_claim_from_another_node_does_not_displace_ours(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    (route,) = opened
    manager.on_gossip_change("node2", KEY, None, {"state": "connecting", "since": route.since + 1})
    assert manager.routes[PAIR] is route and route.closing is None


async def test_equal_claims_are_settled_by_node_name(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    (route,) = opened
    manager.on_gossip_change("node0", KEY, None, {"state": "connecting", "since": route.since})
    assert PAIR not in manager.routes  # "node0" < "node1"


async def test_when_the_holder_dies_held_stanzas_open_a_new_stream_here(env):
    """Its link drops first (stanzas are held, not sent into a dead link); its entry is
    purged by the failure detector; then this node opens the stream with them."""
    manager, gossip, links, opened, _ = env
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    await send(manager, 0)
    manager.acknowledged("node2", f"{LOCAL}|{REMOTE}", 1)
    links.up.discard("node2")
    await send(manager, 1)
    await send(manager, 2)
    assert len(links.sent) == 1
    del gossip.views["node2"]  # the failure detector purges it
    manager.on_gossip_change("node2", KEY, {"state": "up"}, None)
    (route,) = opened
    assert ids(route.queue) == ["m1", "m2"] and gossip.items[KEY]["state"] == "connecting"


async def test_held_stanzas_follow_once_the_link_is_back(env):
    manager, gossip, links, opened, _ = env
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    await send(manager, 1)
    assert not links.sent
    links.up.add("node2")
    manager.tick(time.monotonic())
    assert ids(data for _, _, data in links.sent) == ["m1"]


async def test_held_too_long_bounces_with_remote_server_timeout(env):
    """RFC 6120 §8.3.3.17."""
    manager, gossip, links, opened, spawned = env
    manager.on_gossip_change("node2", KEY, None, {"state": "connecting", "since": 1.0})
    await send(manager, 1)
    manager.tick(time.monotonic() + 10)
    assert bounced(spawned) == [("m1", "remote-server-timeout")]


async def test_a_failed_stream_bounces_its_queue_and_what_follows_for_a_while(env):
    """RFC 6120 §8.3.3.16; the failure is published so other nodes bounce at once too."""
    manager, gossip, links, opened, spawned = env
    await send(manager, 1)
    (route,) = opened
    manager.route_failed(route, "remote-server-not-found", "no such server")
    assert gossip.items[KEY]["state"] == "failed"
    await send(manager, 2)
    assert bounced(spawned) == [("m1", "remote-server-not-found"), ("m2", "remote-server-not-found")]
    assert len(opened) == 1
    manager.tick(time.monotonic() + 3600)  # the back-off is over: the next stanza tries again
    assert KEY not in gossip.items
    await send(manager, 3)
    assert len(opened) == 2


async def test_other_nodes_bounce_at_once_while_a_failure_is_published(env):
    manager, gossip, links, opened, spawned = env
    manager.on_gossip_change("node2", KEY, None, {"state": "failed", "since": 1.0,
                                                  "condition": "remote-server-timeout"})
    await send(manager, 1)
    assert bounced(spawned) == [("m1", "remote-server-timeout")] and not opened


async def test_the_queue_of_a_stream_being_set_up_is_bounded(env):
    manager, gossip, links, opened, spawned = env
    for n in range(7):
        await send(manager, n)
    assert ids(opened[0].queue) == ["m0", "m1", "m2", "m3", "m4"]
    assert bounced(spawned) == [("m5", "resource-constraint"), ("m6", "resource-constraint")]


async def test_denied_domains_and_relaying_are_refused(env):
    manager, *_ = env
    with pytest.raises(StanzaError) as denied:
        await send(manager, 1, to="x@denied.example")
    assert denied.value.condition == "not-allowed"
    with pytest.raises(StanzaError) as relayed:
        await send(manager, 2, frm="mallory@elsewhere.example")
    assert relayed.value.condition == "not-allowed"


async def test_a_stream_that_closes_with_stanzas_unsent_reopens_with_them(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    route = opened[0]
    manager.route_up(route, "dialback", "p")
    unsent = route.take()
    manager.route_closed(route, unsent)
    assert len(opened) == 2 and ids(opened[1].queue) == ["m1"]


async def test_idle_streams_are_closed(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    route = opened[0]
    manager.route_up(route, "dialback", "p")
    route.take()
    manager.tick(time.monotonic() + 10_000)
    assert route.closing is not None
    manager.route_closed(route, [])
    assert KEY not in gossip.items and PAIR not in manager.routes


def test_metrics_labels_are_bounded():
    from raftxmpp.metrics import S2SDomainCounts
    counts = S2SDomainCounts(limit=2)
    for domain in ("a.example", "b.example", "c.example", "d.example"):
        counts.stanza_out(domain)
    samples = {s.labels["domain"]: s.value for s in counts.family().samples
               if s.labels["direction"] == "out"}
    assert samples == {"a.example": 1, "b.example": 1, "other": 2}


async def test_an_operator_closes_every_stream_with_a_domain(env):
    manager, gossip, links, opened, _ = env
    await send(manager, 1)
    await send(manager, 2, to="x@other.example")
    for route in opened:
        manager.route_up(route, "dialback", "peer")
    assert manager.close_domain(REMOTE) == 1
    closing = {route.remote: route.closing for route in opened}
    assert closing[REMOTE].condition == "policy-violation" and closing["other.example"] is None


async def test_stanzas_handed_to_a_holder_that_dies_unacknowledged_go_out_again_first(env):
    """The holder acknowledges on receipt; what it never acknowledged never reached it
    (its link broke as it died), so it leaves through the next stream, before what was
    held meanwhile: nothing lost, nothing twice."""
    manager, gossip, links, opened, _ = env
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    for n in range(3):
        await send(manager, n)
    manager.acknowledged("node2", f"{LOCAL}|{REMOTE}", 1)  # m0 reached it
    links.up.discard("node2")
    await send(manager, 3)
    del gossip.views["node2"]
    manager.on_gossip_change("node2", KEY, {"state": "up"}, None)
    assert ids(opened[0].queue) == ["m1", "m2", "m3"]


async def test_a_live_holder_that_has_not_acknowledged_yet_is_not_doubted(env):
    manager, gossip, links, opened, _ = env
    links.up.add("node2")
    manager.on_gossip_change("node2", KEY, None, {"state": "up", "since": 1.0})
    await send(manager, 1)
    links.up.discard("node2")  # its link blinks; it is alive
    manager.tick(time.monotonic())
    assert not opened and not manager.held


async def test_stanzas_received_for_our_stream_are_acknowledged_in_batches(env):
    manager, gossip, links, opened, _ = env
    for n in (1, 2, 3):
        manager.deliver_from_link(f"{LINK_TARGET}{LOCAL}|{REMOTE}|node2|{n}",
                                  b"<message to='pat@p.example' from='alice@a.example/r'/>")
    assert len(opened[0].queue) == 3 and not gossip.messages
    manager.tick(time.monotonic())
    assert gossip.messages == [("node2", {"t": "s2s-ack", "pair": f"{LOCAL}|{REMOTE}", "seq": 3})]
