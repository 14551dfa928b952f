"""Who hears of a PEP node without subscribing to it (XEP-0163 §4.3): the owner's own
available resources and those of the contacts subscribed to the owner's presence, as
far as the node's access model lets them read it, each resource only if its
entity capabilities ask for the node with "+notify" (§4.3.2).

A resource on another node whose caps this node does not know yet (its node has
just learnt them and the gossip is on its way) is returned apart: its own node, which
knows, decides (notify.Fanout.add_undecided)."""

from __future__ import annotations

from types import SimpleNamespace

from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.routing.sessions import RemoteSession, Session


def interested_sessions(ctx: Pubsub, owner: str, node: str,
                        record: dict) -> tuple[list[Session], list[RemoteSession]]:
    """(resources that want the node's events, resources elsewhere not known yet)."""
    sessions_table = ctx.router.sessions
    namespaces = ctx.caps.namespaces
    wanted: list[Session] = []
    undecided: list[RemoteSession] = []

    def consider(session: Session) -> None:
        known = namespaces(session.full_jid)
        if known is not None:
            if node in known:
                wanted.append(session)
        elif not session.is_local:
            undecided.append(session)

    for session in sessions_table.available(owner):
        consider(session)
    # The contacts entitled to the owner's presence, from the roster's index and only
    # those with a session: no copy of the roster per publish (issue 13).
    for contact in sessions_table.accounts_among(ctx.store.subscribers(owner)):
        available = sessions_table.available(contact)
        if not available:
            continue
        item = ctx.store.roster_item(owner, contact)
        # What access_refusal reads of the owner's roster: that one item.
        view = SimpleNamespace(rosters={owner: {"items": {contact: item}}})
        if item is None or ps.access_refusal(view, owner, record, contact) is not None:
            continue
        for session in available:
            consider(session)
    return wanted, undecided
