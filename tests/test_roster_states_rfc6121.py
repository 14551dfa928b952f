"""Every subscription event against every roster state, from RFC 6121 Appendix A.

The expected values below are copied from the RFC's tables (quoted in each table's
comment), never computed with raftxmpp.cluster.roster_states: the state machine is
checked against the standard, cell by cell. Pre-approvals (§3.4) are not in the
Appendix; their rows come from the section text quoted where they are tested.

RFC 6121 A.1 defines nine states from the user's point of view (the user's server
holds the roster item for the contact). raftxmpp keeps them as the item's
`subscription` ("none" | "to" | "from" | "both") plus its `ask` flag (Pending Out)
and the contact's entry in `pending_in` (Pending In).
"""

from __future__ import annotations

import pytest

from raftxmpp.cluster import roster_states as rs

# A.1: state name -> (subscription, ask = Pending Out, Pending In)
STATES = {
    "None": ("none", False, False),
    "None + Pending Out": ("none", True, False),
    "None + Pending In": ("none", False, True),
    "None + Pending Out/In": ("none", True, True),
    "To": ("to", False, False),
    "To + Pending In": ("to", False, True),
    "From": ("from", False, False),
    "From + Pending Out": ("from", True, False),
    "Both": ("both", False, False),
}
SAME = "no state change"
PRE_APPROVAL = "pre-approval"

# A.2.1  Subscribe (outbound)
#   |  "None"                  |  MUST    |  "None + Pending Out"    |
#   |  "None + Pending Out"    |  MUST    |  no state change         |
#   |  "None + Pending In"     |  MUST    |  "None + Pending Out/In" |
#   |  "None + Pending Out/In" |  MUST    |  no state change         |
#   |  "To"                    |  MUST    |  no state change         |
#   |  "To + Pending In"       |  MUST    |  no state change         |
#   |  "From"                  |  MUST    |  "From + Pending Out"    |
#   |  "From + Pending Out"    |  MUST    |  no state change         |
#   |  "Both"                  |  MUST    |  no state change         |
OUT_SUBSCRIBE = {
    "None": (True, "None + Pending Out"),
    "None + Pending Out": (True, SAME),
    "None + Pending In": (True, "None + Pending Out/In"),
    "None + Pending Out/In": (True, SAME),
    "To": (True, SAME),
    "To + Pending In": (True, SAME),
    "From": (True, "From + Pending Out"),
    "From + Pending Out": (True, SAME),
    "Both": (True, SAME),
}

# A.2.2  Unsubscribe (outbound)
#   |  "None"                  |  MUST    |  no state change         |
#   |  "None + Pending Out"    |  MUST    |  "None"                  |
#   |  "None + Pending In"     |  MUST    |  no state change         |
#   |  "None + Pending Out/In" |  MUST    |  "None + Pending In"     |
#   |  "To"                    |  MUST    |  "None"                  |
#   |  "To + Pending In"       |  MUST    |  "None + Pending In"     |
#   |  "From"                  |  MUST    |  no state change         |
#   |  "From + Pending Out"    |  MUST    |  "From"                  |
#   |  "Both"                  |  MUST    |  "From"                  |
OUT_UNSUBSCRIBE = {
    "None": (True, SAME),
    "None + Pending Out": (True, "None"),
    "None + Pending In": (True, SAME),
    "None + Pending Out/In": (True, "None + Pending In"),
    "To": (True, "None"),
    "To + Pending In": (True, "None + Pending In"),
    "From": (True, SAME),
    "From + Pending Out": (True, "From"),
    "Both": (True, "From"),
}

# A.2.3  Subscribed (outbound)
#   |  "None"                  |  NO      |  pre-approval            |
#   |  "None + Pending Out"    |  NO      |  pre-approval            |
#   |  "None + Pending In"     |  MUST    |  "From"                  |
#   |  "None + Pending Out/In" |  MUST    |  "From + Pending Out"    |
#   |  "To"                    |  NO      |  pre-approval            |
#   |  "To + Pending In"       |  MUST    |  "Both"                  |
#   |  "From"                  |  NO      |  no state change         |
#   |  "From + Pending Out"    |  NO      |  no state change         |
#   |  "Both"                  |  NO      |  no state change         |
OUT_SUBSCRIBED = {
    "None": (False, PRE_APPROVAL),
    "None + Pending Out": (False, PRE_APPROVAL),
    "None + Pending In": (True, "From"),
    "None + Pending Out/In": (True, "From + Pending Out"),
    "To": (False, PRE_APPROVAL),
    "To + Pending In": (True, "Both"),
    "From": (False, SAME),
    "From + Pending Out": (False, SAME),
    "Both": (False, SAME),
}

# A.2.4  Unsubscribed (outbound)
#   |  "None"                  |  NO      |  no state change         |
#   |  "None + Pending Out"    |  NO      |  no state change         |
#   |  "None + Pending In"     |  MUST    |  "None"                  |
#   |  "None + Pending Out/In" |  MUST    |  "None + Pending Out"    |
#   |  "To"                    |  NO      |  no state change         |
#   |  "To + Pending In"       |  MUST    |  "To"                    |
#   |  "From"                  |  MUST    |  "None"                  |
#   |  "From + Pending Out"    |  MUST    |  "None + Pending Out"    |
#   |  "Both"                  |  MUST    |  "To"                    |
OUT_UNSUBSCRIBED = {
    "None": (False, SAME),
    "None + Pending Out": (False, SAME),
    "None + Pending In": (True, "None"),
    "None + Pending Out/In": (True, "None + Pending Out"),
    "To": (False, SAME),
    "To + Pending In": (True, "To"),
    "From": (True, "None"),
    "From + Pending Out": (True, "None + Pending Out"),
    "Both": (True, "To"),
}

# A.3.1  Subscribe (inbound); "NO *": the server MUST auto-reply with "subscribed".
#   |  "None"                  |  MUST      |  "None + Pending In"     |
#   |  "None + Pending Out"    |  MUST      |  "None + Pending Out/In" |
#   |  "None + Pending In"     |  NO        |  no state change         |
#   |  "None + Pending Out/In" |  NO        |  no state change         |
#   |  "To"                    |  MUST      |  "To + Pending In"       |
#   |  "To + Pending In"       |  NO        |  no state change         |
#   |  "From"                  |  NO *      |  no state change         |
#   |  "From + Pending Out"    |  NO *      |  no state change         |
#   |  "Both"                  |  NO *      |  no state change         |
AUTO = "auto-reply"
IN_SUBSCRIBE = {
    "None": (True, "None + Pending In"),
    "None + Pending Out": (True, "None + Pending Out/In"),
    "None + Pending In": (False, SAME),
    "None + Pending Out/In": (False, SAME),
    "To": (True, "To + Pending In"),
    "To + Pending In": (False, SAME),
    "From": (AUTO, SAME),
    "From + Pending Out": (AUTO, SAME),
    "Both": (AUTO, SAME),
}

# A.3.2  Unsubscribe (inbound); "MUST *": deliver, and the contact's roster item
# changes (the server MUST also send unavailable presence, which is the caller's job).
#   |  "None"                  |  NO        |  no state change         |
#   |  "None + Pending Out"    |  NO        |  no state change         |
#   |  "None + Pending In"     |  MUST *    |  "None"                  |
#   |  "None + Pending Out/In" |  MUST *    |  "None + Pending Out"    |
#   |  "To"                    |  NO        |  no state change         |
#   |  "To + Pending In"       |  MUST *    |  "To"                    |
#   |  "From"                  |  MUST *    |  "None"                  |
#   |  "From + Pending Out"    |  MUST *    |  "None + Pending Out"    |
#   |  "Both"                  |  MUST *    |  "To"                    |
IN_UNSUBSCRIBE = {
    "None": (False, SAME),
    "None + Pending Out": (False, SAME),
    "None + Pending In": (True, "None"),
    "None + Pending Out/In": (True, "None + Pending Out"),
    "To": (False, SAME),
    "To + Pending In": (True, "To"),
    "From": (True, "None"),
    "From + Pending Out": (True, "None + Pending Out"),
    "Both": (True, "To"),
}

# A.3.3  Subscribed (inbound)
#   |  "None"                  |  NO        |  no state change         |
#   |  "None + Pending Out"    |  MUST      |  "To"                    |
#   |  "None + Pending In"     |  NO        |  no state change         |
#   |  "None + Pending Out/In" |  MUST      |  "To + Pending In"       |
#   |  "To"                    |  NO        |  no state change         |
#   |  "To + Pending In"       |  NO        |  no state change         |
#   |  "From"                  |  NO        |  no state change         |
#   |  "From + Pending Out"    |  MUST      |  "Both"                  |
#   |  "Both"                  |  NO        |  no state change         |
IN_SUBSCRIBED = {
    "None": (False, SAME),
    "None + Pending Out": (True, "To"),
    "None + Pending In": (False, SAME),
    "None + Pending Out/In": (True, "To + Pending In"),
    "To": (False, SAME),
    "To + Pending In": (False, SAME),
    "From": (False, SAME),
    "From + Pending Out": (True, "Both"),
    "Both": (False, SAME),
}

# A.3.4  Unsubscribed (inbound)
#   |  "None"                  |  NO        |  no state change         |
#   |  "None + Pending Out"    |  MUST      |  "None"                  |
#   |  "None + Pending In"     |  NO        |  no state change         |
#   |  "None + Pending Out/In" |  MUST      |  "None + Pending In"     |
#   |  "To"                    |  MUST      |  "None"                  |
#   |  "To + Pending In"       |  MUST      |  "None + Pending In"     |
#   |  "From"                  |  NO        |  no state change         |
#   |  "From + Pending Out"    |  MUST      |  "From"                  |
#   |  "Both"                  |  MUST      |  "From"                  |
IN_UNSUBSCRIBED = {
    "None": (False, SAME),
    "None + Pending Out": (True, "None"),
    "None + Pending In": (False, SAME),
    "None + Pending Out/In": (True, "None + Pending In"),
    "To": (True, "None"),
    "To + Pending In": (True, "None + Pending In"),
    "From": (False, SAME),
    "From + Pending Out": (True, "From"),
    "Both": (True, "From"),
}

TABLES = {
    "out-subscribe": OUT_SUBSCRIBE,
    "out-unsubscribe": OUT_UNSUBSCRIBE,
    "out-subscribed": OUT_SUBSCRIBED,
    "out-unsubscribed": OUT_UNSUBSCRIBED,
    "in-subscribe": IN_SUBSCRIBE,
    "in-unsubscribe": IN_UNSUBSCRIBE,
    "in-subscribed": IN_SUBSCRIBED,
    "in-unsubscribed": IN_UNSUBSCRIBED,
}
CELLS = [(event, state) for event, table in TABLES.items() for state in table]


def item_in(state: str, approved: bool = False) -> tuple[dict, bool]:
    subscription, ask, pending_in = STATES[state]
    item = {"name": "Romeo", "groups": ["Friends"], "subscription": subscription,
            "ask": ask, "approved": approved}
    return item, pending_in


def state_of(item: dict | None, pending_in: bool) -> str:
    subscription = "none" if item is None else item["subscription"]
    ask = False if item is None else item["ask"]
    return next(name for name, v in STATES.items() if v == (subscription, ask, pending_in))


def test_the_tables_cover_every_event_and_every_state():
    assert set(TABLES) == set(rs.EVENTS)
    assert all(set(table) == set(STATES) for table in TABLES.values())
    assert len(CELLS) == 72


@pytest.mark.parametrize(("event", "state"), CELLS)
def test_each_cell_of_appendix_a(event, state):
    passes, new_state = TABLES[event][state]
    item, pending_in = item_in(state)
    step = rs.step(event, dict(item), pending_in)
    expected_action = {True: rs.DELIVER, False: rs.DROP, AUTO: rs.AUTO_SUBSCRIBED}[passes]
    assert step.action == expected_action, f"{event} in {state!r}: route/deliver"
    if new_state == PRE_APPROVAL:
        assert state_of(step.item, step.pending_in) == state
        assert step.item["approved"] is True, "§3.4: the server records a pre-approval"
    else:
        wanted = state if new_state == SAME else new_state
        assert state_of(step.item, step.pending_in) == wanted, f"{event} in {state!r}"
    assert step.pending_in is STATES[state_of(step.item, step.pending_in)][2]  # a bool
    if new_state == SAME:
        assert (step.item, step.pending_in) == (item, pending_in), "no state change at all"
    if step.item is not None:
        # A subscription event never touches the user's own data of the item.
        assert (step.item["name"], step.item["groups"]) == ("Romeo", ["Friends"])


@pytest.mark.parametrize("state", ["None", "None + Pending In"])
@pytest.mark.parametrize("event", rs.EVENTS)
def test_with_no_roster_item_the_rows_are_those_of_none(event, state):
    """A.1: no item for the contact is the "None" state, or "None + Pending In" when the
    contact's request waits (it is stored without creating an item: §3.1.3); the rows
    are the table's."""
    passes, new_state = TABLES[event][state]
    pending_in = STATES[state][2]
    step = rs.step(event, None, pending_in)
    expected_action = {True: rs.DELIVER, False: rs.DROP, AUTO: rs.AUTO_SUBSCRIBED}[passes]
    assert step.action == expected_action
    assert step.pending_in is (STATES[new_state][2] if new_state in STATES else pending_in)
    if new_state == PRE_APPROVAL:
        assert step.item is not None and step.item["approved"] is True
    else:
        wanted = state if new_state == SAME else new_state
        assert state_of(step.item, step.pending_in) == wanted


@pytest.mark.parametrize("state", list(STATES))
def test_an_outbound_unsubscribed_leaves_no_pre_approval(state):
    """§3.4 and A.2.4: "unsubscribed" denies or cancels; a pre-approval does not outlive
    it in any state."""
    item, pending_in = item_in(state, approved=True)
    step = rs.step("out-unsubscribed", item, pending_in)
    assert step.item["approved"] is False


# -- pre-approvals (§3.4, not in the Appendix) ------------------------------------------

@pytest.mark.parametrize("state", ["None", "None + Pending Out", "To"])
def test_an_inbound_subscribe_with_a_pre_approval_is_approved_automatically(state):
    """§3.4: "If the contact's server has a record of the pre-approval, it MUST
    automatically ... approve the subscription request on behalf of the contact":
    the contact now has a subscription "from", the pre-approval is used up, and the
    request is not delivered (the server answers "subscribed" itself)."""
    item, pending_in = item_in(state, approved=True)
    step = rs.step("in-subscribe", item, pending_in)
    assert step.action == rs.AUTO_SUBSCRIBED
    wanted = {"None": "From", "None + Pending Out": "From + Pending Out", "To": "Both"}[state]
    assert state_of(step.item, step.pending_in) == wanted
    assert step.item["approved"] is False


@pytest.mark.parametrize("state", ["None", "None + Pending Out", "To"])
def test_an_outbound_unsubscribed_cancels_a_pre_approval_without_routing_it(state):
    """§3.4: "... the user's server MUST remove the pre-approval and MUST NOT route or
    deliver the presence stanza of type "unsubscribed" to the contact"."""
    item, pending_in = item_in(state, approved=True)
    step = rs.step("out-unsubscribed", item, pending_in)
    assert step.action == rs.DROP
    assert state_of(step.item, step.pending_in) == state and step.item["approved"] is False


@pytest.mark.parametrize("state", ["None", "None + Pending Out", "To"])
def test_a_second_pre_approval_changes_nothing(state):
    item, pending_in = item_in(state, approved=True)
    step = rs.step("out-subscribed", item, pending_in)
    assert step.action == rs.DROP
    assert state_of(step.item, step.pending_in) == state and step.item["approved"] is True
