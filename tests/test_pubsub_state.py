"""Publish-subscribe ops of the replicated state machine, without Raft (XEP-0060, XEP-0163).

Each op: its apply, a snapshot/restore round trip, and an idempotent retry (the same
command id applies once and returns the same result).
"""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftxmpp import credentials
from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.pubsub_items import ItemStore, item_size
from raftxmpp.cluster.state import ClusterState

_ids = itertools.count()
CREDS = credentials.derive("pw", 4096)
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
SERVICE = "pubsub.example.com"
LIMITS = {"max_items": 10, "item_bytes": 1000, "node_bytes": 5000, "owner_bytes": 8000,
          "max_nodes": 5}


def config(**changes) -> dict:
    base = {"access_model": "presence", "publish_model": "publishers",
            "send_last_published_item": "on_sub_and_presence", "notification_type": "headline",
            "itemreply": "owner", "persist_items": True, "deliver_payloads": True,
            "deliver_notifications": True, "notify_retract": True, "notify_delete": True,
            "notify_config": False, "title": "",
            "description": "", "type": "", "max_items": 1, "roster_groups_allowed": []}
    return {**base, **changes}


def cmd(op: str, **args) -> dict:
    return {"v": sm.VERSION, "id": f"t:{next(_ids)}", "ts": 1700000000.0, "op": op, **args}


def ok(result):
    assert result[0] == "ok", result
    return result[1]


def refused(result) -> tuple[str, str]:
    """(condition, application condition) of an error result."""
    assert result[0] == "error", result
    return result[1], ps.decode_text(result[2])[0]


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for jid in (ALICE, BOB, CAROL):
        ok(s.apply(cmd("register", jid=jid, credentials=CREDS)))
    return s


def publish(state, owner=ALICE, node="urn:x", item_id="current", payload="<x xmlns='urn:x'/>",
            actor=None, create="default", preconditions=None, limits=LIMITS, **kw):
    if create == "default":
        create = config()
    return state.apply(cmd("pubsub_publish", jid=owner, node=node, actor=owner if actor is None
                           else actor, item_id=item_id, payload=payload, create=create,
                           preconditions=preconditions, limits=limits, **kw))


def create(state, owner=SERVICE, node="news", actor=ALICE, **changes):
    return state.apply(cmd("pubsub_create", jid=owner, node=node, actor=actor,
                           config=config(**{"access_model": "open", **changes}),
                           limits=LIMITS))


def items(state, owner=ALICE, node="urn:x") -> list[str]:
    return [i for i, _ in ItemStore(state.pubsub_items).list(owner, node)]


def befriend(state, owner, contact, groups=()):
    """`contact` receives `owner`'s presence: subscription from in owner's roster."""
    ok(state.apply(cmd("roster_set", jid=owner, contact=contact, groups=list(groups))))
    ok(state.apply(cmd("roster_subscription", jid=owner, contact=contact, event="in-subscribe")))
    ok(state.apply(cmd("roster_subscription", jid=owner, contact=contact,
                       event="out-subscribed")))


# -- create, configure, delete (XEP-0060 §8.1, §8.2, §8.4) -------------------------------------


def test_create_gives_the_creator_the_owner_affiliation(state):
    assert ok(create(state)) is True
    record = state.pubsub[SERVICE]["news"]
    assert record["affiliations"] == {ALICE: "owner"}
    assert record["config"]["access_model"] == "open"


def test_create_of_an_existing_node_is_conflict(state):
    ok(create(state))
    assert refused(create(state, actor=BOB)) == ("conflict", "")


def test_pep_node_of_another_account_cannot_be_created(state):
    assert refused(create(state, owner=ALICE, actor=BOB))[0] == "forbidden"


def test_service_nodes_refuse_roster_based_access_models(state):
    assert refused(create(state, access_model="presence"))[0] == "not-acceptable"


def test_nodes_per_owner_are_limited(state):
    for n in range(LIMITS["max_nodes"]):
        ok(create(state, node=f"n{n}"))
    assert refused(create(state, node="one-more")) == ("not-allowed", "max-nodes-exceeded")


def test_configure_shrinking_max_items_drops_the_oldest_items(state):
    for n in range(3):
        ok(publish(state, item_id=f"i{n}", create=config(max_items=5)))
    dropped = ok(state.apply(cmd("pubsub_configure", jid=ALICE, node="urn:x", actor=ALICE,
                                 config=config(max_items=1), limits=LIMITS)))
    assert dropped == ["i0", "i1"] and items(state) == ["i2"]


def test_configure_by_a_non_owner_is_forbidden(state):
    ok(create(state))
    result = state.apply(cmd("pubsub_configure", jid=SERVICE, node="news", actor=BOB,
                             config=config(access_model="open"), limits=LIMITS))
    assert refused(result)[0] == "forbidden"


def test_configure_with_an_invalid_value_changes_nothing(state):
    ok(create(state))
    before = state.digest()
    result = state.apply(cmd("pubsub_configure", jid=SERVICE, node="news", actor=ALICE,
                             config=config(access_model="sometimes"), limits=LIMITS))
    assert refused(result)[0] == "not-acceptable"
    assert state.digest() == before


def test_delete_removes_node_and_items_and_names_the_subscribers(state):
    ok(create(state))
    ok(state.apply(cmd("pubsub_subscribe", jid=SERVICE, node="news", actor=BOB,
                       subscriber=f"{BOB}/phone", subid="s1")))
    ok(publish(state, owner=SERVICE, node="news", actor=ALICE, create=None))
    assert ok(state.apply(cmd("pubsub_delete", jid=SERVICE, node="news", actor=ALICE))) == \
        [f"{BOB}/phone"]
    assert SERVICE not in state.pubsub and SERVICE not in state.pubsub_items


# -- publish (XEP-0060 §7.1, XEP-0163 §3, XEP-0223) -----------------------------------------------


def test_first_pep_publish_creates_the_node(state):
    assert ok(publish(state)) == {"created": True, "evicted": []}
    assert state.pubsub[ALICE]["urn:x"]["affiliations"] == {ALICE: "owner"}
    assert items(state) == ["current"]


def test_publish_without_node_or_create_is_item_not_found(state):
    assert refused(publish(state, create=None))[0] == "item-not-found"


def test_publish_to_an_account_that_does_not_exist_is_refused(state):
    assert refused(publish(state, owner="ghost@example.com", actor="ghost@example.com"))[0] \
        == "item-not-found"


def test_a_contact_may_not_publish_to_someone_elses_pep_node(state):
    ok(publish(state))
    assert refused(publish(state, actor=BOB, create=None))[0] == "forbidden"


def test_publishing_an_existing_id_replaces_the_item_and_makes_it_newest(state):
    ok(publish(state, item_id="a", create=config(max_items=5)))
    ok(publish(state, item_id="b"))
    ok(publish(state, item_id="a", payload="<x xmlns='urn:x'>2</x>"))
    assert items(state) == ["b", "a"]
    assert ItemStore(state.pubsub_items).get(ALICE, "urn:x", "a")["payload"].endswith(">2</x>")


def test_max_items_evicts_the_oldest(state):
    ok(publish(state, item_id="a", create=config(max_items=2)))
    ok(publish(state, item_id="b"))
    assert ok(publish(state, item_id="c"))["evicted"] == ["a"]
    assert items(state) == ["b", "c"]


def test_max_items_max_means_the_servers_maximum(state):
    for n in range(12):
        ok(publish(state, item_id=f"i{n}", payload="<x xmlns='urn:x'/>",
                   create=config(max_items="max")))
    assert len(items(state)) == LIMITS["max_items"]


def test_an_item_over_the_byte_limit_is_payload_too_big(state):
    result = publish(state, payload="<x xmlns='urn:x'>" + "a" * 1000 + "</x>")
    assert refused(result) == ("not-acceptable", "payload-too-big")
    assert ALICE not in state.pubsub  # the auto-create did not happen either


def test_the_accounts_byte_limit_holds_across_nodes(state):
    big = "<x xmlns='urn:x'>" + "a" * 900 + "</x>"
    limits = {**LIMITS, "max_nodes": 100}
    for n in range(8):
        ok(publish(state, node=f"urn:n{n}", payload=big, limits=limits))
    result = publish(state, node="urn:n8", payload=big, limits=limits)
    assert refused(result)[0] == "not-acceptable"
    assert ItemStore(state.pubsub_items).owner_bytes(ALICE) <= LIMITS["owner_bytes"]


def test_limits_are_clipped_to_the_hard_limits(state):
    huge = {**LIMITS, "item_bytes": 1 << 40}
    result = publish(state, payload="<x>" + "a" * (ps.HARD_LIMITS["item_bytes"] + 1) + "</x>",
                     limits=huge)
    assert refused(result) == ("not-acceptable", "payload-too-big")


def test_a_node_that_does_not_persist_keeps_no_item(state):
    assert ok(publish(state, create=config(persist_items=False)))["created"] is True
    assert items(state) == []


def test_publish_options_that_match_the_node_publish(state):
    """XEP-0060 §7.1.5: preconditions equal to the node's configuration are met."""
    ok(publish(state, create=config(access_model="open")))
    ok(publish(state, item_id="2", preconditions={"access_model": "open"}))


def test_publish_options_that_do_not_match_are_precondition_not_met(state):
    """XEP-0060 §7.1.5, Example 126: <conflict/> + <precondition-not-met/>."""
    ok(publish(state))
    before = state.digest()
    result = publish(state, item_id="2", preconditions={"access_model": "open"})
    assert refused(result) == ("conflict", "precondition-not-met")
    assert state.digest() == before


def test_publish_model_open_lets_anyone_publish(state):
    ok(create(state, publish_model="open"))
    ok(publish(state, owner=SERVICE, node="news", actor=BOB, create=None))
    ok(create(state, node="closed"))
    assert refused(publish(state, owner=SERVICE, node="closed", actor=BOB, create=None))[0] \
        == "forbidden"


def test_publish_model_subscribers(state):
    ok(create(state, publish_model="subscribers"))
    assert refused(publish(state, owner=SERVICE, node="news", actor=BOB, create=None))[0] \
        == "forbidden"
    ok(state.apply(cmd("pubsub_subscribe", jid=SERVICE, node="news", actor=BOB,
                       subscriber=BOB, subid="s")))
    ok(publish(state, owner=SERVICE, node="news", actor=BOB, create=None))


# -- retract, purge (XEP-0060 §7.2, §8.5) ------------------------------------------------------------


def test_retract_removes_the_item(state):
    ok(publish(state))
    assert ok(state.apply(cmd("pubsub_retract", jid=ALICE, node="urn:x", actor=ALICE,
                              item_id="current"))) is True
    assert items(state) == [] and ItemStore(state.pubsub_items).owner_bytes(ALICE) == 0


def test_retract_of_a_missing_item_is_item_not_found(state):
    ok(publish(state))
    result = state.apply(cmd("pubsub_retract", jid=ALICE, node="urn:x", actor=ALICE,
                             item_id="nope"))
    assert refused(result)[0] == "item-not-found"


def test_only_the_publisher_or_an_owner_retracts(state):
    ok(create(state, publish_model="open"))
    ok(publish(state, owner=SERVICE, node="news", actor=BOB, create=None, item_id="b"))
    result = state.apply(cmd("pubsub_retract", jid=SERVICE, node="news", actor=CAROL,
                             item_id="b"))
    assert refused(result)[0] == "forbidden"
    ok(state.apply(cmd("pubsub_retract", jid=SERVICE, node="news", actor=BOB, item_id="b")))


def test_purge_removes_every_item_and_keeps_the_node(state):
    for n in range(3):
        ok(publish(state, item_id=f"i{n}", create=config(max_items=5)))
    assert ok(state.apply(cmd("pubsub_purge", jid=ALICE, node="urn:x", actor=ALICE))) == 3
    assert items(state) == [] and "urn:x" in state.pubsub[ALICE]


def test_purge_by_a_non_owner_is_forbidden(state):
    ok(publish(state))
    assert refused(state.apply(cmd("pubsub_purge", jid=ALICE, node="urn:x", actor=BOB)))[0] \
        == "forbidden"


# -- replace items (XEP-0402 §5.3 bookmark conversion) ---------------------------------------------


def test_replace_items_publishes_changes_and_retracts_what_is_gone(state):
    create_config = config(access_model="whitelist", max_items="max")
    first = ok(state.apply(cmd("pubsub_replace_items", jid=ALICE, node="urn:b", actor=ALICE,
                               items=[["r1", "<c>1</c>"], ["r2", "<c>2</c>"]],
                               create=create_config, limits=LIMITS)))
    assert first == {"published": ["r1", "r2"], "retracted": []}
    second = ok(state.apply(cmd("pubsub_replace_items", jid=ALICE, node="urn:b", actor=ALICE,
                                items=[["r2", "<c>2</c>"], ["r3", "<c>3</c>"]],
                                create=create_config, limits=LIMITS)))
    assert second == {"published": ["r3"], "retracted": ["r1"]}
    assert items(state, node="urn:b") == ["r2", "r3"]


# -- subscriptions and access models (XEP-0060 §6.1, §4.5; XEP-0163 §4.1) ----------------------------


def subscribe(state, owner=ALICE, node="urn:x", subscriber=BOB, actor=None, subid="s1"):
    return state.apply(cmd("pubsub_subscribe", jid=owner, node=node,
                           actor=subscriber.partition("/")[0] if actor is None else actor,
                           subscriber=subscriber, subid=subid))


def test_presence_access_needs_a_presence_subscription(state):
    """XEP-0060 §6.1.3.2: <not-authorized/> + <presence-subscription-required/>."""
    ok(publish(state))
    assert refused(subscribe(state)) == ("not-authorized", "presence-subscription-required")
    befriend(state, ALICE, BOB)
    assert ok(subscribe(state)) == {"subid": "s1", "state": "subscribed", "new": True}


def test_roster_access_needs_an_allowed_group(state):
    """XEP-0060 §6.1.3.3: <not-authorized/> + <not-in-roster-group/>."""
    ok(publish(state, create=config(access_model="roster", roster_groups_allowed=["Family"])))
    befriend(state, ALICE, BOB, groups=["Work"])
    befriend(state, ALICE, CAROL, groups=["Family"])
    assert refused(subscribe(state)) == ("not-authorized", "not-in-roster-group")
    ok(subscribe(state, subscriber=CAROL))


def test_whitelist_access_needs_an_affiliation(state):
    """XEP-0060 §6.1.3.4: <not-allowed/> + <closed-node/>."""
    ok(publish(state, create=config(access_model="whitelist")))
    assert refused(subscribe(state)) == ("not-allowed", "closed-node")
    ok(state.apply(cmd("pubsub_set_affiliations", jid=ALICE, node="urn:x", actor=ALICE,
                       changes={BOB: "member"})))
    ok(subscribe(state))


def test_an_outcast_may_not_subscribe_and_loses_its_subscription(state):
    ok(create(state))
    ok(subscribe(state, owner=SERVICE, node="news"))
    changed = ok(state.apply(cmd("pubsub_set_affiliations", jid=SERVICE, node="news",
                                 actor=ALICE, changes={BOB: "outcast"})))
    assert changed == {BOB: "outcast"} and state.pubsub[SERVICE]["news"]["subscriptions"] == {}
    assert refused(subscribe(state, owner=SERVICE, node="news"))[0] == "forbidden"


def test_subscribing_another_jid_is_invalid_jid(state):
    """XEP-0060 §6.1.3.1: <bad-request/> + <invalid-jid/>."""
    ok(create(state))
    assert refused(subscribe(state, owner=SERVICE, node="news", actor=CAROL)) == \
        ("bad-request", "invalid-jid")


def test_subscribing_twice_returns_the_first_subscription(state):
    ok(create(state))
    ok(subscribe(state, owner=SERVICE, node="news", subid="first"))
    assert ok(subscribe(state, owner=SERVICE, node="news", subid="second")) == \
        {"subid": "first", "state": "subscribed", "new": False}


def test_unsubscribe_without_a_subscription_is_not_subscribed(state):
    """XEP-0060 §6.2.3.2: <unexpected-request/> + <not-subscribed/>."""
    ok(create(state))
    result = state.apply(cmd("pubsub_unsubscribe", jid=SERVICE, node="news", actor=BOB,
                             subscriber=BOB))
    assert refused(result) == ("unexpected-request", "not-subscribed")
    ok(subscribe(state, owner=SERVICE, node="news"))
    ok(state.apply(cmd("pubsub_unsubscribe", jid=SERVICE, node="news", actor=BOB,
                       subscriber=BOB)))


def test_owner_manages_subscriptions(state):
    ok(create(state))
    changed = ok(state.apply(cmd("pubsub_set_subscriptions", jid=SERVICE, node="news",
                                 actor=ALICE, changes={BOB: "subscribed", CAROL: "none"},
                                 subids={BOB: "x"})))
    assert changed == {BOB: "subscribed"}
    result = state.apply(cmd("pubsub_set_subscriptions", jid=SERVICE, node="news", actor=BOB,
                             changes={CAROL: "subscribed"}, subids={CAROL: "y"}))
    assert refused(result)[0] == "forbidden"


def test_a_service_node_keeps_its_last_owner(state):
    ok(create(state))
    result = state.apply(cmd("pubsub_set_affiliations", jid=SERVICE, node="news", actor=ALICE,
                             changes={ALICE: "none"}))
    assert refused(result)[0] == "not-acceptable"


def test_unregister_drops_the_accounts_pep_service(state):
    ok(publish(state))
    ok(state.apply(cmd("unregister", jid=ALICE)))
    assert ALICE not in state.pubsub and ALICE not in state.pubsub_items


# -- snapshot, restore, retries ---------------------------------------------------------------------


def every_op(state) -> list[dict]:
    """One command of each op, in an order in which each succeeds."""
    befriend(state, ALICE, BOB)
    return [
        cmd("pubsub_create", jid=SERVICE, node="news", actor=ALICE,
            config=config(access_model="open", max_items=5), limits=LIMITS),
        cmd("pubsub_publish", jid=ALICE, node="urn:x", actor=ALICE, item_id="i1",
            payload="<x xmlns='urn:x'/>", create=config(), preconditions=None, limits=LIMITS),
        cmd("pubsub_publish", jid=SERVICE, node="news", actor=ALICE, item_id="n1",
            payload="<n/>", create=None, preconditions={"access_model": "open"}, limits=LIMITS),
        cmd("pubsub_replace_items", jid=ALICE, node="urn:b", actor=ALICE,
            items=[["r", "<c/>"]], create=config(max_items="max"), limits=LIMITS),
        cmd("pubsub_configure", jid=SERVICE, node="news", actor=ALICE,
            config=config(access_model="open", max_items=3), limits=LIMITS),
        cmd("pubsub_subscribe", jid=ALICE, node="urn:x", actor=BOB, subscriber=BOB, subid="s"),
        cmd("pubsub_set_subscriptions", jid=SERVICE, node="news", actor=ALICE,
            changes={CAROL: "subscribed"}, subids={CAROL: "c"}),
        cmd("pubsub_set_affiliations", jid=SERVICE, node="news", actor=ALICE,
            changes={BOB: "publisher"}),
        cmd("pubsub_unsubscribe", jid=ALICE, node="urn:x", actor=BOB, subscriber=BOB),
        cmd("pubsub_retract", jid=SERVICE, node="news", actor=ALICE, item_id="n1"),
        cmd("pubsub_purge", jid=ALICE, node="urn:b", actor=ALICE),
        cmd("pubsub_delete", jid=ALICE, node="urn:x", actor=ALICE),
    ]


def test_every_pubsub_op_is_exercised_here(state):
    assert {c["op"] for c in every_op(state)} == \
        {name for name in sm.OPS if name.startswith("pubsub_")}


def test_each_op_retried_with_the_same_id_applies_once(state):
    for command in every_op(state):
        first = state.apply(command)
        assert first[0] == "ok", (command["op"], first)
        digest = state.digest()
        assert state.apply(copy.deepcopy(command)) == first, command["op"]
        assert state.digest() == digest, command["op"]


def test_snapshot_then_restore_keeps_nodes_items_and_counters(state):
    for command in every_op(state)[:8]:
        ok(state.apply(command))
    restored = ClusterState()
    restored.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert restored.digest() == state.digest()
    assert restored.pubsub == state.pubsub
    assert ItemStore(restored.pubsub_items).owner_bytes(ALICE) == \
        ItemStore(state.pubsub_items).owner_bytes(ALICE)


def test_a_snapshot_from_before_pubsub_restores_empty_tables(state):
    ok(publish(state))
    old = {k: v for k, v in state.snapshot().items() if k not in ps.TABLES}
    state.restore(old)
    assert state.pubsub == {} and state.pubsub_items == {}


@pytest.mark.parametrize("command", [
    cmd("pubsub_publish", jid=ALICE, node="urn:x", actor=ALICE, item_id="i", payload=7,
        create=config(), preconditions=None, limits=LIMITS),
    cmd("pubsub_publish", jid=ALICE, node="urn:x", actor=ALICE, item_id="",
        payload="<x/>", create=config(), preconditions=None, limits=LIMITS),
    cmd("pubsub_publish", jid=ALICE, node="urn:x", actor=ALICE, item_id="i",
        payload="<x/>", create=config(), preconditions=None, limits={**LIMITS, "max_items": 0}),
    cmd("pubsub_publish", jid=ALICE, node="urn:x", actor=ALICE, item_id="i",
        payload="<x/>", create={"access_model": "open"}, preconditions=None, limits=LIMITS),
    cmd("pubsub_create", jid=SERVICE, node="n", actor=ALICE, config=config(max_items=0),
        limits=LIMITS),
    cmd("pubsub_subscribe", jid=SERVICE, node="nowhere", actor=BOB, subscriber=BOB, subid="s"),
    cmd("pubsub_set_affiliations", jid=ALICE, node="urn:x", actor=ALICE,
        changes={BOB: "emperor"}),
    cmd("pubsub_replace_items", jid=ALICE, node="urn:b", actor=ALICE, items="not a list",
        create=config(), limits=LIMITS),
])
def test_bad_commands_are_refused_and_change_nothing(state, command):
    before = state.digest()
    assert state.apply(command)[0] == "error"
    assert state.digest() == before


# -- the item store's accounting ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "retract", "purge", "trim"]),
                          st.sampled_from(["n1", "n2"]), st.sampled_from(["a", "b", "c", "d"]),
                          st.integers(0, 40), st.integers(1, 3)), max_size=40))
def test_item_store_byte_counters_always_match_the_items(steps):
    table: dict = {}
    store = ItemStore(table)
    for action, node, item_id, length, max_items in steps:
        if action == "put":
            payload = "x" * length
            store.put("o", node, item_id, {"payload": payload, "publisher": "o", "ts": 0,
                                            "size": item_size(item_id, payload)}, max_items)
            assert store.count("o", node) <= max_items
            assert store.last("o", node)[0] == item_id
        elif action == "retract":
            store.retract("o", node, item_id)
        elif action == "purge":
            store.purge("o", node)
        else:
            store.trim("o", node, max_items)
        total = 0
        for n in ("n1", "n2"):
            node_total = sum(i["size"] for _, i in store.list("o", n))
            assert store.node_bytes("o", n) == node_total
            total += node_total
        assert store.owner_bytes("o") == total
        assert all(table[o]["nodes"] for o in table)  # no empty owner is kept
