"""Message archive management (XEP-0313, urn:xmpp:mam:2 and #extended) with unique and
stable stanza ids (XEP-0359) and the hints of XEP-0334.

What is archived: one-to-one messages of type chat or normal with a body (or a <store/>
hint), unless hinted <no-store/> or <no-permanent-store/>, in the sender's archive when
a client here sends it and in the recipient's when it is delivered to (or stored
offline for) an account here, each as its owner's preferences say. One id is drawn per
message on the node that routes it; it travels in <stanza-id/> with the message (to
the recipient, its carbons, its offline copy) and in the archive row that Raft carries
to every node, so every node and every copy show the same id.

Routing never waits for the archive (../shared/DESIGN.md): rows queue here and a
background writer commits them in batches (many rows per Raft entry, flushed by size
and time). Queries first drain this node's queue and take a linearizable read point, so
a client sees what it sent a moment ago, whichever node it asks.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from functools import partial

import trio
from lxml import etree

from raftxmpp import metrics
from raftxmpp.cluster import archive_state
from raftxmpp.cluster.archive import Query, Row, UnknownId
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.config import ArchiveSection
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.routing.local import MESSAGE
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.routing.sessions import LocalSession, link_hops
from raftxmpp.xml import forms, ns
from raftxmpp.xml.errors import StanzaError
from raftxmpp.xml.stanza import make

log = logging.getLogger("raftxmpp.mam")

MAM = "urn:xmpp:mam:2"
MAM_EXTENDED = "urn:xmpp:mam:2#extended"
SID = "urn:xmpp:sid:0"
HINTS = "urn:xmpp:hints"
STANZA_ID = f"{{{SID}}}stanza-id"
BODY = f"{{{ns.CLIENT}}}body"
STORE = f"{{{HINTS}}}store"
NO_STORE = f"{{{HINTS}}}no-store"
NO_PERMANENT_STORE = f"{{{HINTS}}}no-permanent-store"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
# Rows waiting for their batch; past this the oldest go (counted), so a cluster without
# quorum for long cannot take the node's memory.
MAX_QUEUE = 200_000
# A client's messages wait while more than this many full batches are queued (room()).
PACE_BATCHES = 10
BATCH_BYTES = 1 << 20  # stanza bytes in one archive_append (MAX_RAFT_FRAME is 8 MiB)
_CONTEXTS: weakref.WeakKeyDictionary[Router, Archive] = weakref.WeakKeyDictionary()
FORM_FIELDS = ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids")


def setup(router: Router) -> None:
    config = router.config.archive
    if not config.enabled:
        return
    archive = Archive(router, config)
    _CONTEXTS[router] = archive
    router.outbound_checks.append(archive.on_client_message)
    router.outbound_pacers.append(archive.writer.room)
    router.local.archive_hook = archive.on_delivery
    router.background.append(archive.writer.run)
    router.add_hook("sm-before-ack", archive.before_ack)
    router.background.append(archive.expire_old)
    router.register_iq("account", "set", MAM, partial(query, archive))
    router.register_iq("account", "get", MAM, partial(metadata_or_form, archive))
    router.account_features.update({MAM, MAM_EXTENDED, SID})


def context(router: Router) -> Archive | None:
    """This node's archive (None when [archive] enabled is false): stream management
    waits on `context(router).writer.drain()` before it acknowledges a message."""
    return _CONTEXTS.get(router)


# -- what to archive --------------------------------------------------------------------------------


def archivable(stanza: etree._Element) -> bool:
    """XEP-0313 §5.1.1 with XEP-0334 §4: messages a person would want in their history."""
    if stanza.get("type", "normal") not in ("chat", "normal"):
        return False
    wanted = False
    for child in stanza:  # one pass over the children: cheaper than lxml's find()
        tag = child.tag
        if tag in (BODY, STORE):
            wanted = True
        elif tag in (NO_STORE, NO_PERMANENT_STORE):
            return False
    return wanted


def new_id() -> str:
    """XEP-0359 §4: unique and unpredictable (96 random bits)."""
    return secrets.token_urlsafe(12)


class ArchiveWriter:
    """Queues archive rows and commits them in batches from one background task."""

    def __init__(self, router: Router, config: ArchiveSection) -> None:
        self.router = router
        self.config = config
        self.rows: list[Row] = []
        self.queued = 0  # rows ever queued …
        self.done = 0  # … and ever out of the queue (committed or dropped), in order
        self.wakeup = trio.Event()
        self.progress = trio.Event()
        self._dropped = 0  # rows dropped since the last warning
        self.committing = True  # the last batch committed (False: no quorum, RaftUnavailable)
        self._drop_logged = -1e9

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.queued += 1
        metrics.ARCHIVE_ROWS.labels("queued").inc()
        if len(self.rows) > MAX_QUEUE:
            del self.rows[0]
            self._advance(1, "dropped")
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged >= 10:  # a line per row would flood the log
                log.warning("archive queue full: %d oldest rows dropped", self._dropped)
                self._dropped, self._drop_logged = 0, now
        self.wakeup.set()

    async def room(self) -> None:
        """Backpressure for a client's next message: it waits while the writer is more
        than PACE_BATCHES Raft entries behind, so its sender slows down (its reading
        stops, TCP pushes back) instead of the queue growing until rows are dropped and
        stream management's acknowledgements wait past their deadline."""
        limit = PACE_BATCHES * self.config.batch_rows
        if len(self.rows) < limit or not self.committing:
            return  # without a quorum routing goes on: the rows wait, as before
        metrics.ARCHIVE_PACED.inc()
        self.wakeup.set()
        while len(self.rows) >= limit and self.committing:
            await self.progress.wait()

    async def drain(self, timeout: float = 5.0) -> None:
        """Returns once every row queued before the call is committed; RaftUnavailable
        when that takes longer than `timeout`."""
        target = self.queued
        self.wakeup.set()
        with trio.move_on_after(timeout):
            while self.done < target:
                await self.progress.wait()
            return
        raise RaftUnavailable("the archive could not commit in time")

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            if len(self.rows) < self.config.batch_rows:
                await trio.sleep(self.config.flush_interval)  # let the batch fill
            self.wakeup = trio.Event()
            while self.rows:
                await self._flush_one()

    async def _flush_one(self) -> None:
        batch = self._next_batch()
        try:
            await self.router.store.archive_append(batch, self.config.max_per_account)
        except RaftUnavailable:
            metrics.ARCHIVE_ROWS.labels("retried").inc(len(batch))
            if self.committing:
                self.committing = False
                self._wake_waiters()  # paced senders go on: no quorum, no pacing
            await trio.sleep(0.5)  # kept in the queue; an id makes a duplicate harmless
            return
        except StoreError as exc:  # refused: retrying would be refused again
            log.error("archive batch of %d rows refused: %s", len(batch), exc)
            self._drop_front(len(batch), "dropped")
            return
        except Exception:  # a bug here must not end the node: counted, logged, retried
            log.exception("archive batch of %d rows failed", len(batch))
            metrics.ARCHIVE_ROWS.labels("retried").inc(len(batch))
            await trio.sleep(1.0)
            return
        self.committing = True
        self._drop_front(len(batch), "committed")

    def _next_batch(self) -> list[Row]:
        """The oldest rows, at most batch_rows of them and BATCH_BYTES of stanzas (one
        row at least): a Raft entry stays far below the Raft frame limit."""
        size = 0
        for n, row in enumerate(self.rows[:self.config.batch_rows]):
            size += len(row[5])
            if size > BATCH_BYTES and n:
                return self.rows[:n]
        return self.rows[:self.config.batch_rows]

    def _drop_front(self, n: int, outcome: str) -> None:
        del self.rows[:n]
        self._advance(n, outcome)

    def _advance(self, n: int, outcome: str) -> None:
        self.done += n
        metrics.ARCHIVE_ROWS.labels(outcome).inc(n)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        progress, self.progress = self.progress, trio.Event()
        progress.set()


@dataclass
class Archive:
    router: Router
    config: ArchiveSection

    def __post_init__(self) -> None:
        self.writer = ArchiveWriter(self.router, self.config)

    def wants(self, owner: str, other_bare: str) -> bool:
        return self.router.store.archive_wants(owner, other_bare, self.config.default)

    def _ours(self, jid: str) -> bool:
        """A stanza-id 'by' this server or one of its accounts (XEP-0359 §3.1)."""
        return jid.partition("@")[2].partition("/")[0] in self.router.served_hosts() \
            or jid in self.router.served_hosts()

    # -- stamping and queueing -------------------------------------------------------------------

    def on_client_message(self, stanza: etree._Element, session: LocalSession) -> None:
        """A message a client here sends: no stanza-id of ours may come from a client;
        archived for the sender, it carries the sender's id (seen by its sent carbons)."""
        if stanza.tag != MESSAGE:
            return
        for old in stanza.findall(STANZA_ID):
            if self._ours(old.get("by", "")):
                stanza.remove(old)
        to = stanza.get("to")
        if not to or not archivable(stanza):
            return
        try:
            target = JID.parse(to)
        except InvalidJID:
            return  # the router answers <jid-malformed/>; nothing to archive
        if not self.wants(session.bare_jid, str(target.bare)):
            return
        sid = new_id()
        _stamp(stanza, session.bare_jid, sid)
        self._queue(stanza, (session.bare_jid, sid, time.time(), str(target), True))

    def on_delivery(self, stanza: etree._Element, account: str, from_jid: JID) -> None:
        """A chat or normal message about to reach `account` (a session here or there,
        or its offline store): the recipient's stanza-id, and its archive row."""
        ids = [child for child in stanza if child.tag == STANZA_ID]
        mine = [e for e in ids if e.get("by") == account]
        sender = str(from_jid.bare)
        if mine and (link_hops.get() > 0 or sender == account):
            # Stamped and archived already: by the node that routed it first, or as the
            # sender's own copy of a message to itself (only a client here sends as us).
            return
        for old in mine:
            stanza.remove(old)
        if not archivable(stanza):
            return
        if not self.wants(account, sender):
            return
        for old in ids:
            # The sender's id, stamped by on_client_message on the node the sender uses:
            # one message keeps one id in both archives (only ours is trusted for that);
            # the element becomes the recipient's.
            if old.get("by") == sender and self._ours(sender):
                old.set("by", account)
                sid = old.get("id")
                break
        else:
            sid = new_id()
            _stamp(stanza, account, sid)
        self._queue(stanza, (account, sid, time.time(), str(from_jid), False))

    def _queue(self, stanza: etree._Element, row: tuple) -> None:
        data = etree.tostring(stanza)
        if len(data) > archive_state.MAX_STANZA:
            # The state machine refuses a batch with a row past its bound: one huge
            # message must not cost the others their place in the archive.
            metrics.ARCHIVE_ROWS.labels("dropped").inc()
            log.info("message of %d bytes for %s not archived: too large", len(data), row[0])
            return
        self.writer.add((*row, data))

    async def before_ack(self, session: LocalSession) -> None:
        """A stream-management ack covers the archive rows of what it acknowledges."""
        if self.writer.done < self.writer.queued:
            await self.writer.drain()

    # -- retention ------------------------------------------------------------------------------

    async def expire_old(self) -> None:
        """Deletes what is older than retention_days, once a minute (a quarter of the
        retention when that is shorter), from the leader: the cut-off time goes in the
        command, so every node deletes the same rows."""
        if self.config.retention_days <= 0:
            return
        period = max(1.0, min(60.0, self.config.retention_days * 86400 / 4))
        while True:
            await trio.sleep(period)
            raft = self.router.store.raft
            if raft.status().get("role") != "leader":
                continue
            before = time.time() - self.config.retention_days * 86400
            try:
                await self.router.store.archive_purge(None, before)
            except (RaftUnavailable, StoreError) as exc:
                log.warning("archive retention sweep failed: %s", exc)


def _stamp(stanza: etree._Element, by: str, sid: str) -> None:
    # First child: whatever else the message carries keeps its place at the end.
    element = etree.Element(STANZA_ID, nsmap={None: SID}, by=by, id=sid)
    stanza.insert(0, element)


# -- queries (XEP-0313 §4) -------------------------------------------------------------------------


def _own_archive(request: IqRequest) -> str:
    if request.to_jid != request.from_jid.bare:
        raise StanzaError("forbidden", text="only the account itself reads its archive")
    return str(request.to_jid)


async def metadata_or_form(archive: Archive, request: IqRequest) -> etree._Element:
    owner = _own_archive(request)
    name = etree.QName(request.payload).localname
    if name == "query":
        metrics.ARCHIVE_QUERIES.labels("form").inc()
        return query_form()
    if name == "metadata":
        metrics.ARCHIVE_QUERIES.labels("metadata").inc()
        return await archive_metadata(archive, owner)
    if name == "prefs":
        metrics.ARCHIVE_QUERIES.labels("prefs").inc()
        return prefs_element(archive, owner)
    raise StanzaError("feature-not-implemented")


def query_form() -> etree._Element:
    """XEP-0313 §4.1.1 and #extended: the fields a query may use."""
    element = etree.Element(f"{{{MAM}}}query", nsmap={None: MAM})
    element.append(forms.form("form", [
        forms.Field("with", "jid-single"),
        forms.Field("start", "text-single"),
        forms.Field("end", "text-single"),
        forms.Field("before-id", "text-single"),
        forms.Field("after-id", "text-single"),
        forms.Field("ids", "text-multi"),
    ], form_type=MAM))
    return element


async def archive_metadata(archive: Archive, owner: str) -> etree._Element:
    """XEP-0313 §7.1: the archive's first and last message."""
    await _catch_up(archive)
    element = etree.Element(f"{{{MAM}}}metadata", nsmap={None: MAM})
    bounds = archive.router.store.archive_bounds(owner)
    if bounds is not None:
        for name, (sid, ts) in zip(("start", "end"), bounds, strict=True):
            etree.SubElement(element, f"{{{MAM}}}{name}", id=sid, timestamp=stamp(ts))
    return element


async def _catch_up(archive: Archive) -> None:
    """This node's queued rows committed, and every commit acknowledged anywhere before
    now applied here: the query sees the history a client saw acknowledged."""
    await archive.writer.drain()
    await archive.router.store.fresh()


async def query(archive: Archive, request: IqRequest) -> etree._Element | None:
    """A query, a preferences change, or an unknown element of mam:2."""
    owner = _own_archive(request)
    name = etree.QName(request.payload).localname
    if name == "prefs":
        metrics.ARCHIVE_QUERIES.labels("prefs").inc()
        return await set_prefs(archive, owner, request.payload)
    if name != "query":
        raise StanzaError("feature-not-implemented")
    metrics.ARCHIVE_QUERIES.labels("query").inc()
    session = request.sender
    if session is None:
        raise StanzaError("service-unavailable")
    q, flip = parse_query(request.payload, owner, archive.config)
    await _catch_up(archive)
    try:
        page = archive.router.store.archive_query(q)
    except UnknownId as exc:
        raise StanzaError("item-not-found", text=f"no message {exc} in the archive") from None
    rows = list(reversed(page.rows)) if flip else page.rows
    queryid = request.payload.get("queryid")
    for row in rows:
        session.send_stanza(result_message(owner, session.full_jid, queryid, row))
    return fin_element(page, rows)


def parse_query(payload: etree._Element, owner: str,
                config: ArchiveSection) -> tuple[Query, bool]:
    q = Query(owner, max=config.page_size)
    x = forms.find(payload)
    if x is not None:
        try:
            values = forms.submitted_values(x)
        except ValueError:
            raise StanzaError("bad-request", text="the query form must be of type submit") from None
        _apply_form(q, values)
    rsm = payload.find(f"{{{ns.RSM}}}set")
    if rsm is not None:
        _apply_rsm(q, rsm, config)
    flip = payload.find(f"{{{MAM}}}flip-page") is not None
    return q, flip


def _apply_form(q: Query, values: dict[str, list[str]]) -> None:
    unknown = set(values) - set(FORM_FIELDS)
    if unknown:
        raise StanzaError("bad-request", text=f"unsupported field {sorted(unknown)[0]}")
    if values.get("FORM_TYPE", [MAM]) != [MAM]:
        raise StanzaError("bad-request", text=f"FORM_TYPE must be {MAM}")

    def one(var: str) -> str | None:
        got = values.get(var)
        if not got:
            return None
        if len(got) != 1 or not got[0]:
            raise StanzaError("bad-request", text=f"{var} takes one value")
        return got[0]

    if (with_jid := one("with")) is not None:
        try:
            q.with_jid = str(JID.parse(with_jid))
        except InvalidJID:
            raise StanzaError("jid-malformed", text="with is not a JID") from None
    q.start = _time(one("start"), "start")
    q.end = _time(one("end"), "end")
    q.after_id = one("after-id")
    q.before_id = one("before-id")
    if "ids" in values:
        q.ids = [i for i in values["ids"] if i]


def _time(text: str | None, var: str) -> float | None:
    """A XEP-0082 DateTime; one without a zone is taken as UTC."""
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise StanzaError("bad-request", text=f"{var} is not a XEP-0082 date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _apply_rsm(q: Query, rsm: etree._Element, config: ArchiveSection) -> None:
    """XEP-0059: max (capped by the server, §2.1), after, before (empty: the last page),
    index."""
    max_element = rsm.find(f"{{{ns.RSM}}}max")
    if max_element is not None:
        try:
            q.max = int(max_element.text or "")
        except ValueError:
            raise StanzaError("bad-request", text="max must be a number") from None
        if q.max < 0:
            raise StanzaError("bad-request", text="max must not be negative")
        q.max = min(q.max, config.max_page_size)
    after = rsm.find(f"{{{ns.RSM}}}after")
    before = rsm.find(f"{{{ns.RSM}}}before")
    index = rsm.find(f"{{{ns.RSM}}}index")
    if after is not None:
        if not after.text:
            raise StanzaError("bad-request", text="after needs an id")
        q.rsm_after = after.text
    if before is not None:
        q.rsm_before = before.text or ""
    if index is not None:
        try:
            q.rsm_index = int(index.text or "")
        except ValueError:
            raise StanzaError("bad-request", text="index must be a number") from None
        if q.rsm_index < 0:
            raise StanzaError("bad-request", text="index must not be negative")


def result_message(owner: str, to: str, queryid: str | None, row) -> etree._Element:
    """XEP-0313 §4.2: one archived message, forwarded (XEP-0297) with its time."""
    message = make("message", {"from": owner, "to": to, "id": new_id()})
    result = etree.SubElement(message, f"{{{MAM}}}result", nsmap={None: MAM})
    if queryid is not None:
        result.set("queryid", queryid)
    result.set("id", row.sid)
    forwarded = etree.SubElement(result, f"{{{ns.FORWARD}}}forwarded", nsmap={None: ns.FORWARD})
    etree.SubElement(forwarded, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY},
                     stamp=stamp(row.ts))
    forwarded.append(etree.fromstring(row.stanza, _PARSER))
    return message


def fin_element(page, rows) -> etree._Element:
    """XEP-0313 §4.3: the end of the results, with the page's RSM set."""
    fin = etree.Element(f"{{{MAM}}}fin", nsmap={None: MAM})
    if page.complete:
        fin.set("complete", "true")
    rsm = etree.SubElement(fin, f"{{{ns.RSM}}}set", nsmap={None: ns.RSM})
    if rows:
        first = etree.SubElement(rsm, f"{{{ns.RSM}}}first")
        first.text = rows[0].sid
        if page.first_index is not None:
            first.set("index", str(page.first_index))
        etree.SubElement(rsm, f"{{{ns.RSM}}}last").text = rows[-1].sid
    etree.SubElement(rsm, f"{{{ns.RSM}}}count").text = str(page.count)
    return fin


def stamp(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


# -- preferences (XEP-0313 §6) ----------------------------------------------------------------------


def prefs_element(archive: Archive, owner: str, prefs: dict | None = None) -> etree._Element:
    if prefs is None:
        prefs = archive.router.store.archive_prefs(owner) or {
            "default": archive.config.default, "always": [], "never": []}
    element = etree.Element(f"{{{MAM}}}prefs", nsmap={None: MAM}, default=prefs["default"])
    for name in ("always", "never"):
        group = etree.SubElement(element, f"{{{MAM}}}{name}")
        for jid in prefs[name]:
            etree.SubElement(group, f"{{{MAM}}}jid").text = jid
    return element


async def set_prefs(archive: Archive, owner: str, payload: etree._Element) -> etree._Element:
    default = payload.get("default")
    if default not in ("always", "never", "roster"):
        raise StanzaError("bad-request", text="default must be always, never or roster")
    lists = {}
    for name in ("always", "never"):
        jids = []
        for item in payload.findall(f"{{{MAM}}}{name}/{{{MAM}}}jid"):
            try:
                jids.append(str(JID.parse(item.text or "")))
            except InvalidJID:
                raise StanzaError("jid-malformed", text=f"{item.text!r} is not a JID") from None
        lists[name] = jids
    prefs = await archive.router.store.archive_prefs_set(owner, default, lists["always"],
                                                         lists["never"])
    return prefs_element(archive, owner, prefs)
