"""The replicated state machine's apply, without Raft: every command, retries, snapshots."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest

from raftxmpp import credentials
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.state import ClusterState

_ids = itertools.count()
CREDS = credentials.derive("secret-pw", 4096)


def cmd(op: str, **args) -> dict:
    return {"v": sm.VERSION, "id": f"test:{next(_ids)}", "ts": 1700000000.0, "op": op, **args}


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for jid in ("alice@example.com", "bob@example.com"):
        assert s.apply(cmd("register", jid=jid, credentials=CREDS))[0] == "ok"
    return s


def ok(result):
    assert result[0] == "ok", result
    return result[1]


def err(result) -> str:
    assert result[0] == "error", result
    return result[1]


def test_register_creates_account_holding_scram_keys_only(state):
    account = state.accounts["alice@example.com"]
    assert set(account["credentials"]) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    assert b"secret-pw" not in pickle.dumps(state.snapshot())


def test_register_of_existing_account_is_conflict(state):
    assert err(state.apply(cmd("register", jid="alice@example.com", credentials=CREDS))) == "conflict"


def test_register_rejects_credentials_that_are_not_scram_keys(state):
    before = state.digest()
    assert err(state.apply(cmd("register", jid="carol@example.com", credentials={"pw": "x"}))) == "bad-request"
    assert state.digest() == before


def test_set_credentials_replaces_keys(state):
    new = credentials.derive("other", 4096)
    ok(state.apply(cmd("set_credentials", jid="alice@example.com", credentials=new)))
    assert credentials.verify_password(state.accounts["alice@example.com"]["credentials"], "other")
    assert err(state.apply(cmd("set_credentials", jid="nobody@example.com", credentials=new))) == "item-not-found"


def test_unregister_removes_every_trace_of_the_account(state):
    jid = "alice@example.com"
    ok(state.apply(cmd("roster_set", jid=jid, contact="bob@example.com", name="Bob", groups=[])))
    ok(state.apply(cmd("offline_store", jid=jid, message_id="m1", stanza=b"<message/>")))
    ok(state.apply(cmd("vcard_set", jid=jid, vcard="<vCard xmlns='vcard-temp'/>")))
    ok(state.apply(cmd("private_set", jid=jid, key="{x}y", xml="<y xmlns='x'/>")))
    ok(state.apply(cmd("block", jid=jid, items=["eve@example.com"])))
    ok(state.apply(cmd("unregister", jid=jid)))
    for table in (state.accounts, state.rosters, state.offline, state.vcards, state.private,
                  state.blocklists):
        assert jid not in table


def test_a_retried_command_applies_once_and_returns_the_same_result(state):
    command = cmd("offline_store", jid="alice@example.com", message_id="m1", stanza=b"<m/>")
    first = state.apply(command)
    again = state.apply(copy.deepcopy(command))
    assert first == again == ("ok", 1)
    assert len(state.offline["alice@example.com"]) == 1


def test_retry_of_a_conflicting_register_returns_the_first_outcome(state):
    command = cmd("register", jid="carol@example.com", credentials=CREDS)
    assert state.apply(command) == ("ok", True)
    assert state.apply(command) == ("ok", True)  # not "conflict": it is the same command


def test_dedup_table_is_bounded_while_no_clock_runs(monkeypatch, state):
    monkeypatch.setattr(sm, "DEDUP_CAPACITY", 10)
    for _ in range(50):
        state.apply(cmd("barrier"))
    assert len(state.dedup) == 10


def _at(command: dict, ts: float) -> dict:
    return {**command, "ts": ts}


T0 = 1700000000.0


def test_a_command_older_than_the_expiry_window_never_applies(state):
    """Issue 12, problem 1: a write reported as failed must not apply later. Its time
    is behind the replicated clock by more than the window: rejected, on every node."""
    late = cmd("vcard_set", jid="alice@example.com", vcard="<vCard>failed</vCard>")
    ok(state.apply(_at(cmd("tick"), T0 + sm.EXPIRY_SECONDS + 1)))
    result = state.apply(_at(late, T0))
    assert err(result) == "remote-server-timeout" and result[2].startswith(sm.EXPIRED)
    assert "alice@example.com" not in state.vcards
    assert late["id"] not in state.dedup  # rejected copies are not remembered


def test_a_command_within_the_window_applies_and_a_duplicate_does_not(state):
    ok(state.apply(_at(cmd("tick"), T0 + 5)))
    command = _at(cmd("offline_store", jid="alice@example.com", message_id="m",
                      stanza=b"<m/>"), T0)
    assert ok(state.apply(command)) == 1
    ok(state.apply(_at(cmd("tick"), T0 + sm.EXPIRY_SECONDS - 1)))
    assert ok(state.apply(command)) == 1  # the first result, nothing stored twice
    assert len(state.offline["alice@example.com"]) == 1


def test_dedup_forgets_by_the_clock_only_after_the_expiry_window(state):
    command = _at(cmd("barrier"), T0)
    ok(state.apply(_at(cmd("tick"), T0)))
    ok(state.apply(command))
    ok(state.apply(_at(cmd("tick"), T0 + sm.EXPIRY_SECONDS + 1)))
    assert command["id"] in state.dedup  # a duplicate now is rejected or recognised
    ok(state.apply(_at(cmd("tick"), T0 + sm.DEDUP_SECONDS + 1)))
    assert command["id"] not in state.dedup
    assert len(state.dedup) <= 2


def test_a_command_far_ahead_of_the_clock_is_rejected_until_the_clock_catches_up(state):
    ok(state.apply(_at(cmd("tick"), T0)))
    command = _at(cmd("vcard_set", jid="alice@example.com", vcard="<vCard/>"),
                  T0 + sm.EXPIRY_SECONDS + 5)
    assert err(state.apply(command)) == "remote-server-timeout"
    ok(state.apply(_at(cmd("tick"), T0 + sm.EXPIRY_SECONDS)))
    assert ok(state.apply(command)) is True


def test_the_clock_never_goes_back(state):
    ok(state.apply(_at(cmd("tick"), T0 + 10)))
    ok(state.apply(_at(cmd("tick"), T0)))
    assert state.clock == T0 + 10


def test_a_snapshot_from_before_the_clock_restores_with_its_dedup_entries():
    old = ClusterState()
    data = old.snapshot()
    del data["clock"]
    data["dedup"] = {"x:1": ("ok", True)}
    restored = ClusterState()
    restored.restore(data)
    assert restored.clock == 0.0
    assert restored.apply({"v": sm.VERSION, "id": "x:1", "ts": T0, "op": "barrier"}) == ("ok", True)


@pytest.mark.parametrize("command", [
    {"op": "barrier"},  # no id
    {"v": sm.VERSION, "id": "", "op": "barrier"},
    {"v": 99, "id": "x:1", "op": "barrier"},
    {"v": sm.VERSION, "id": "x:2", "op": "no-such-op"},
    {"v": sm.VERSION, "id": "x:3", "op": "register", "jid": "a@b"},  # no credentials
    {"v": sm.VERSION, "id": "x:4", "op": "roster_set", "jid": 7, "contact": "b@c"},
    {"v": sm.VERSION, "id": "x:5", "op": "offline_store", "jid": "alice@example.com",
     "message_id": "m", "stanza": "not bytes"},
    {"v": sm.VERSION, "id": "x:6", "op": "block", "jid": "alice@example.com", "items": "eve"},
    "not even a dict",
])
def test_bad_commands_are_rejected_and_leave_state_unchanged(state, command):
    before = state.digest()
    assert err(state.apply(command)) == "bad-request"
    assert state.digest() == before


def test_snapshot_then_restore_gives_an_equal_state(state):
    ok(state.apply(cmd("roster_set", jid="alice@example.com", contact="bob@example.com",
                       name="Bob", groups=["Friends"])))
    ok(state.apply(cmd("block", jid="bob@example.com", items=["eve@example.com"])))
    ok(state.apply(cmd("component_add", domain="muc.example.com", secret_hash=b"h" * 32)))
    ok(state.apply(cmd("host_add", host="example.com")))
    restored = ClusterState()
    restored.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert restored.digest() == state.digest()
    assert restored.applied == state.applied
    assert restored.dedup == state.dedup


def test_restore_refuses_a_snapshot_of_another_version():
    with pytest.raises(ValueError):
        ClusterState().restore({"version": 999})


def test_digest_is_the_same_for_the_same_commands_in_the_same_order():
    commands = [cmd("host_add", host="a"), cmd("register", jid="x@a", credentials=CREDS)]
    one, two = ClusterState(), ClusterState()
    for c in commands:
        one.apply(c)
        two.apply(copy.deepcopy(c))
    assert one.digest() == two.digest()


# -- roster ---------------------------------------------------------------------------------------


def test_roster_set_adds_item_and_bumps_version(state):
    result = ok(state.apply(cmd("roster_set", jid="alice@example.com", contact="bob@example.com",
                                name="Bob", groups=["b", "a", "a"])))
    assert result["ver"] == 1
    assert result["item"] == {"name": "Bob", "groups": ["a", "b"], "subscription": "none",
                              "ask": False, "approved": False}


def test_roster_set_keeps_subscription_state(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("roster_subscription", jid=alice, contact="bob@example.com",
                       event="out-subscribe")))
    item = ok(state.apply(cmd("roster_set", jid=alice, contact="bob@example.com", name="B",
                              groups=[])))["item"]
    assert item["ask"] is True


def test_roster_size_limit_is_enforced(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("roster_set", jid=alice, contact="a@x", groups=[], limit=1)))
    assert err(state.apply(cmd("roster_set", jid=alice, contact="b@x", groups=[], limit=1))) == \
        "resource-constraint"


def test_roster_remove_returns_the_removed_item(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("roster_set", jid=alice, contact="bob@example.com", groups=[])))
    removed = ok(state.apply(cmd("roster_remove", jid=alice, contact="bob@example.com")))
    assert removed["subscription"] == "none"
    assert ok(state.apply(cmd("roster_remove", jid=alice, contact="bob@example.com"))) is None


def subscribe_step(state, jid, contact, event):
    return ok(state.apply(cmd("roster_subscription", jid=jid, contact=contact, event=event)))


def test_full_subscription_handshake_gives_both(state):
    """RFC 6121 §3.1: alice subscribes to bob, bob approves and subscribes back."""
    a, b = "alice@example.com", "bob@example.com"
    assert subscribe_step(state, a, b, "out-subscribe")["item"]["ask"] is True
    assert subscribe_step(state, b, a, "in-subscribe")["action"] == "deliver"
    assert a in state.rosters[b]["pending_in"]
    assert subscribe_step(state, b, a, "out-subscribed")["item"]["subscription"] == "from"
    assert subscribe_step(state, a, b, "in-subscribed")["item"] == {
        "name": None, "groups": [], "subscription": "to", "ask": False, "approved": False}
    subscribe_step(state, b, a, "out-subscribe")
    subscribe_step(state, a, b, "in-subscribe")
    assert subscribe_step(state, a, b, "out-subscribed")["item"]["subscription"] == "both"
    assert subscribe_step(state, b, a, "in-subscribed")["item"]["subscription"] == "both"


def test_subscribed_without_pending_request_is_a_pre_approval(state):
    """RFC 6121 §3.4: the next subscribe from that contact is approved automatically."""
    a, b = "alice@example.com", "bob@example.com"
    step = subscribe_step(state, b, a, "out-subscribed")
    assert step["action"] == "drop" and step["item"]["approved"] is True
    auto = subscribe_step(state, b, a, "in-subscribe")
    assert auto["action"] == "auto-subscribed"
    assert auto["item"]["subscription"] == "from" and auto["item"]["approved"] is False


def test_unsolicited_subscribed_is_dropped(state):
    step = subscribe_step(state, "alice@example.com", "bob@example.com", "in-subscribed")
    assert step["action"] == "drop" and step["changed"] is False


def test_unsubscribe_and_unsubscribed_take_both_down_to_none(state):
    a, b = "alice@example.com", "bob@example.com"
    for jid, contact in ((a, b), (b, a)):
        subscribe_step(state, jid, contact, "out-subscribe")
        subscribe_step(state, contact, jid, "in-subscribe")
        subscribe_step(state, contact, jid, "out-subscribed")
        subscribe_step(state, jid, contact, "in-subscribed")
    assert subscribe_step(state, a, b, "out-unsubscribe")["item"]["subscription"] == "from"
    assert subscribe_step(state, b, a, "in-unsubscribe")["item"]["subscription"] == "to"
    assert subscribe_step(state, a, b, "out-unsubscribed")["item"]["subscription"] == "none"
    assert subscribe_step(state, b, a, "in-unsubscribed")["item"]["subscription"] == "none"


def test_inbound_subscription_for_a_missing_account_is_dropped(state):
    step = subscribe_step(state, "ghost@example.com", "bob@example.com", "in-subscribe")
    assert step["action"] == "drop"
    assert "ghost@example.com" not in state.rosters


# -- offline, vCard, private, blocking, components ----------------------------------------------------


def test_offline_queue_respects_its_cap(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("offline_store", jid=alice, message_id="1", stanza=b"<a/>", limit=1)))
    assert err(state.apply(cmd("offline_store", jid=alice, message_id="2", stanza=b"<b/>",
                               limit=1))) == "resource-constraint"


def test_offline_take_hands_the_queue_over_once(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("offline_store", jid=alice, message_id="1", stanza=b"<a/>")))
    ok(state.apply(cmd("offline_store", jid=alice, message_id="2", stanza=b"<b/>")))
    taken = ok(state.apply(cmd("offline_take", jid=alice)))
    assert [m["stanza"] for m in taken] == [b"<a/>", b"<b/>"]
    assert ok(state.apply(cmd("offline_take", jid=alice))) == []


def _store_offline(state, *ids, ts=1700000000.0):
    for message_id in ids:
        command = cmd("offline_store", jid="alice@example.com", message_id=message_id,
                      stanza=f"<m>{message_id}</m>".encode())
        ok(state.apply({**command, "ts": ts}))


def _claim(state, session, ts=1700000000.0):
    return ok(state.apply({**cmd("offline_claim", jid="alice@example.com", session=session),
                           "ts": ts}))


def test_an_offline_claim_reads_without_removing_and_a_second_claimer_gets_nothing(state):
    _store_offline(state, "1", "2")
    assert _claim(state, "s1") == {"ids": ["1", "2"], "redelivered": 0}
    assert _claim(state, "s2") == {"ids": [], "redelivered": 0}
    assert [m["id"] for m in state.offline["alice@example.com"]] == ["1", "2"]


def test_offline_remove_deletes_only_the_delivered_ids(state):
    """A claim whose outcome the claimer never learnt removes nothing: a message stored
    after it survives, unlike the old destructive take (issue 12, problem 1)."""
    _store_offline(state, "1")
    _claim(state, "s1")
    _store_offline(state, "2")
    assert ok(state.apply(cmd("offline_remove", jid="alice@example.com", ids=["1"]))) == 1
    assert [m["id"] for m in state.offline["alice@example.com"]] == ["2"]
    assert _claim(state, "s2")["ids"] == ["2"]
    assert ok(state.apply(cmd("offline_remove", jid="alice@example.com", ids=["2", "x"]))) == 1
    assert "alice@example.com" not in state.offline


def test_a_lapsed_offline_claim_is_redelivered_and_counted(state):
    _store_offline(state, "1", "2")
    _claim(state, "dead-session")
    later = 1700000000.0 + sm.OFFLINE_CLAIM_SECONDS + 1
    assert _claim(state, "s2", ts=later) == {"ids": ["1", "2"], "redelivered": 2}


def test_offline_store_for_a_missing_account_is_item_not_found(state):
    assert err(state.apply(cmd("offline_store", jid="nobody@example.com", message_id="1",
                               stanza=b"<a/>"))) == "item-not-found"


def test_vcard_and_private_storage_round_trip(state):
    alice = "alice@example.com"
    ok(state.apply(cmd("vcard_set", jid=alice, vcard="<vCard/>")))
    ok(state.apply(cmd("private_set", jid=alice, key="{ns}x", xml="<x xmlns='ns'/>")))
    assert state.vcards[alice] == "<vCard/>"
    assert state.private[alice] == {"{ns}x": "<x xmlns='ns'/>"}


def test_block_and_unblock(state):
    alice = "alice@example.com"
    assert ok(state.apply(cmd("block", jid=alice, items=["b@x", "c@x"]))) == ["b@x", "c@x"]
    assert ok(state.apply(cmd("block", jid=alice, items=["b@x"]))) == []
    assert ok(state.apply(cmd("unblock", jid=alice, items=["b@x"]))) == ["b@x"]
    assert ok(state.apply(cmd("unblock", jid=alice, items=[]))) == ["c@x"]
    assert alice not in state.blocklists


def test_component_registration_and_removal(state):
    ok(state.apply(cmd("component_add", domain="muc.example.com", secret_hash=b"s" * 32,
                       balancing="bare_source", buckets=16)))
    assert state.components["muc.example.com"]["buckets"] == 16
    assert err(state.apply(cmd("component_add", domain="x.example.com", secret_hash=b"s" * 32,
                               balancing="round-robin"))) == "bad-request"
    assert ok(state.apply(cmd("component_remove", domain="muc.example.com"))) is True


def test_a_served_host_cannot_be_a_component(state):
    ok(state.apply(cmd("host_add", host="example.com")))
    assert err(state.apply(cmd("component_add", domain="example.com",
                               secret_hash=b"s" * 32))) == "conflict"


# -- cluster membership ------------------------------------------------------------------------------


def test_member_set_and_remove(state):
    ok(state.apply(cmd("member_set", name="node1", raft="10.0.0.1:7001", link="10.0.0.1:7101")))
    assert err(state.apply(cmd("member_set", name="node2", raft="10.0.0.1:7001",
                               link="x:1"))) == "conflict"
    assert ok(state.apply(cmd("member_remove", raft="10.0.0.1:7001"))) == "node1"
    assert state.members == {}


def test_only_one_membership_change_at_a_time(state):
    first = cmd("membership_lock", owner="node1:a", ttl=30)
    ok(state.apply(first))
    assert err(state.apply(cmd("membership_lock", owner="node2:b", ttl=30))) == "conflict"
    ok(state.apply(cmd("membership_unlock", owner="node1:a")))
    ok(state.apply(cmd("membership_lock", owner="node2:b", ttl=30)))


def test_an_expired_membership_lock_can_be_taken_over(state):
    ok(state.apply({**cmd("membership_lock", owner="node1:a", ttl=10), "ts": 100.0}))
    ok(state.apply({**cmd("membership_lock", owner="node2:b", ttl=10), "ts": 111.0}))
    assert state.membership_lock["owner"] == "node2:b"


# -- any exception is an error result; command versions (rolling upgrades) ----------------


def test_an_op_that_raises_any_exception_gives_an_error_result_not_a_wedged_log(state, monkeypatch):
    """Issue 12, problem 6: only some exception types became error results; any other
    would make pysyncobj retry the entry forever on every node."""
    def broken(state, command):
        raise RuntimeError("a bug in an op")

    monkeypatch.setitem(sm.OPS, "broken", broken)
    result = state.apply(cmd("broken"))
    assert err(result) == "internal-server-error" and "a bug in an op" in result[2]
    assert ok(state.apply(cmd("barrier"))) is not None  # the next entry applies


def test_a_command_of_a_version_this_code_does_not_know_is_rejected_and_older_ones_apply(state):
    newer = {**cmd("barrier"), "v": sm.MAX_VERSION + 1}
    assert err(state.apply(newer)) == "bad-request"
    assert ok(state.apply({**cmd("barrier"), "v": 1})) is not None
    assert ok(state.apply({**cmd("barrier"), "v": sm.MAX_VERSION})) is not None


def test_the_cluster_version_is_the_oldest_any_raft_member_advertised(state):
    members = {"10.0.0.1:7001", "10.0.0.2:7001"}
    assert sm.cluster_version(state, members) == 1
    ok(state.apply(cmd("member_set", name="n1", raft="10.0.0.1:7001", link="l:1", version=2)))
    assert sm.cluster_version(state, members) == 1  # n2 has not advertised (older code)
    ok(state.apply(cmd("member_set", name="n2", raft="10.0.0.2:7001", link="l:2", version=3)))
    assert sm.cluster_version(state, members) == 2
    assert sm.cluster_version(state, members | {"10.0.0.3:7001"}) == 1  # not registered yet


def test_ops_added_after_version_1_are_marked_with_their_version():
    assert sm.OP_VERSIONS["tick"] == 2 and sm.OP_VERSIONS["offline_claim"] == 2
    assert "register" not in sm.OP_VERSIONS
    with pytest.raises(ValueError):
        sm.register_ops({"barrier": lambda s, c: None})  # a name is taken once
