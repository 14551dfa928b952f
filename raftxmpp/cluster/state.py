"""The replicated state machine: every durable byte of the XMPP service.

Rules (../shared/DESIGN.md, "Raft rules"):
- `apply(command)` is deterministic: no I/O, no clock, no randomness. Timestamps and
  ids arrive inside the command.
- Every command carries a unique `id`; a bounded dedup table remembers each result, so a
  command retried after an ambiguous outcome applies exactly once and returns the
  same result.
- Every command touches one account (keyed by bare JID) or the cluster's own data,
  never two accounts.
- A bad command is rejected with an error result and leaves the state unchanged; it
  never raises (an exception in apply would make pysyncobj retry the entry forever):
  any exception an op raises becomes an error result, the same on every node.

Adding a command (a new op)
- Write `op_<name>(state, command) -> value` (here, or in a module of its own with a
  dict of ops passed to `register_ops`): validate first, raise `Rejected(condition,
  text)` to refuse, then mutate; return plain, small values (results are remembered
  for retries and land in snapshots: return ids, never bodies).
- Give it `since=MAX_VERSION` (bump MAX_VERSION once per release that adds commands):
  during a rolling upgrade a node running older code would reject it while newer
  nodes apply it, so submitters hold such a command back until every member has
  advertised (in the replicated member table) a version that knows it. Ops of an older
  version keep applying exactly as they did: change an op's meaning only under a new
  name or version.
- No password ever arrives here: accounts hold SCRAM keys (raftxmpp.credentials).

This module knows nothing about pysyncobj or trio; `raftxmpp.cluster.raft` wraps it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from raftxmpp import credentials
from raftxmpp.cluster import archive_state, muc_state, pubsub_state, quotas, roster_states
from raftxmpp.cluster.archive import ArchiveStore

log = logging.getLogger("raftxmpp.state")

VERSION = 1  # the snapshot format, and the version of every op that predates gating
# The newest command version this code applies; members advertise it (op_member_set).
MAX_VERSION = 2
# Ops introduced after version 1: op name → the version that introduced it.
OP_VERSIONS: dict[str, int] = {}
# Definite outcomes (issue 12). The leader appends a `tick` with its wall clock about
# every second; the state keeps `clock`, the latest tick time, the same on every node.
# A command whose own time (`ts`, set by its submitter) is more than EXPIRY_SECONDS
# behind the clock, or ahead of it, is rejected deterministically: a submitter that
# gave up on a command after its deadline (at most MAX_SUBMIT_SECONDS, well inside
# the window) knows it can apply only until the clock passes ts + EXPIRY_SECONDS.
# Submitters' clocks must agree within a few seconds (NTP).
EXPIRY_SECONDS = 30.0
# The dedup table remembers a command id until the clock passes max(ts, clock) +
# DEDUP_SECONDS: longer than the expiry window, so a duplicate is either recognised
# or rejected as expired, and a client's retry of the same request within that time
# gets the first result.
DEDUP_SECONDS = 90.0
# Only while no clock runs (a cluster whose leader does not tick yet): a bound on memory.
DEDUP_CAPACITY = 100_000
# The text of every clock rejection starts with this (raftxmpp.cluster.raft looks for it).
EXPIRED = "command expired"
# A waiting subscription request, serialised (raftxmpp.modules.presence trims it to fit).
MAX_PENDING_REQUEST = 4096

Command = dict[str, Any]
# ("ok", value) or ("error", condition, text): plain tuples, so results pickle into snapshots.
Result = tuple


def ok(value: Any = None) -> Result:
    return ("ok", value)


def error(condition: str, text: str = "") -> Result:
    return ("error", condition, text)


class Rejected(Exception):
    """Raised inside an op to reject the command; becomes an error result."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text


class ClusterState:
    """All durable data, as plain dicts so a snapshot is one pickle."""

    def __init__(self) -> None:
        self.hosts: set[str] = set()
        self.accounts: dict[str, dict] = {}
        self.rosters: dict[str, dict] = {}
        self.offline: dict[str, list[dict]] = {}
        self.vcards: dict[str, str] = {}
        self.private: dict[str, dict[str, str]] = {}
        self.blocklists: dict[str, set[str]] = {}
        self.components: dict[str, dict] = {}
        # Cluster members by node name: {"raft": "host:port", "link": "host:port"}.
        self.members: dict[str, dict] = {}
        # The one membership change in flight, cluster-wide: {"owner", "until"} or None.
        self.membership_lock: dict | None = None
        # Publish-subscribe (raftxmpp.cluster.pubsub_state): nodes by owner, and items.
        self.pubsub: dict[str, dict[str, dict]] = {}
        self.pubsub_items: dict[str, dict] = {}
        # Multi-user chat rooms (raftxmpp.cluster.muc_state): room bare JID → record.
        self.muc_rooms: dict[str, dict] = {}
        # The message of the day (XEP-0133): {"text": str | None, "version": int} once set;
        # the version only grows, so "seen" marks stay meaningful across delete and set.
        self.motd: dict | None = None
        # HTTP File Upload (XEP-0363): slot id → slot or stored file; bytes reserved
        # or stored per account. The file bytes live on the nodes' disks, never here.
        self.uploads: dict[str, dict] = {}
        self.upload_usage: dict[str, int] = {}
        # The message archive (XEP-0313) is on disk, outside the pickle (archive.py);
        # in memory only each account's archiving preferences.
        self.archive = ArchiveStore(":memory:")
        self.archive_prefs: dict[str, dict] = {}
        # command id → (clock after which it is forgotten, result), in apply order.
        self.dedup: OrderedDict[str, tuple[float, Result]] = OrderedDict()
        self.applied = 0
        self.clock = 0.0  # the latest leader tick's time; 0 while nobody ticks

    # -- applying commands -------------------------------------------------------

    def apply(self, command: Command) -> Result:
        command_id = command.get("id") if isinstance(command, dict) else None
        if not isinstance(command_id, str) or not command_id:
            return error("bad-request", "command without id")
        if command_id in self.dedup:
            return self.dedup[command_id][1]
        ts = command.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            return error("bad-request", "command without a time")
        if self.clock and command.get("op") != "tick" and abs(ts - self.clock) > EXPIRY_SECONDS:
            # Not remembered: nothing applied, and a copy of it can never apply either.
            late = "behind" if ts < self.clock else "ahead of"
            return error("remote-server-timeout",
                         f"{EXPIRED}: {abs(ts - self.clock):.1f}s {late} the cluster clock")
        result = self._run(command)
        self.applied += 1
        self.dedup[command_id] = (max(ts, self.clock) + DEDUP_SECONDS, result)
        self._forget_old_ids()
        return result

    def _forget_old_ids(self) -> None:
        dedup = self.dedup
        if not self.clock:
            while len(dedup) > DEDUP_CAPACITY:
                dedup.popitem(last=False)
            return
        while dedup:
            oldest = next(iter(dedup.values()))
            if oldest[0] >= self.clock:
                break
            dedup.popitem(last=False)

    def _run(self, command: Command) -> Result:
        version = command.get("v")
        if isinstance(version, bool) or not isinstance(version, int) \
                or not VERSION <= version <= MAX_VERSION:
            return error("bad-request", f"unsupported command version {version!r}")
        op = OPS.get(str(command.get("op")))
        if op is None:
            return error("bad-request", f"unknown op {command.get('op')!r}")
        try:
            return ok(op(self, command))
        except Rejected as exc:
            return error(exc.condition, exc.text)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Ops validate before they mutate, so a malformed command changed nothing.
            return error("bad-request", f"malformed {command.get('op')}: {exc!r}")
        except Exception as exc:  # a bug in an op: never wedge every node on this entry
            log.exception("op %s failed", command.get("op"))
            return error("internal-server-error", f"{command.get('op')} failed: {exc!r}")

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self) -> dict:
        return {
            **self._tables(),
            "archive": self.archive.image(),
            "dedup": self.dedup,
            "applied": self.applied,
            "clock": self.clock,
        }

    def _tables(self) -> dict:
        """The user-visible state (what the digest covers): everything in a snapshot but
        the archive image (its rows are on disk) and the bookkeeping."""
        return {
            "version": VERSION,
            "hosts": self.hosts,
            "accounts": self.accounts,
            "rosters": self.rosters,
            "offline": self.offline,
            "vcards": self.vcards,
            "private": self.private,
            "blocklists": self.blocklists,
            "components": self.components,
            "members": self.members,
            "membership_lock": self.membership_lock,
            "pubsub": self.pubsub,
            "pubsub_items": self.pubsub_items,
            "muc_rooms": self.muc_rooms,
            "motd": self.motd,
            "uploads": self.uploads,
            "upload_usage": self.upload_usage,
            "archive_prefs": self.archive_prefs,
        }

    def restore(self, data: dict) -> None:
        if data.get("version") != VERSION:
            raise ValueError(f"snapshot version {data.get('version')!r} is not {VERSION}")
        for key, value in data.items():
            if key == "archive":
                if value is not None:
                    self.archive.restore(value)
            elif key != "version":
                setattr(self, key, value)
        for key in (*pubsub_state.TABLES, *muc_state.TABLES):  # older snapshots lack them
            if key not in data:
                setattr(self, key, {})
        if "clock" not in data:  # from before the clock: results alone, no expiry
            self.clock = 0.0
            self.dedup = OrderedDict((k, (0.0, v)) for k, v in self.dedup.items())

    def digest(self) -> str:
        """A hash of the user-visible state, equal on every node that applied the same log."""
        return _digest_of(self._tables())


def _digest_of(tables: dict) -> str:
    canonical = json.dumps(tables, sort_keys=True, default=_canonical)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, OrderedDict):
        return dict(value)
    raise TypeError(f"cannot canonicalise {type(value).__name__}")


# -- validation helpers -----------------------------------------------------------


def _text(command: Command, key: str, limit: int = 3071) -> str:
    value = command[key]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Rejected("bad-request", f"{key} must be a non-empty string of at most {limit} chars")
    return value


def _account(state: ClusterState, jid: str) -> dict:
    account = state.accounts.get(jid)
    if account is None:
        raise Rejected("item-not-found", f"no account {jid}")
    return account


def _within(refusal: quotas.Refusal) -> None:
    if refusal is not None:
        raise Rejected(*refusal)


def _roster(state: ClusterState, jid: str) -> dict:
    return state.rosters.setdefault(jid, {"ver": 0, "items": {}, "pending_in": {}})


# -- cluster data -----------------------------------------------------------------


def op_barrier(state: ClusterState, command: Command) -> int:
    return state.applied


def op_tick(state: ClusterState, command: Command) -> float:
    """The leader's clock (EXPIRY_SECONDS above); it only moves forward."""
    state.clock = max(state.clock, float(command["ts"]))
    return state.clock


def op_host_add(state: ClusterState, command: Command) -> bool:
    host = _text(command, "host", 1023)
    added = host not in state.hosts
    state.hosts.add(host)
    return added


def op_host_remove(state: ClusterState, command: Command) -> bool:
    host = _text(command, "host", 1023)
    removed = host in state.hosts
    state.hosts.discard(host)
    return removed


BALANCING = ("random", "source", "destination", "bare_source", "bare_destination")


def op_component_add(state: ClusterState, command: Command) -> bool:
    domain = _text(command, "domain", 1023)
    secret_hash = command["secret_hash"]
    balancing = command.get("balancing", "random")
    buckets = command.get("buckets", 0)
    if not isinstance(secret_hash, bytes) or len(secret_hash) < 16:
        raise Rejected("bad-request", "secret_hash must be bytes")
    if balancing not in BALANCING:
        raise Rejected("bad-request", f"balancing must be one of {', '.join(BALANCING)}")
    if not isinstance(buckets, int) or not 0 <= buckets <= 65536:
        raise Rejected("bad-request", "buckets must be an integer from 0 to 65536")
    if domain in state.hosts:
        raise Rejected("conflict", f"{domain} is a served host")
    created = domain not in state.components
    state.components[domain] = {
        "secret_hash": secret_hash,
        "balancing": balancing,
        "buckets": buckets,
    }
    return created


def op_component_remove(state: ClusterState, command: Command) -> bool:
    domain = _text(command, "domain", 1023)
    return state.components.pop(domain, None) is not None


def op_member_set(state: ClusterState, command: Command) -> bool:
    """Records a node's addresses and the newest command version its code applies; a
    name is bound to one Raft address."""
    name = _text(command, "name", 256)
    raft, link = _text(command, "raft", 300), _text(command, "link", 300)
    version = command.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= 1_000_000):
        raise Rejected("bad-request", "version must be a positive integer")
    for other, member in state.members.items():
        if other != name and member["raft"] == raft:
            raise Rejected("conflict", f"{raft} already belongs to node {other}")
    state.members[name] = {"raft": raft, "link": link}
    if version is not None:
        state.members[name]["version"] = version
    return True


def cluster_version(state: ClusterState, raft_members: set[str]) -> int:
    """The newest command version every Raft member advertised (1 for a member that
    advertised none, or is not in the table yet): what a submitter may send."""
    advertised = {m["raft"]: m.get("version", 1) for m in state.members.values()}
    return min((advertised.get(address, 1) for address in raft_members), default=1)


def op_member_remove(state: ClusterState, command: Command) -> str | None:
    """Forgets the member with this Raft address; returns its name."""
    raft = _text(command, "raft", 300)
    for name, member in list(state.members.items()):
        if member["raft"] == raft:
            del state.members[name]
            return name
    return None


def op_membership_lock(state: ClusterState, command: Command) -> bool:
    """Takes the cluster-wide membership lock (pysyncobj does not serialise changes itself)."""
    owner = _text(command, "owner", 256)
    ttl = command["ttl"]
    if not isinstance(ttl, int | float) or not 0 < ttl <= 600:
        raise Rejected("bad-request", "ttl must be from 0 to 600 seconds")
    held = state.membership_lock
    if held is not None and held["owner"] != owner and held["until"] > command["ts"]:
        raise Rejected("conflict", f"another membership change is in progress ({held['owner']})")
    state.membership_lock = {"owner": owner, "until": command["ts"] + ttl}
    return True


def op_membership_unlock(state: ClusterState, command: Command) -> bool:
    owner = _text(command, "owner", 256)
    if state.membership_lock is not None and state.membership_lock["owner"] == owner:
        state.membership_lock = None
        return True
    return False


# -- accounts ---------------------------------------------------------------------


def op_register(state: ClusterState, command: Command) -> bool:
    jid = _text(command, "jid")
    creds = command["credentials"]
    if not credentials.is_valid(creds):
        raise Rejected("bad-request", "credentials are not SCRAM keys")
    if jid in state.accounts:
        raise Rejected("conflict", f"{jid} already exists")
    state.accounts[jid] = {"credentials": creds, "created": command["ts"]}
    return True


def op_set_credentials(state: ClusterState, command: Command) -> bool:
    jid = _text(command, "jid")
    creds = command["credentials"]
    if not credentials.is_valid(creds):
        raise Rejected("bad-request", "credentials are not SCRAM keys")
    _account(state, jid)["credentials"] = creds
    return True


def op_unregister(state: ClusterState, command: Command) -> bool:
    jid = _text(command, "jid")
    _account(state, jid)
    for table in (state.accounts, state.rosters, state.offline, state.vcards, state.private,
                  state.blocklists):
        table.pop(jid, None)
    pubsub_state.forget_account(state, jid)
    archive_state.forget_account(state, jid)
    return True


# -- roster (RFC 6121 §2, §3) -------------------------------------------------------


def op_roster_set(state: ClusterState, command: Command) -> dict:
    """Adds or updates an item's name and groups; subscription state is left alone."""
    jid, contact = _text(command, "jid"), _text(command, "contact")
    name = command.get("name")
    groups = command.get("groups", [])
    limit = command.get("limit", 0)
    if name is not None and (not isinstance(name, str) or len(name) > 1023):
        raise Rejected("bad-request", "name must be a string")
    if not isinstance(groups, list | tuple) or not all(isinstance(g, str) and g for g in groups):
        raise Rejected("bad-request", "groups must be non-empty strings")
    _account(state, jid)
    roster = _roster(state, jid)
    if contact not in roster["items"] and limit and len(roster["items"]) >= limit:
        raise Rejected("resource-constraint", "roster is full")
    item = roster["items"].get(contact) or roster_states.new_item()
    item = {**item, "name": name, "groups": sorted(set(groups))}
    return _store_item(roster, contact, item)


def op_roster_remove(state: ClusterState, command: Command) -> dict | None:
    """Removes an item; returns it as it was, so the caller can cancel subscriptions."""
    jid, contact = _text(command, "jid"), _text(command, "contact")
    _account(state, jid)
    roster = _roster(state, jid)
    item = roster["items"].pop(contact, None)
    roster["pending_in"].pop(contact, None)
    if item is not None:
        roster["ver"] += 1
    return item


def op_roster_subscription(state: ClusterState, command: Command) -> dict:
    """One step of the subscription state machine on one account's roster.

    Returns {"changed": bool, "item": item-or-None, "ver": int, "action": str}; the
    action ("deliver", "auto-subscribed", "drop") tells the caller what to do with
    the presence stanza, per RFC 6121 §3.

    An inbound request that becomes pending keeps `request`, the subscription request
    as the contact should see it (RFC 6121 §3.1.3: "the complete presence stanza ...
    including any extended content"), at most MAX_PENDING_REQUEST characters; older
    commands carried only the <status/> text as `status`. At most `limit` requests wait
    per account (0: no limit); one more is refused with resource-constraint.
    """
    jid, contact = _text(command, "jid"), _text(command, "contact")
    event = command["event"]
    request = command.get("request", command.get("status", ""))
    limit = command.get("limit", 0)
    if event not in roster_states.EVENTS:
        raise Rejected("bad-request", f"unknown subscription event {event!r}")
    if not isinstance(request, str) or len(request) > MAX_PENDING_REQUEST:
        raise Rejected("bad-request", f"request must be a string of at most {MAX_PENDING_REQUEST} chars")
    if not isinstance(limit, int) or limit < 0:
        raise Rejected("bad-request", "limit must be a non-negative integer")
    if jid not in state.accounts:
        # Inbound subscription traffic for a missing account is silently dropped (§3.1.3).
        return {"changed": False, "item": None, "ver": 0, "action": "drop"}
    existing = state.rosters.get(jid, {"items": {}, "pending_in": {}})
    item = existing["items"].get(contact)
    pending_in = contact in existing["pending_in"]
    step = roster_states.step(event, item, pending_in)
    if step.pending_in and not pending_in and limit and len(existing["pending_in"]) >= limit:
        raise Rejected("resource-constraint", "too many subscription requests are waiting")
    if item is None and step.item is not None:  # a new item, by any subscription event
        _within(quotas.check_new_roster_item(command, existing["items"]))
    roster = _roster(state, jid)
    if step.pending_in != pending_in:
        if step.pending_in:
            roster["pending_in"][contact] = request
        else:
            roster["pending_in"].pop(contact, None)
    changed = step.item != item
    if changed and step.item is not None:
        _store_item(roster, contact, step.item)
    return {"changed": changed, "item": step.item, "ver": roster["ver"], "action": step.action}


def _store_item(roster: dict, contact: str, item: dict) -> dict:
    roster["ver"] += 1
    roster["items"][contact] = item
    return {"item": item, "ver": roster["ver"]}


# -- offline messages (XEP-0160) ----------------------------------------------------


def op_offline_store(state: ClusterState, command: Command) -> int:
    jid = _text(command, "jid")
    message_id = _text(command, "message_id", 256)
    stanza = command["stanza"]
    limit = command.get("limit", 0)
    if not isinstance(stanza, bytes):
        raise Rejected("bad-request", "stanza must be bytes")
    _account(state, jid)
    queue = state.offline.setdefault(jid, [])
    if any(m["id"] == message_id for m in queue):
        return len(queue)
    if limit and len(queue) >= limit:
        raise Rejected("resource-constraint", "offline queue is full")
    queue.append({"id": message_id, "ts": command["ts"], "stanza": stanza})
    return len(queue)


def op_offline_take(state: ClusterState, command: Command) -> list[dict]:
    """Kept only so that old log entries replay as they applied: a destructive read
    whose messages existed only in its result (lost when the taker's wait had already
    failed). New code claims, delivers, then removes by id (below)."""
    jid = _text(command, "jid")
    return state.offline.pop(jid, [])


# A claim lets one session deliver the queue while others leave it alone; if the
# claimer dies before removing what it delivered, the claim lapses and the next
# session delivers those messages again (a counted duplicate, never a loss).
OFFLINE_CLAIM_SECONDS = 120.0


def op_offline_claim(state: ClusterState, command: Command) -> dict:
    """Claims, for `session`, every message of the queue without a live claim.

    Returns {"ids": [...], "redelivered": n}: the ids (in queue order) the claimer
    now owns and should deliver, then remove with offline_remove; `redelivered` counts
    those whose earlier claim lapsed (delivered before, perhaps). The bodies stay in
    the state (read them with the ids on the claiming node), so no result carries them.
    """
    jid = _text(command, "jid")
    session = _text(command, "session", 512)
    now = command["ts"]
    if not isinstance(now, int | float):
        raise Rejected("bad-request", "ts must be a time")
    claimed, redelivered = [], 0
    for message in state.offline.get(jid, ()):
        claim = message.get("claim")
        if claim is not None and claim["until"] > now:
            continue  # another delivery (this session's own included) is under way
        if claim is not None:
            redelivered += 1
        message["claim"] = {"by": session, "until": now + OFFLINE_CLAIM_SECONDS}
        claimed.append(message["id"])
    return {"ids": claimed, "redelivered": redelivered}


def op_offline_remove(state: ClusterState, command: Command) -> int:
    """Removes delivered messages by id, whoever claims them now (they were delivered,
    so nobody needs them again); returns how many were removed."""
    jid = _text(command, "jid")
    ids = command["ids"]
    if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise Rejected("bad-request", "ids must be a list of message ids")
    queue = state.offline.get(jid)
    if not queue:
        return 0
    wanted = set(ids)
    kept = [m for m in queue if m["id"] not in wanted]
    if kept:
        state.offline[jid] = kept
    else:
        del state.offline[jid]
    return len(queue) - len(kept)


# -- vCard (XEP-0054), private XML (XEP-0049), blocking (XEP-0191) --------------------


def op_vcard_set(state: ClusterState, command: Command) -> bool:
    jid = _text(command, "jid")
    vcard = command["vcard"]
    if not isinstance(vcard, str):
        raise Rejected("bad-request", "vcard must be a string")
    _account(state, jid)
    _within(quotas.check_vcard(command, vcard))
    state.vcards[jid] = vcard
    return True


def op_private_set(state: ClusterState, command: Command) -> bool:
    jid = _text(command, "jid")
    key = _text(command, "key")
    xml = command["xml"]
    if not isinstance(xml, str):
        raise Rejected("bad-request", "xml must be a string")
    _account(state, jid)
    _within(quotas.check_private(command, state.private.get(jid, {}), key, xml))
    state.private.setdefault(jid, {})[key] = xml
    return True


def op_block(state: ClusterState, command: Command) -> list[str]:
    jid = _text(command, "jid")
    items = _jid_list(command)
    if not items:
        raise Rejected("bad-request", "block needs at least one item")
    _account(state, jid)
    _within(quotas.check_blocklist(command, state.blocklists.get(jid, set()), items))
    blocked = state.blocklists.setdefault(jid, set())
    added = sorted(set(items) - blocked)
    blocked.update(items)
    return added


def op_unblock(state: ClusterState, command: Command) -> list[str]:
    """Unblocks the given JIDs, or every JID when the list is empty (XEP-0191 §3.4)."""
    jid = _text(command, "jid")
    items = _jid_list(command)
    _account(state, jid)
    blocked = state.blocklists.get(jid, set())
    removed = sorted(blocked if not items else blocked & set(items))
    blocked.difference_update(removed)
    if not blocked:
        state.blocklists.pop(jid, None)
    return removed


def _jid_list(command: Command) -> list[str]:
    items = command["items"]
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        raise Rejected("bad-request", "items must be a list of JIDs")
    return list(items)


# -- last activity (XEP-0012) and the message of the day (XEP-0133) ------------------

MAX_STATUS = 1024
MAX_MOTD = 4096


def op_last_logout(state: ClusterState, command: Command) -> bool:
    """Records that a session of the account ended (the command's time) and the status of
    its last unavailable presence. The latest time wins, whatever order logouts on two
    nodes commit in; returns whether this one is now the recorded logout."""
    jid = _text(command, "jid")
    status = command.get("status", "")
    if not isinstance(status, str) or len(status) > MAX_STATUS:
        raise Rejected("bad-request", f"status must be a string of at most {MAX_STATUS} chars")
    account = _account(state, jid)
    if command["ts"] < account.get("last_logout", 0.0):
        return False
    account["last_logout"] = command["ts"]
    account["last_status"] = status
    return True


def op_motd_set(state: ClusterState, command: Command) -> int:
    """Sets the message of the day; returns its version. A new message gets a new version
    (every user is shown it once more); `edit` corrects the current one in place."""
    text = _text(command, "text", MAX_MOTD)
    edit = command.get("edit", False)
    if not isinstance(edit, bool):
        raise Rejected("bad-request", "edit must be true or false")
    current = state.motd or {"text": None, "version": 0}
    version = current["version"]
    if not (edit and current["text"] is not None):
        version += 1
    state.motd = {"text": text, "version": version}
    return version


def op_motd_delete(state: ClusterState, command: Command) -> bool:
    """Deletes the message of the day; False when there was none."""
    if state.motd is None or state.motd["text"] is None:
        return False
    state.motd = {"text": None, "version": state.motd["version"]}
    return True


def op_motd_seen(state: ClusterState, command: Command) -> bool:
    """Marks the account as shown the message of the day up to `version`."""
    jid = _text(command, "jid")
    version = command["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise Rejected("bad-request", "version must be a non-negative integer")
    account = _account(state, jid)
    account["motd_seen"] = max(account.get("motd_seen", 0), version)
    return True


# -- HTTP File Upload (XEP-0363) -------------------------------------------------------
# A slot reserves `size` bytes of the account's quota until its file is stored or the
# slot expires; `upload_stored` records that a majority of nodes hold the verified
# bytes; `upload_delete` frees the quota, and every node then deletes its copy.


def _upload_of(state: ClusterState, jid: str, slot: str) -> dict:
    upload = state.uploads.get(slot)
    if upload is None or upload["jid"] != jid:
        raise Rejected("item-not-found", f"no upload slot {slot} for {jid}")
    return upload


def _slot_id(command: Command) -> str:
    slot = _text(command, "slot", 32)
    if len(slot) != 32 or any(c not in "0123456789abcdef" for c in slot):
        raise Rejected("bad-request", "slot must be 32 lowercase hex digits")
    return slot


def op_upload_slot(state: ClusterState, command: Command) -> dict:
    """Reserves a slot for one file of `size` bytes within the account's quota."""
    jid, slot = _text(command, "jid"), _slot_id(command)
    name, content_type = _text(command, "name", 255), _text(command, "type", 255)
    size, max_size, quota = command["size"], command["max_size"], command["quota"]
    expires = command["expires"]
    if "/" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise Rejected("bad-request", "the file name must not contain / or control characters")
    for key, value in (("size", size), ("max_size", max_size), ("quota", quota)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Rejected("bad-request", f"{key} must be a non-negative integer")
    if not isinstance(expires, int | float):
        raise Rejected("bad-request", "expires must be a time")
    if not 0 < size <= max_size:
        raise Rejected("not-acceptable", f"file too large: at most {max_size} bytes")
    _account(state, jid)
    if slot in state.uploads:
        raise Rejected("conflict", "slot id already used")
    used = state.upload_usage.get(jid, 0)
    if quota and used + size > quota:
        raise Rejected("resource-constraint", f"upload quota of {quota} bytes reached")
    upload = {"jid": jid, "name": name, "size": size, "type": content_type,
              "created": command["ts"], "expires": expires, "stored": False,
              "sha256": None, "holders": [], "file_expires": None}
    state.uploads[slot] = upload
    state.upload_usage[jid] = used + size
    return dict(upload)


def op_upload_stored(state: ClusterState, command: Command) -> bool:
    """The slot's file is on a majority of nodes with this hash; True if newly stored."""
    jid, slot = _text(command, "jid"), _slot_id(command)
    digest, holders = _text(command, "sha256", 64), command["holders"]
    file_expires = command.get("file_expires")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise Rejected("bad-request", "sha256 must be 64 lowercase hex digits")
    if not isinstance(holders, list | tuple) or not all(isinstance(h, str) for h in holders):
        raise Rejected("bad-request", "holders must be node names")
    if file_expires is not None and not isinstance(file_expires, int | float):
        raise Rejected("bad-request", "file_expires must be a time or none")
    upload = _upload_of(state, jid, slot)
    if upload["stored"]:
        if upload["sha256"] != digest:
            raise Rejected("conflict", "the slot holds another file already")
        return False
    upload.update(stored=True, sha256=digest, holders=sorted(set(holders)),
                  file_expires=file_expires)
    return True


def op_upload_delete(state: ClusterState, command: Command) -> bool:
    """Forgets a slot or file and frees its quota; with `before`, only if it expired by
    then (the expiry sweep), so a sweep raced by a fresh upload deletes nothing."""
    jid, slot = _text(command, "jid"), _slot_id(command)
    before = command.get("before")
    upload = state.uploads.get(slot)
    if upload is None or upload["jid"] != jid:
        return False
    if before is not None:
        expiry = upload["file_expires"] if upload["stored"] else upload["expires"]
        if not isinstance(before, int | float) or expiry is None or expiry > before:
            return False
    del state.uploads[slot]
    left = state.upload_usage.get(jid, 0) - upload["size"]
    if left > 0:
        state.upload_usage[jid] = left
    else:
        state.upload_usage.pop(jid, None)
    return True


OPS: dict[str, Callable[[ClusterState, Command], Any]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("op_") and callable(fn)
}


def register_ops(ops: dict[str, Callable[[ClusterState, Command], Any]],
                 since: int = VERSION) -> None:
    """Adds state-machine commands (see "Adding a command" above)."""
    if not VERSION <= since <= MAX_VERSION:
        raise ValueError(f"since must be from {VERSION} to {MAX_VERSION}")
    for name, fn in ops.items():
        if name in OPS and OPS[name] is not fn:
            raise ValueError(f"op {name} is registered twice")
        OPS[name] = fn
        if since > VERSION:
            OP_VERSIONS[name] = since


# Version 2: the replicated clock and offline claims (issue 12).
register_ops({"tick": op_tick, "offline_claim": op_offline_claim,
              "offline_remove": op_offline_remove}, since=2)


# -- publish-subscribe (XEP-0060, XEP-0163): ops in raftxmpp.cluster.pubsub_state ---------------


def _pubsub_op(fn: Callable[[ClusterState, Command], Any]) -> Callable[[ClusterState, Command], Any]:
    def op(state: ClusterState, command: Command) -> Any:
        try:
            return fn(state, command)
        except pubsub_state.Refused as exc:
            raise Rejected(exc.condition, pubsub_state.encode_text(exc.app, exc.text)) from None

    return op


register_ops({name: _pubsub_op(fn) for name, fn in pubsub_state.OPS.items()})


# -- multi-user chat (XEP-0045): ops in raftxmpp.cluster.muc_state -------------------------------


def _muc_op(fn: Callable[[ClusterState, Command], Any]) -> Callable[[ClusterState, Command], Any]:
    def op(state: ClusterState, command: Command) -> Any:
        try:
            return fn(state, command)
        except muc_state.Refused as exc:
            raise Rejected(exc.condition, exc.text) from None

    return op


# New in version 2: submitters hold them back until every member knows them.
register_ops({name: _muc_op(fn) for name, fn in muc_state.OPS.items()}, since=MAX_VERSION)


def _archive_op(fn: Callable[[ClusterState, Command], Any]) -> Callable[[ClusterState, Command], Any]:
    def op(state: ClusterState, command: Command) -> Any:
        try:
            return fn(state, command)
        except archive_state.Refused as exc:
            raise Rejected(exc.condition, exc.text) from None

    return op


register_ops({name: _archive_op(fn) for name, fn in archive_state.OPS.items()})
