"""Multi-user chat (XEP-0045) on "<service>.<host>", whose rooms survive any node.

- service.py    the service's domain: routing, disco (§6), XEP-0410 self-ping
- presence.py   join, nick change, leave; occupant presence with its status codes
- messages.py   groupchat (one ordering node per room), private messages, invitations, subject
- admin.py      configuration, destruction, affiliations and roles (kick, ban, voice)
- history.py    the discussion history sent on join, kept on every node
- occupants.py  the occupant table: gossiped entries, each written by its session's node
- config.py     the muc#roomconfig form and hashed room passwords
- forwarding.py IQs to occupant JIDs, passed on and answered back (vCards from the store)

Durable room data goes through the store's named muc operations
(raftxmpp.cluster.muc_store); this package never touches the node or Raft.
"""

from __future__ import annotations

import weakref
from functools import partial

from raftxmpp.modules.muc import (
    admin,
    archive,
    forwarding,
    messages,
    occupants,
    presence,
    service,
)
from raftxmpp.modules.muc.context import Muc
from raftxmpp.routing.router import Router

_CONTEXTS: weakref.WeakKeyDictionary[Router, Muc] = weakref.WeakKeyDictionary()


def setup(router: Router) -> None:
    settings = router.config.muc
    table = occupants.OccupantTable(router.config.node.name,
                                    gossip_of=lambda: router.sessions.gossip)
    ctx = Muc(router, settings, table)
    _CONTEXTS[router] = ctx
    if not settings.service:
        return
    table.on_change.append(partial(presence.on_change, ctx))
    router.add_service(ctx.service_of, partial(service.route, ctx))
    prefix = settings.service + "."
    router.disco_items.append(lambda host: [f"{prefix}{host}"])
    router.gossip_handlers[occupants.PREFIX] = table.on_gossip
    for kind, handler in ((messages.ORDER, messages.on_order),
                          (messages.DELIVER, messages.on_deliver),
                          (admin.ROLE, admin.on_role), (admin.AFFILIATION, admin.on_affiliation),
                          (admin.DESTROYED, admin.on_destroyed),
                          (forwarding.ANSWER, forwarding.on_answer),
                          (archive.DRAIN, archive.on_drain), (archive.DRAINED, archive.on_drained)):
        router.gossip_messages[kind] = partial(handler, ctx)
    router.add_hook("session-closed", partial(presence.on_session_closed, ctx))
    router.add_hook("client-presence", partial(presence.on_client_presence, ctx))


def context(router: Router) -> Muc:
    """This node's muc context (for the admin API)."""
    return _CONTEXTS[router]
