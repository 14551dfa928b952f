"""Per-account quotas on the replicated state (issue 13, finding 2).

Every account's private XML, block list, roster, waiting subscription requests and vCard
live in memory on every node, in every snapshot and in the journal, so one account must
not be able to grow them without bound. The limits are checked inside the state machine
(raftxmpp.cluster.state), never before submission: two nodes handling commands for the
same account at once would both see room that only one of them may take.

The limits travel inside each command (the store adds them from the node's [limits]),
so a command gets the same answer on every node and on every replay of the log, even
while the members' configurations differ; a command without them (written before the
quotas existed) is checked against no limit, as it was when it first applied. The
fields new with the quotas are stamped only once every member advertises command
version QUOTAS_SINCE (the first with them): during a rolling upgrade an older member
would ignore them and accept what the others refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUOTAS_SINCE = 2
# The command fields that carry the quotas; 0 (or absent) switches one off.
PRIVATE_KEYS = "private_keys"
PRIVATE_BYTES = "private_bytes"
BLOCKLIST_ITEMS = "blocklist_items"
ROSTER_ITEMS = "item_limit"  # roster_subscription's own "limit" counts pending requests
VCARD_BYTES = "vcard_bytes"


# What a check returns when a write would take an account past a quota: the stanza
# error condition and its text (the state machine turns it into an error result).
Refusal = tuple[str, str] | None


@dataclass(frozen=True)
class Quotas:
    """The node's [limits] as the store stamps them on commands; 0 means no limit."""

    roster_items: int = 0
    pending_subscriptions: int = 0
    private_keys: int = 0
    private_bytes: int = 0
    blocklist_items: int = 0
    vcard_bytes: int = 0

    @classmethod
    def from_limits(cls, limits: Any) -> Quotas:
        return cls(roster_items=limits.roster_size,
                   pending_subscriptions=limits.pending_subscriptions,
                   private_keys=limits.private_keys_per_account,
                   private_bytes=limits.private_bytes_per_account,
                   blocklist_items=limits.blocklist_size,
                   vcard_bytes=limits.vcard_size)


def _limit(command: dict, key: str) -> int:
    value = command.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def check_private(command: dict, stored: dict[str, str], key: str, xml: str) -> Refusal:
    """Private XML (XEP-0049): at most `private_keys` elements and `private_bytes` bytes
    of them (UTF-8) per account; replacing an element counts its new size only."""
    keys, size = _limit(command, PRIVATE_KEYS), _limit(command, PRIVATE_BYTES)
    if keys and key not in stored and len(stored) >= keys:
        return ("resource-constraint",
                f"private storage holds at most {keys} elements per account")
    if size:
        total = sum(len(v.encode()) for k, v in stored.items() if k != key) + len(xml.encode())
        if total > size:
            return ("resource-constraint",
                    f"private storage holds at most {size} bytes per account")
    return None


def check_blocklist(command: dict, blocked: set[str], items: list[str]) -> Refusal:
    """Blocking (XEP-0191): at most `blocklist_items` JIDs per block list."""
    limit = _limit(command, BLOCKLIST_ITEMS)
    if limit and len(blocked.union(items)) > limit:
        return ("resource-constraint", f"a block list holds at most {limit} JIDs")
    return None


def check_new_roster_item(command: dict, items: dict) -> Refusal:
    """A roster item about to be created by any path (a roster set, or a subscription
    event: outbound subscribe, pre-approval, approving a request): at most
    `item_limit` items per roster."""
    limit = _limit(command, ROSTER_ITEMS)
    if limit and len(items) >= limit:
        return ("resource-constraint", f"a roster holds at most {limit} items")
    return None


def check_vcard(command: dict, vcard: str) -> Refusal:
    """vcard-temp (XEP-0054): at most `vcard_bytes` bytes (UTF-8), photo included."""
    limit = _limit(command, VCARD_BYTES)
    if limit and len(vcard.encode()) > limit:
        return ("not-acceptable", f"a vCard may be at most {limit} bytes")
    return None
