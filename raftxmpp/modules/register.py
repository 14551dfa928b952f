"""In-band registration (XEP-0077): create an account, change its password, remove it.

Registration happens before authentication, on an encrypted stream unless the node
allows plaintext on loopback; it is off unless [c2s] registration = true. Every
change is committed through Raft before the client hears "result", and two clients
racing for one name get exactly one success and one <conflict/>.
"""

from __future__ import annotations

import logging

from lxml import etree

from raftxmpp.cluster.raft import RaftUnavailable, write_failure
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, StreamError, error_reply
from raftxmpp.xml.stanza import make

log = logging.getLogger("raftxmpp.register")

QUERY = f"{{{ns.REGISTER}}}query"


def setup(router: Router) -> None:
    router.register_iq("account", "get", ns.REGISTER, registered_form)
    router.register_iq("account", "set", ns.REGISTER, change_or_remove)


def _query() -> etree._Element:
    return etree.Element(QUERY, nsmap={None: ns.REGISTER})


def _field(query: etree._Element, name: str) -> str | None:
    return query.findtext(f"{{{ns.REGISTER}}}{name}")


def _result(iq: etree._Element, payload: etree._Element | None = None) -> etree._Element:
    reply = make("iq", {"type": "result", "id": iq.get("id")})
    if payload is not None:
        reply.append(payload)
    return reply


# -- before authentication ------------------------------------------------------------------------------


async def pre_auth(router: Router, stream, iq: etree._Element) -> etree._Element:
    """Answers a registration IQ on a stream that has not authenticated yet."""
    try:
        if not stream.allows_registration():
            raise StanzaError("not-allowed", text="in-band registration is disabled")
        if iq.get("type") == "get":
            return _result(iq, _form())
        if iq.get("type") != "set":
            raise StanzaError("bad-request")
        await _register(router, stream.domain, iq[0])
        return _result(iq)
    except StanzaError as exc:
        return error_reply(iq, exc)


def _form() -> etree._Element:
    query = _query()
    etree.SubElement(query, f"{{{ns.REGISTER}}}instructions").text = (
        "Choose a username and password.")
    etree.SubElement(query, f"{{{ns.REGISTER}}}username")
    etree.SubElement(query, f"{{{ns.REGISTER}}}password")
    return query


async def _register(router: Router, domain: str, query: etree._Element) -> None:
    username, password = _field(query, "username"), _field(query, "password")
    if not username or not password:
        raise StanzaError("not-acceptable", text="username and password are required")
    jid = _account_jid(username, domain)
    try:
        await router.store.register(jid, password)
    except StoreError as exc:
        if exc.condition == "conflict":
            raise StanzaError("conflict", text="that username is taken") from None
        raise StanzaError(exc.condition) from None
    except RaftUnavailable as exc:
        condition, text = write_failure(exc)
        raise StanzaError(condition, type="wait", text=text) from None
    log.info("account %s registered in-band", jid)


def _account_jid(username: str, domain: str) -> str:
    try:
        jid = JID.parse(f"{username}@{domain}")
    except InvalidJID:
        raise StanzaError("not-acceptable", text="that username is not allowed") from None
    if jid.resource is not None or jid.local is None:
        raise StanzaError("not-acceptable", text="that username is not allowed")
    return str(jid)


# -- after authentication -----------------------------------------------------------------------------------


async def registered_form(request: IqRequest) -> etree._Element:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden")
    query = _query()
    etree.SubElement(query, f"{{{ns.REGISTER}}}registered")
    etree.SubElement(query, f"{{{ns.REGISTER}}}username").text = request.to_jid.local
    return query


async def change_or_remove(request: IqRequest) -> None:
    if request.to_jid != request.from_jid.bare or request.sender is None:
        raise StanzaError("forbidden")
    account = str(request.to_jid)
    router = request.router
    if request.payload.find(f"{{{ns.REGISTER}}}remove") is not None:
        await router.store.unregister(account)
        log.info("account %s removed in-band", account)
        # XEP-0077 §3.2: the result goes out, then every session of the account ends.
        router.local.deliver_to_sender(_result(request.stanza), request.sender)
        request.replied = True
        for session in router.sessions.resources(account):
            session.close(StreamError("not-authorized", "account removed"))
        return None
    username, password = _field(request.payload, "username"), _field(request.payload, "password")
    if not password or (username and _account_jid(username, request.to_jid.domain) != account):
        raise StanzaError("bad-request", text="give your own username and a new password")
    await router.store.set_password(account, password)
    log.info("password of %s changed in-band", account)
    return None
