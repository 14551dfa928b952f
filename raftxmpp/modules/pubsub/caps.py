"""Entity capabilities (XEP-0115) of the cluster's client sessions, for PEP's filtered
notifications (XEP-0163 §4.3.2: a resource gets a node's events when its caps list
the node's namespace with "+notify").

Volatile, like presence: which caps each available session announced is read from
its presence, which already travels in the session's gossip entry, so every node
knows it for every session. What a caps hash *means* (its +notify namespaces) is
learnt once per hash by the node holding a session that announced it: that node asks
the client (disco#info to node#ver), checks the answer against the hash (§5.1, §5.4),
and on success gossips "e:<hash>:<ver>" → namespaces to the cluster, where each
node keeps it in a bounded cache that outlives the node that found it. An answer
that does not match its hash (or caps without a hash) applies to that session alone
and stays on its node (§5.4 rule 3.9). A node that does not know a session's caps (not
shareable, or the gossip still on its way) hands that session's notification to the
session's node, which decides (notify.Fanout.add_undecided).

Never blocks: the query is one stanza out, its answer one callback in (the router's
`iq_callbacks`), so a client's own presence never waits for its disco answer.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp import metrics
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.sessions import LocalSession, RemoteSession
from raftxmpp.xml import ns
from raftxmpp.xml.stanza import make

if TYPE_CHECKING:
    from raftxmpp.routing.router import Router

log = logging.getLogger("raftxmpp.pubsub.caps")

GOSSIP_PREFIX = "e:"  # entity capabilities; gossip keys start with two characters
C = f"{{{ns.CAPS}}}c"
QUERY = f"{{{ns.DISCO_INFO}}}query"
NOTIFY = "+notify"
NO_CAPS = "none:"  # the key of a session whose presence carries no <c/>
# The hash functions of the IANA registry XEP-0115 §5 names, as hashlib knows them.
HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384",
          "sha-512": "sha512"}
CACHE_SIZE = 10_000  # verified hashes remembered per node
GOSSIPED = 1_000  # verified hashes this node keeps in its gossip entries
PENDING = 1_000  # disco#info queries waiting for an answer
MAX_NAMESPACES = 256
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

# (session, namespaces it now asks +notify for that it did not before)
InterestHandler = Callable[[LocalSession, frozenset[str]], None]


# -- the verification string (§5.1, §5.4) ---------------------------------------------------------


def verification_string(query: etree._Element) -> str | None:
    """S of XEP-0115 §5.1 for a disco#info answer, or None when §5.4 calls it ill-formed."""
    identities = []
    for identity in query.findall(f"{{{ns.DISCO_INFO}}}identity"):
        lang = identity.get(f"{{{ns.XML}}}lang", "")
        identities.append(f"{identity.get('category', '')}/{identity.get('type', '')}/"
                          f"{lang}/{identity.get('name', '')}")
    features = [f.get("var", "") for f in query.findall(f"{{{ns.DISCO_INFO}}}feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None
    forms = {}
    for form in query.findall(f"{{{ns.DATA_FORMS}}}x"):
        form_type, fields = _extended_form(form)
        if form_type is None:
            continue  # no hidden FORM_TYPE: ignored (§5.4 rule 3.6)
        if form_type == "" or form_type in forms:
            return None
        forms[form_type] = fields
    text = "".join(f"{i}<" for i in sorted(identities, key=_octets))
    text += "".join(f"{f}<" for f in sorted(features, key=_octets))
    for form_type in sorted(forms, key=_octets):
        text += f"{form_type}<"
        for var, values in sorted(forms[form_type], key=lambda f: _octets(f[0])):
            text += f"{var}<" + "".join(f"{v}<" for v in sorted(values, key=_octets))
    return text


def _octets(text: str) -> bytes:
    return text.encode()  # "i;octet" collation (RFC 4790 §9.3)


def _extended_form(form: etree._Element) -> tuple[str | None, list[tuple[str, list[str]]]]:
    form_type, fields = None, []
    for field in form.findall(f"{{{ns.DATA_FORMS}}}field"):
        values = [v.text or "" for v in field.findall(f"{{{ns.DATA_FORMS}}}value")]
        if field.get("var") == "FORM_TYPE":
            if field.get("type") != "hidden":
                return None, []
            form_type = values[0] if len(set(values)) == 1 else ""
        else:
            fields.append((field.get("var", ""), values))
    return form_type, fields


def verification_hash(query: etree._Element, algorithm: str) -> str | None:
    text = verification_string(query)
    if text is None or algorithm not in HASHES:
        return None
    digest = hashlib.new(HASHES[algorithm], text.encode()).digest()
    return base64.b64encode(digest).decode()


def notify_namespaces(query: etree._Element) -> frozenset[str]:
    features = (f.get("var", "") for f in query.findall(f"{{{ns.DISCO_INFO}}}feature"))
    return frozenset(f[:-len(NOTIFY)] for f in features if f.endswith(NOTIFY) and len(f) > 7)


def caps_of(presence: etree._Element) -> tuple[str, str, str] | None:
    """(hash, node, ver) of a presence's <c/>; hash is "" for legacy caps."""
    c = presence.find(C)
    if c is None or not c.get("ver") or not c.get("node"):
        return None
    return c.get("hash", ""), c.get("node"), c.get("ver")


def cache_key(caps: tuple[str, str, str]) -> str:
    algorithm, node, ver = caps
    # Legacy caps name a client version, not a feature set: never shared (§5.4 rule 1).
    return f"{algorithm}:{ver}" if algorithm else f"legacy:{node}#{ver}"


# -- the cluster's caps ---------------------------------------------------------------------------


class Caps:
    def __init__(self, router: Router) -> None:
        self.router = router
        # Verified hash → its +notify namespaces: from this node's queries and from gossip.
        self.by_key: OrderedDict[str, frozenset[str]] = OrderedDict()
        # Every available session of the cluster (full JID) → the caps key it announced.
        self.session_keys: dict[str, str] = {}
        # Sessions here whose answer was not shareable: their own namespaces.
        self.session_own: dict[str, frozenset[str]] = {}
        # Outstanding queries: IQ id → (full JID, key, (hash, node, ver)).
        self.pending: OrderedDict[str, tuple[str, str, tuple[str, str, str]]] = OrderedDict()
        # Sessions here whose query got an error: their next presence asks again, even
        # with the same caps (a client may answer once it has set up its disco info).
        self.unanswered: set[str] = set()
        self.gossiped: OrderedDict[str, None] = OrderedDict()
        self.interest_handlers: list[InterestHandler] = []

    # -- questions the notification code asks -------------------------------------------------

    def namespaces(self, full_jid: str) -> frozenset[str] | None:
        """The +notify namespaces of a session, None while unknown."""
        own = self.session_own.get(full_jid)
        if own is not None:
            return own
        key = self.session_keys.get(full_jid)
        if key == NO_CAPS:
            return frozenset()  # a presence without caps asks for nothing, on every node
        return None if key is None else self.by_key.get(key)

    def wants(self, full_jid: str, node: str) -> bool:
        namespaces = self.namespaces(full_jid)
        return namespaces is not None and node in namespaces

    # -- presence of sessions here (the "client-presence" hook) -----------------------------------

    def local_presence(self, session: LocalSession, stanza: etree._Element) -> None:
        """Caps describe the session, whoever an available presence is for: some clients
        announce new caps in presence directed to their contacts (slixmpp does). Only an
        unavailable broadcast ends the session's interests (leaving a room does not)."""
        kind = stanza.get("type")
        if kind == "unavailable":
            if stanza.get("to") is None:
                self.forget(session.full_jid)
            return
        if kind is not None:
            return
        caps = caps_of(stanza)
        before = self.namespaces(session.full_jid) or frozenset()
        initial = session.full_jid not in self.session_keys
        key = cache_key(caps) if caps else NO_CAPS
        if not initial and key == self.session_keys[session.full_jid] and \
                session.full_jid not in self.unanswered:
            return
        self.unanswered.discard(session.full_jid)
        self.session_own.pop(session.full_jid, None)
        self.session_keys[session.full_jid] = key
        if caps is None:
            self.session_own[session.full_jid] = frozenset()
            return
        known = self.by_key.get(key)
        if known is not None:
            metrics.PUBSUB_CAPS.labels("cached").inc()
            self._interest(session, known - (frozenset() if initial else before))
            return
        self._ask(session, key, caps)

    def _ask(self, session: LocalSession, key: str, caps: tuple[str, str, str]) -> None:
        if any(p[0] == session.full_jid and p[1] == key for p in self.pending.values()):
            return
        iq_id = "caps" + secrets.token_hex(8)
        iq = make("iq", {"type": "get", "id": iq_id, "from": session.bare_jid,
                         "to": session.full_jid})
        etree.SubElement(iq, QUERY, nsmap={None: ns.DISCO_INFO}, node=f"{caps[1]}#{caps[2]}")
        self.pending[iq_id] = (session.full_jid, key, caps)
        self.router.iq_callbacks[iq_id] = self._answered
        while len(self.pending) > PENDING:
            old_id, _ = self.pending.popitem(last=False)
            self.router.iq_callbacks.pop(old_id, None)
            metrics.PUBSUB_CAPS.labels("failed").inc()
        metrics.PUBSUB_CAPS.labels("queried").inc()
        session.send_stanza(iq)

    def _answered(self, stanza: etree._Element) -> None:
        entry = self.pending.pop(stanza.get("id", ""), None)
        if entry is None:
            return
        full_jid, key, caps = entry
        if stanza.get("from") != full_jid:
            metrics.PUBSUB_CAPS.labels("failed").inc()
            return  # only the session asked may answer for it
        query = stanza.find(QUERY)
        if stanza.get("type") != "result" or query is None:
            metrics.PUBSUB_CAPS.labels("failed").inc()
            namespaces = frozenset()
            self.unanswered.add(full_jid)
        else:
            namespaces = notify_namespaces(query)
            if caps[0] and verification_hash(query, caps[0]) == caps[2] \
                    and len(namespaces) <= MAX_NAMESPACES:
                metrics.PUBSUB_CAPS.labels("verified").inc()
                self._remember(key, namespaces)
                self._share(key, namespaces)
            else:
                metrics.PUBSUB_CAPS.labels("unverified").inc()
                log.debug("caps of %s do not match their hash %s", full_jid, key)
        session = self._local(full_jid)
        if session is None or self.session_keys.get(full_jid) != key:
            return  # gone, or its caps changed again meanwhile
        if key not in self.by_key:
            self.session_own[full_jid] = namespaces
        self._interest(session, namespaces)

    def _local(self, full_jid: str) -> LocalSession | None:
        try:
            return self.router.sessions.local_session(JID.parse(full_jid))
        except InvalidJID:
            return None

    def _interest(self, session: LocalSession, added: frozenset[str]) -> None:
        if added:
            for handler in self.interest_handlers:
                handler(session, added)

    def forget(self, full_jid: str) -> None:
        self.session_keys.pop(full_jid, None)
        self.session_own.pop(full_jid, None)
        self.unanswered.discard(full_jid)

    # -- sessions on other nodes ---------------------------------------------------------------------

    def remote_change(self, session: RemoteSession, was_available: bool) -> None:
        if not session.available or session.presence is None:
            self.forget(session.full_jid)
            return
        try:
            presence = etree.fromstring(session.presence, _PARSER)
        except etree.XMLSyntaxError:
            return
        caps = caps_of(presence)
        self.session_keys[session.full_jid] = cache_key(caps) if caps else NO_CAPS

    # -- the cluster-wide cache -------------------------------------------------------------------

    def _remember(self, key: str, namespaces: frozenset[str]) -> None:
        self.by_key[key] = namespaces
        self.by_key.move_to_end(key)
        while len(self.by_key) > CACHE_SIZE:
            self.by_key.popitem(last=False)

    def _share(self, key: str, namespaces: frozenset[str]) -> None:
        gossip = self.router.sessions.gossip
        if gossip is None:
            return
        gossip.set(GOSSIP_PREFIX + key, {"n": sorted(namespaces)})
        self.gossiped[key] = None
        while len(self.gossiped) > GOSSIPED:
            old, _ = self.gossiped.popitem(last=False)
            gossip.delete(GOSSIP_PREFIX + old)

    def on_gossip(self, node: str, key: str, old: object, new: object) -> None:
        """A verified hash another node learnt. Its owner's death deletes the entry; the
        meaning of a hash does not change, so the cache keeps it."""
        if not isinstance(new, dict):
            return
        namespaces = new.get("n")
        if not isinstance(namespaces, list) or len(namespaces) > MAX_NAMESPACES or \
                not all(isinstance(n, str) and 0 < len(n) <= 1024 for n in namespaces):
            log.warning("ignoring malformed caps gossip %s from %s", key[:80], node)
            return
        self._remember(key[len(GOSSIP_PREFIX):], frozenset(namespaces))

