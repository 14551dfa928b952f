"""Local router: stanzas for a domain this cluster serves.

IQs to the domain or to an account go to the handler a module registered for the
payload's namespace (RFC 6120 §8.4: none → <service-unavailable/>); stanzas to a
full JID go to that resource; messages follow RFC 6121 §8.5; presence goes to the
presence module, which owns broadcast and subscriptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router
    from raftxmpp.routing.sessions import LocalSession

IQ = f"{{{ns.CLIENT}}}iq"
MESSAGE = f"{{{ns.CLIENT}}}message"
PRESENCE = f"{{{ns.CLIENT}}}presence"

MESSAGE_TYPES = frozenset({"normal", "chat", "groupchat", "headline", "error"})

PresenceHandler = Callable[[etree._Element, "JID | None", "LocalSession | None"], Awaitable[None]]
OfflineHandler = Callable[[etree._Element, JID], Awaitable[bool]]
CarbonHook = Callable[[etree._Element, "list[LocalSession]"], None]
# Called with (message, recipient account, sender) before a chat or normal message is
# delivered to an account here (or stored offline): the archive stamps its stanza-id.
ArchiveHook = Callable[[etree._Element, str, JID], None]


class LocalRouter:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.sessions = router.sessions
        self.presence_handler: PresenceHandler | None = None
        self.offline_handler: OfflineHandler | None = None
        self.carbon_hook: CarbonHook | None = None
        self.archive_hook: ArchiveHook | None = None

    async def route(self, stanza: etree._Element, target: JID | None,
                    sender: LocalSession | None) -> None:
        tag = stanza.tag
        if tag == MESSAGE:
            await self.route_message(stanza, target, sender)
        elif tag == IQ:
            await self.route_iq(stanza, target, sender)
        elif tag == PRESENCE and self.presence_handler is not None:
            await self.presence_handler(stanza, target, sender)
        else:
            raise StanzaError("bad-request", text="unknown stanza kind")

    # -- IQ (RFC 6120 §8.2.3, RFC 6121 §8.5.1) -----------------------------------------------------

    async def route_iq(self, stanza: etree._Element, target: JID | None,
                       sender: LocalSession | None) -> None:
        iq_type = stanza.get("type")
        if iq_type not in ("get", "set", "result", "error"):
            raise StanzaError("bad-request", text="iq type must be get, set, result or error")
        if stanza.get("id") is None:
            raise StanzaError("bad-request", text="iq without id")
        from_jid = JID.parse(stanza.get("from"))
        target = target or from_jid.bare  # no 'to': the sender's own account (RFC 6120 §10.3.3)
        if target.resource is not None:
            self._to_resource(stanza, target, from_jid)
            return
        if iq_type in ("result", "error"):
            # Answers to the server or an account: only an IQ a module sent waits for one.
            callback = self.router.iq_callbacks.pop(stanza.get("id") or "", None)
            if callback is not None:
                callback(stanza)
            return
        children = list(stanza)
        if len(children) != 1:
            raise StanzaError("bad-request", text="an iq get or set carries exactly one payload")
        payload = children[0]
        scope = "server" if target.local is None else "account"
        handler = self.router.iq_handlers.get((scope, iq_type, etree.QName(payload).namespace))
        if handler is None or (scope == "account" and not self.router.store.account_exists(str(target))):
            raise StanzaError("service-unavailable")
        if scope == "account" and target != from_jid.bare and self.is_blocked(str(target), from_jid):
            # XEP-0191 §3.3: an IQ get or set from a blocked JID "MUST return an error,
            # which SHOULD be <service-unavailable/>": answered as for a missing account.
            raise StanzaError("service-unavailable")
        from raftxmpp.routing.router import IqRequest

        request = IqRequest(stanza, payload, sender, from_jid, target, self.router)
        result = await handler(request)
        if request.replied:
            return
        reply = make("iq", {"type": "result", "id": stanza.get("id"), "to": str(from_jid)})
        if stanza.get("to") is not None:
            reply.set("from", stanza.get("to"))
        if result is not None:
            reply.append(result)
        self.deliver_to_sender(reply, sender)

    def _to_resource(self, stanza: etree._Element, target: JID, from_jid: JID) -> None:
        session = self.sessions.session(target)
        if session is None or self.is_blocked(session.bare_jid, from_jid):
            if stanza.get("type") in ("get", "set"):
                raise StanzaError("service-unavailable")
            return
        session.send_stanza(stanza)

    def deliver_to_sender(self, reply: etree._Element, sender: LocalSession | None) -> None:
        if sender is not None:
            sender.send_stanza(reply)

    # -- messages (RFC 6121 §8.5) -----------------------------------------------------------------------

    async def route_message(self, stanza: etree._Element, target: JID | None,
                            sender: LocalSession | None) -> None:
        from_jid = JID.parse(stanza.get("from"))
        target = target or from_jid.bare
        msg_type = stanza.get("type", "normal")
        if msg_type not in MESSAGE_TYPES:
            # RFC 6121 §5.2.2: a type the server does not understand is "normal".
            msg_type = "normal"
        if target.local is None:
            # No service here reads messages; a person writing to the server is told so
            # (RFC 6120 §8.3.3.19), headlines, groupchat echoes and errors are dropped.
            if msg_type in ("normal", "chat"):
                raise StanzaError("service-unavailable", text="this server reads no messages")
            return
        if target.resource is not None:
            session = self.sessions.session(target)
            if session is not None and not self.is_blocked(session.bare_jid, from_jid):
                if self.archive_hook is not None and msg_type in ("chat", "normal"):
                    self.archive_hook(stanza, session.bare_jid, from_jid)
                session.send_stanza(stanza)
                if self.carbon_hook is not None and msg_type == "chat":
                    self.carbon_hook(stanza, [session])
                return
            if msg_type not in ("normal", "chat"):
                if msg_type == "groupchat":
                    raise StanzaError("service-unavailable")
                return  # headline, error: dropped (§8.5.3.2.1)
        await self.deliver_to_account(stanza, target.bare, from_jid, msg_type)

    async def deliver_to_account(self, stanza: etree._Element, account: JID, from_jid: JID,
                                 msg_type: str) -> None:
        bare = str(account)
        store = self.router.store
        if not store.account_exists(bare):
            if msg_type in ("normal", "chat", "groupchat"):
                raise StanzaError("service-unavailable")
            return
        if self.is_blocked(bare, from_jid):
            if msg_type != "error":
                raise StanzaError("service-unavailable")
            return
        if msg_type == "groupchat":
            raise StanzaError("service-unavailable")
        if msg_type == "error":
            return
        if msg_type == "headline":
            for session in self.sessions.available(bare):
                if session.priority >= 0:
                    session.send_stanza(stanza)
            return
        if self.archive_hook is not None:  # chat or normal, from here on
            self.archive_hook(stanza, bare, from_jid)
        targets = self.sessions.highest_priority(bare)
        if targets:
            for session in targets:
                session.send_stanza(stanza)
            if self.carbon_hook is not None and msg_type == "chat":
                self.carbon_hook(stanza, targets)
            return
        if self.offline_handler is not None:
            await self.offline_handler(stanza, account)

    # -- blocking (XEP-0191) ------------------------------------------------------------------------------

    def is_blocked(self, owner: str, other: JID) -> bool:
        """True when `owner`'s block list covers `other` (XEP-0191 §2, JID matching)."""
        store = self.router.store
        if not store.has_blocklist(owner):  # nearly every stanza: no list, nothing to build
            return False
        return store.blocks_any(owner, block_candidates(other))


def block_candidates(jid: JID) -> tuple[str, ...]:
    """The block-list items that cover `jid`, in XEP-0191's matching order: the full JID,
    the bare JID, domain/resource, the domain. (Subdomains are not matched.)"""
    if jid.resource is None:
        return (str(jid), jid.domain)
    return (str(jid), str(jid.bare), f"{jid.domain}/{jid.resource}", jid.domain)
