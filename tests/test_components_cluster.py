"""External components (XEP-0114) on a real three-node cluster.

Components connect to any node, several instances of one component to different
nodes; traffic for the component's domain reaches a live instance from every node, by
the domain's balancing policy. Components here are slixmpp's ComponentXMPP (a real
library) and RawComponent, XEP-0114 by hand over a socket, which can send hundreds of
stanzas from many JIDs of its own domain without a login each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import slixmpp
from lxml import etree

from raftxmpp.component.stream import handshake_digest
from raftxmpp.jid import JID
from raftxmpp.xml.framer import StanzaReceived, StreamClosed, StreamFramer, StreamOpened
from raftxmpp.xml.ns import COMPONENT, STREAM, STREAMS_ERR
from tests import im_nodes
from tests.harness import Cluster, wait_for
from tests.im_nodes import tls_extra
from tests.test_cli import raftxmpp
from tests.xmpp_client import Client, run, unique

pytestmark = pytest.mark.cluster

SECRET = "component-shared-secret"
PASSWORD = "component-test-password"
MESSAGE = f"{{{COMPONENT}}}message"
# Message n → the instance that must get it ("1" = node1#0 ...), per policy/buckets.
ROUTING = json.loads((Path(__file__).parent / "data" / "component_routing.json").read_text())
IQ = f"{{{COMPONENT}}}iq"


# -- a component by hand ---------------------------------------------------------------------------


class StreamEnded(Exception):
    def __init__(self, condition: str | None) -> None:
        super().__init__(condition or "closed")
        self.condition = condition


class RawComponent:
    """XEP-0114 over a blocking socket; stanzas come out of our own framer."""

    def __init__(self, port: int, domain: str) -> None:
        self.domain = domain
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = StreamFramer(stream_ns=COMPONENT, max_stanza_size=1 << 20)
        self.events: list = []
        self.received: list[etree._Element] = []
        self.ended: StreamEnded | None = None
        self.sock.sendall(f"<stream:stream xmlns='{COMPONENT}' xmlns:stream='{STREAM}' "
                          f"to='{domain}'>".encode())
        opened = self._next(10)
        assert isinstance(opened, StreamOpened), opened
        self.stream_id = opened.attrs.get("id", "")

    @classmethod
    def connect(cls, node, domain: str, secret: str = SECRET) -> RawComponent:
        component = cls(node.component_port, domain)
        component.sock.sendall(f"<handshake>{handshake_digest(component.stream_id, secret)}"
                               f"</handshake>".encode())
        answer = component._next(10)
        assert isinstance(answer, StanzaReceived), answer
        assert answer.element.tag == f"{{{COMPONENT}}}handshake", etree.tostring(answer.element)
        return component

    @classmethod
    def refusal(cls, node, domain: str, secret: str = SECRET) -> str | None:
        """The stream error condition the node ends the stream with, at header or handshake."""
        try:
            component = cls(node.component_port, domain)
            with contextlib.suppress(OSError):  # it may have closed on us already
                component.sock.sendall(f"<handshake>"
                                       f"{handshake_digest(component.stream_id, secret)}"
                                       f"</handshake>".encode())
            component.expect_end()
        except StreamEnded as ended:
            return ended.condition
        raise AssertionError("the stream was not ended")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def close(self) -> None:
        self.sock.close()

    def expect_end(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._next(deadline - time.monotonic())
        raise AssertionError("the stream did not end")

    def poll(self, timeout: float) -> None:
        """Reads what arrives within `timeout`; stanzas go to self.received."""
        try:
            while True:
                event = self._next(timeout)
                if event is None:
                    return
                self.received.append(event.element)
        except StreamEnded as ended:
            self.ended = ended

    def messages(self) -> list[etree._Element]:
        return [e for e in self.received if e.tag == MESSAGE]

    def _next(self, timeout: float):
        while not self.events:
            self.sock.settimeout(max(timeout, 0.001))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                data = b""
            if not data:
                raise StreamEnded(None)
            self.events += self.framer.feed(data)
        event = self.events.pop(0)
        if isinstance(event, StreamClosed):
            raise StreamEnded(None)
        if isinstance(event, StanzaReceived) and event.element.tag == f"{{{STREAM}}}error":
            conditions = [etree.QName(c).localname for c in event.element
                          if etree.QName(c).namespace == STREAMS_ERR and
                          etree.QName(c).localname != "text"]
            raise StreamEnded(conditions[0] if conditions else "unknown")
        return event


def message(sender: str, to: str, number: int) -> str:
    return f"<message from='{sender}' to='{to}' id='m{number}'><body>{number}</body></message>"


def collect(components: list[RawComponent], total: int, timeout: float = 15) -> None:
    """Reads from every component until `total` messages arrived among them."""
    deadline = time.monotonic() + timeout
    while sum(len(c.messages()) for c in components) < total:
        if time.monotonic() > deadline:
            counts = {c.domain + str(i): len(c.messages()) for i, c in enumerate(components)}
            raise AssertionError(f"only {counts} of {total} messages arrived")
        for component in components:
            component.poll(0.02)


def receiver_of(components: dict[str, RawComponent]) -> dict[str, str]:
    """Message id → the instance id that received it."""
    return {m.get("id"): instance_id for instance_id, c in components.items()
            for m in c.messages()}


# -- cluster and registration ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(ca_file):
    """The test CA and the node certificate it issued (tests/conftest.py)."""
    return ca_file


def start_cluster(base, tls=None) -> Cluster:
    return im_nodes.start_cluster(base, tls_extra(tls) if tls else "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls):
    c = start_cluster(tmp_path_factory.mktemp("components"), tls)
    yield c
    c.kill_all()


def register(cluster: Cluster, domain: str, balancing: str = "random", buckets: int = 0) -> str:
    """Registers through node1; returns once every live node has applied it."""
    cluster.nodes[0].admin("component.add", domain=domain, secret=SECRET, balancing=balancing,
                           buckets=buckets)
    for node in cluster.nodes:
        if node.alive():
            node.admin("component.list")  # a Raft barrier on that node
    return domain


def instance_ids(node, domain: str) -> list[str]:
    rows = node.admin("component.list")
    row = next((r for r in rows if r["domain"] == domain), {})
    return sorted(i["id"] for i in row.get("instances", []))


def await_instances(cluster: Cluster, domain: str, expected: list[str]) -> None:
    """Every live node routes to exactly these instances of `domain`."""
    live = [n for n in cluster.nodes if n.alive()]
    wait_for(lambda: all(instance_ids(n, domain) == sorted(expected) for n in live), 15,
             f"every node to route {domain} to {expected}")


# -- a real library on both ends ---------------------------------------------------------------------


class EchoComponent(slixmpp.ComponentXMPP):
    def __init__(self, domain: str, port: int) -> None:
        super().__init__(domain, SECRET, "127.0.0.1", port)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0092", {"software_name": "echo-bot", "version": "4.2"})
        self.register_plugin("xep_0199")
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.started.done() or
                               self.started.set_result(True))


def test_slixmpp_component_on_node2_answers_an_iq_from_a_client_on_node1(cluster, tls):
    node1, node2, _ = cluster.nodes
    domain = register(cluster, "echo.localhost")
    user = f"{unique('eve')}@localhost"
    node1.admin("user.add", jid=user, password=PASSWORD)

    async def scenario():
        component = EchoComponent(domain, node2.component_port)
        component.connect()
        await asyncio.wait_for(component.started, 10)
        await asyncio.to_thread(await_instances, cluster, domain, ["node2#0"])
        client = Client(user, PASSWORD, node1.c2s_port, tls / "ca.pem", plugins=("xep_0092",))
        assert await client.start()

        version = await client.plugin["xep_0092"].get_version(domain, timeout=10)
        assert version["software_version"]["name"] == "echo-bot"
        assert version["from"] == domain
        items = await client.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert domain in {jid for jid, _, _ in items["disco_items"]["items"]}

        # And the other way: the component reaches the client, and the server answers it.
        component.send_message(mto=client.boundjid.full, mbody="hello from echo", mfrom=domain)
        assert (await client.next_message())["body"] == "hello from echo"
        await component.plugin["xep_0199"].send_ping("localhost", ifrom=domain, timeout=10)

        await client.stop()
        component.disconnect()

    run(scenario())
    await_instances(cluster, domain, [])


def test_unregistered_domain_is_refused_with_host_unknown_on_every_node(cluster):
    for node in cluster.nodes:
        assert RawComponent.refusal(node, "nobody.localhost") == "host-unknown"


def test_wrong_secret_is_refused_with_not_authorized_on_a_node_that_did_not_register_it(cluster):
    node1, _, node3 = cluster.nodes
    domain = register(cluster, "guarded.localhost")
    assert RawComponent.refusal(node3, domain, secret="not-the-secret") == "not-authorized"
    RawComponent.connect(node3, domain).close()


def test_stanza_from_outside_the_component_domain_ends_the_stream_with_invalid_from(cluster):
    node1, node2, _ = cluster.nodes
    domain = register(cluster, "forger.localhost")
    component = RawComponent.connect(node2, domain)
    component.send(message("admin@localhost", "someone@localhost", 1))
    with pytest.raises(StreamEnded) as ended:
        component.expect_end()
    assert ended.value.condition == "invalid-from"


def test_registered_domain_without_a_live_instance_answers_service_unavailable(cluster):
    node1, node2, _ = cluster.nodes
    asker, idle = register(cluster, "asker.localhost"), register(cluster, "idle.localhost")
    component = RawComponent.connect(node2, asker)
    component.send(f"<iq type='get' id='q1' from='{asker}' to='{idle}'>"
                   f"<query xmlns='jabber:iq:version'/></iq>")
    wait_for(lambda: component.poll(0.05) or component.received, 10, "the error reply")
    reply = component.received[0]
    assert reply.tag == IQ and reply.get("type") == "error" and reply.get("id") == "q1"
    assert reply.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable") is not None
    component.close()


def test_component_removed_while_connected_is_disconnected_with_host_gone(cluster):
    node1, node2, node3 = cluster.nodes
    domain = register(cluster, "doomed.localhost")
    component = RawComponent.connect(node2, domain)
    await_instances(cluster, domain, ["node2#0"])
    node3.admin("component.remove", domain=domain)
    with pytest.raises(StreamEnded) as ended:
        component.expect_end()
    assert ended.value.condition == "host-gone"
    assert RawComponent.refusal(node2, domain) == "host-unknown"


def test_component_list_shows_live_instances_per_node(cluster):
    node1, node2, node3 = cluster.nodes
    domain = register(cluster, "listed.localhost", "bare_source", 16)
    a, b = RawComponent.connect(node2, domain), RawComponent.connect(node3, domain)
    await_instances(cluster, domain, ["node2#0", "node3#0"])
    rows = json.loads(raftxmpp("component", "list", "--json", "--config",
                               str(node1.config_path)).stdout)
    row = next(r for r in rows if r["domain"] == domain)
    assert {(i["id"], i["node"]) for i in row["instances"]} == {("node2#0", "node2"),
                                                                ("node3#0", "node3")}
    table = raftxmpp("component", "list", "--config", str(node1.config_path)).stdout
    line = next(line for line in table.splitlines() if line.startswith(domain))
    assert re.search(r"node2: node2#0; node3: node3#0$", line), table
    a.close()
    await_instances(cluster, domain, ["node3#0"])  # a dropped connection leaves at once
    b.close()


# -- balancing ------------------------------------------------------------------------------------------


def spread(cluster: Cluster, domain: str, sender_node, count: int = 200,
           source: str | None = None):
    """Instances of `domain` on node1 and node2 receive `count` messages from many JIDs of
    a sender component (domain `source`) on `sender_node`; returns (instances by id,
    message id → receiver, the messages' (from, to) by id)."""
    node1, node2, _ = cluster.nodes
    source = register(cluster, source or unique("src") + ".localhost")
    instances = {"node1#0": RawComponent.connect(node1, domain),
                 "node2#0": RawComponent.connect(node2, domain)}
    sender = RawComponent.connect(sender_node, source)
    await_instances(cluster, domain, list(instances))
    addresses = {}
    for n in range(count):
        sent_from = f"user{n % 19}@{source}/res{n % 2}"
        sent_to = f"room{n % 23}@{domain}/nick{n % 3}"
        addresses[f"m{n}"] = (sent_from, sent_to)
        sender.send(message(sent_from, sent_to, n))
    collect(list(instances.values()), count)
    received = receiver_of(instances)
    assert len(received) == count  # every message once, none lost or duplicated
    for component in (*instances.values(), sender):
        component.close()
    return instances, received, addresses


@pytest.mark.parametrize("policy", ["source", "destination", "bare_source", "bare_destination"])
@pytest.mark.parametrize("buckets", [0, 32])
def test_hash_policy_sends_each_message_where_the_policy_says(cluster, policy, buckets):
    """Where each of the 200 messages must go comes from a fixed table
    (tests/data/component_routing.json: the owner instance of message n is character n),
    computed once from the documented hash (blake2b-64 of the policy's JID, modulo or
    rendezvous over buckets) by a script independent of raftxmpp.component.balancing."""
    name = f"{policy.replace('_', '-')}-b{buckets}"
    domain = register(cluster, f"{name}.localhost", policy, buckets)
    _, received, addresses = spread(cluster, domain, cluster.nodes[2],
                                    source=f"src-{name}.localhost")
    expected = ROUTING[f"{policy}/{buckets}"]
    got = "".join(received[f"m{n}"][4] for n in range(200))
    assert got == expected
    assert set(received.values()) == {"node1#0", "node2#0"}  # both instances share the traffic
    # One conversation, one instance: the policy's JID decides alone.
    jid_of = {"source": 0, "bare_source": 0, "destination": 1, "bare_destination": 1}[policy]
    owner: dict[str, str] = {}
    for message_id, pair in addresses.items():
        jid = JID.parse(pair[jid_of])
        jid = jid.bare if policy.startswith("bare_") else jid
        assert owner.setdefault(str(jid), received[message_id]) == received[message_id]


def test_random_policy_prefers_the_instance_on_the_routing_node(cluster):
    domain = register(cluster, "rnd-local.localhost", "random")
    _, received, _ = spread(cluster, domain, cluster.nodes[0])
    assert Counter(received.values()) == {"node1#0": 200}


def test_random_policy_without_a_local_instance_spreads_over_the_remote_ones(cluster):
    domain = register(cluster, "rnd-remote.localhost", "random")
    _, received, _ = spread(cluster, domain, cluster.nodes[2])
    shares = Counter(received.values())
    assert set(shares) == {"node1#0", "node2#0"} and min(shares.values()) >= 50, shares


# -- failure ----------------------------------------------------------------------------------------------


def test_with_buckets_a_dead_node_moves_only_its_instances_share_and_back_on_return(tmp_path):
    cluster = start_cluster(tmp_path / "failover")
    try:
        _failover_scenario(cluster)
    finally:
        cluster.kill_all()


def _failover_scenario(cluster: Cluster) -> None:
    node1, node2, node3 = cluster.nodes
    domain = register(cluster, "buckets.localhost", "bare_source", 64)
    source = register(cluster, "users.localhost")
    instances = {f"node{i}#0": RawComponent.connect(n, domain)
                 for i, n in enumerate(cluster.nodes, 1)}
    sender = RawComponent.connect(node1, source)
    await_instances(cluster, domain, list(instances))
    senders = [f"user{n}@{source}" for n in range(60)]

    def send_round(tag: str, receivers: dict[str, RawComponent]) -> dict[str, str]:
        """Bare sender → the instance that got its message; every message arrives."""
        for component in receivers.values():
            component.received.clear()
        for n, jid in enumerate(senders):
            sender.send(message(f"{jid}/r", f"svc@{domain}", n).replace(f"id='m{n}'",
                                                                          f"id='{tag}{n}'"))
        collect(list(receivers.values()), len(senders))
        got = receiver_of(receivers)
        assert len(got) == len(senders)
        return {senders[int(mid[len(tag):])]: owner for mid, owner in got.items()}

    before = send_round("a", instances)
    assert set(before.values()) == set(instances)
    # The owners from the fixed table (tests/data/component_routing.json, "failover/64").
    assert "".join(before[jid][4] for jid in senders) == ROUTING["failover/64"]

    node3.kill()
    await_instances(cluster, domain, ["node1#0", "node2#0"])  # purged by the failure detector
    survivors = {k: v for k, v in instances.items() if k != "node3#0"}
    after = send_round("b", survivors)
    for jid, owner in before.items():
        if owner != "node3#0":
            assert after[jid] == owner, f"{jid} moved though its instance lives"
        else:
            assert after[jid] in survivors

    node3.start()
    node3.admin("component.list")  # caught up with the log before the component connects
    returned = RawComponent.connect(node3, domain)
    await_instances(cluster, domain, list(instances))
    instances["node3#0"] = returned
    assert send_round("c", instances) == before  # its buckets came back with it
    for component in (*instances.values(), sender):
        component.close()
