"""Presence (RFC 6121 §3, §4): subscriptions, broadcast, probes, directed presence.

Subscription state changes go through the replicated state machine, one command per
account and event ("out-subscribe" on the sender's roster, "in-subscribe" on the
contact's), so concurrent handling on different nodes cannot lose a change. Presence
itself (available, unavailable, probes) is volatile and never touches Raft.

Broadcast is local everywhere: a session's presence travels to the other nodes in
its gossip entry, and each node delivers it to its own clients that are entitled to
it. So a node's death (its entries purged) or its return reaches every contact
as unavailable or available presence with no extra protocol.
"""

from __future__ import annotations

import copy
from functools import partial

from lxml import etree

from raftxmpp.cluster import roster_states
from raftxmpp.jid import JID
from raftxmpp.routing.router import Router
from raftxmpp.routing.sessions import LocalSession, RemoteSession, Session
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make, serialize

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
PRIORITY = f"{{{ns.CLIENT}}}priority"


def setup(router: Router) -> None:
    router.local.presence_handler = partial(handle, router)
    router.add_hook("session-closed", partial(on_session_closed, router))
    router.sessions.on_remote_change.append(partial(on_remote_change, router))


async def handle(router: Router, stanza: etree._Element, target: JID | None,
                 sender: LocalSession | None) -> None:
    ptype = stanza.get("type")
    if ptype in SUBSCRIPTION_TYPES:
        if target is not None and sender is None and _from_remote(router, stanza):
            await _inbound_from_remote(router, stanza, target, ptype)  # federation
            return
        if target is None or sender is None:
            return  # a subscription request needs a contact (§3.1.1); ignore otherwise
        await outbound_subscription(router, sender, str(target.bare), ptype, stanza)
    elif ptype in (None, "unavailable"):
        if target is None:
            if sender is not None:
                await broadcast(router, sender, stanza)
        else:
            directed(router, stanza, target, sender)
    elif ptype == "error":
        if target is not None and target.resource is not None:
            session = router.sessions.session(target)
            if session is not None:
                session.send_stanza(stanza)
    elif ptype == "probe":  # probes come from servers; a client's is ignored (§4.3)
        if target is not None and sender is None and _from_remote(router, stanza):
            _answer_remote_probe(router, stanza, target)  # federation
    else:
        raise StanzaError("bad-request", text=f"unknown presence type {ptype!r}")


# -- subscriptions (§3) ----------------------------------------------------------------------------------


async def outbound_subscription(router: Router, sender: LocalSession, contact: str, ptype: str,
                                stanza: etree._Element | None = None) -> None:
    user = sender.bare_jid
    store = router.store
    result = await store.roster_subscription(user, contact, "out-" + ptype)
    if result["changed"]:
        router.modules["roster"].push(router, user, contact, result["item"], result["ver"])
    if result["action"] != roster_states.DELIVER:
        return
    status = stanza.findtext(f"{{{ns.CLIENT}}}status") if stanza is not None else None
    if _is_remote(router, contact):  # §3.1.2: stamped with the bare JID, to the contact's server
        router.s2s.send_stanza(subscription_stanza(ptype, user, contact, status or ""))
    else:
        await inbound_subscription(router, user, contact, ptype, status or "")
    if ptype == "subscribed":
        # §3.1.5: the contact now receives the user's presence from every available resource.
        send_current_presence(router, user, contact)
    elif ptype == "unsubscribed":
        send_unavailable(router, user, contact)  # §3.2.2


async def inbound_subscription(router: Router, user: str, contact: str, ptype: str,
                               status: str = "") -> None:
    """Presence of type `ptype` from `user` (bare) arrives for the account `contact`."""
    if not router.store.account_exists(contact):
        if ptype == "subscribe":  # §3.1.3: no such contact → the request is declined
            await _reply_in(router, contact, user, "unsubscribed")
        return
    result = await router.store.roster_subscription(contact, user, "in-" + ptype, status)
    if result["changed"]:
        router.modules["roster"].push(router, contact, user, result["item"], result["ver"])
    action = result["action"]
    if action == roster_states.DELIVER:
        element = subscription_stanza(ptype, user, contact, status)
        for session in router.sessions.available(contact):
            session.send_stanza(element)
        if ptype == "unsubscribe":
            send_unavailable(router, contact, user)  # §3.3.3
    elif action == roster_states.AUTO_SUBSCRIBED:
        await _reply_in(router, contact, user, "subscribed")
        send_current_presence(router, contact, user)


async def _reply_in(router: Router, contact: str, user: str, ptype: str) -> None:
    """The contact's server answers on the contact's behalf (pre-approval, or no account)."""
    if router.store.account_exists(user):
        await inbound_subscription(router, contact, user, ptype)


def subscription_stanza(ptype: str, from_bare: str, to_bare: str, status: str = "") -> etree._Element:
    element = make("presence", {"type": ptype, "from": from_bare, "to": to_bare})
    if status:
        etree.SubElement(element, f"{{{ns.CLIENT}}}status").text = status
    return element


# -- broadcast and probes (§4) ----------------------------------------------------------------------------


async def broadcast(router: Router, sender: LocalSession, stanza: etree._Element) -> None:
    available = stanza.get("type") is None
    initial = available and not sender.available
    if available:
        sender.priority = _priority(stanza)
        sender.available = True
        sender.presence = serialize(stanza)
    elif not sender.available:
        return  # unavailable twice: nothing to tell anyone
    else:
        sender.available = False
        sender.presence = None
    if router.sessions.local_session(sender.jid) is sender:
        router.sessions.publish(sender)  # other nodes fan it out to their clients
        _fan_out_remote(router, sender, stanza, initial)  # contacts on other servers
    _fan_out(router, sender, stanza)
    if not available:
        _directed_unavailable(router, sender, stanza)
    if initial:
        _probe_contacts(router, sender)
        _deliver_pending_requests(router, sender)
        await router.run_hooks("initial-presence", sender)


def on_remote_change(router: Router, session: RemoteSession, was_available: bool) -> None:
    """A session on another node changed presence (or went): tell our clients."""
    if session.available and session.presence is not None:
        _fan_out(router, session, etree.fromstring(session.presence, _PARSER))
    elif was_available:
        unavailable = make("presence", {"type": "unavailable", "from": session.full_jid})
        _fan_out(router, session, unavailable)
        if router.sessions.session(session.jid) is not session and router.s2s.deputy():
            # Gone while available: its node died without saying so to other servers.
            _fan_out_remote(router, session, unavailable, initial=False)


def _fan_out(router: Router, sender: Session, stanza: etree._Element) -> None:
    """To this node's clients entitled to the presence: subscribed contacts, own resources."""
    user = sender.bare_jid
    local = router.local
    for contact, item in router.store.roster(user)["items"].items():
        if not roster_states.has_from(item["subscription"]):
            continue
        if local.is_blocked(user, JID.parse(contact)) or local.is_blocked(contact, sender.jid):
            continue
        _deliver_to_account(router, stanza, contact)
    for session in router.sessions.available_local(user):
        if session is not sender:
            session.send_stanza(stanza)


def _deliver_to_account(router: Router, stanza: etree._Element, bare: str) -> None:
    sessions = router.sessions.available_local(bare)
    if not sessions:
        return
    element = copy.copy(stanza)
    element.set("to", bare)
    data = serialize(element)
    for session in sessions:
        session.send(data)


def _directed_unavailable(router: Router, sender: LocalSession, stanza: etree._Element) -> None:
    for target in list(sender.directed):
        directed(router, stanza, JID.parse(target), None)
    sender.directed.clear()


def _probe_contacts(router: Router, sender: LocalSession) -> None:
    """Answers the probes the server sends for the user's new session (§4.3.2)."""
    user = sender.bare_jid
    for contact, item in router.store.roster(user)["items"].items():
        if not roster_states.has_to(item["subscription"]):
            continue
        their_item = router.store.roster_item(contact, user)
        if their_item is None or not roster_states.has_from(their_item["subscription"]):
            continue
        for session in router.sessions.available(contact):
            if session.presence is not None:
                sender.send(session.presence)
    for session in router.sessions.available(user):
        if session is not sender and session.presence is not None:
            sender.send(session.presence)


def _deliver_pending_requests(router: Router, sender: LocalSession) -> None:
    """Subscription requests that arrived while the user was offline (§3.1.3)."""
    pending = router.store.roster(sender.bare_jid)["pending_in"]
    for contact, status in pending.items():
        sender.send_stanza(subscription_stanza("subscribe", contact, sender.bare_jid, status))


def directed(router: Router, stanza: etree._Element, target: JID,
             sender: LocalSession | None) -> None:
    """Directed presence (§4.6): to one resource, or to every available resource of an account."""
    from_jid = JID.parse(stanza.get("from"))
    bare = str(target.bare)
    if _is_remote(router, bare):  # to another server; its server decides who gets it
        router.s2s.send_stanza(stanza)
    elif router.local.is_blocked(bare, from_jid):
        return
    elif target.resource is not None:
        session = router.sessions.session(target)
        if session is not None:
            session.send_stanza(stanza)
    else:
        for session in router.sessions.available(bare):
            session.send_stanza(stanza)
    if sender is not None:
        if stanza.get("type") is None:
            sender.directed.add(str(target))
        else:
            sender.directed.discard(str(target))


def send_current_presence(router: Router, user: str, contact: str) -> None:
    """Presence of each of `user`'s available resources, to `contact`'s resources."""
    if _is_remote(router, contact):
        _presence_to_remote(router, user, contact)
        return
    for session in router.sessions.available(user):
        if session.presence is not None:
            for target in router.sessions.available(contact):
                element = etree.fromstring(session.presence, _PARSER)
                element.set("to", contact)
                target.send_stanza(element)


def send_unavailable(router: Router, user: str, contact: str) -> None:
    """Unavailable from each of `user`'s resources to every resource of `contact`, anywhere."""
    for session in router.sessions.available(user):
        element = make("presence", {"type": "unavailable", "from": session.full_jid, "to": contact})
        if _is_remote(router, contact):
            router.s2s.send_stanza(element)
            continue
        data = serialize(element)
        for target in router.sessions.available(contact):
            target.send(data)


async def on_session_closed(router: Router, session: LocalSession) -> None:
    """A connection ended without unavailable presence: send it for the client (§4.5.2)."""
    if session.available or session.directed:
        unavailable = make("presence", {"type": "unavailable", "from": session.full_jid})
        if session.available:
            await broadcast(router, session, unavailable)
        else:
            _directed_unavailable(router, session, unavailable)


def _priority(stanza: etree._Element) -> int:
    text = stanza.findtext(PRIORITY)
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise StanzaError("bad-request", text="priority must be an integer") from None
    if not -128 <= value <= 127:
        raise StanzaError("bad-request", text="priority must be from -128 to 127")
    return value


# -- contacts on other servers (federation, RFC 6121 §3-§4 over s2s) ----------------------------
#
# A contact on another server has no session here: what we would deliver to its
# sessions goes to its server instead, once, from the node where the user's session
# lives (never from every node, or the contact would get it once per node).


def _is_remote(router: Router, bare: str) -> bool:
    return router.s2s.is_remote(bare)


def _from_remote(router: Router, stanza: etree._Element) -> bool:
    return router.s2s.is_remote(stanza.get("from") or "")


async def _inbound_from_remote(router: Router, stanza: etree._Element, target: JID,
                               ptype: str) -> None:
    """A subscription stanza from a contact's server (§3.1.3, §3.2.3, §3.3.3, §3.4.3)."""
    contact = str(JID.parse(stanza.get("from")).bare)
    status = stanza.findtext(f"{{{ns.CLIENT}}}status") or ""
    await inbound_subscription(router, contact, str(target.bare), ptype, status)
    if ptype == "subscribed":
        _probe(router, str(target.bare), contact)  # §3.1.6: learn the contact's presence


def _fan_out_remote(router: Router, sender: Session, stanza: etree._Element,
                    initial: bool) -> None:
    """Broadcast (§4.2.2, §4.4.2) to subscribed contacts elsewhere; an initial presence
    also probes the contacts we are subscribed to (§4.2.1)."""
    user = sender.bare_jid
    for contact, item in router.store.roster(user)["items"].items():
        if not _is_remote(router, contact):
            continue
        subscription = item["subscription"]
        if roster_states.has_from(subscription) and \
                not router.local.is_blocked(user, JID.parse(contact)):
            element = copy.copy(stanza)
            element.set("to", contact)
            router.s2s.send_stanza(element)
        if initial and roster_states.has_to(subscription):
            _probe(router, user, contact)


def _probe(router: Router, user: str, contact: str) -> None:
    router.s2s.send_stanza(make("presence", {"type": "probe", "from": user, "to": contact}))


def _answer_remote_probe(router: Router, stanza: etree._Element, target: JID) -> None:
    """§4.3.2: a contact's server asks for the user's presence; answered only when the
    contact is subscribed to it."""
    user, asker = str(target.bare), stanza.get("from") or ""
    item = router.store.roster_item(user, str(JID.parse(asker).bare))
    if item is None or not roster_states.has_from(item["subscription"]):
        return
    if not router.sessions.available(user):
        router.s2s.send_stanza(make("presence", {"type": "unavailable", "from": user,
                                                 "to": asker}))
        return
    _presence_to_remote(router, user, asker)


def _presence_to_remote(router: Router, user: str, to: str) -> None:
    for session in router.sessions.available(user):
        if session.presence is not None:
            element = etree.fromstring(session.presence, _PARSER)
            element.set("to", to)
            element.set("from", session.full_jid)
            router.s2s.send_stanza(element)
