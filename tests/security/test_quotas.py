"""Per-account quotas on the replicated state (issue 13, finding 2): private XML keys and
bytes, block-list entries, roster items from every path, waiting subscription requests,
vCard size. Each is refused inside the state machine (so every node, and every replay of
the log, refuses the same command) and reaches the client as a stanza error.

On the code before the quotas, every "refused" below was accepted: private XML took any
number of keys and bytes, a block list grew to 88,000 JIDs, and subscribing or approving
added roster items past roster_size."""

from __future__ import annotations

import itertools

import pytest
import trio

from raftxmpp import config as config_mod
from raftxmpp import credentials
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.quotas import QUOTAS_SINCE, Quotas
from tests.security.conftest import authenticated, c2s_port

_ids = itertools.count()
ALICE = "alice@localhost"


def cmd(op: str, **args) -> dict:
    return {"v": sm.VERSION, "id": f"quota:{next(_ids)}", "ts": 1700000000.0, "op": op, **args}


CREDS = credentials.derive("pw", 4096)


def _state() -> sm.ClusterState:
    state = sm.ClusterState()
    creds = CREDS
    for user in ("alice", "bob"):
        assert state.apply(cmd("register", jid=f"{user}@localhost", credentials=creds))[0] == "ok"
    return state


# -- the state machine: deterministic, and only with the limits the command carries ---------


def test_every_replica_refuses_the_same_commands_whatever_its_own_configuration():
    log = [cmd("private_set", jid=ALICE, key=f"{{k}}e{i}", xml=f"<e{i} xmlns='k'/>",
               private_keys=2) for i in range(3)]
    log += [cmd("block", jid=ALICE, items=[f"s{i}@spam"], blocklist_items=2) for i in range(3)]
    log += [cmd("vcard_set", jid=ALICE, vcard="<vCard xmlns='vcard-temp'>" + "x" * 100 +
                "</vCard>", vcard_bytes=64)]
    replicas = [_state(), _state()]
    results = [[replica.apply(dict(c)) for c in log] for replica in replicas]
    assert results[0] == results[1]
    assert [r[0] for r in results[0]] == ["ok", "ok", "error", "ok", "ok", "error", "error"]
    assert [r[1] for r in results[0] if r[0] == "error"] == \
        ["resource-constraint", "resource-constraint", "not-acceptable"]
    assert replicas[0].digest() == replicas[1].digest()


def test_a_command_from_before_the_quotas_applies_as_it_did():
    state = _state()
    for i in range(5):  # no quota fields: what an old log entry replays as
        assert state.apply(cmd("private_set", jid=ALICE, key=f"k{i}", xml="<x/>"))[0] == "ok"
    assert len(state.private[ALICE]) == 5


def test_private_bytes_count_a_replaced_element_once():
    state = _state()
    big = "<e xmlns='k'>" + "y" * 80 + "</e>"
    assert state.apply(cmd("private_set", jid=ALICE, key="{k}e", xml=big,
                           private_bytes=100))[0] == "ok"
    assert state.apply(cmd("private_set", jid=ALICE, key="{k}e", xml=big,
                           private_bytes=100))[0] == "ok"  # a replacement, not a second copy
    refused = state.apply(cmd("private_set", jid=ALICE, key="{k}f", xml=big, private_bytes=100))
    assert refused[:2] == ("error", "resource-constraint")


def test_roster_items_created_by_subscription_events_count_against_roster_size():
    state = _state()
    ok = state.apply(cmd("roster_subscription", jid=ALICE, contact="c1@x", event="out-subscribe",
                         item_limit=1))
    assert ok[0] == "ok"
    for event in ("out-subscribe", "out-subscribed"):  # subscribing, pre-approving
        refused = state.apply(cmd("roster_subscription", jid=ALICE, contact="c2@x", event=event,
                                  item_limit=1))
        assert refused[:2] == ("error", "resource-constraint"), event
    # Approving a waiting request creates the item too; the request stays waiting.
    assert state.apply(cmd("roster_subscription", jid=ALICE, contact="c3@x", event="in-subscribe",
                           limit=5, item_limit=1))[0] == "ok"
    refused = state.apply(cmd("roster_subscription", jid=ALICE, contact="c3@x",
                              event="out-subscribed", item_limit=1))
    assert refused[:2] == ("error", "resource-constraint")
    assert "c3@x" in state.rosters[ALICE]["pending_in"]
    assert set(state.rosters[ALICE]["items"]) == {"c1@x"}


def test_the_quota_keys_are_checked_by_config_check(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[limits]\nblocklist_size = -1\n")
    with pytest.raises(config_mod.ConfigError, match="blocklist_size"):
        config_mod.load(path)
    path.write_text("")
    limits = config_mod.load(path).limits
    assert Quotas.from_limits(limits) == Quotas(roster_items=1000, pending_subscriptions=100,
                                                private_keys=100, private_bytes=262144,
                                                blocklist_items=1000, vcard_bytes=262144)


# -- a running node, a real client: each refusal is a stanza error ---------------------------


async def _quota_node(make_node, **kwargs):
    """A node whose own command version is advertised, so its store stamps the quotas
    (raftxmpp.cluster.quotas.QUOTAS_SINCE; the node registers itself within a second)."""
    node = await make_node(**kwargs)
    members = node.raft.members()
    with trio.fail_after(20):
        while node.raft.read(lambda s: sm.cluster_version(s, members)) < QUOTAS_SINCE:
            await trio.sleep(0.05)
    return node


async def _iq(raw, ident: str, body: str) -> bytes:
    await raw.send(f"<iq type='set' id='{ident}'>{body}</iq>".encode())
    reply = await raw.until(f"id=\"{ident}\"".encode(), timeout=10)
    reply += await raw.until(b">", timeout=10)
    if reply.endswith(b"/>"):
        return reply  # an empty result
    return reply + await raw.until(b"</iq>", timeout=10)


async def _interested(raw):
    """Asks for the roster, so roster pushes (RFC 6121 §2.1.6) come to this client."""
    await raw.send(b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
    await raw.until(b"</iq>", timeout=10)
    return raw


def _private(i: int, size: int = 0) -> str:
    return (f"<query xmlns='jabber:iq:private'><note{i} xmlns='urn:example:notes'>"
            f"{'n' * size}</note{i}></query>")


async def test_private_xml_keys_and_bytes_per_account_are_capped(make_node):
    node = await _quota_node(make_node, limits={"private_keys_per_account": 3,
                                   "private_bytes_per_account": 2000})
    raw = await authenticated(c2s_port(node))
    replies = [await _iq(raw, f"p{i}", _private(i)) for i in range(4)]
    assert [b"type=\"result\"" in r for r in replies] == [True, True, True, False]
    assert b"<resource-constraint" in replies[3], replies[3]
    too_big = await _iq(raw, "big", _private(0, 2500))  # replacing a key: bytes still count
    assert b"<resource-constraint" in too_big, too_big
    assert node.store.private(ALICE, "{urn:example:notes}note3") is None
    assert len(node.store.private(ALICE, "{urn:example:notes}note0")) < 100


async def test_block_list_entries_are_capped(make_node):
    node = await _quota_node(make_node, limits={"blocklist_size": 5})
    raw = await authenticated(c2s_port(node))
    items = "".join(f"<item jid='spam{i}@example.org'/>" for i in range(4))
    reply = await _iq(raw, "b1", f"<block xmlns='urn:xmpp:blocking'>{items}</block>")
    assert b"type=\"result\"" in reply, reply
    items = "".join(f"<item jid='more{i}@example.org'/>" for i in range(2))
    reply = await _iq(raw, "b2", f"<block xmlns='urn:xmpp:blocking'>{items}</block>")
    assert b"<resource-constraint" in reply, reply
    assert len(node.store.blocklist(ALICE)) == 4  # the whole command refused, nothing added


async def test_subscribing_past_roster_size_is_refused(make_node):
    node = await _quota_node(make_node, limits={"roster_size": 2}, users=("alice", "bob", "carol", "dave"))
    raw = await _interested(await authenticated(c2s_port(node)))
    for contact in ("bob", "carol"):
        await raw.send(f"<presence to='{contact}@localhost' type='subscribe'/>".encode())
        await raw.until(f"jid=\"{contact}@localhost\"".encode(), timeout=10)  # roster push
    await raw.send(b"<presence to='dave@localhost' type='subscribe' id='s3'/>")
    error = await raw.until(b"</presence>", timeout=10)
    assert b"type=\"error\"" in error and b"<resource-constraint" in error, error
    assert node.store.roster_item(ALICE, "dave@localhost") is None
    assert len(node.store.roster(ALICE)["items"]) == 2


async def test_approving_a_request_past_roster_size_is_refused(make_node):
    node = await _quota_node(make_node, limits={"roster_size": 1}, users=("alice", "bob", "carol"))
    await node.store.roster_set(ALICE, "bob@localhost", None, [])  # the roster is full
    carol = await _interested(await authenticated(c2s_port(node), "carol"))
    await carol.send(b"<presence to='alice@localhost' type='subscribe'/>")
    await carol.until(b"ask=\"subscribe\"", timeout=10)
    alice = await authenticated(c2s_port(node))
    await alice.send(b"<presence/>")
    await alice.until(b"type=\"subscribe\"", timeout=10)  # the request waits for her
    await alice.send(b"<presence to='carol@localhost' type='subscribed' id='ok1'/>")
    error = await alice.until(b"</presence>", timeout=10)
    while b"id=\"ok1\"" not in error:
        error = await alice.until(b"</presence>", timeout=10)
    assert b"<resource-constraint" in error, error
    assert node.store.roster_item(ALICE, "carol@localhost") is None


async def test_waiting_subscription_requests_are_capped(make_node):
    users = ("alice",) + tuple(f"fan{i}" for i in range(3))
    node = await _quota_node(make_node, limits={"pending_subscriptions": 2}, users=users)
    for i in range(3):
        fan = await _interested(await authenticated(c2s_port(node), f"fan{i}"))
        await fan.send(f"<presence to='{ALICE}' type='subscribe' id='s{i}'/>".encode())
        answer = await fan.until(b"ask=\"subscribe\"", timeout=10)
        if i == 2:
            answer += await fan.until(b"</presence>", timeout=10)
            assert b"<resource-constraint" in answer, answer
    assert sorted(node.store.roster(ALICE)["pending_in"]) == ["fan0@localhost", "fan1@localhost"]


async def test_a_vcard_over_vcard_size_is_not_acceptable(make_node):
    node = await _quota_node(make_node, limits={"vcard_size": 2048})
    raw = await authenticated(c2s_port(node))
    small = await _iq(raw, "v1", "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")
    assert b"type=\"result\"" in small, small
    photo = "A" * 3000
    big = await _iq(raw, "v2", f"<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{photo}</BINVAL>"
                               "</PHOTO></vCard>")
    assert b"<not-acceptable" in big, big
    assert "Alice" in node.store.vcard(ALICE)
