"""Who hears of a PEP node without subscribing to it (XEP-0163 §4.3): the owner's own
available resources and those of the contacts subscribed to the owner's presence, as
far as the node's access model lets them read it, each resource only if its
entity capabilities ask for the node with "+notify" (§4.3.2)."""

from __future__ import annotations

from types import SimpleNamespace

from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.cluster import roster_states
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.sessions import Session


def interested_sessions(ctx: Pubsub, owner: str, node: str, record: dict) -> list[Session]:
    sessions_table = ctx.router.sessions
    wants = ctx.caps.wants
    found = [s for s in sessions_table.available(owner) if wants(s.full_jid, node)]
    roster = ctx.store.roster(owner)
    view = SimpleNamespace(rosters={owner: roster})  # what access_refusal reads
    for contact, item in roster["items"].items():
        if not roster_states.has_from(item["subscription"]):
            continue
        available = sessions_table.available(contact)
        if not available or ps.access_refusal(view, owner, record, contact) is not None:
            continue
        found.extend(s for s in available if wants(s.full_jid, node))
    return found
