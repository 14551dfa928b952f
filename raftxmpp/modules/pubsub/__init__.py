"""Publish-subscribe: XEP-0060 for every account's PEP service (XEP-0163) and for the
pubsub service on "<service>.<host>", with what clients publish through it.

- protocol.py   the XEP-0060 requests, for both kinds of service
- pep.py        PEP: account disco, last items on presence, caps-filtered delivery
- caps.py       entity capabilities (XEP-0115): verified, cached and shared cluster-wide
- service.py    the pubsub service's domain
- notify.py     event notifications and the node that sends each (exactly once)
- bookmarks.py  XEP-0402 ↔ XEP-0048 (private XML and PEP) kept in step
- avatars.py    XEP-0084 ↔ vCard avatars, the presence photo hash (XEP-0398)
OMEMO (XEP-0384) and nicknames (XEP-0172) need nothing of their own: they are PEP
nodes with publish-options.

Durable data goes through the store's named pubsub operations
(raftxmpp.cluster.pubsub_store); this package never touches the node or Raft.
"""

from __future__ import annotations

import weakref

from raftxmpp.modules.pubsub import avatars, bookmarks, pep, service
from raftxmpp.modules.pubsub.caps import Caps
from raftxmpp.modules.pubsub.context import Pubsub
from raftxmpp.modules.pubsub.node_config import Settings
from raftxmpp.routing.router import Router

_CONTEXTS: weakref.WeakKeyDictionary[Router, Pubsub] = weakref.WeakKeyDictionary()


def setup(router: Router) -> None:
    ctx = Pubsub(router, Settings(router.config.pubsub), Caps(router))
    _CONTEXTS[router] = ctx
    pep.setup(ctx)
    service.setup(ctx)
    bookmarks.setup(ctx)
    avatars.setup(ctx)


def context(router: Router) -> Pubsub:
    """This node's pubsub context (for the admin API)."""
    return _CONTEXTS[router]
