"""XMPP Ping (XEP-0199): the server answers pings to itself and to accounts it serves."""

from __future__ import annotations

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns


def setup(router: Router) -> None:
    router.register_iq("server", "get", ns.PING, pong)
    router.register_iq("account", "get", ns.PING, pong)


async def pong(request: IqRequest) -> None:
    return None
