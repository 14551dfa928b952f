"""External service discovery (XEP-0215): the STUN and TURN servers clients use for
calls (Conversations and Monal ask before each call), from [external_services].

TURN servers get time-limited credentials in the TURN REST API form that coturn's
`use-auth-secret` checks (and RFC 7635 describes for OAuth): the username is
"<expiry unix time>:<bare JID>", the password base64(HMAC-SHA1(secret, username)). The
TURN server needs nothing but the shared secret; nothing is stored, no Raft write.
The secret never leaves the node (never logged, never in the replicated state).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import time

from lxml import etree

from raftxmpp.config import ExternalService
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError


def setup(router: Router) -> None:
    section = router.config.external_services
    if not section.services:
        return
    services = section.parsed()
    secret = router.config.turn_secret()
    lifetime = section.credential_lifetime

    async def services_or_credentials(request: IqRequest) -> etree._Element:
        name = etree.QName(request.payload).localname
        if name not in ("services", "credentials"):
            raise StanzaError("bad-request")
        wanted = _wanted(request.payload, name)
        reply = etree.Element(f"{{{ns.EXTDISCO}}}{name}", nsmap={None: ns.EXTDISCO})
        expiry = int(time.time() + lifetime)
        for service in services:
            if wanted(service):
                reply.append(service_element(service, str(request.from_jid.bare),
                                             secret, expiry))
        if name == "credentials" and not len(reply):
            raise StanzaError("item-not-found")
        return reply

    router.register_iq("server", "get", ns.EXTDISCO, services_or_credentials)
    router.server_features.add(ns.EXTDISCO)


def _wanted(payload: etree._Element, name: str):
    """§3.1: <services type='turn'/> filters by type; §3.3: <credentials> names the
    service (host, type, port) whose credentials the client wants."""
    if name == "services":
        kind = payload.get("type")
        return lambda s: kind is None or s.type == kind
    asked = payload.find(f"{{{ns.EXTDISCO}}}service")
    if asked is None or not asked.get("host"):
        raise StanzaError("bad-request", text="name the service: <service host='…' type='…'/>")
    host, kind, port = asked.get("host"), asked.get("type"), asked.get("port")
    return lambda s: (s.host == host and (kind is None or s.type == kind)
                      and (port is None or str(s.port) == port))


def service_element(service: ExternalService, user: str, secret: str | None,
                    expiry: int) -> etree._Element:
    element = etree.Element(f"{{{ns.EXTDISCO}}}service")
    element.set("host", service.host)
    element.set("port", str(service.port))
    element.set("transport", service.transport)
    element.set("type", service.type)
    if service.restricted and secret:
        username, password = credentials(secret, user, expiry)
        element.set("restricted", "1")
        element.set("username", username)
        element.set("password", password)
        moment = datetime.datetime.fromtimestamp(expiry, datetime.UTC)
        element.set("expires", moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return element


def credentials(secret: str, user: str, expiry: int) -> tuple[str, str]:
    """The TURN REST API credential coturn's use-auth-secret accepts until `expiry`."""
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
