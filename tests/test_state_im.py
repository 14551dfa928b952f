"""State-machine ops and sans-IO helpers added for IM correctness (issue 15), without Raft:
apply, refusal without change, idempotent retry, snapshot/restore."""

from __future__ import annotations

import copy
import pickle

import pytest
from lxml import etree

from raftxmpp.cluster import state as sm
from raftxmpp.cluster.state import ClusterState
from raftxmpp.modules import presence
from tests import test_state
from tests.test_state import CREDS, cmd, err, ok

ALICE, BOB = "alice@example.com", "bob@example.com"
state = test_state.state  # the fixture: alice and bob registered


def restored(state: ClusterState) -> ClusterState:
    copy_ = ClusterState()
    copy_.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert copy_.digest() == state.digest()
    return copy_


REQUEST = ("<presence xmlns='jabber:client' type='subscribe' from='bob@example.com' "
           "to='alice@example.com'><nick xmlns='http://jabber.org/protocol/nick'>Bob</nick>"
           "</presence>")


# -- roster_subscription keeps the whole pending request (RFC 6121 §3.1.3) ---------------------


def test_an_inbound_request_keeps_the_complete_stanza_until_answered(state):
    command = cmd("roster_subscription", jid=ALICE, contact=BOB, event="in-subscribe",
                  request=REQUEST, limit=10)
    result = ok(state.apply(command))
    assert result["action"] == "deliver"
    assert state.rosters[ALICE]["pending_in"] == {BOB: REQUEST}
    assert state.apply(copy.deepcopy(command)) == ("ok", result)  # a retry applies once
    assert restored(state).rosters[ALICE]["pending_in"] == {BOB: REQUEST}
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB, event="out-subscribed")))
    assert state.rosters[ALICE]["pending_in"] == {}


def test_a_command_of_an_older_version_keeps_the_status_text(state):
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB, event="in-subscribe",
                       status="hello")))
    assert state.rosters[ALICE]["pending_in"] == {BOB: "hello"}


def test_an_oversized_request_is_refused_and_changes_nothing(state):
    before = state.digest()
    command = cmd("roster_subscription", jid=ALICE, contact=BOB, event="in-subscribe",
                  request="x" * (sm.MAX_PENDING_REQUEST + 1))
    assert err(state.apply(command)) == "bad-request"
    assert state.digest() == before


def test_waiting_requests_are_bounded_per_account(state):
    for n in range(2):
        ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=f"u{n}@example.com",
                           event="in-subscribe", request="", limit=2)))
    before = state.digest()
    over = cmd("roster_subscription", jid=ALICE, contact="u2@example.com", event="in-subscribe",
               request="", limit=2)
    assert err(state.apply(over)) == "resource-constraint"
    assert state.digest() == before
    # A request already waiting may be repeated; it does not count twice.
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact="u1@example.com",
                       event="in-subscribe", request="", limit=2)))


# -- what the presence module stores ----------------------------------------------------------------


def _subscribe(children: str) -> etree._Element:
    return etree.fromstring(f"<presence xmlns='jabber:client' type='subscribe'>{children}</presence>")


def test_a_request_that_fits_is_stored_whole():
    element = _subscribe("<status>hi</status><x xmlns='urn:example'>data</x>")
    assert presence.pending_request(element) == etree.tostring(element, encoding="unicode")


def test_an_oversized_request_keeps_status_nick_and_token_first():
    filler = "<x xmlns='urn:example'>" + "y" * sm.MAX_PENDING_REQUEST + "</x>"
    element = _subscribe(filler + "<status>hi</status>"
                         "<nick xmlns='http://jabber.org/protocol/nick'>Al</nick>"
                         "<preauth xmlns='urn:xmpp:pars:0' token='t1'/>")
    stored = presence.pending_request(element)
    assert len(stored) <= sm.MAX_PENDING_REQUEST
    kept = etree.fromstring(stored)
    assert kept.findtext("{jabber:client}status") == "hi"
    assert kept.findtext("{http://jabber.org/protocol/nick}nick") == "Al"
    assert kept.find("{urn:xmpp:pars:0}preauth").get("token") == "t1"
    assert kept.find("{urn:example}x") is None


def test_a_stored_request_is_delivered_from_the_requester_to_the_user():
    element = presence._stored_request(REQUEST, BOB, ALICE)
    assert (element.get("type"), element.get("from"), element.get("to")) == ("subscribe", BOB, ALICE)
    assert element.findtext("{http://jabber.org/protocol/nick}nick") == "Bob"
    legacy = presence._stored_request("<3 me", BOB, ALICE)
    assert legacy.findtext("{jabber:client}status") == "<3 me"


# -- RFC 6121 §3.2.2: what an outbound "unsubscribed" does, by the contact's roster state ----------


def _unsubscribed(state: ClusterState) -> dict:
    return ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB,
                              event="out-unsubscribed")))


def test_unsubscribed_to_a_jid_with_no_subscription_is_not_routed(state):
    """§3.2.2 1.: state None, None + Pending Out or To: "SHOULD NOT route or deliver"."""
    assert _unsubscribed(state)["action"] == "drop"
    ok(state.apply(cmd("roster_set", jid=ALICE, contact=BOB, name=None, groups=[])))
    assert _unsubscribed(state)["action"] == "drop"


def test_unsubscribed_cancelling_a_pre_approval_is_not_routed(state):
    """§3.2.2 2.: "the contact's server MUST remove the pre-approval and MUST NOT route"."""
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB, event="out-subscribed")))
    assert state.rosters[ALICE]["items"][BOB]["approved"] is True
    result = _unsubscribed(state)
    assert result["action"] == "drop" and result["item"]["approved"] is False


def test_unsubscribed_denying_a_request_or_cancelling_a_subscription_is_routed(state):
    """§3.2.2 3.: otherwise it is routed (and the subscription cancelled)."""
    ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB, event="in-subscribe")))
    assert _unsubscribed(state)["action"] == "deliver"
    assert BOB not in state.rosters[ALICE]["pending_in"]
    for event in ("in-subscribe", "out-subscribed"):
        ok(state.apply(cmd("roster_subscription", jid=ALICE, contact=BOB, event=event)))
    assert state.rosters[ALICE]["items"][BOB]["subscription"] == "from"
    result = _unsubscribed(state)
    assert result["action"] == "deliver" and result["item"]["subscription"] == "none"


# -- last_logout (XEP-0012) ------------------------------------------------------------------------


def test_last_logout_records_time_and_status_and_survives_snapshot(state):
    command = cmd("last_logout", jid=ALICE, status="Heading Home")
    assert ok(state.apply(command)) is True
    assert state.apply(copy.deepcopy(command)) == ("ok", True)  # a retry applies once
    account = restored(state).accounts[ALICE]
    assert (account["last_logout"], account["last_status"]) == (1700000000.0, "Heading Home")


def test_the_latest_logout_wins_whatever_the_commit_order(state):
    later = {**cmd("last_logout", jid=ALICE, status="later"), "ts": 1700000100.0}
    earlier = {**cmd("last_logout", jid=ALICE, status="earlier"), "ts": 1700000050.0}
    assert ok(state.apply(later)) is True
    assert ok(state.apply(earlier)) is False
    assert state.accounts[ALICE]["last_status"] == "later"


def test_last_logout_refuses_bad_input_without_change(state):
    before = state.digest()
    assert err(state.apply(cmd("last_logout", jid=ALICE, status="x" * (sm.MAX_STATUS + 1)))) == "bad-request"
    assert err(state.apply(cmd("last_logout", jid=ALICE, status=7))) == "bad-request"
    assert err(state.apply(cmd("last_logout", jid="nobody@example.com"))) == "item-not-found"
    assert state.digest() == before


def test_unregister_forgets_the_last_logout(state):
    ok(state.apply(cmd("last_logout", jid=ALICE)))
    ok(state.apply(cmd("unregister", jid=ALICE)))
    ok(state.apply(cmd("register", jid=ALICE, credentials=CREDS)))
    assert "last_logout" not in state.accounts[ALICE]


# -- message of the day (XEP-0133 §4.23–§4.25) -----------------------------------------------------


def test_a_new_message_of_the_day_gets_a_new_version_an_edit_keeps_it(state):
    assert ok(state.apply(cmd("motd_set", text="first"))) == 1
    assert ok(state.apply(cmd("motd_set", text="first, corrected", edit=True))) == 1
    command = cmd("motd_set", text="second")
    assert ok(state.apply(command)) == 2
    assert state.apply(copy.deepcopy(command)) == ("ok", 2)
    assert restored(state).motd == {"text": "second", "version": 2}


def test_deleting_the_message_of_the_day_keeps_the_version_growing(state):
    assert ok(state.apply(cmd("motd_delete"))) is False
    ok(state.apply(cmd("motd_set", text="hello")))
    assert ok(state.apply(cmd("motd_delete"))) is True
    assert restored(state).motd == {"text": None, "version": 1}
    assert ok(state.apply(cmd("motd_set", text="again", edit=True))) == 2  # nothing to edit


def test_motd_seen_only_grows(state):
    ok(state.apply(cmd("motd_seen", jid=ALICE, version=3)))
    ok(state.apply(cmd("motd_seen", jid=ALICE, version=2)))
    assert restored(state).accounts[ALICE]["motd_seen"] == 3


@pytest.mark.parametrize("command", [
    cmd("motd_set", text=""),
    cmd("motd_set", text="x" * (sm.MAX_MOTD + 1)),
    cmd("motd_set", text="ok", edit="yes"),
    cmd("motd_seen", jid=ALICE, version=-1),
    cmd("motd_seen", jid=ALICE, version=True),
    cmd("motd_seen", jid="nobody@example.com", version=1),
], ids=["empty", "too-long", "edit-not-bool", "negative", "bool-version", "no-account"])
def test_bad_motd_commands_change_nothing(state, command):
    before = state.digest()
    assert state.apply(command)[0] == "error"
    assert state.digest() == before


def test_a_snapshot_of_an_older_version_restores_without_a_motd():
    old = ClusterState().snapshot()
    del old["motd"]
    fresh = ClusterState()
    fresh.restore(old)
    assert fresh.motd is None
