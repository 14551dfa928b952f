"""Session establishment (RFC 3921 §3; optional since RFC 6121): answered, nothing more.

We advertise <session><optional/></session>; clients and load generators that still
send the session IQ after binding must get a result, not an error.
"""

from __future__ import annotations

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns


def setup(router: Router) -> None:
    router.register_iq("account", "set", ns.SESSION, establish)
    router.register_iq("server", "set", ns.SESSION, establish)


async def establish(request: IqRequest) -> None:
    return None
