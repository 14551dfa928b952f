"""Who receives an account's presence: its roster's contacts with a subscription of
"from" or "both" (RFC 6121 §4.2.2), without copying the roster.

Every presence broadcast needs this set, on every node; copying a roster of a thousand
items per broadcast let one account stall a node (issue 13, finding 1). The set is
computed once per roster version and kept until the roster changes: every change of an
item bumps the roster's `ver` (raftxmpp.cluster.state), and a roster replaced by a
snapshot or re-created after the account was removed is a new dict, so the pair
(the roster object, its ver) names one content. Reads run under the state's lock
(Store._read), so a half-applied command is never seen.
"""

from __future__ import annotations

from raftxmpp.cluster import roster_states

EMPTY: frozenset[str] = frozenset()


class SubscriberIndex:
    """Per account: (roster dict, its ver, the contacts entitled to its presence, the
    same grouped by domain)."""

    def __init__(self) -> None:
        self._cached: dict[str, tuple[dict, int, frozenset[str], dict[str, tuple[str, ...]]]] = {}

    def subscribers(self, rosters: dict[str, dict], jid: str) -> frozenset[str]:
        return self._entry(rosters, jid)[2]

    def by_domain(self, rosters: dict[str, dict], jid: str) -> dict[str, tuple[str, ...]]:
        """The subscribers grouped by domain (roster keys are normalised bare JIDs: the
        domain follows the '@'), so a broadcast asks "is it another server?" once per
        domain, not once per contact. Read-only."""
        return self._entry(rosters, jid)[3]

    def _entry(self, rosters: dict[str, dict], jid: str) -> tuple:
        roster = rosters.get(jid)
        if roster is None:
            self._cached.pop(jid, None)
            return (None, 0, EMPTY, {})
        entry = self._cached.get(jid)
        if entry is not None and entry[0] is roster and entry[1] == roster["ver"]:
            return entry
        found = frozenset(contact for contact, item in roster["items"].items()
                          if roster_states.has_from(item["subscription"]))
        grouped: dict[str, list[str]] = {}
        for contact in found:
            grouped.setdefault(contact.rpartition("@")[2], []).append(contact)
        entry = (roster, roster["ver"], found, {d: tuple(c) for d, c in grouped.items()})
        self._cached[jid] = entry
        return entry
