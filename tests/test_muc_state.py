"""Multi-user chat ops of the replicated state machine, without Raft (XEP-0045).

Each op: its apply, a snapshot/restore round trip, and an idempotent retry (the same
command id applies once and returns the same result).
"""

from __future__ import annotations

import itertools
import pickle

from raftxmpp.cluster import muc_state
from raftxmpp.cluster.state import ClusterState

_ids = itertools.count()
ROOM = "room@conference.example.com"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def run(state: ClusterState, op: str, command_id: str | None = None, **args):
    command = {"v": 1, "id": command_id or f"t{next(_ids)}", "ts": 1000.0, "op": op, **args}
    return state.apply(command)


def created(locked: bool = False) -> ClusterState:
    state = ClusterState()
    assert run(state, "muc_create", jid=ROOM, actor=ALICE, config=muc_state.default_config(),
               locked=locked) == ("ok", True)
    return state


def test_create_makes_the_creator_owner_and_a_second_create_joins_instead():
    state = created(locked=True)
    record = state.muc_rooms[ROOM]
    assert record["affiliations"] == {ALICE: "owner"} and record["locked"]
    assert run(state, "muc_create", jid=ROOM, actor=BOB, config=muc_state.default_config(),
               locked=True) == ("ok", False)
    assert state.muc_rooms[ROOM]["affiliations"] == {ALICE: "owner"}


def test_create_refuses_a_full_jid_and_a_bad_config():
    state = ClusterState()
    assert run(state, "muc_create", jid=ROOM + "/nick", actor=ALICE,
               config=muc_state.default_config(), locked=False)[1] == "jid-malformed"
    bad = {**muc_state.default_config(), "whois": "everyone"}
    assert run(state, "muc_create", jid=ROOM, actor=ALICE, config=bad,
               locked=False)[1] == "not-acceptable"
    assert state.muc_rooms == {}


def test_rooms_per_owner_are_limited():
    state = ClusterState()
    for i in range(2):
        assert run(state, "muc_create", jid=f"r{i}@conference.example.com", actor=ALICE,
                   config=muc_state.default_config(), locked=False,
                   max_rooms_per_owner=2)[0] == "ok"
    assert run(state, "muc_create", jid="r9@conference.example.com", actor=ALICE,
               config=muc_state.default_config(), locked=False,
               max_rooms_per_owner=2)[1] == "resource-constraint"


def test_configure_is_for_owners_and_unlocks():
    state = created(locked=True)
    config = {**muc_state.default_config(), "persistentroom": True}
    assert run(state, "muc_configure", jid=ROOM, actor=BOB, config=config)[1] == "forbidden"
    assert run(state, "muc_configure", jid=ROOM, actor=ALICE, config=config)[0] == "ok"
    assert not state.muc_rooms[ROOM]["locked"]
    assert state.muc_rooms[ROOM]["config"]["persistentroom"]


def test_a_password_protected_room_needs_a_secret():
    state = created()
    config = {**muc_state.default_config(), "passwordprotectedroom": True}
    assert run(state, "muc_configure", jid=ROOM, actor=ALICE, config=config)[1] == \
        "not-acceptable"


def test_affiliations_owner_changes_any_admin_only_members_and_outcasts():
    state = created()
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=ALICE,
               changes={BOB: "admin"}) == ("ok", {BOB: "admin"})
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=BOB,
               changes={CAROL: "member"})[0] == "ok"
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=BOB,
               changes={CAROL: "admin"})[1] == "not-allowed"
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=BOB,
               changes={ALICE: "outcast"})[1] == "not-allowed"
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=CAROL,
               changes={BOB: "none"})[1] == "forbidden"
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=ALICE,
               changes={CAROL: "none"}) == ("ok", {CAROL: "none"})
    assert CAROL not in state.muc_rooms[ROOM]["affiliations"]


def test_the_last_owner_stays():
    state = created()
    assert run(state, "muc_set_affiliations", jid=ROOM, actor=ALICE,
               changes={ALICE: "member"})[1] == "conflict"


def test_destroy_temporary_only_spares_persistent_rooms():
    state = created()
    config = {**muc_state.default_config(), "persistentroom": True}
    run(state, "muc_configure", jid=ROOM, actor=ALICE, config=config)
    assert run(state, "muc_destroy", jid=ROOM, actor="", temporary_only=True) == ("ok", False)
    assert run(state, "muc_destroy", jid=ROOM, actor=BOB)[1] == "forbidden"
    assert run(state, "muc_destroy", jid=ROOM, actor=ALICE) == ("ok", True)
    assert ROOM not in state.muc_rooms


def test_subject_is_kept():
    state = created()
    assert run(state, "muc_subject", jid=ROOM, text="Raft", nick="Alice") == ("ok", True)
    assert state.muc_rooms[ROOM]["subject"] == {"text": "Raft", "nick": "Alice"}


def test_rooms_survive_snapshot_and_restore_and_a_retry_applies_once():
    state = created()
    first = run(state, "muc_set_affiliations", "retry-1", jid=ROOM, actor=ALICE,
                changes={BOB: "member"})
    run(state, "muc_set_affiliations", jid=ROOM, actor=ALICE, changes={BOB: "none"})
    assert run(state, "muc_set_affiliations", "retry-1", jid=ROOM, actor=ALICE,
               changes={BOB: "member"}) == first
    assert BOB not in state.muc_rooms[ROOM]["affiliations"]
    restored = ClusterState()
    restored.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert restored.muc_rooms == state.muc_rooms and restored.digest() == state.digest()


def test_a_snapshot_from_before_rooms_restores_with_none():
    state = ClusterState()
    data = state.snapshot()
    del data["muc_rooms"]
    restored = ClusterState()
    restored.restore(data)
    assert restored.muc_rooms == {}


def test_room_ops_are_gated_until_every_member_knows_them():
    """Rolling upgrades: the room ops are newer than version 1, so a node holds them back
    until every member advertised a version that applies them (raftxmpp.cluster.state)."""
    from raftxmpp.cluster import state as sm

    for name in muc_state.OPS:
        assert sm.OP_VERSIONS.get(name, sm.VERSION) >= 2, name


def test_a_registered_nick_is_its_owners_and_makes_a_member():
    state = created()
    assert run(state, "muc_register_nick", jid=ROOM, actor=BOB, nick="Bobby") == \
        ("ok", {BOB: "Bobby"})
    assert state.muc_rooms[ROOM]["affiliations"][BOB] == "member"
    assert run(state, "muc_register_nick", jid=ROOM, actor=CAROL, nick="Bobby")[1] == "conflict"
    assert muc_state.registered_nick_owner(state.muc_rooms[ROOM], "Bobby") == BOB
    run(state, "muc_set_affiliations", jid=ROOM, actor=ALICE, changes={CAROL: "outcast"})
    assert run(state, "muc_register_nick", jid=ROOM, actor=CAROL, nick="C")[1] == "forbidden"
    assert run(state, "muc_register_nick", jid=ROOM, actor=BOB, nick="") == ("ok", {BOB: "Bobby"})
    assert muc_state.registered_nick_owner(state.muc_rooms[ROOM], "Bobby") is None
