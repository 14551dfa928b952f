"""Presence (RFC 6121 §3, §4): subscriptions, broadcast, probes, directed presence.

Subscription state changes go through the replicated state machine, one command per
account and event ("out-subscribe" on the sender's roster, "in-subscribe" on the
contact's), so concurrent handling on different nodes cannot lose a change. Presence
itself (available, unavailable, probes) is volatile and never touches Raft.

Broadcast is local everywhere: a session's presence travels to the other nodes in
its gossip entry, and each node delivers it to its own clients that are entitled to
it. So a node's death (its entries purged) or its return reaches every contact
as unavailable or available presence with no extra protocol. Presence the server
sends on a user's behalf for one event (a subscription change, a block) goes from
the node that handled the event to the contact's sessions wherever they are.

Block lists (XEP-0191) apply both ways to everything here: nothing from a blocked
JID reaches the user, and a contact the user blocks sees the user offline.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable
from functools import partial

import trio
from lxml import etree

from raftxmpp.cluster import roster_states
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.state import MAX_PENDING_REQUEST, MAX_STATUS
from raftxmpp.jid import JID
from raftxmpp.modules.presence_pacing import PresencePacer, pacer_for
from raftxmpp.routing.local import block_candidates
from raftxmpp.routing.router import Router
from raftxmpp.routing.sessions import LocalSession, RemoteSession, Session
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make, serialize

# Recipients served between two yields to the event loop in a large broadcast.
FAN_OUT_CHUNK = 64
SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
PRESENCE = f"{{{ns.CLIENT}}}presence"
PRIORITY = f"{{{ns.CLIENT}}}priority"
STATUS = f"{{{ns.CLIENT}}}status"
# What a stored subscription request keeps first when it must be trimmed to fit: the
# status, the requester's nickname (XEP-0172) and a pre-authentication token (XEP-0379).
_KEPT_FIRST = (STATUS, "{http://jabber.org/protocol/nick}nick", "{urn:xmpp:pars:0}preauth")


def setup(router: Router) -> None:
    pacer = pacer_for(router, partial(_broadcast_reflected, router))
    router.local.presence_handler = partial(handle, router, pacer)
    router.add_hook("session-closed", partial(on_session_closed, router, pacer))
    router.sessions.on_remote_change.append(partial(on_remote_change, router))
    # RFC 6121 §3.4.1: subscription pre-approval is supported, so it is announced.
    router.stream_features.append(
        lambda: etree.Element(f"{{{ns.PREAPPROVAL}}}sub", nsmap={None: ns.PREAPPROVAL}))


async def handle(router: Router, pacer: PresencePacer, stanza: etree._Element,
                 target: JID | None, sender: LocalSession | None) -> None:
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
                if ptype is None:
                    _priority(stanza)  # a bad one is refused now, not when paced out
                await pacer.broadcast(sender, stanza)
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


# -- block lists, both ways ------------------------------------------------------------------------------


def _blocked_either_way(router: Router, a: str, a_jid: JID, b: str, b_jid: JID) -> bool:
    """Whether presence between accounts `a` and `b` is cut by either one's block list."""
    local = router.local
    return local.is_blocked(a, b_jid) or local.is_blocked(b, a_jid)


def _covered(items: set[str], jid: JID) -> bool:
    return any(candidate in items for candidate in block_candidates(jid))


def blocked(router: Router, user: str, items: Iterable[str]) -> None:
    """XEP-0191 §3.3: "When the user blocks communications with the contact, the user's
    server MUST send unavailable presence information to the contact (but only if the
    contact is allowed to receive presence notifications from the user ...)": from each
    of the user's available resources, to the blocked contacts' available resources, and
    to blocked entities the user's resources sent directed presence to."""
    items = set(items)
    if not items:
        return
    subscribers = _subscribers(router, user)
    targets = [session for contact in subscribers
               for session in router.sessions.available(contact) if _covered(items, session.jid)]
    _unavailable_from(router, user, targets)
    for contact in subscribers:
        if _is_remote(router, contact) and _covered(items, JID.parse(contact)):
            _unavailable_to_remote(router, user, contact)
    for session in router.sessions.resources(user):
        if not session.is_local:
            continue  # directed presence is known to the session's own node only
        for target in list(session.directed):
            jid = JID.parse(target)
            if not _covered(items, jid):
                continue
            if str(jid.bare) not in subscribers:  # those were told just above
                unavailable = make("presence", {"type": "unavailable", "from": session.full_jid,
                                                "to": target})
                _deliver_directed(router, unavailable, jid)
            session.directed.discard(target)


def unblocked(router: Router, user: str, items: Iterable[str]) -> None:
    """XEP-0191 §3.4: "When the user unblocks communications with the contact, the user's
    server MUST send the user's current presence information to the contact (but only if
    the contact is allowed to receive presence notifications from the user ...)". The
    user's resources also get the contact's current presence (what a probe would give),
    since every presence the contact sent during the block was dropped."""
    items = set(items)
    if not items:
        return
    user_jid = JID.parse(user)
    for contact, item in router.store.roster(user)["items"].items():
        contact_jid = JID.parse(contact)
        if _blocked_either_way(router, user, user_jid, contact, contact_jid):
            continue
        if _is_remote(router, contact):
            if _covered(items, contact_jid):
                if roster_states.has_from(item["subscription"]):
                    _presence_to_remote(router, user, contact)
                if roster_states.has_to(item["subscription"]):
                    _probe(router, user, contact)  # its answer comes back over s2s
            continue
        if roster_states.has_from(item["subscription"]):
            targets = [s for s in router.sessions.available(contact) if _covered(items, s.jid)]
            _current_presence_from(router, user, targets)
        if roster_states.has_to(item["subscription"]) and _covered(items, contact_jid):
            _contact_presence_to(router, contact, user, router.sessions.available(user),
                                 unavailable=True)


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
    if ptype == "unsubscribed":
        # §3.2.2: "While the user is still subscribed to the contact's presence (i.e.,
        # before the contact's server routes or delivers the presence stanza of type
        # "unsubscribed" to the user), the contact's server MUST send a presence stanza
        # of type "unavailable" from all of the contact's online resources to the user."
        send_unavailable(router, user, contact)
    await deliver_subscription(router, user, contact, ptype, stanza)
    if ptype == "subscribed":
        # §3.1.5: the contact now receives the user's presence from every available resource.
        send_current_presence(router, user, contact)


async def deliver_subscription(router: Router, user: str, contact: str, ptype: str,
                               stanza: etree._Element | None = None) -> None:
    """A subscription stanza of the account `user` for `contact`: to the contact's server
    over s2s (§3.1.2: stamped with the user's bare JID), or handled here for an account
    of this cluster."""
    if _is_remote(router, contact):
        router.s2s.send_stanza(subscription_stanza(ptype, user, contact, stanza))
    else:
        await inbound_subscription(router, user, contact, ptype, stanza)


async def inbound_subscription(router: Router, user: str, contact: str, ptype: str,
                               stanza: etree._Element | None = None) -> None:
    """Presence of type `ptype` from `user` (bare) arrives for the account `contact`;
    `stanza` is what the user's client sent, whose content the contact gets."""
    if not router.store.account_exists(contact):
        if ptype == "subscribe":  # §3.1.3: no such contact → the request is declined
            await _reply_in(router, contact, user, "unsubscribed")
        return
    if router.local.is_blocked(contact, JID.parse(user)):
        return  # XEP-0191 §3.3: presence from a blocked JID gets no response, no error
    element = subscription_stanza(ptype, user, contact, stanza)
    request = pending_request(element) if ptype == "subscribe" else ""
    result = await router.store.roster_subscription(contact, user, "in-" + ptype, request)
    action = result["action"]
    if action == roster_states.DELIVER:
        # §3.1.3: a request goes "to all available resources"; an approval or a
        # cancellation (§3.1.6, §3.2.3, §3.3.3) "to all of the user's interested
        # resources ... This MUST occur before sending the roster push".
        sessions = router.sessions
        recipients = sessions.available(contact) if ptype == "subscribe" else sessions.interested(contact)
        for session in recipients:
            session.send_stanza(element)
    if result["changed"]:
        router.modules["roster"].push(router, contact, user, result["item"], result["ver"])
    if action == roster_states.DELIVER:
        if ptype == "unsubscribe":
            send_unavailable(router, contact, user)  # §3.3.3
    elif action == roster_states.AUTO_SUBSCRIBED:
        await _reply_in(router, contact, user, "subscribed")
        send_current_presence(router, contact, user)


async def _reply_in(router: Router, contact: str, user: str, ptype: str) -> None:
    """The contact's server answers on the contact's behalf (pre-approval, or no account);
    to a user on another server, over s2s."""
    if _is_remote(router, user):
        router.s2s.send_stanza(subscription_stanza(ptype, contact, user))
    elif router.store.account_exists(user):
        await inbound_subscription(router, contact, user, ptype)


def subscription_stanza(ptype: str, from_bare: str, to_bare: str,
                        original: etree._Element | None = None) -> etree._Element:
    """The subscription presence the contact receives: the user's own stanza with all of
    its content (RFC 6121 §3.1.3; RFC 6120 §8.4), stamped with the user's bare JID as
    'from' (§3.1.2) and the contact's bare JID as 'to'."""
    if original is None:
        return make("presence", {"type": ptype, "from": from_bare, "to": to_bare})
    element = copy.deepcopy(original)
    element.set("type", ptype)
    element.set("from", from_bare)
    element.set("to", to_bare)
    return element


def pending_request(element: etree._Element) -> str:
    """The request as stored while the contact is offline: whole when it fits in
    MAX_PENDING_REQUEST characters, otherwise with as many children as fit, status,
    nickname and pre-authentication token first."""
    text = etree.tostring(element, encoding="unicode")
    if len(text) <= MAX_PENDING_REQUEST:
        return text
    trimmed = copy.copy(element)
    for child in list(trimmed):
        trimmed.remove(child)
    for child in sorted(element, key=lambda c: c.tag not in _KEPT_FIRST):
        trimmed.append(copy.deepcopy(child))
        if len(etree.tostring(trimmed, encoding="unicode")) > MAX_PENDING_REQUEST:
            trimmed.remove(trimmed[-1])
    return etree.tostring(trimmed, encoding="unicode")


def _stored_request(stored: str, contact: str, user: str) -> etree._Element:
    """A pending request as delivered; older versions stored only its status text."""
    try:
        element = etree.fromstring(stored.encode(), _PARSER) if stored.startswith("<") else None
    except etree.XMLSyntaxError:
        element = None
    if element is not None and element.tag == PRESENCE:
        return subscription_stanza("subscribe", contact, user, element)
    element = subscription_stanza("subscribe", contact, user)
    if stored:
        etree.SubElement(element, STATUS).text = stored
    return element


async def _deliver_pending_requests_when_fresh(router: Router, sender: LocalSession) -> None:
    """The requests are read after a linearizable read point (or, with no quorum, from
    what this node holds). A request acknowledged through another node a moment ago was
    delivered there to the user's available resources as that node knew them: if this
    session's availability had not reached it by gossip yet, the request was only stored,
    and a read of this node's state that had not applied it yet would miss it until the
    user's next login (a full suite run saw test_a_caps_change_brings_the_last_item_of_
    the_new_interest lose the subscription request of its befriend step that way). In the
    background: an initial presence never waits for a commit."""
    with contextlib.suppress(RaftUnavailable):
        await router.store.fresh()
    if sender.closing is None and sender.available:
        _deliver_pending_requests(router, sender)


def _deliver_pending_requests(router: Router, sender: LocalSession) -> None:
    """Subscription requests that arrived while the user was offline (§3.1.3), except from
    JIDs the user has blocked since (XEP-0191 §3.3)."""
    pending = router.store.roster(sender.bare_jid)["pending_in"]
    for contact, stored in pending.items():
        if router.local.is_blocked(sender.bare_jid, JID.parse(contact)):
            continue
        sender.send_stanza(_stored_request(stored, contact, sender.bare_jid))


# -- broadcast and probes (§4) ----------------------------------------------------------------------------


async def broadcast(router: Router, sender: LocalSession, stanza: etree._Element,
                    reflect: bool = False) -> None:
    """Presence the client sent with no 'to'. With `reflect`, the sending resource gets it
    back too (§4.2.2: "to all of the user's available resources, including the resource
    that generated the presence notification in the first place"; §4.4.2 likewise for
    subsequent presence); a connection that ended without unavailable gets nothing."""
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
        sender.unavailable_status = (stanza.findtext(STATUS) or "")[:MAX_STATUS]
    if router.sessions.local_session(sender.jid) is sender:
        router.sessions.publish(sender)  # other nodes fan it out to their clients
        _fan_out_remote(router, sender, stanza, initial)  # contacts on other servers
    if reflect:
        sender.send_stanza(stanza)
    await _fan_out_yielding(router, sender, stanza)
    if not available:
        _directed_unavailable(router, sender, stanza)
    if initial:
        _probe_contacts(router, sender)
        router.spawn(_deliver_pending_requests_when_fresh, router, sender)
        await router.run_hooks("initial-presence", sender)


async def _broadcast_reflected(router: Router, sender: LocalSession,
                               stanza: etree._Element) -> None:
    await broadcast(router, sender, stanza, reflect=True)


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
    _deliver_to_accounts(router, stanza, _local_recipients(router, sender))
    _to_own_resources(router, sender, stanza)


async def _fan_out_yielding(router: Router, sender: Session, stanza: etree._Element) -> None:
    """_fan_out for the sender's own task: a large fan-out lets every other client have a
    turn between chunks (the sender's next stanza waits, so its order is kept)."""
    recipients = _local_recipients(router, sender)
    for start in range(0, len(recipients), FAN_OUT_CHUNK):
        if start:
            await trio.sleep(0)
        _deliver_to_accounts(router, stanza, recipients[start:start + FAN_OUT_CHUNK])
    _to_own_resources(router, sender, stanza)


def _to_own_resources(router: Router, sender: Session, stanza: etree._Element) -> None:
    for session in router.sessions.available_local(sender.bare_jid):
        if session is not sender:
            session.send_stanza(stanza)


def _local_recipients(router: Router, sender: Session) -> list[str]:
    """The subscribed contacts (the roster's index, never a copy of it) with a session
    known here, in O(min(subscribers, accounts with sessions)); blocks both ways are
    checked for those only."""
    user = sender.bare_jid
    candidates = router.sessions.accounts_among(router.store.subscribers(user))
    if router.store.has_blocklist(user):
        return [c for c in candidates
                if not _blocked_either_way(router, user, sender.jid, c, JID.parse(c))]
    return [c for c in candidates if not router.local.is_blocked(c, sender.jid)]


def _deliver_to_accounts(router: Router, stanza: etree._Element, accounts: list[str]) -> None:
    for bare in accounts:
        sessions = router.sessions.available_local(bare)
        if not sessions:
            continue
        element = copy.copy(stanza)
        element.set("to", bare)
        data = serialize(element)
        for session in sessions:
            session.send(data)


def _directed_unavailable(router: Router, sender: LocalSession, stanza: etree._Element) -> None:
    for target in list(sender.directed):
        directed(router, stanza, JID.parse(target), None)
    sender.directed.clear()


def _subscribers(router: Router, user: str) -> list[str]:
    """The contacts entitled to the user's presence (subscription from or both)."""
    return sorted(router.store.subscribers(user))


def _probe_contacts(router: Router, sender: LocalSession) -> None:
    """Answers the probes the server sends for the user's new session (§4.3.2)."""
    user = sender.bare_jid
    for contact, item in router.store.roster(user)["items"].items():
        if not roster_states.has_to(item["subscription"]):
            continue
        if _blocked_either_way(router, user, sender.jid, contact, JID.parse(contact)):
            continue
        _contact_presence_to(router, contact, user, [sender])
    for session in router.sessions.available(user):
        if session is not sender and session.presence is not None:
            sender.send(session.presence)


def _contact_presence_to(router: Router, contact: str, user: str, targets: list[Session],
                         unavailable: bool = False) -> None:
    """The contact's current presence to the user's `targets`, if the contact's roster lets
    the user see it (§4.3.2); with `unavailable`, a contact with no available resource is
    reported unavailable (what the targets may still show is stale)."""
    their_item = router.store.roster_item(contact, user)
    if their_item is None or not roster_states.has_from(their_item["subscription"]):
        return
    sessions = [s for s in router.sessions.available(contact) if s.presence is not None]
    for session in sessions:
        for target in targets:
            target.send(session.presence)
    if unavailable and not sessions:
        data = serialize(make("presence", {"type": "unavailable", "from": contact}))
        for target in targets:
            target.send(data)


def directed(router: Router, stanza: etree._Element, target: JID,
             sender: LocalSession | None) -> None:
    """Directed presence (§4.6): to one resource, or to every available resource of an account."""
    _deliver_directed(router, stanza, target)
    if sender is None:
        return
    if stanza.get("type") is not None:
        sender.directed.discard(str(target))
    elif not _is_subscriber(router, sender.bare_jid, str(target.bare)):
        # A subscriber gets the user's unavailable broadcast anyway; tracking it too would
        # tell it twice (RFC 3921 §5.1.4 left such directed presence untracked).
        sender.directed.add(str(target))


def _is_subscriber(router: Router, user: str, contact: str) -> bool:
    item = router.store.roster_item(user, contact)
    return item is not None and roster_states.has_from(item["subscription"])


def _deliver_directed(router: Router, stanza: etree._Element, target: JID) -> None:
    from_jid = JID.parse(stanza.get("from"))
    bare = str(target.bare)
    if _is_remote(router, bare):  # to another server; its server decides who gets it
        router.s2s.send_stanza(stanza)
        return
    if router.local.is_blocked(bare, from_jid):
        return
    if target.resource is not None:
        session = router.sessions.session(target)
        if session is not None:
            session.send_stanza(stanza)
    else:
        for session in router.sessions.available(bare):
            session.send_stanza(stanza)


def send_current_presence(router: Router, user: str, contact: str) -> None:
    """Presence of each of `user`'s available resources, to `contact`'s resources (or,
    for a contact on another server, to that server)."""
    if _is_remote(router, contact):
        if not router.local.is_blocked(user, JID.parse(contact)):
            _presence_to_remote(router, user, contact)
        return
    if _blocked_either_way(router, user, JID.parse(user), contact, JID.parse(contact)):
        return
    _current_presence_from(router, user, router.sessions.available(contact))


def send_unavailable(router: Router, user: str, contact: str) -> None:
    """Unavailable from each of `user`'s resources to every resource of `contact`, anywhere
    (unless the contact blocks the user: then it would be dropped on arrival); for a
    contact on another server, to that server."""
    if _is_remote(router, contact):
        _unavailable_to_remote(router, user, contact)
        return
    if router.local.is_blocked(contact, JID.parse(user)):
        return
    _unavailable_from(router, user, router.sessions.available(contact))


def _current_presence_from(router: Router, user: str, targets: list[Session]) -> None:
    if not targets:
        return
    for session in router.sessions.available(user):
        if session.presence is None:
            continue
        element = etree.fromstring(session.presence, _PARSER)
        for target in targets:
            element.set("to", target.bare_jid)
            target.send_stanza(element)


def _unavailable_from(router: Router, user: str, targets: list[Session]) -> None:
    if not targets:
        return
    for session in router.sessions.available(user):
        for target in targets:
            target.send_stanza(make("presence", {"type": "unavailable", "from": session.full_jid,
                                                 "to": target.bare_jid}))


async def on_session_closed(router: Router, pacer: PresencePacer,
                            session: LocalSession) -> None:
    """A connection ended without unavailable presence: send it for the client (§4.5.2)."""
    async with pacer.closing(session):  # a presence still waiting is dropped
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
    await inbound_subscription(router, contact, str(target.bare), ptype, stanza)
    if ptype == "subscribed":
        _probe(router, str(target.bare), contact)  # §3.1.6: learn the contact's presence


def _fan_out_remote(router: Router, sender: Session, stanza: etree._Element,
                    initial: bool) -> None:
    """Broadcast (§4.2.2, §4.4.2) to subscribed contacts elsewhere; an initial presence
    also probes the contacts we are subscribed to (§4.2.1)."""
    user = sender.bare_jid
    for contact in _remote_subscribers(router, user):
        if not router.local.is_blocked(user, JID.parse(contact)):
            element = copy.copy(stanza)
            element.set("to", contact)
            router.s2s.send_stanza(element)
    if not initial:
        return
    for contact, item in router.store.roster(user)["items"].items():  # once per session
        if _is_remote(router, contact) and roster_states.has_to(item["subscription"]):
            _probe(router, user, contact)


def _remote_subscribers(router: Router, user: str) -> list[str]:
    """The subscribed contacts on other servers, from the roster's index: one lookup
    per domain (a component or a served host added since counts at once)."""
    return [contact for domain, contacts in router.store.subscribers_by_domain(user).items()
            if _is_remote(router, domain) for contact in contacts]


def _probe(router: Router, user: str, contact: str) -> None:
    router.s2s.send_stanza(make("presence", {"type": "probe", "from": user, "to": contact}))


def _answer_remote_probe(router: Router, stanza: etree._Element, target: JID) -> None:
    """§4.3.2: a contact's server asks for the user's presence; answered only when the
    contact is subscribed to it."""
    user, asker = str(target.bare), stanza.get("from") or ""
    if router.local.is_blocked(user, JID.parse(asker)):
        return  # XEP-0191 §3.3: no answer to a blocked JID's probe
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


def _unavailable_to_remote(router: Router, user: str, contact: str) -> None:
    for session in router.sessions.available(user):
        router.s2s.send_stanza(make("presence", {"type": "unavailable", "from": session.full_jid,
                                                 "to": contact}))
