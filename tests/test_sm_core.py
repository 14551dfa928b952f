"""The counting rules of XEP-0198 (raftxmpp.c2s.sm), without a network."""

from __future__ import annotations

import pytest
from lxml import etree

from raftxmpp.c2s import sm
from raftxmpp.xml.errors import StreamError


def element(h: str) -> etree._Element:
    return etree.fromstring(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>")


def test_acks_drop_exactly_what_they_cover():
    state = sm.StreamManagement()
    state.wrote([b"1", b"2", b"3"])
    assert state.acknowledged(2) == 2
    assert list(state.unacked) == [b"3"]
    assert state.acknowledged(2) == 0  # a repeated ack covers nothing new
    assert state.acknowledged(3) == 1 and not state.unacked


def test_counters_wrap_at_two_to_the_32():
    """§4: "the value of 'h' ... MUST be reset to zero" after 2^32 - 1."""
    state = sm.StreamManagement(sent=sm.WRAP - 2, handled=sm.WRAP - 1)
    state.wrote([b"a", b"b", b"c"])
    assert state.sent == 1
    assert state.acknowledged(sm.WRAP - 1) == 1  # 'a' was number 2^32 - 1
    assert state.acknowledged(1) == 2
    state.handled_one()
    assert state.handled == 0 and b"h='0'" in state.answer()


def test_an_ack_beyond_what_was_sent_is_handled_count_too_high():
    state = sm.StreamManagement()
    state.wrote([b"1"])
    with pytest.raises(sm.HandledCountTooHigh) as raised:
        state.acknowledged(2)
    data = raised.value.to_bytes()
    assert b"<undefined-condition" in data and b"h='2' send-count='1'" in data


def test_an_ack_behind_the_queue_is_too_high_after_a_wrap_too():
    state = sm.StreamManagement(sent=5)
    state.wrote([b"x"])
    with pytest.raises(sm.HandledCountTooHigh):
        state.acknowledged(4)  # 5 was acked already (not in the queue): outstanding 2 > 1


@pytest.mark.parametrize("h", ["", "-1", "4294967296", "1.5", "x"])
def test_h_must_be_an_unsigned_32_bit_integer(h):
    with pytest.raises(StreamError):
        sm.parse_h(element(h))


def test_rewind_sends_again_what_the_client_missed_and_counts_from_its_h():
    state = sm.StreamManagement()
    state.wrote([b"1", b"2", b"3", b"4"])
    state.acknowledged(1)
    assert state.rewind(2) == ([b"3", b"4"], [])
    assert state.sent == 2 and not state.unacked
    state.wrote([b"3", b"4"])
    assert state.sent == 4


def test_acks_are_requested_every_n_stanzas_once_per_outstanding_request():
    state = sm.StreamManagement()
    state.wrote([b"1", b"2"])
    assert not state.should_request(3)
    state.wrote([b"3"])
    assert state.should_request(3)
    assert state.requested() == sm.R_BYTES
    state.wrote([b"4", b"5", b"6"])
    assert not state.should_request(3)  # the first <r/> is still unanswered
    state.acknowledged(3)
    assert state.should_request(3)


def test_enabled_names_id_max_and_location_only_when_resumable():
    plain = sm.enabled(sm.StreamManagement(), 300, "xmpp.example:5222")
    assert b"id=" not in plain and b"location" not in plain
    resumable = sm.enabled(sm.StreamManagement(resumable=True, id="abc"), 300, "h:5222")
    assert b'id="abc"' in resumable and b'resume="true"' in resumable
    assert b'max="300"' in resumable and b'location="h:5222"' in resumable


def test_failed_carries_the_condition_and_the_handled_count_when_known():
    assert b'h="7"' in sm.failed("item-not-found", 7)
    assert b" h=" not in sm.failed("item-not-found")


def test_rewind_leaves_parked_stanzas_to_offline_storage_and_names_those_delivered():
    state = sm.StreamManagement(sent=sm.WRAP - 1)
    state.wrote([b"a", b"b", b"c"])  # the 2^32nd stanza is number 0: a=0, b=1, c=2
    state.parked = {0: "id-a", 2: "id-c"}
    again, delivered = state.rewind(0)  # the client got 'a' only
    assert again == [b"b"] and delivered == ["id-a"]
    assert state.sent == 0 and not state.parked


# -- custody: the reported h counts the leading settled stanzas (issue 16) -------------------


def routed(state: sm.StreamManagement, copies: int) -> list[bytes]:
    """One client message routed in custody to `copies` sessions; their queued chunks."""
    record = sm.Custody()
    chunks = [sm.Held(b"<message/>", record) for _ in range(copies)]
    state.handled_one(record)
    return chunks


def test_the_reported_h_stops_at_the_first_unsettled_message():
    sender, woken = sm.StreamManagement(), []
    sender.on_ack_due = lambda: woken.append(True)
    sender.handled_one()  # a presence: settled when handled
    chunk = routed(sender, 1)[0]
    sender.handled_one()  # an IQ after the message: handled, but behind it
    assert sender.handled == 3 and sender.settled_h() == 1
    assert sender.answer() == b"<a xmlns='urn:xmpp:sm:3' h='1'/>"
    sm.settle(chunk)
    assert sender.settled_h() == 3 and sender.ack_due and woken == [True]
    assert sender.answer() == b"<a xmlns='urn:xmpp:sm:3' h='3'/>" and not sender.ack_due
    sm.settle(chunk)  # a copy settles once
    assert sender.settled_h() == 3


def test_a_message_with_several_copies_settles_with_the_last():
    sender = sm.StreamManagement()
    first, second = routed(sender, 2)
    sm.settle(first)
    assert sender.settled_h() == 0
    sm.settle(second)
    assert sender.settled_h() == 1


def test_a_message_nobody_holds_settles_when_handled():
    sender = sm.StreamManagement()
    routed(sender, 0)  # offline storage, a session without stream management, an error
    assert sender.settled_h() == 1 and not sender.unsettled


def test_no_unsolicited_ack_before_the_client_asked():
    sender = sm.StreamManagement()
    chunk = routed(sender, 1)[0]
    sm.settle(chunk)
    assert not sender.ack_due  # the next <r/> gets h=1 anyway


def test_the_recipients_ack_settles_the_copies_it_covers():
    sender, recipient = sm.StreamManagement(), sm.StreamManagement()
    chunks = routed(sender, 1) + routed(sender, 1)
    recipient.wrote([b"<presence/>", *chunks])
    recipient.acknowledged(2)
    assert sender.settled_h() == 1
    recipient.acknowledged(3)
    assert sender.settled_h() == 2


def test_a_resumption_counts_from_the_settled_stanzas_and_forgets_the_rest():
    sender = sm.StreamManagement()
    sender.handled_one()
    chunk = routed(sender, 1)[0]
    sender.handled_one()
    assert sender.restart_inbound() == 1  # the client sends the message and the IQ again
    assert sender.handled == 1
    sm.settle(chunk)  # the first copy settles later: it moves nothing any more
    assert sender.settled_h() == 1
    sender.handled_one()
    assert sender.settled_h() == 2


def test_a_rewind_settles_what_the_resuming_client_had_got():
    sender, recipient = sm.StreamManagement(), sm.StreamManagement()
    chunks = routed(sender, 1) + routed(sender, 1)
    recipient.wrote(chunks)
    again, _ = recipient.rewind(1)
    assert sender.settled_h() == 1 and again == [chunks[1]]
