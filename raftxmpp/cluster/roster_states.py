"""The RFC 6121 presence-subscription state machine, as a pure function.

Applied inside the replicated state machine, so two nodes handling subscription
traffic for the same account at the same moment cannot lose each other's change:
each event is one command, the log orders them, and every node computes the same
roster. Event names: "out-" for presence the account's user sends, "in-" for
presence addressed to the account.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = (
    "out-subscribe",
    "out-subscribed",
    "out-unsubscribe",
    "out-unsubscribed",
    "in-subscribe",
    "in-subscribed",
    "in-unsubscribe",
    "in-unsubscribed",
)

# What the caller does with the presence stanza that caused the event.
DELIVER = "deliver"  # route it on (outbound) or deliver it to the user (inbound)
AUTO_SUBSCRIBED = "auto-subscribed"  # answer the contact with <presence type='subscribed'/>
DROP = "drop"  # no effect: do not route or deliver (RFC 6121 §3.1.6, §3.2.3 …)


@dataclass(frozen=True)
class Step:
    item: dict | None
    pending_in: bool
    action: str


def new_item() -> dict:
    return {"name": None, "groups": [], "subscription": "none", "ask": False, "approved": False}


def has_from(sub: str) -> bool:
    return sub in ("from", "both")


def has_to(sub: str) -> bool:
    return sub in ("to", "both")


def _sub(to: bool, frm: bool) -> str:
    return {(False, False): "none", (True, False): "to", (False, True): "from"}.get(
        (to, frm), "both"
    )


def step(event: str, item: dict | None, pending_in: bool) -> Step:
    return _STEPS[event](item, pending_in)


def _with(item: dict | None, **changes) -> dict:
    return {**(item or new_item()), **changes}


def _out_subscribe(item, pending_in):  # §3.1.2
    if item is not None and (has_to(item["subscription"]) or item["ask"]):
        return Step(item, pending_in, DELIVER)
    return Step(_with(item, ask=True), pending_in, DELIVER)


def _out_subscribed(item, pending_in):  # §3.1.5 approval, §3.4 pre-approval
    sub = item["subscription"] if item else "none"
    if pending_in:
        return Step(_with(item, subscription=_sub(has_to(sub), True)), False, DELIVER)
    if has_from(sub) or (item is not None and item["approved"]):
        return Step(item, False, DROP)
    return Step(_with(item, approved=True), False, DROP)


def _out_unsubscribe(item, pending_in):  # §3.3.2
    if item is None:
        return Step(None, pending_in, DELIVER)
    sub = item["subscription"]
    return Step(_with(item, subscription=_sub(False, has_from(sub)), ask=False), pending_in, DELIVER)


def _out_unsubscribed(item, pending_in):  # §3.2.2
    sub = item["subscription"] if item else "none"
    if pending_in or has_from(sub):  # denying a request, or cancelling a subscription
        if item is None:
            return Step(None, False, DELIVER)
        return Step(_with(item, subscription=_sub(has_to(sub), False), approved=False), False,
                    DELIVER)
    if item is not None and item["approved"]:
        # 2. "the contact's server MUST remove the pre-approval and MUST NOT route or
        # deliver the presence stanza of type "unsubscribed" to the user"
        return Step(_with(item, approved=False), False, DROP)
    # 1. None, None + Pending Out, To: "SHOULD NOT route or deliver" it.
    return Step(item, False, DROP)


def _in_subscribe(item, pending_in):  # §3.1.3
    sub = item["subscription"] if item else "none"
    if has_from(sub):
        return Step(item, False, AUTO_SUBSCRIBED)
    if item is not None and item["approved"]:
        return Step(_with(item, subscription=_sub(has_to(sub), True), approved=False), False,
                    AUTO_SUBSCRIBED)
    if pending_in:
        # Appendix A.3.1: a request that is already waiting ("... + Pending In") is not
        # delivered again and changes nothing; the stored one is shown at the next login.
        return Step(item, True, DROP)
    return Step(item, True, DELIVER)


def _in_subscribed(item, pending_in):  # §3.1.6
    if item is None or not item["ask"]:
        return Step(item, pending_in, DROP)
    sub = item["subscription"]
    return Step(_with(item, subscription=_sub(True, has_from(sub)), ask=False), pending_in, DELIVER)


def _in_unsubscribe(item, pending_in):  # §3.3.3
    sub = item["subscription"] if item else "none"
    if not has_from(sub):
        return Step(item, False, DELIVER if pending_in else DROP)
    return Step(_with(item, subscription=_sub(has_to(sub), False)), False, DELIVER)


def _in_unsubscribed(item, pending_in):  # §3.2.3
    if item is None or not (has_to(item["subscription"]) or item["ask"]):
        return Step(item, pending_in, DROP)
    sub = item["subscription"]
    return Step(_with(item, subscription=_sub(False, has_from(sub)), ask=False), pending_in, DELIVER)


_STEPS = {
    "out-subscribe": _out_subscribe,
    "out-subscribed": _out_subscribed,
    "out-unsubscribe": _out_unsubscribe,
    "out-unsubscribed": _out_unsubscribed,
    "in-subscribe": _in_subscribe,
    "in-subscribed": _in_subscribed,
    "in-unsubscribe": _in_unsubscribe,
    "in-unsubscribed": _in_unsubscribed,
}
