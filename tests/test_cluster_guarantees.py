"""Guarantees that only show with real nodes and concurrent clients.

Each test here was written against a deliberate bug (a mutant) that every other
non-chaos test let through (issue 14):
- offline messages: two sessions of one account that come online together must not
  both deliver the queue (read, then take, then deliver the *read* copy did);
- logins on a node cut off from the majority: a failed Raft barrier must not count as
  "credentials are current" (the isolated node would accept an old password).

The client is chaos.xmpp's raw one: it reports exactly which stanza arrived on which
stream, and never retries on its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from chaos import xmpp
from tests.harness import wait_for
from tests.im_nodes import start_cluster, tls_extra

pytestmark = pytest.mark.cluster

PASSWORD = "guarantee-password"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ca_file):
    c = start_cluster(tmp_path_factory.mktemp("guarantees"), tls_extra(ca_file))
    yield c
    c.kill_all()


def connection(node, ca_file, timeout: float = 20.0) -> xmpp.Connection:
    return xmpp.Connection("127.0.0.1", node.ports["c2s_tls"], "localhost",
                           xmpp.tls_context(str(ca_file / "ca.pem")), timeout=timeout)


async def session(node, ca_file, user: str, resource: str) -> xmpp.Connection:
    conn = connection(node, ca_file)
    await conn.open()
    await conn.login(user, PASSWORD, resource)
    return conn


def bodies(conn: xmpp.Connection) -> list[str]:
    return [xmpp.body_of(s) for s in conn.drain_inbox()
            if s.tag == f"{{{xmpp.CLIENT}}}message" and xmpp.body_of(s)]


@pytest.mark.parametrize("placement", ["same-node", "two-nodes"])
def test_two_sessions_coming_online_together_get_each_offline_message_once(
        cluster, ca_file, placement):
    """Offline delivery is exactly-once across sessions (XEP-0160 §3: the messages are
    delivered to the first available resource, then the queue is empty): the offline
    queue is handed to one of the two sessions that send initial presence at the same
    moment, never to both. Each round stores fresh messages, then brings two resources
    online with their initial presences written back to back; the ping answered after
    the presence on each stream marks the point where that session's delivery is over
    (the node runs the initial-presence hooks before the next stanza)."""
    node1, node2, _ = cluster.nodes
    first, second = (node1, node1) if placement == "same-node" else (node1, node2)
    tag = placement.replace("-", "")
    sender, inbox = f"sender{tag}", f"inbox{tag}"
    for user in (sender, inbox):
        node1.admin("user.add", jid=f"{user}@localhost", password=PASSWORD)

    async def round_(n: int) -> tuple[Counter, list[str]]:
        out = await session(node2, ca_file, sender, f"s{n}")
        sent = [f"{tag}-round{n}-msg{i}" for i in range(6)]
        for body in sent:
            out.message(f"{inbox}@localhost", body, body)
        await out.ping()  # handled after the messages: each one is stored (or refused)
        refused = [s for s in out.drain_inbox() if xmpp.is_error_message(s)]
        assert not refused, f"the offline store refused: {refused}"
        out.abort()
        for node in cluster.nodes:  # every node has applied the stores before anyone logs in
            wait_for(lambda node=node: node.admin("user.list", current=True) is not None, 20,
                     "a barrier on every node")
        a = await session(first, ca_file, inbox, f"a{n}")
        b = await session(second, ca_file, inbox, f"b{n}")
        a.presence(priority=1)
        b.presence(priority=1)
        await asyncio.gather(a.ping(), b.ping())
        got = Counter(bodies(a) + bodies(b))
        for conn in (a, b):
            await conn.close()
        return got, sent

    async def scenario():
        for n in range(6):
            got, sent = await round_(n)
            assert got == Counter(sent), (
                f"round {n}: each stored message must reach exactly one of the two sessions "
                f"once; received {dict(got)}")

    asyncio.run(scenario())


def test_a_login_on_a_node_cut_off_from_the_majority_is_a_temporary_auth_failure(
        make_cluster, tmp_path, ca_file):
    """RFC 6120 §6.5.13 <temporary-auth-failure/>: "the authentication failed because of
    a temporary error condition within the receiving entity". A node that cannot reach a
    majority cannot know whether the password was changed on the other side, so it must
    not accept it (and must not call it wrong either). The cut-off node here is the old
    leader: it keeps believing it leads for a while, which is exactly when a stale read
    would look current."""
    cluster = make_cluster(3, extra=tls_extra(ca_file)).start()
    leader = cluster.leader()
    leader.admin("user.add", jid="cutoff@localhost", password=PASSWORD)

    async def login(node) -> str:
        conn = connection(node, ca_file)
        try:
            await conn.open()
            await conn.login("cutoff", PASSWORD, "r")
            return "success"
        except xmpp.AuthFailed as exc:
            return exc.condition
        except xmpp.Unknown as exc:
            return str(exc).removeprefix("sasl failure ")
        finally:
            conn.abort()

    assert asyncio.run(login(leader)) == "success"  # the account works while the cluster does
    for node in cluster.nodes:
        if node is not leader:
            node.kill()
    assert asyncio.run(login(leader)) == "temporary-auth-failure"
