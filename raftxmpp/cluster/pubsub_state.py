"""Publish-subscribe in the replicated state machine (XEP-0060, XEP-0163 PEP).

The ops here are state-machine commands like those of raftxmpp.cluster.state (which
puts them in its OPS table): deterministic, no I/O, no clock, validated before they
change anything, one owner per command. An owner is the key every pubsub table uses:
an account's bare JID for its PEP service, or a pubsub service's domain (no '@') for
the service's nodes. The command's `jid` is always the owner.

What lives where:
- `state.pubsub`: {owner: {node: record}}, a record being {"config": {...},
  "affiliations": {bare JID: affiliation}, "subscriptions": {JID: {"subid", "state"}},
  "created": ts}. Small, hot, in memory.
- items: only through `raftxmpp.cluster.pubsub_items.ItemStore` (see there), so that
  moving them to the on-disk store later touches that interface alone.

Limits (DESIGN.md: the state stays bounded). A write carries the limits of the node
that submitted it (its `[pubsub]` config), clipped here to HARD_LIMITS, and apply
enforces them: items per node (`max_items`, which is also what a node's "max" means),
bytes per item, bytes per node, bytes per owner, nodes per owner; subscriptions and
affiliations per node are capped by HARD_LIMITS alone.

Errors: an op raises `Refused(condition, app_condition, text)`; state.py turns it
into an error result whose text starts with the XEP-0060 application condition
(`encode_text`), which the pubsub module reads back (`decode_text`) to answer with
both elements (XEP-0060 §7, §8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftxmpp.cluster import roster_states
from raftxmpp.cluster.pubsub_items import ItemStore, item_size

Command = dict[str, Any]

# Tables this module adds to ClusterState, with their empty value.
TABLES = ("pubsub", "pubsub_items")

HARD_LIMITS = {
    "max_items": 10_000,  # items per node
    "item_bytes": 1 << 20,  # one item (an avatar's data is the largest in practice)
    "node_bytes": 64 << 20,
    "owner_bytes": 256 << 20,
    "max_nodes": 100_000,  # nodes per owner
}
MAX_SUBSCRIPTIONS = 100_000  # per node
MAX_AFFILIATIONS = 100_000  # per node
NODE_NAME_CHARS = 1023

ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
# Access models that need an owner with a roster: PEP nodes only.
ROSTER_ACCESS = ("presence", "roster")
AFFILIATIONS = ("owner", "publisher", "publish-only", "member", "none", "outcast")

# The node configuration (XEP-0060 §16.4.4, pubsub#node_config), field → check.
# Keys are the field names without their "pubsub#" prefix.
CHOICES = {
    "access_model": ACCESS_MODELS,
    "publish_model": ("publishers", "subscribers", "open"),
    "send_last_published_item": ("never", "on_sub", "on_sub_and_presence"),
    "notification_type": ("normal", "headline"),
    "itemreply": ("owner", "publisher"),
}
BOOLEANS = ("persist_items", "deliver_payloads", "deliver_notifications", "notify_retract",
            "notify_delete", "notify_config")
TEXTS = ("title", "description", "type")
CONFIG_FIELDS = (*CHOICES, *BOOLEANS, *TEXTS, "max_items", "roster_groups_allowed")


class Refused(Exception):
    """Rejects a command: an RFC 6120 condition, the XEP-0060 application condition
    (or ""), a text for people."""

    def __init__(self, condition: str, app: str = "", text: str = "") -> None:
        super().__init__(text or app or condition)
        self.condition = condition
        self.app = app
        self.text = text


def encode_text(app: str, text: str) -> str:
    """The error result's text: "[app-condition] text" carries both through Raft."""
    return f"[{app}] {text}" if app else text


def decode_text(text: str) -> tuple[str, str]:
    """(app condition or "", text) of an error result made by `encode_text`."""
    if text.startswith("[") and "] " in text:
        app, _, rest = text[1:].partition("] ")
        if app and " " not in app:
            return app, rest
    return "", text


def is_pep(owner: str) -> bool:
    """A PEP service is an account's (bare JID); a pubsub service is a domain."""
    return "@" in owner


# -- validation ------------------------------------------------------------------------------


def _text(command: Command, key: str, limit: int = 3071) -> str:
    value = command[key]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Refused("bad-request", "", f"{key} must be a non-empty string of at most "
                      f"{limit} chars")
    return value


def _actor(command: Command) -> str:
    """The bare JID acting, or "" for the operator (admin API)."""
    actor = command["actor"]
    if not isinstance(actor, str) or len(actor) > 3071:
        raise Refused("bad-request", "", "actor must be a string")
    return actor


def _limits(command: Command) -> dict[str, int]:
    given = command["limits"]
    if not isinstance(given, dict):
        raise Refused("bad-request", "", "limits must be a table")
    limits = {}
    for key, hard in HARD_LIMITS.items():
        value = given[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Refused("bad-request", "", f"limit {key} must be a positive integer")
        limits[key] = min(value, hard)
    return limits


def check_config(config: Any) -> dict:
    """A complete, valid node configuration, or Refused(not-acceptable)."""
    if not isinstance(config, dict) or set(config) != set(CONFIG_FIELDS):
        raise Refused("not-acceptable", "", "a node configuration names every field once")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise Refused("not-acceptable", "", f"pubsub#{key} must be one of "
                          f"{', '.join(allowed)}")
    for key in BOOLEANS:
        if not isinstance(config[key], bool):
            raise Refused("not-acceptable", "", f"pubsub#{key} must be a boolean")
    for key in TEXTS:
        if not isinstance(config[key], str) or len(config[key]) > 3071:
            raise Refused("not-acceptable", "", f"pubsub#{key} must be a short text")
    max_items = config["max_items"]
    if max_items != "max" and (isinstance(max_items, bool) or not isinstance(max_items, int)
                               or max_items < 1):
        raise Refused("not-acceptable", "", "pubsub#max_items must be a positive integer "
                      "or max")
    groups = config["roster_groups_allowed"]
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise Refused("not-acceptable", "", "pubsub#roster_groups_allowed must list groups")
    return config


def effective_max_items(config: dict, limits: dict[str, int]) -> int:
    """How many items a node keeps: its max_items, at most the server's ("max")."""
    wanted = config["max_items"]
    return limits["max_items"] if wanted == "max" else min(wanted, limits["max_items"])


# -- who may do what (also read by the pubsub module, under the read lock) -------------------


def affiliation(owner: str, record: dict, bare: str) -> str:
    if is_pep(owner) and bare == owner:
        return "owner"
    return record["affiliations"].get(bare, "none")


def is_owner(owner: str, record: dict, actor: str) -> bool:
    return actor == "" or affiliation(owner, record, actor) == "owner"


def access_refusal(state: Any, owner: str, record: dict, bare: str) -> Refused | None:
    """Why `bare` may not subscribe to or retrieve items of a node (XEP-0060 §6.1.3,
    §6.5.9), or None when it may. Reads the owner's roster for the presence and roster
    access models (XEP-0163 §4.1: PEP nodes default to presence)."""
    aff = affiliation(owner, record, bare)
    if aff == "outcast":
        return Refused("forbidden", "", "you are an outcast of this node")
    if aff in ("owner", "publisher", "member"):
        return None
    model = record["config"]["access_model"]
    if model == "open":
        return None
    if model == "whitelist":
        return Refused("not-allowed", "closed-node", "the node is open to its whitelist only")
    item = state.rosters.get(owner, {}).get("items", {}).get(bare) if is_pep(owner) else None
    if model == "presence":
        if item is not None and roster_states.has_from(item["subscription"]):
            return None
        return Refused("not-authorized", "presence-subscription-required",
                       "the node is open to the owner's presence subscribers")
    allowed = set(record["config"]["roster_groups_allowed"])
    if item is not None and allowed & set(item.get("groups", ())):
        return None
    return Refused("not-authorized", "not-in-roster-group",
                   "the node is open to some of the owner's roster groups")


def may_publish(owner: str, record: dict, actor: str) -> bool:
    aff = affiliation(owner, record, actor)
    if actor == "" or aff in ("owner", "publisher", "publish-only"):
        return True
    if aff == "outcast":
        return False
    model = record["config"]["publish_model"]
    if model == "open":
        return True
    if model == "subscribers":
        return any(_bare(jid) == actor for jid in record["subscriptions"])
    return False


def _bare(jid: str) -> str:
    return jid.partition("/")[0]


# -- node records ------------------------------------------------------------------------------


def _record(state: Any, owner: str, node: str) -> dict:
    record = state.pubsub.get(owner, {}).get(node)
    if record is None:
        raise Refused("item-not-found", "", f"no node {node!r} at {owner}")
    return record


def _check_owner_kind(owner: str, config: dict) -> None:
    if not is_pep(owner) and config["access_model"] in ROSTER_ACCESS:
        raise Refused("not-acceptable", "", f"a service node cannot use the "
                      f"{config['access_model']} access model (it needs an owner's roster)")


def _new_record(state: Any, owner: str, node: str, actor: str, config: dict,
                limits: dict[str, int], ts: Any) -> dict:
    if is_pep(owner) and owner not in state.accounts:
        raise Refused("item-not-found", "", f"no account {owner}")
    nodes = state.pubsub.get(owner, {})
    if len(nodes) >= limits["max_nodes"]:
        raise Refused("not-allowed", "max-nodes-exceeded",
                      f"{owner} holds {len(nodes)} nodes, the most allowed")
    _check_owner_kind(owner, check_config(config))
    # The account owns its PEP nodes; a service node's creator owns it; the operator's
    # service nodes start ownerless.
    owner_jid = owner if is_pep(owner) else actor
    owners = {owner_jid: "owner"} if owner_jid else {}
    return {"config": dict(config), "affiliations": owners, "subscriptions": {}, "created": ts}


def _node_name(command: Command) -> str:
    return _text(command, "node", NODE_NAME_CHARS)


# -- ops ------------------------------------------------------------------------------------------


def op_pubsub_create(state: Any, command: Command) -> bool:
    """Creates a node (XEP-0060 §8.1); conflict if it exists."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    limits = _limits(command)
    if is_pep(owner) and actor not in ("", owner):
        raise Refused("forbidden", "", "only the account owner creates its PEP nodes")
    if node in state.pubsub.get(owner, {}):
        raise Refused("conflict", "", f"node {node!r} exists")
    record = _new_record(state, owner, node, actor, command["config"], limits, command["ts"])
    state.pubsub.setdefault(owner, {})[node] = record
    return True


def op_pubsub_configure(state: Any, command: Command) -> list[str]:
    """Replaces a node's configuration (XEP-0060 §8.2); returns the ids of items dropped
    because max_items shrank."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    limits = _limits(command)
    record = _record(state, owner, node)
    if not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "only an owner configures a node")
    config = check_config(command["config"])
    _check_owner_kind(owner, config)
    record["config"] = dict(config)
    items = ItemStore(state.pubsub_items)
    if not config["persist_items"]:
        items.purge(owner, node)
        return []
    return items.trim(owner, node, effective_max_items(config, limits))


def op_pubsub_delete(state: Any, command: Command) -> list[str]:
    """Deletes a node and its items (XEP-0060 §8.4); returns who was subscribed, whom
    the caller tells (§8.4.2)."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    record = _record(state, owner, node)
    if not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "only an owner deletes a node")
    ItemStore(state.pubsub_items).purge(owner, node)
    del state.pubsub[owner][node]
    if not state.pubsub[owner]:
        del state.pubsub[owner]
    return sorted(record["subscriptions"])


def op_pubsub_publish(state: Any, command: Command) -> dict:
    """Publishes one item (XEP-0060 §7.1), creating the node first when `create` holds a
    configuration (PEP auto-create, XEP-0163 §3) and checking `preconditions` against
    the node's configuration (publish-options, XEP-0060 §7.1.5; XEP-0223).

    Returns {"created": bool, "evicted": [ids dropped past max_items]}."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    item_id, payload = _text(command, "item_id"), command["payload"]
    limits = _limits(command)
    if payload is not None and not isinstance(payload, str):
        raise Refused("bad-request", "", "payload must be a string")
    record = state.pubsub.get(owner, {}).get(node)
    created = record is None
    if created:
        if command["create"] is None:
            raise Refused("item-not-found", "", f"no node {node!r} at {owner}")
        if is_pep(owner) and actor != owner:
            raise Refused("forbidden", "", "only the account owner creates its PEP nodes")
        record = _new_record(state, owner, node, actor, command["create"], limits, command["ts"])
    else:
        _check_preconditions(record["config"], command["preconditions"])
    if not may_publish(owner, record, actor):
        raise Refused("forbidden", "", "you may not publish to this node")
    size = item_size(item_id, payload)
    if size > limits["item_bytes"]:
        raise Refused("not-acceptable", "payload-too-big",
                      f"an item of this node may hold {limits['item_bytes']} bytes")
    evicted: list[str] = []
    items = ItemStore(state.pubsub_items)
    if record["config"]["persist_items"]:
        max_items = effective_max_items(record["config"], limits)
        evicted, node_bytes, owner_bytes = items.plan_put(owner, node, item_id, size, max_items)
        if node_bytes > limits["node_bytes"] or owner_bytes > limits["owner_bytes"]:
            raise Refused("not-acceptable", "", f"the pubsub storage of {owner} is full")
        item = {"payload": payload, "publisher": actor, "ts": command["ts"], "size": size}
        items.put(owner, node, item_id, item, max_items)
    if created:
        state.pubsub.setdefault(owner, {})[node] = record
    return {"created": created, "evicted": evicted}


def _check_preconditions(config: dict, preconditions: Any) -> None:
    if preconditions is None:
        return
    if not isinstance(preconditions, dict):
        raise Refused("bad-request", "", "preconditions must be a table")
    for key, wanted in preconditions.items():
        if key not in config:
            raise Refused("conflict", "precondition-not-met", f"unknown field pubsub#{key}")
        if config[key] != wanted:
            raise Refused("conflict", "precondition-not-met",
                          f"pubsub#{key} of the node is {config[key]!r}, not {wanted!r}")


def op_pubsub_replace_items(state: Any, command: Command) -> dict:
    """Makes a PEP node hold exactly `items` ([[id, payload], ...]) in one step, creating
    it with `create` if needed: the XEP-0048 ↔ XEP-0402 bookmark conversion, where a
    whole legacy list replaces the native items at once (XEP-0402 §5.3).

    Returns {"published": [ids new or changed], "retracted": [ids gone]}."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    limits = _limits(command)
    wanted = command["items"]
    if not isinstance(wanted, list) or not all(
            isinstance(i, list | tuple) and len(i) == 2 and isinstance(i[0], str) and i[0]
            and isinstance(i[1], str) for i in wanted):
        raise Refused("bad-request", "", "items must be [id, payload] pairs")
    if not is_pep(owner) or actor not in ("", owner):
        raise Refused("forbidden", "", "only the account owner replaces its items")
    record = state.pubsub.get(owner, {}).get(node)
    created = record is None
    if created:
        record = _new_record(state, owner, node, actor, command["create"], limits, command["ts"])
    items = ItemStore(state.pubsub_items)
    wanted_by_id = dict(wanted)
    current = dict(items.list(owner, node))
    max_items = effective_max_items(record["config"], limits)
    sizes = {i: item_size(i, p) for i, p in wanted_by_id.items()}
    if len(wanted_by_id) > max_items or any(s > limits["item_bytes"] for s in sizes.values()):
        raise Refused("not-acceptable", "", "too many or too large items for this node")
    node_bytes = sum(sizes.values())
    owner_bytes = items.owner_bytes(owner) - items.node_bytes(owner, node) + node_bytes
    if node_bytes > limits["node_bytes"] or owner_bytes > limits["owner_bytes"]:
        raise Refused("not-acceptable", "", f"the pubsub storage of {owner} is full")
    retracted = [i for i in current if i not in wanted_by_id]
    published = [i for i, p in wanted_by_id.items()
                 if i not in current or current[i]["payload"] != p]
    for item_id in retracted:
        items.retract(owner, node, item_id)
    for item_id in published:
        item = {"payload": wanted_by_id[item_id], "publisher": owner, "ts": command["ts"],
                "size": sizes[item_id]}
        items.put(owner, node, item_id, item, max_items)
    if created:
        state.pubsub.setdefault(owner, {})[node] = record
    return {"published": published, "retracted": retracted}


def op_pubsub_retract(state: Any, command: Command) -> bool:
    """Deletes one item (XEP-0060 §7.2): its publisher, a publisher or an owner may."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    item_id = _text(command, "item_id")
    record = _record(state, owner, node)
    items = ItemStore(state.pubsub_items)
    item = items.get(owner, node, item_id)
    if item is None:
        raise Refused("item-not-found", "", f"no item {item_id!r}")
    aff = affiliation(owner, record, actor)
    if actor and aff not in ("owner", "publisher") and item["publisher"] != actor:
        raise Refused("forbidden", "", "only its publisher or an owner retracts an item")
    return items.retract(owner, node, item_id)


def op_pubsub_purge(state: Any, command: Command) -> int:
    """Removes every item of a node (XEP-0060 §8.5); returns how many."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    record = _record(state, owner, node)
    if not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "only an owner purges a node")
    if not record["config"]["persist_items"]:
        raise Refused("feature-not-implemented", "unsupported",
                      "the node does not persist items")
    return ItemStore(state.pubsub_items).purge(owner, node)


def op_pubsub_subscribe(state: Any, command: Command) -> dict:
    """Subscribes a JID (XEP-0060 §6.1), checking the access model; subscribing again
    returns the subscription there is. Returns {"subid", "state", "new"}."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    subscriber, subid = _text(command, "subscriber"), _text(command, "subid", 256)
    record = _record(state, owner, node)
    if actor and _bare(subscriber) != actor:
        raise Refused("bad-request", "invalid-jid", "you may subscribe only your own JID")
    existing = record["subscriptions"].get(subscriber)
    if existing is not None:
        return {**existing, "new": False}
    refusal = access_refusal(state, owner, record, _bare(subscriber)) if actor else None
    if refusal is not None:
        raise refusal
    if len(record["subscriptions"]) >= MAX_SUBSCRIPTIONS:
        raise Refused("not-allowed", "", "the node has the most subscribers allowed")
    subscription = {"subid": subid, "state": "subscribed"}
    record["subscriptions"][subscriber] = subscription
    return {**subscription, "new": True}


def op_pubsub_unsubscribe(state: Any, command: Command) -> bool:
    """Ends a subscription (XEP-0060 §6.2): its subscriber or an owner may."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    subscriber = _text(command, "subscriber")
    subid = command.get("subid")
    record = _record(state, owner, node)
    if actor and _bare(subscriber) != actor and not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "you may unsubscribe only your own JID")
    existing = record["subscriptions"].get(subscriber)
    if existing is None:
        raise Refused("unexpected-request", "not-subscribed", f"{subscriber} is not subscribed")
    if subid and subid != existing["subid"]:
        raise Refused("not-acceptable", "invalid-subid", "no subscription with that subid")
    del record["subscriptions"][subscriber]
    return True


def op_pubsub_set_subscriptions(state: Any, command: Command) -> dict[str, str]:
    """An owner changes subscriptions (XEP-0060 §8.8.2): {JID: "subscribed" | "none"},
    new ones with the subids in `subids`. Returns what changed."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    changes, subids = command["changes"], command["subids"]
    record = _record(state, owner, node)
    if not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "only an owner manages subscriptions")
    if not isinstance(changes, dict) or not all(
            isinstance(j, str) and j and s in ("subscribed", "none") for j, s in changes.items()):
        raise Refused("bad-request", "", "changes map JIDs to subscribed or none")
    added = [j for j, s in changes.items() if s == "subscribed" and j not in record["subscriptions"]]
    if len(record["subscriptions"]) + len(added) > MAX_SUBSCRIPTIONS:
        raise Refused("not-allowed", "", "the node has the most subscribers allowed")
    if not all(isinstance(subids.get(j), str) and subids[j] for j in added):
        raise Refused("bad-request", "", "a new subscription needs a subid")
    changed = {}
    for jid, wanted in sorted(changes.items()):
        if wanted == "none":
            if record["subscriptions"].pop(jid, None) is not None:
                changed[jid] = "none"
        elif jid not in record["subscriptions"]:
            record["subscriptions"][jid] = {"subid": subids[jid], "state": "subscribed"}
            changed[jid] = "subscribed"
    return changed


def op_pubsub_set_affiliations(state: Any, command: Command) -> dict[str, str]:
    """An owner changes affiliations (XEP-0060 §8.9.2): {bare JID: affiliation}. An
    outcast loses its subscriptions; a node never loses its last owner. Returns what
    changed."""
    owner, node, actor = _text(command, "jid"), _node_name(command), _actor(command)
    changes = command["changes"]
    record = _record(state, owner, node)
    if not is_owner(owner, record, actor):
        raise Refused("forbidden", "", "only an owner manages affiliations")
    if not isinstance(changes, dict) or not all(
            isinstance(j, str) and j and "/" not in j and a in AFFILIATIONS
            for j, a in changes.items()):
        raise Refused("bad-request", "", "changes map bare JIDs to affiliations")
    if is_pep(owner) and changes.get(owner, "owner") != "owner":
        raise Refused("not-acceptable", "", "the account stays the owner of its PEP nodes")
    after = {**record["affiliations"], **changes}
    after = {j: a for j, a in after.items() if a != "none"}
    if not is_pep(owner) and record["affiliations"] and "owner" not in after.values():
        raise Refused("not-acceptable", "", "a node keeps at least one owner")
    if len(after) > MAX_AFFILIATIONS:
        raise Refused("not-allowed", "", "the node has the most affiliations allowed")
    changed = {j: a for j, a in changes.items() if record["affiliations"].get(j, "none") != a}
    record["affiliations"] = after
    for jid, aff in changes.items():
        if aff == "outcast":
            for subscriber in [s for s in record["subscriptions"] if _bare(s) == jid]:
                del record["subscriptions"][subscriber]
    return changed


def forget_account(state: Any, jid: str) -> None:
    """The account is gone: its PEP service goes with it (called by op_unregister)."""
    state.pubsub.pop(jid, None)
    ItemStore(state.pubsub_items).drop_owner(jid)


OPS: dict[str, Callable[[Any, Command], Any]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("op_") and callable(fn)
}
