"""Multi-user chat rooms in the replicated state machine (XEP-0045).

The ops here are state-machine commands like those of raftxmpp.cluster.state (which
puts them in its OPS table): deterministic, no I/O, no clock, validated before they
change anything, one room per command (the command's `jid` is the room's bare JID).

What lives here is what must outlive any node: a room's existence, configuration,
affiliations and subject. Occupants, their roles and presence are volatile and
gossiped by the node holding each occupant's session (raftxmpp.modules.muc); the
room's discussion history is kept in memory on every node (same module).

`state.muc_rooms`: {room bare JID: {"config": {...}, "affiliations": {bare JID:
affiliation}, "subject": {"text", "nick"} | None, "created": ts, "locked": bool}}.
A room password never enters the log: the config holds `secret`, a salted hash the
module made (raftxmpp.modules.muc.config).

`actor` is the bare JID acting, or "" for the operator (admin API), who may do all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftxmpp.cluster import archive_state

Command = dict[str, Any]

TABLES = ("muc_rooms",)

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
MAX_AFFILIATIONS = 100_000  # per room
MAX_ROOMS = 1_000_000  # per service, whatever the config says
MAX_TEXT = 4096

# The room configuration (XEP-0045 §15.5.3, muc#roomconfig), field → check. Keys are
# the field names without the "muc#roomconfig_" prefix; `secret` is the hashed password.
CHOICES = {
    "whois": ("moderators", "anyone"),
    "allowpm": ("anyone", "participants", "moderators", "none"),
}
BOOLEANS = ("persistentroom", "publicroom", "membersonly", "moderatedroom",
            "passwordprotectedroom", "changesubject", "allowinvites", "enablelogging")
TEXTS = ("roomname", "roomdesc", "secret")
INTEGERS = ("maxusers",)
CONFIG_FIELDS = (*CHOICES, *BOOLEANS, *TEXTS, *INTEGERS)


class Refused(Exception):
    """Rejects a command with an RFC 6120 stanza error condition."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text


def default_config() -> dict:
    """A new room's configuration: what ejabberd and Prosody default to."""
    return {"whois": "moderators", "allowpm": "anyone", "persistentroom": False,
            "publicroom": True, "membersonly": False, "moderatedroom": False,
            "passwordprotectedroom": False, "changesubject": False, "allowinvites": False,
            "enablelogging": False, "roomname": "", "roomdesc": "", "secret": "",
            "maxusers": 200}


def check_config(config: Any) -> dict:
    """A complete, valid room configuration, or Refused(not-acceptable)."""
    if not isinstance(config, dict) or set(config) != set(CONFIG_FIELDS):
        raise Refused("not-acceptable", "a room configuration names every field once")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise Refused("not-acceptable", f"muc#roomconfig_{key} must be one of "
                          f"{', '.join(allowed)}")
    for key in BOOLEANS:
        if not isinstance(config[key], bool):
            raise Refused("not-acceptable", f"muc#roomconfig_{key} must be a boolean")
    for key in TEXTS:
        if not isinstance(config[key], str) or len(config[key]) > MAX_TEXT:
            raise Refused("not-acceptable", f"muc#roomconfig_{key} must be a short text")
    value = config["maxusers"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise Refused("not-acceptable", "muc#roomconfig_maxusers must be from 1 to 100000")
    if config["passwordprotectedroom"] and not config["secret"]:
        raise Refused("not-acceptable", "a password-protected room needs a password")
    return dict(config)


def _text(command: Command, key: str, limit: int = 3071, empty: bool = False) -> str:
    value = command[key]
    if not isinstance(value, str) or (not value and not empty) or len(value) > limit:
        raise Refused("bad-request", f"{key} must be a string of at most {limit} chars")
    return value


def _room_jid(command: Command) -> str:
    room = _text(command, "jid")
    if "@" not in room or "/" in room:
        raise Refused("jid-malformed", "a room is a bare JID")
    return room


def _record(state: Any, room: str) -> dict:
    record = state.muc_rooms.get(room)
    if record is None:
        raise Refused("item-not-found", f"no room {room}")
    return record


def affiliation(record: dict, bare: str) -> str:
    return record["affiliations"].get(bare, "none")


def _may_act(record: dict, actor: str, needed: tuple[str, ...]) -> bool:
    return actor == "" or affiliation(record, actor) in needed


# -- ops ------------------------------------------------------------------------------------------


def op_muc_create(state: Any, command: Command) -> bool:
    """Creates a room owned by `actor` (XEP-0045 §10.1); False when it exists (the
    caller joins it instead: two first joins on two nodes race here, one wins)."""
    room, actor = _room_jid(command), _text(command, "actor")
    config = check_config(command["config"])
    locked = command["locked"]
    limit = command.get("max_rooms", MAX_ROOMS)
    per_owner = command.get("max_rooms_per_owner", 0)
    if not isinstance(locked, bool):
        raise Refused("bad-request", "locked must be a boolean")
    if room in state.muc_rooms:
        return False
    domain = room.partition("@")[2]
    rooms = [r for name, r in state.muc_rooms.items() if name.endswith("@" + domain)]
    if len(rooms) >= min(limit, MAX_ROOMS):
        raise Refused("resource-constraint", "this service has as many rooms as it may")
    if per_owner and sum(1 for r in rooms if r["affiliations"].get(actor) == "owner") \
            >= per_owner:
        raise Refused("resource-constraint", "you own as many rooms as you may")
    state.muc_rooms[room] = {"config": config, "affiliations": {actor: "owner"},
                             "subject": None, "created": command["ts"], "locked": locked}
    return True


def op_muc_configure(state: Any, command: Command) -> dict:
    """Replaces a room's configuration and unlocks it (§10.1.3, §10.2); owners only."""
    room, actor = _room_jid(command), _text(command, "actor", empty=True)
    record = _record(state, room)
    if not _may_act(record, actor, ("owner",)):
        raise Refused("forbidden", "only an owner configures the room")
    config = check_config(command["config"])
    record["config"] = config
    record["locked"] = False
    return dict(config)


def op_muc_destroy(state: Any, command: Command) -> bool:
    """Destroys a room (§10.9); owners only. With `temporary_only`, only a room that is
    not persistent (its last occupant left, §10.1.1); False when nothing was destroyed."""
    room, actor = _room_jid(command), _text(command, "actor", empty=True)
    temporary_only = command.get("temporary_only", False)
    record = state.muc_rooms.get(room)
    if record is None:
        return False
    if temporary_only:
        if record["config"]["persistentroom"]:
            return False
    elif not _may_act(record, actor, ("owner",)):
        raise Refused("forbidden", "only an owner destroys the room")
    del state.muc_rooms[room]
    # Its archive goes with it: a new room of the same name must not show old talk.
    archive_state.forget_account(state, room)
    return True


def op_muc_set_affiliations(state: Any, command: Command) -> dict[str, str]:
    """Changes affiliations (§9, §10): {bare JID: affiliation}; returns those that changed.

    An owner changes any; an admin makes and unmakes members and outcasts among those
    who are neither admin nor owner (§9.1); a room keeps at least one owner (§10.6)."""
    room, actor = _room_jid(command), _text(command, "actor", empty=True)
    changes = command["changes"]
    record = _record(state, room)
    if not isinstance(changes, dict) or not changes:
        raise Refused("bad-request", "changes must be a table of JIDs")
    actor_aff = "owner" if actor == "" else affiliation(record, actor)
    for jid, aff in changes.items():
        if not isinstance(jid, str) or not jid or "/" in jid or len(jid) > 3071:
            raise Refused("jid-malformed", "affiliations are of bare JIDs")
        if aff not in AFFILIATIONS:
            raise Refused("bad-request", f"affiliation must be one of {', '.join(AFFILIATIONS)}")
        current = affiliation(record, jid)
        if actor_aff == "owner":
            continue
        if actor_aff != "admin" or aff in ("owner", "admin") or current in ("owner", "admin"):
            raise Refused("not-allowed" if actor_aff == "admin" else "forbidden",
                          "you may not change this affiliation")
    affiliations = dict(record["affiliations"])
    for jid, aff in changes.items():
        if aff == "none":
            affiliations.pop(jid, None)
        else:
            affiliations[jid] = aff
    if "owner" not in affiliations.values():
        raise Refused("conflict", "a room keeps at least one owner")
    if len(affiliations) > MAX_AFFILIATIONS:
        raise Refused("resource-constraint", "too many affiliations")
    changed = {jid: aff for jid, aff in changes.items()
               if record["affiliations"].get(jid, "none") != aff}
    record["affiliations"] = affiliations
    return changed


MAX_NICK = 1023


def op_muc_register_nick(state: Any, command: Command) -> dict[str, str]:
    """§7.10: registers `actor`'s nick in the room (or cancels it: nick ""), making a
    user without an affiliation a member; returns the room's registered nicks' change.
    A nick registered by another user is a conflict; outcasts may not register."""
    room, actor = _room_jid(command), _text(command, "actor")
    nick = _text(command, "nick", MAX_NICK, empty=True)
    record = _record(state, room)
    nicks = record.setdefault("nicks", {})
    if affiliation(record, actor) == "outcast":
        raise Refused("forbidden", "outcasts may not register")
    if nick and any(n == nick and jid != actor for jid, n in nicks.items()):
        raise Refused("conflict", "that nickname is registered by someone else")
    if not nick:
        return {actor: nicks.pop(actor, "")}
    if len(nicks) >= MAX_AFFILIATIONS:
        raise Refused("resource-constraint", "too many registered nicknames")
    nicks[actor] = nick
    if affiliation(record, actor) == "none":
        record["affiliations"][actor] = "member"
    return {actor: nick}


def registered_nick_owner(record: dict, nick: str) -> str | None:
    for jid, registered in record.get("nicks", {}).items():
        if registered == nick:
            return jid
    return None


def op_muc_subject(state: Any, command: Command) -> bool:
    """Sets the subject (§8.1); who may was checked by the module, which knows roles."""
    room = _room_jid(command)
    text, nick = _text(command, "text", MAX_TEXT, empty=True), _text(command, "nick", 1023,
                                                                        empty=True)
    _record(state, room)["subject"] = {"text": text, "nick": nick}
    return True


OPS: dict[str, Callable[[Any, Command], Any]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("op_") and callable(fn)
}
