"""The state machine's small ops, pinned exactly: every refusal's condition and what its
text names, every boundary, every return value.

Written against the mutants that survived the first mutation run of raftxmpp.cluster.state
(mutation/RESULTS.md): each assertion here fails for at least one of them. Expected values
are written out, never computed with the code under test.
"""

from __future__ import annotations

import itertools

import pytest

from raftxmpp import credentials
from raftxmpp.cluster import archive_state, muc_state, pubsub_state
from raftxmpp.cluster import state as sm
from raftxmpp.cluster.state import ClusterState

_ids = itertools.count()
CREDS = credentials.derive("secret-pw", 4096)
T0 = 1_700_000_000.0
ALICE = "alice@example.com"


def cmd(op: str, ts: float = T0, **args) -> dict:
    return {"v": sm.VERSION, "id": f"exact:{next(_ids)}", "ts": ts, "op": op, **args}


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    assert s.apply(cmd("register", jid=ALICE, credentials=CREDS))[0] == "ok"
    return s


def ok(result):
    assert result[0] == "ok", result
    return result[1]


def refused(result, condition: str, *words: str) -> None:
    """An error result with this condition whose text names each of `words`."""
    assert result[0] == "error", result
    assert result[1] == condition, result
    for word in words:
        assert word in result[2], result


# -- refusals: condition, and a text that names what was wrong --------------------------

BAD = [
    # apply() refuses a command without a numeric time before any op sees it.
    ("offline_claim", {"jid": ALICE, "session": "s", "ts": "now"}, "bad-request", "time"),
    ("offline_claim", {"jid": ALICE, "session": "x" * 513}, "bad-request", "session", "512"),
    ("offline_remove", {"jid": ALICE, "ids": "1"}, "bad-request", "ids"),
    ("offline_remove", {"jid": ALICE, "ids": [1]}, "bad-request", "ids"),
    ("membership_lock", {"owner": "n1", "ttl": 0}, "bad-request", "ttl", "600"),
    ("membership_lock", {"owner": "n1", "ttl": 601}, "bad-request", "ttl"),
    ("membership_lock", {"owner": "n1", "ttl": 700}, "bad-request", "ttl"),
    ("membership_lock", {"owner": "n1", "ttl": "10"}, "bad-request", "ttl"),
    ("membership_lock", {"owner": "o" * 257, "ttl": 10}, "bad-request", "owner", "256"),
    ("member_set", {"name": "n" * 257, "raft": "r:1", "link": "l:1"}, "bad-request", "name"),
    ("member_set", {"name": "n1", "raft": "r" * 301, "link": "l:1"}, "bad-request", "raft"),
    ("member_set", {"name": "n1", "raft": "r:1", "link": "l" * 301}, "bad-request", "link"),
    ("member_remove", {"raft": "r" * 301}, "bad-request", "raft"),
    ("motd_set", {"text": "hi", "edit": "yes"}, "bad-request", "edit"),
    ("component_remove", {"domain": "d" * 1024}, "bad-request", "domain", "1023"),
    ("host_add", {"host": "h" * 1024}, "bad-request", "host"),
    ("host_remove", {"host": "h" * 1024}, "bad-request", "host"),
]


@pytest.mark.parametrize(("op", "args", "condition", "words"),
                         [(op, args, c, w) for op, args, c, *w in BAD],
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_command_is_refused_with_its_condition_and_changes_nothing(
        state, op, args, condition, words):
    before = state.digest()
    refused(state.apply(cmd(op, **args)), condition, *words)
    assert state.digest() == before


def test_the_longest_accepted_values_are_accepted(state):
    assert ok(state.apply(cmd("membership_lock", owner="o" * 256, ttl=600))) is True
    assert ok(state.apply(cmd("membership_unlock", owner="o" * 256))) is True
    assert ok(state.apply(cmd("membership_lock", owner="n1", ttl=0.5))) is True  # any ttl > 0
    assert ok(state.apply(cmd("member_set", name="n" * 256, raft="r" * 300,
                              link="l" * 300))) is True
    assert ok(state.apply(cmd("offline_claim", jid=ALICE, session="s" * 512))) == \
        {"ids": [], "redelivered": 0}


# -- offline claims ------------------------------------------------------------------------


def store(state, *ids: str) -> None:
    for message_id in ids:
        ok(state.apply(cmd("offline_store", jid=ALICE, message_id=message_id, stanza=b"<m/>")))


def claim(state, session: str, ts: float = T0) -> dict:
    return ok(state.apply(cmd("offline_claim", ts=ts, jid=ALICE, session=session)))


def test_a_claim_records_who_and_until_when(state):
    store(state, "1")
    claim(state, "s1")
    assert state.offline[ALICE][0]["claim"] == {"by": "s1", "until": T0 + 120.0}


def test_a_claim_skips_claimed_messages_and_takes_the_ones_after_them(state):
    store(state, "1")
    claim(state, "s1")
    store(state, "2")
    assert claim(state, "s2") == {"ids": ["2"], "redelivered": 0}


def test_a_claim_lapses_exactly_at_its_end(state):
    store(state, "1")
    claim(state, "s1")
    assert claim(state, "s2", ts=T0 + 120.0 - 0.001) == {"ids": [], "redelivered": 0}
    assert claim(state, "s2", ts=T0 + 120.0) == {"ids": ["1"], "redelivered": 1}


def test_claiming_an_account_without_a_queue_claims_nothing(state):
    assert claim(state, "s1") == {"ids": [], "redelivered": 0}
    assert ok(state.apply(cmd("offline_remove", jid=ALICE, ids=["1"]))) == 0


# -- membership lock and members -------------------------------------------------------------


def test_a_lock_can_be_taken_over_exactly_when_it_expires(state):
    ok(state.apply(cmd("membership_lock", ts=100.0, owner="n1", ttl=10)))
    refused(state.apply(cmd("membership_lock", ts=109.999, owner="n2", ttl=10)), "conflict",
            "n1")
    assert ok(state.apply(cmd("membership_lock", ts=110.0, owner="n2", ttl=10))) is True
    assert state.membership_lock == {"owner": "n2", "until": 120.0}


def test_only_the_owner_unlocks_and_unlocking_nothing_is_false(state):
    assert ok(state.apply(cmd("membership_unlock", owner="n1"))) is False
    ok(state.apply(cmd("membership_lock", owner="n1", ttl=10)))
    assert ok(state.apply(cmd("membership_unlock", owner="n2"))) is False
    assert state.membership_lock is not None
    assert ok(state.apply(cmd("membership_unlock", owner="n1"))) is True
    assert state.membership_lock is None


def test_a_member_is_set_again_under_its_name_and_others_keep_their_own_address(state):
    assert ok(state.apply(cmd("member_set", name="n1", raft="r:1", link="l:1"))) is True
    assert ok(state.apply(cmd("member_set", name="n1", raft="r:1", link="l:9"))) is True
    assert ok(state.apply(cmd("member_set", name="n2", raft="r:2", link="l:2"))) is True
    assert state.members == {"n1": {"raft": "r:1", "link": "l:9"},
                             "n2": {"raft": "r:2", "link": "l:2"}}
    refused(state.apply(cmd("member_set", name="n3", raft="r:2", link="l:3")), "conflict",
            "r:2", "n2")
    assert ok(state.apply(cmd("member_remove", raft="r:9"))) is None


# -- message of the day, hosts, components, roster removal ---------------------------------------


def test_the_first_message_of_the_day_is_version_1_even_as_an_edit(state):
    assert ok(state.apply(cmd("motd_set", text="hello", edit=True))) == 1
    assert ok(state.apply(cmd("motd_set", text="hello!", edit=True))) == 1
    assert ok(state.apply(cmd("motd_set", text="news"))) == 2
    assert state.motd == {"text": "news", "version": 2}


def test_hosts_are_added_and_removed_once(state):
    assert ok(state.apply(cmd("host_add", host="extra.example"))) is True
    assert ok(state.apply(cmd("host_add", host="extra.example"))) is False
    assert "extra.example" in state.hosts
    assert ok(state.apply(cmd("host_remove", host="extra.example"))) is True
    assert ok(state.apply(cmd("host_remove", host="extra.example"))) is False
    assert "extra.example" not in state.hosts


def test_removing_a_component_says_whether_there_was_one(state):
    ok(state.apply(cmd("component_add", domain="c.example", secret_hash=b"h" * 32)))
    assert ok(state.apply(cmd("component_remove", domain="c.example"))) is True
    assert ok(state.apply(cmd("component_remove", domain="c.example"))) is False


def test_removing_a_roster_item_bumps_the_version_by_one_and_drops_its_request(state):
    bob = "bob@example.com"
    ok(state.apply(cmd("roster_set", jid=ALICE, contact=bob, name="Bob", groups=[])))
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=bob, event="in-subscribe",
                       request="<presence/>")))
    ver = state.rosters[ALICE]["ver"]
    assert ok(state.apply(cmd("roster_remove", jid=ALICE, contact=bob)))["name"] == "Bob"
    assert state.rosters[ALICE]["ver"] == ver + 1
    assert bob not in state.rosters[ALICE]["pending_in"]
    assert ok(state.apply(cmd("roster_remove", jid=ALICE, contact=bob))) is None
    assert state.rosters[ALICE]["ver"] == ver + 1


def test_a_member_that_advertised_no_version_counts_as_version_1(state):
    """What a submitter may send: the oldest version of the Raft members, 1 for one that
    advertised none (code from before gating) or is not in the table yet; 1 with none."""
    assert sm.cluster_version(state, set()) == 1
    ok(state.apply(cmd("member_set", name="n1", raft="r:1", link="l:1", version=2)))
    assert sm.cluster_version(state, {"r:1"}) == 2
    assert sm.cluster_version(state, {"r:1", "r:9"}) == 1  # r:9 is not in the table yet
    ok(state.apply(cmd("member_set", name="n2", raft="r:2", link="l:2")))
    assert sm.cluster_version(state, {"r:1", "r:2"}) == 1


def test_unblocking_everything_with_no_block_list_unblocks_nothing(state):
    assert ok(state.apply(cmd("unblock", jid=ALICE, items=[]))) == []
    assert ok(state.apply(cmd("unblock", jid=ALICE, items=["b@x"]))) == []
    assert state.blocklists == {}


# -- how ops are registered (run at import, so called again here) --------------------------


@pytest.fixture
def op_tables(monkeypatch):
    """Fresh copies of the op tables, so registering in a test changes nothing after it."""
    monkeypatch.setattr(sm, "OPS", dict(sm.OPS))
    monkeypatch.setattr(sm, "OP_VERSIONS", dict(sm.OP_VERSIONS))


def _op_a(state, command):
    return "a"


def _op_b(state, command):
    return "b"


def test_register_ops_records_the_version_that_introduced_an_op(op_tables):
    sm.register_ops({"test_old": _op_a})
    sm.register_ops({"test_new": _op_b}, since=2)
    assert sm.OPS["test_old"] is _op_a and sm.OPS["test_new"] is _op_b
    assert "test_old" not in sm.OP_VERSIONS
    assert sm.OP_VERSIONS["test_new"] == 2
    sm.register_ops({"test_old": _op_a})  # the same function again is no change


@pytest.mark.parametrize("since", [0, 3])
def test_register_ops_refuses_a_version_this_code_does_not_have(op_tables, since):
    with pytest.raises(ValueError, match="since must be from 1 to 2"):
        sm.register_ops({"test_x": _op_a}, since=since)
    assert "test_x" not in sm.OPS


def test_register_ops_refuses_a_second_op_under_a_taken_name(op_tables):
    sm.register_ops({"test_x": _op_a})
    with pytest.raises(ValueError, match="op test_x is registered twice"):
        sm.register_ops({"test_x": _op_b})
    assert sm.OPS["test_x"] is _op_a


def test_the_versions_of_the_registered_ops():
    """Version 2 brought the clock, offline claims and MUC; pubsub and the archive are 1."""
    assert sm.OP_VERSIONS["tick"] == 2
    assert sm.OP_VERSIONS["offline_claim"] == 2 and sm.OP_VERSIONS["offline_remove"] == 2
    assert sm.OP_VERSIONS["muc_create"] == 2
    assert "pubsub_publish" not in sm.OP_VERSIONS and "archive_append" not in sm.OP_VERSIONS


@pytest.mark.parametrize(("wrap", "refused_by", "text"), [
    (sm._pubsub_op, lambda: pubsub_state.Refused("conflict", "item-forbidden", "why"),
     "[item-forbidden] why"),
    (sm._muc_op, lambda: muc_state.Refused("conflict", "why"), "why"),
    (sm._archive_op, lambda: archive_state.Refused("conflict", "why"), "why"),
])
def test_a_feature_modules_refusal_becomes_a_rejection(wrap, refused_by, text):
    def refusing(state, command):
        raise refused_by()

    op = wrap(refusing)
    with pytest.raises(sm.Rejected) as info:
        op(None, {})
    assert (info.value.condition, info.value.text) == ("conflict", text)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert wrap(lambda state, command: (state, command))("the state", {"op": "x"}) == \
        ("the state", {"op": "x"})


# -- components: what is stored, every refusal word for word -----------------------------

SECRET = b"h" * 32
BALANCING_LIST = "random, source, destination, bare_source, bare_destination"


def test_a_component_is_stored_with_random_balancing_and_no_buckets_by_default(state):
    assert ok(state.apply(cmd("component_add", domain="c.example", secret_hash=SECRET))) is True
    assert state.components == {"c.example": {"secret_hash": SECRET, "balancing": "random",
                                              "buckets": 0}}
    assert ok(state.apply(cmd("component_add", domain="c.example", secret_hash=SECRET,
                              balancing="source", buckets=64))) is False  # an update
    assert state.components == {"c.example": {"secret_hash": SECRET, "balancing": "source",
                                              "buckets": 64}}


def test_the_extremes_a_component_may_have(state):
    assert ok(state.apply(cmd("component_add", domain="d" * 1023, secret_hash=b"s" * 16,
                              buckets=65536))) is True
    assert state.components["d" * 1023] == {"secret_hash": b"s" * 16, "balancing": "random",
                                            "buckets": 65536}


COMPONENT_REFUSALS = [
    ({"domain": "d" * 1024}, "domain must be a non-empty string of at most 1023 chars"),
    ({"secret_hash": b"s" * 15}, "secret_hash must be bytes"),
    ({"secret_hash": "s" * 32}, "secret_hash must be bytes"),
    ({"balancing": "round-robin"}, f"balancing must be one of {BALANCING_LIST}"),
    ({"buckets": 65537}, "buckets must be an integer from 0 to 65536"),
    ({"buckets": -1}, "buckets must be an integer from 0 to 65536"),
    ({"buckets": "8"}, "buckets must be an integer from 0 to 65536"),
]


@pytest.mark.parametrize(("args", "text"), COMPONENT_REFUSALS)
def test_a_bad_component_is_refused_word_for_word(state, args, text):
    command = cmd("component_add", **{"domain": "c.example", "secret_hash": SECRET, **args})
    assert state.apply(command) == ("error", "bad-request", text)
    assert state.components == {}


def test_a_served_host_is_refused_as_a_component_word_for_word(state):
    ok(state.apply(cmd("host_add", host="example.net")))
    assert state.apply(cmd("component_add", domain="example.net", secret_hash=SECRET)) == \
        ("error", "conflict", "example.net is a served host")


# -- last activity ----------------------------------------------------------------------------


def test_a_logout_without_a_status_records_an_empty_one(state):
    assert ok(state.apply(cmd("last_logout", jid=ALICE))) is True
    assert state.accounts[ALICE]["last_status"] == ""


def test_a_logout_status_may_be_1024_characters_and_no_more(state):
    assert ok(state.apply(cmd("last_logout", jid=ALICE, status="s" * 1024))) is True
    assert state.apply(cmd("last_logout", jid=ALICE, status="s" * 1025)) == \
        ("error", "bad-request", "status must be a string of at most 1024 chars")
    assert state.accounts[ALICE]["last_status"] == "s" * 1024


# -- refusals word for word: condition and the whole text -------------------------------------

WORD_FOR_WORD = [
    ("block", {"jid": ALICE, "items": []}, "bad-request", "block needs at least one item"),
    ("block", {"jid": ALICE, "items": "b@x"}, "bad-request", "items must be a list of JIDs"),
    ("block", {"jid": ALICE, "items": ["b@x", ""]}, "bad-request", "items must be a list of JIDs"),
    ("set_credentials", {"jid": ALICE, "credentials": {"SCRAM-SHA-1": 1}}, "bad-request",
     "credentials are not SCRAM keys"),
    ("vcard_set", {"jid": ALICE, "vcard": 7}, "bad-request", "vcard must be a string"),
    ("motd_seen", {"jid": ALICE, "version": -1}, "bad-request",
     "version must be a non-negative integer"),
    ("motd_set", {"text": "hi", "edit": "yes"}, "bad-request", "edit must be true or false"),
    ("motd_set", {"text": "t" * 4097}, "bad-request",
     "text must be a non-empty string of at most 4096 chars"),
    ("roster_set", {"jid": ALICE, "contact": "b@x", "name": "n" * 1024}, "bad-request",
     "name must be a string"),
    ("roster_set", {"jid": ALICE, "contact": "b@x", "name": 7}, "bad-request",
     "name must be a string"),
    ("member_set", {"name": "n1", "raft": "r:1", "link": "l:1", "version": 0}, "bad-request",
     "version must be a positive integer"),
    ("member_set", {"name": "n1", "raft": "r:1", "link": "l:1", "version": 1_000_001},
     "bad-request", "version must be a positive integer"),
    ("member_set", {"name": "n1", "raft": "r:1", "link": "l:1", "version": True},
     "bad-request", "version must be a positive integer"),
    ("member_set", {"name": "n1", "raft": "r:1", "link": "l:1", "version": "2"},
     "bad-request", "version must be a positive integer"),
    ("offline_remove", {"jid": ALICE, "ids": "1"}, "bad-request",
     "ids must be a list of message ids"),
    ("membership_unlock", {"owner": "o" * 257}, "bad-request",
     "owner must be a non-empty string of at most 256 chars"),
]


@pytest.mark.parametrize(("op", "args", "condition", "text"), WORD_FOR_WORD,
                         ids=[f"{w[0]}-{i}" for i, w in enumerate(WORD_FOR_WORD)])
def test_a_bad_command_is_refused_word_for_word(state, op, args, condition, text):
    before = state.digest()
    assert state.apply(cmd(op, **args)) == ("error", condition, text)
    assert state.digest() == before


def test_the_extreme_accepted_values_of_the_small_ops(state):
    ok(state.apply(cmd("member_set", name="n1", raft="r:1", link="l:1", version=1)))
    ok(state.apply(cmd("member_set", name="n2", raft="r:2", link="l:2", version=1_000_000)))
    assert state.members["n1"]["version"] == 1 and state.members["n2"]["version"] == 1_000_000
    assert ok(state.apply(cmd("motd_seen", jid=ALICE, version=0))) is True
    assert state.accounts[ALICE]["motd_seen"] == 0
    ok(state.apply(cmd("roster_set", jid=ALICE, contact="b@x", name="n" * 1023)))
    assert state.rosters[ALICE]["items"]["b@x"]["name"] == "n" * 1023
    assert ok(state.apply(cmd("motd_set", text="t" * 4096))) == 1


def test_a_roster_item_without_groups_or_limit_has_no_groups_and_no_bound(state):
    for contact in ("b@x", "c@x", "d@x"):
        ok(state.apply(cmd("roster_set", jid=ALICE, contact=contact, name=None)))
    assert sorted(state.rosters[ALICE]["items"]) == ["b@x", "c@x", "d@x"]
    assert state.rosters[ALICE]["items"]["b@x"]["groups"] == []


def test_setting_credentials_and_unregistering_say_true(state):
    assert ok(state.apply(cmd("set_credentials", jid=ALICE,
                              credentials=credentials.derive("new-pw", 4096)))) is True
    state.pubsub[ALICE] = {"urn:xmpp:avatar:data": {}}  # the account's PEP service
    assert ok(state.apply(cmd("unregister", jid=ALICE))) is True
    assert ALICE not in state.pubsub and ALICE not in state.accounts


def test_a_logout_at_the_same_time_as_the_recorded_one_replaces_it(state):
    assert ok(state.apply(cmd("last_logout", jid=ALICE, ts=T0, status="first"))) is True
    assert ok(state.apply(cmd("last_logout", jid=ALICE, ts=T0, status="second"))) is True
    assert state.accounts[ALICE]["last_status"] == "second"


def test_the_first_logout_is_recorded_whatever_its_time():
    fresh = ClusterState()
    ok(fresh.apply(cmd("register", ts=0.5, jid=ALICE, credentials=CREDS)))
    assert ok(fresh.apply(cmd("last_logout", ts=0.5, jid=ALICE))) is True
    assert fresh.accounts[ALICE]["last_logout"] == 0.5


MORE_WORD_FOR_WORD = [
    ("offline_store", {"jid": ALICE, "message_id": "m", "stanza": "<m/>"}, "bad-request",
     "stanza must be bytes"),
    ("offline_store", {"jid": ALICE, "message_id": "m" * 257, "stanza": b"<m/>"}, "bad-request",
     "message_id must be a non-empty string of at most 256 chars"),
    ("offline_store", {"jid": "nobody@example.com", "message_id": "m", "stanza": b"<m/>"},
     "item-not-found", "no account nobody@example.com"),
    ("private_set", {"jid": ALICE, "key": "{urn:x}x", "xml": 7}, "bad-request",
     "xml must be a string"),
    ("roster_set", {"jid": ALICE, "contact": "b@x", "groups": "g"}, "bad-request",
     "groups must be non-empty strings"),
    ("roster_set", {"jid": ALICE, "contact": "b@x", "groups": ["g", ""]}, "bad-request",
     "groups must be non-empty strings"),
    ("roster_subscription", {"jid": ALICE, "contact": "b@x", "event": "in-bogus"}, "bad-request",
     "unknown subscription event 'in-bogus'"),
    ("roster_subscription", {"jid": ALICE, "contact": "b@x", "event": "in-subscribe",
                             "request": "r" * 4097}, "bad-request",
     "request must be a string of at most 4096 chars"),
    ("roster_subscription", {"jid": ALICE, "contact": "b@x", "event": "in-subscribe",
                             "limit": -1}, "bad-request", "limit must be a non-negative integer"),
    ("roster_subscription", {"jid": ALICE, "contact": "b@x", "event": "in-subscribe",
                             "limit": "1"}, "bad-request", "limit must be a non-negative integer"),
    ("membership_lock", {"owner": "n1", "ttl": 0}, "bad-request",
     "ttl must be from 0 to 600 seconds"),
]


@pytest.mark.parametrize(("op", "args", "condition", "text"), MORE_WORD_FOR_WORD,
                         ids=[f"{w[0]}-{i}" for i, w in enumerate(MORE_WORD_FOR_WORD)])
def test_more_bad_commands_are_refused_word_for_word(state, op, args, condition, text):
    before = state.digest()
    assert state.apply(cmd(op, **args)) == ("error", condition, text)
    assert state.digest() == before


def test_an_offline_message_keeps_its_id_time_and_bytes_up_to_its_queue_limit(state):
    assert ok(state.apply(cmd("offline_store", ts=T0 + 1, jid=ALICE, message_id="m" * 256,
                              stanza=b"<m/>", limit=2))) == 1
    assert state.offline[ALICE] == [{"id": "m" * 256, "ts": T0 + 1, "stanza": b"<m/>"}]
    assert ok(state.apply(cmd("offline_store", jid=ALICE, message_id="m2", stanza=b"<n/>"))) == 2
    assert ok(state.apply(cmd("offline_store", jid=ALICE, message_id="m3", stanza=b"<o/>"))) == 3
    assert state.apply(cmd("offline_store", jid=ALICE, message_id="m4", stanza=b"<p/>",
                           limit=3)) == ("error", "resource-constraint", "offline queue is full")


def test_a_claim_without_a_time_is_refused_word_for_word(state):
    # apply() refuses such a command before the op; the op keeps its own guard.
    with pytest.raises(sm.Rejected) as info:
        sm.op_offline_claim(state, {"jid": ALICE, "session": "s", "ts": "now"})
    assert (info.value.condition, info.value.text) == ("bad-request", "ts must be a time")


def test_private_xml_is_stored_and_says_true(state):
    assert ok(state.apply(cmd("private_set", jid=ALICE, key="{urn:x}x", xml="<x/>"))) is True
    assert state.private[ALICE] == {"{urn:x}x": "<x/>"}


def test_a_full_roster_is_refused_word_for_word_and_each_change_bumps_the_version_once(state):
    first = ok(state.apply(cmd("roster_set", jid=ALICE, contact="b@x", name=None, limit=1)))
    assert first["ver"] == 1
    assert state.apply(cmd("roster_set", jid=ALICE, contact="c@x", name=None, limit=1)) == \
        ("error", "resource-constraint", "roster is full")
    assert ok(state.apply(cmd("roster_set", jid=ALICE, contact="b@x", name="B", limit=1)))["ver"] == 2


def test_subscription_traffic_for_a_missing_account_is_dropped_exactly(state):
    assert ok(state.apply(cmd("roster_subscription", jid="nobody@example.com", contact="b@x",
                              event="in-subscribe"))) == \
        {"changed": False, "item": None, "ver": 0, "action": "drop"}


def test_a_waiting_request_keeps_its_text_up_to_the_limits(state):
    result = ok(state.apply(cmd("roster_subscription", jid=ALICE, contact="b@x",
                                event="in-subscribe", request="r" * 4096, limit=1)))
    assert result == {"changed": False, "item": None, "ver": 0, "action": "deliver"}
    assert state.rosters[ALICE]["pending_in"] == {"b@x": "r" * 4096}
    assert state.apply(cmd("roster_subscription", jid=ALICE, contact="c@x",
                           event="in-subscribe", limit=1)) == \
        ("error", "resource-constraint", "too many subscription requests are waiting")
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact="d@x", event="in-subscribe")))
    assert state.rosters[ALICE]["pending_in"]["d@x"] == ""  # no request, no status: empty


def test_a_subscription_step_reports_the_roster_version(state):
    result = ok(state.apply(cmd("roster_subscription", jid=ALICE, contact="b@x",
                                event="out-subscribe")))
    assert result["changed"] is True and result["ver"] == 1 and result["action"] == "deliver"
    again = ok(state.apply(cmd("roster_subscription", jid=ALICE, contact="b@x",
                               event="out-subscribe")))
    assert again == {"changed": False, "item": result["item"], "ver": 1, "action": "deliver"}


# -- apply's own refusals, the snapshot format and the digest --------------------------------


def test_apply_refuses_word_for_word(state):
    assert state.apply(cmd("no_such_op")) == ("error", "bad-request", "unknown op 'no_such_op'")
    assert state.apply({**cmd("register", jid=ALICE, credentials=CREDS), "v": 3}) == \
        ("error", "bad-request", "unsupported command version 3")
    assert state.apply(cmd("register", jid="bob@example.com", credentials={})) == \
        ("error", "bad-request", "credentials are not SCRAM keys")
    assert state.apply(cmd("register", jid=ALICE, credentials=CREDS)) == \
        ("error", "conflict", f"{ALICE} already exists")
    assert state.apply(cmd("vcard_set", jid=ALICE)) == \
        ("error", "bad-request", "malformed vcard_set: KeyError('vcard')")


def test_an_op_that_fails_says_which_op_and_how(state, monkeypatch):
    def broken(state, command):
        raise RuntimeError("boom")

    monkeypatch.setitem(sm.OPS, "test_broken", broken)
    assert state.apply(cmd("test_broken")) == \
        ("error", "internal-server-error", "test_broken failed: RuntimeError('boom')")


def test_a_rejection_reads_as_its_text_or_else_its_condition():
    assert str(sm.Rejected("conflict", "taken")) == "taken"
    assert str(sm.Rejected("conflict")) == "conflict" and sm.Rejected("conflict").text == ""
    assert sm.error("conflict") == ("error", "conflict", "")


# The snapshot's table names are a durable format: a node restores snapshots other
# versions wrote (DESIGN.md, rolling upgrades), so they are pinned here.
TABLES = ["version", "hosts", "accounts", "rosters", "offline", "vcards", "private",
          "blocklists", "components", "members", "membership_lock", "pubsub", "pubsub_items",
          "muc_rooms", "motd", "uploads", "upload_usage", "archive_prefs"]


def test_a_snapshot_holds_exactly_these_tables_and_the_bookkeeping(state):
    assert sorted(state.snapshot()) == sorted([*TABLES, "archive", "dedup", "applied", "clock"])
    assert state.snapshot()["version"] == 1


def test_a_snapshot_of_another_version_is_refused_word_for_word(state):
    with pytest.raises(ValueError, match=r"^snapshot version 2 is not 1$"):
        ClusterState().restore({**state.snapshot(), "version": 2})


def test_a_snapshot_from_before_the_clock_keeps_its_results_without_expiry(state):
    old = {k: v for k, v in state.snapshot().items() if k not in ("clock", "pubsub", "muc_rooms")}
    restored = ClusterState()
    restored.restore(old)
    assert restored.clock == 0.0 and restored.pubsub == {} and restored.muc_rooms == {}
    assert {v[0] for v in restored.dedup.values()} == {0.0}


def test_the_digest_sees_every_change_and_not_the_order_things_were_added_in():
    one, two = ClusterState(), ClusterState()
    assert one.digest() == two.digest()
    one.hosts.update({"a.example", "b.example"})
    two.hosts.update({"b.example", "a.example"})
    one.vcards.update({"a@x": "<a/>", "b@x": "<b/>"})
    two.vcards.update({"b@x": "<b/>", "a@x": "<a/>"})
    assert one.digest() == two.digest()
    two.vcards["a@x"] = "<changed/>"
    assert one.digest() != two.digest()
    two.vcards["a@x"] = "<a/>"
    two.components["c.example"] = {"secret_hash": b"\x00" * 16}  # bytes are hashed as hex
    assert one.digest() != two.digest()


def test_an_account_records_its_keys_and_when_it_was_created(state):
    assert state.accounts[ALICE] == {"credentials": CREDS, "created": T0}


def tick(state, ts: float) -> str:
    command = {**cmd("tick", ts=ts), "v": 2}
    ok(state.apply(command))
    return command["id"]


def test_apply_refuses_commands_without_id_or_time_word_for_word(state):
    assert state.apply({"op": "host_add", "ts": T0}) == ("error", "bad-request", "command without id")
    assert state.apply({**cmd("host_add", host="h"), "id": 5}) == \
        ("error", "bad-request", "command without id")
    assert state.apply({**cmd("host_add", host="h"), "ts": None}) == \
        ("error", "bad-request", "command without a time")


def test_a_command_exactly_at_the_edge_of_the_window_applies_and_past_it_says_how_far(state):
    tick(state, T0)
    assert ok(state.apply(cmd("host_add", ts=T0 - 30, host="a.example"))) is True
    assert ok(state.apply(cmd("host_add", ts=T0 + 30, host="b.example"))) is True
    assert state.apply(cmd("host_add", ts=T0 - 30.5, host="c.example")) == \
        ("error", "remote-server-timeout", "command expired: 30.5s behind the cluster clock")
    assert state.apply(cmd("host_add", ts=T0 + 31, host="c.example")) == \
        ("error", "remote-server-timeout", "command expired: 31.0s ahead of the cluster clock")


def test_each_applied_command_counts_once():
    fresh = ClusterState()
    assert fresh.applied == 0
    fresh.apply(cmd("host_add", host="a.example"))
    assert fresh.applied == 1
    fresh.apply(cmd("host_add", host="a.example"))
    assert fresh.applied == 2


def test_a_text_field_is_at_most_3071_characters_by_default(state):
    assert ok(state.apply(cmd("vcard_set", jid=ALICE, vcard="<v/>"))) is True
    assert state.apply(cmd("register", jid="j" * 3072, credentials=CREDS)) == \
        ("error", "bad-request", "jid must be a non-empty string of at most 3071 chars")
    assert ok(state.apply(cmd("register", jid="j" * 3071, credentials=CREDS))) is True


def test_without_a_clock_the_dedup_table_forgets_the_oldest_first(state, monkeypatch):
    monkeypatch.setattr(sm, "DEDUP_CAPACITY", 2)
    ids = []
    for host in ("a.example", "b.example", "c.example"):
        command = cmd("host_add", host=host)
        state.apply(command)
        ids.append(command["id"])
    assert list(state.dedup) == ids[1:]


def test_with_a_clock_the_dedup_table_keeps_an_id_until_the_clock_passes_its_time():
    state = ClusterState()
    first = tick(state, T0)  # remembered until T0 + 90
    a = cmd("host_add", ts=T0, host="a.example")
    b = cmd("host_add", ts=T0 + 1, host="b.example")  # until T0 + 91
    state.apply(a)
    state.apply(b)
    last = tick(state, T0 + 90)  # T0 + 90 is not past T0 + 90: everything stays
    assert list(state.dedup) == [first, a["id"], b["id"], last]
    latest = tick(state, T0 + 90.5)
    assert list(state.dedup) == [b["id"], last, latest]


def test_a_command_whose_version_is_a_boolean_is_refused(state):
    assert state.apply({**cmd("host_add", host="h.example"), "v": True}) == \
        ("error", "bad-request", "unsupported command version True")


def test_a_snapshot_restores_its_pubsub_and_muc_tables(state):
    state.pubsub[ALICE] = {"urn:xmpp:avatar:data": {"config": {}}}
    state.muc_rooms["room@muc.example.com"] = {"config": {}, "affiliations": {}}
    restored = ClusterState()
    restored.restore(state.snapshot())
    assert restored.pubsub == {ALICE: {"urn:xmpp:avatar:data": {"config": {}}}}
    assert restored.muc_rooms == {"room@muc.example.com": {"config": {}, "affiliations": {}}}
