"""The XMPP stream framer: bytes in, stream events out. Sans-IO.

It turns what a peer sends into `StreamOpened`, one `StanzaReceived` per top-level
child of the stream, and `StreamClosed`, and it closes the door on everything RFC 6120
§11.1 forbids on an XMPP stream. Any violation raises `StreamError` carrying the RFC's
condition; after that the framer stays dead, as the connection must.

Theory of operation. lxml's `XMLPullParser` (libxml2's push parser) does the parsing in
C; Python only walks the events. lxml rejects none of the restricted XML by itself
(shared/notes/reliability-and-chaos.md), so this module must:

- refuse a DOCTYPE before libxml2 sees it, by looking at the bytes that precede the
  stream header: a DTD is where billion laughs and XXE live;
- close the stream on any comment or processing-instruction event;
- read libxml2's error log after each feed: with `resolve_entities=False` lxml swallows
  "undeclared entity" and silently stops producing events, and it never raises on an
  unbound namespace prefix, which we would otherwise re-serialise to other clients;
- count bytes and depth itself, because libxml2's own limits (10 MB text, depth 256)
  are far too high for a server;
- take each finished stanza off the stream root (as a standalone copy, see
  `_standalone_copy`), and drop the whitespace between stanzas, so memory stays flat
  on a connection that lives for days.

Byte counting is per slice of input, not per byte, to stay cheap (the server's budget
is ~22 µs per routed message). Input is handed to libxml2 in slices of at most
min(64 KiB, max_stanza_size), and never more than one byte past what the stanza in
progress may still grow, so a huge stanza is refused before it is buffered. The count
restarts after each slice in which a stanza ended, so the bytes a new stanza has in
that same slice go uncounted: a stanza is refused once it exceeds max_stanza_size plus
its bytes in the slice where it began (less than one slice). Whitespace-only slices
between stanzas (keepalives) are not counted against the next stanza.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.ns import CLIENT, STREAM, XML

_ROOT_TAG = f"{{{STREAM}}}stream"
_LANG = f"{{{XML}}}lang"
# StreamOpened.attrs key -> stream header attribute (RFC 6120 §4.7).
_HEADER_ATTRS = {"to": "to", "from": "from", "version": "version", "id": "id", "lang": _LANG}

_MAX_SLICE = 65536
# libxml2 holds back up to a few hundred bytes of character data before it appends them
# to the tree; whitespace below this much is never counted while we wait to see it.
_BLANK_SLACK = 4096
_XML_WHITESPACE = " \t\r\n"

# The XML declaration's encoding, read by us: the parser is forced to UTF-8 (RFC 6120
# §11.6) and ignores the declaration, so a different one must be reported here.
_DECLARED_ENCODING = re.compile(
    rb"^(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\bencoding\s*=\s*(['\"])([^'\"]*)\1"
)
# A longer declaration is not checked: the parser decodes UTF-8 whatever it says.
_DECLARATION_MAX = 256
_DOCTYPE_OVERLAP = len(b"<!DOCTYPE") - 1
_VERSION = re.compile(r"(\d+)\.(\d+)")

_E = etree.ErrorTypes
# Entity trouble is restricted XML (RFC 6120 §11.1), not merely malformed XML.
_ENTITY_ERRORS = frozenset(
    {
        _E.ERR_UNDECLARED_ENTITY,
        _E.WAR_UNDECLARED_ENTITY,
        _E.ERR_ENTITY_LOOP,
        _E.ERR_ENTITY_PROCESSING,
        _E.ERR_ENTITY_IS_EXTERNAL,
        _E.ERR_ENTITY_IS_PARAMETER,
        _E.ERR_ENTITY_PE_INTERNAL,
        _E.ERR_UNPARSED_ENTITY,
        _E.ERR_ENTITYREF_IN_DTD,
        _E.ERR_ENTITYREF_IN_PROLOG,
        _E.ERR_ENTITYREF_IN_EPILOG,
    }
)
_SPECIFIC_ERRORS = {
    _E.ERR_RESOURCE_LIMIT: "policy-violation",  # libxml2's own depth or size cap
    _E.ERR_UNSUPPORTED_ENCODING: "unsupported-encoding",
    # <?xml version='2.0'?>: libxml2 speaks XML 1.x only; the peer asked for a version
    # we do not speak, which is what RFC 6120 §4.9.3.25 names.
    _E.ERR_UNKNOWN_VERSION: "unsupported-version",
}


@dataclass(frozen=True)
class StreamOpened:
    """The peer's stream header. `attrs` holds those of to, from, version, id and lang
    (xml:lang) that were present; a missing version means a pre-1.0 peer (RFC 6120
    §4.7.5). `default_ns` is the content namespace, '' if none was declared."""

    attrs: dict[str, str]
    default_ns: str


@dataclass(frozen=True)
class StanzaReceived:
    """A complete first-level child of the stream, detached from the stream root: a deep
    copy in a document of its own, declaring its own namespaces.

    `size` is the bytes fed for it, measured per feed call: exact when each feed holds
    one stanza, otherwise a feed's bytes are shared evenly among the stanzas it ends."""

    element: etree._Element
    size: int


@dataclass(frozen=True)
class StreamClosed:
    """The peer sent `</stream:stream>`."""


Event = StreamOpened | StanzaReceived | StreamClosed


class StreamFramer:
    """Frames one XML stream; `reset()` starts the next one on the same connection.

    `max_stanza_size` bounds the bytes of one stanza (and of the stream header), give or
    take one slice as the module docstring explains. `max_depth` bounds nesting, the
    stanza element itself being level 1. `stream_ns` is the content namespace this
    listener serves (jabber:client, jabber:server, jabber:component:accept)."""

    def __init__(
        self,
        max_stanza_size: int = 262144,
        max_depth: int = 64,
        stream_ns: str = CLIENT,
        max_idle_whitespace: int = 1 << 20,
    ) -> None:
        if max_stanza_size < 1 or max_depth < 1 or max_idle_whitespace < 1:
            raise ValueError("max_stanza_size, max_depth and max_idle_whitespace must be positive")
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        # Whitespace between two stanzas (keepalives): a peer that sends nothing else
        # forever costs parsing time; past this many bytes it is ended.
        self.max_idle_whitespace = max_idle_whitespace
        self.stream_ns = stream_ns
        self._slice = min(_MAX_SLICE, max_stanza_size)
        self._failed: str | None = None
        self.reset()

    def reset(self) -> None:
        """Expect a fresh stream header, as after STARTTLS or SASL success (RFC 6120
        §4.3.3). Bytes fed before the reset are forgotten; a dead framer stays dead."""
        self._parser = _new_parser()
        self._root: etree._Element | None = None
        self._depth = 0  # the stream root is depth 1, a stanza depth 2
        self._header_ns: dict[str, str] = {}
        self._prologue_head = b""  # where an XML declaration would be
        self._prologue_tail = b""  # where a DOCTYPE split between feeds would start
        self._unattributed = 0  # bytes fed since the last slice in which a stanza ended
        self._unproven_blank = 0  # whitespace-only bytes not yet seen as stream text
        self._idle_blank = 0  # whitespace-only bytes since the last stanza or header
        # A stanza in progress began in a slice that also ended a stanza (or opened the
        # stream), so up to one slice of its bytes went uncounted: see _received.
        self._head_uncounted = False
        self._errors_seen = 0
        self._utf8_tail = b""  # the start of a multi-byte character the last feed ended in

    @property
    def between_stanzas(self) -> bool:
        """No stanza is in progress: every byte fed since the header belongs to a
        finished one (message-framed transports check each message held whole elements)."""
        return self._depth == 1

    def feed(self, data: bytes) -> list[Event]:
        """Events completed by `data`. Raises StreamError on any violation, and on every
        call after one."""
        if self._failed is not None:
            raise StreamError(self._failed, "stream already failed")
        events: list[Event] = []
        try:
            self._check_utf8(data)
            size = self._next_slice_size()
            if size >= len(data):
                self._feed_slice(data, events)  # the common case: no copy
            else:
                self._feed_slices(data, size, events)
        except StreamError as exc:
            self._fail(exc.condition)
            raise
        return events

    def _check_utf8(self, data: bytes) -> None:
        """RFC 6120 §11.6: the stream is UTF-8. libxml2 holds back bytes it cannot decode
        yet, so a lone invalid byte would wait there for more input; it is refused here as
        soon as it arrives. ASCII, the common case, costs one C scan."""
        tail = self._utf8_tail
        if not tail and data.isascii():
            return
        if tail:
            data = tail + data
        try:
            _, decoded = codecs.utf_8_decode(data, "strict", False)
        except UnicodeDecodeError as exc:
            raise StreamError("not-well-formed", f"invalid UTF-8: {exc.reason}") from None
        self._utf8_tail = data[decoded:]

    def _feed_slices(self, data: bytes, size: int, events: list[Event]) -> None:
        start = 0
        while start < len(data):
            self._feed_slice(data[start : start + size], events)
            start += size
            size = self._next_slice_size()

    def _next_slice_size(self) -> int:
        """At most one slice, and at most one byte more than the stanza in progress may
        still grow: if it has not ended within those bytes it is too big, and a slice in
        which it does end cannot carry an oversized stanza past the check."""
        return max(1, min(self._slice, self.max_stanza_size - self._counted() + 1))

    def _fail(self, condition: str) -> None:
        self._failed = condition
        self._parser = _new_parser()  # drop the tree and libxml2's buffers now
        self._root = None

    def _feed_slice(self, data: bytes, events: list[Event]) -> None:
        """Parse one slice of at most self._slice bytes; append what it completed."""
        if self._root is None:
            self._check_prologue(data)
        try:
            self._parser.feed(data)
        except etree.ParseError as exc:
            self._check_error_log()  # a more specific condition, if libxml2 logged one
            raise StreamError("not-well-formed", str(exc)) from None
        self._check_error_log()
        # XML puts the header before every stanza and the close after: order is implied.
        opened, stanzas, closed = self._drain()
        if opened is not None:
            events.append(opened)
        if stanzas:
            events.extend(self._received(stanzas, len(data)))
            self._idle_blank = 0
        else:
            self._count(len(data), data.isspace(), opened is not None)
        if stanzas or opened is not None:
            self._head_uncounted = self._depth > 1
        if closed:
            events.append(StreamClosed())
        elif self._depth == 1:
            self._drop_stream_text()

    def _check_prologue(self, data: bytes) -> None:
        """Look at the bytes before the stream header ourselves, before libxml2 does.
        Only a bounded head and tail are kept, so a header trickled in byte by byte
        costs linear time."""
        seen = self._prologue_tail + data
        if b"<!DOCTYPE" in seen:
            raise StreamError("restricted-xml", "DTDs are not allowed (RFC 6120 §11.1)")
        self._prologue_tail = seen[-_DOCTYPE_OVERLAP:]
        if len(self._prologue_head) < _DECLARATION_MAX:
            self._prologue_head += data[:_DECLARATION_MAX]
            declared = _DECLARED_ENCODING.match(self._prologue_head)
            if declared and declared.group(2).lower() not in (b"utf-8", b"utf8"):
                raise StreamError("unsupported-encoding", "streams are UTF-8 (RFC 6120 §11.6)")

    def _check_error_log(self) -> None:
        # feed_error_log copies the log (~0.5 µs); libxml2 caps it at 100 warnings and
        # 100 errors, and the first fatal error is always logged.
        log = self._parser.feed_error_log
        if len(log) == self._errors_seen:
            return
        fresh = list(log)[self._errors_seen :]
        self._errors_seen = len(log)
        condition = _condition_for(fresh)
        if condition is not None:
            raise StreamError(condition, fresh[0].message)

    def _drain(self) -> tuple[StreamOpened | None, list[etree._Element], bool]:
        """Walk the parser's events: the header if it arrived, the stanzas finished, and
        whether the stream was closed."""
        opened = None
        stanzas: list[etree._Element] = []
        closed = False
        depth = self._depth
        depth_limit = self.max_depth + 1
        node = None
        try:
            for action, node in self._parser.read_events():
                if action == "start":
                    depth += 1
                    if depth == 1:
                        opened = self._open_stream(node)
                    elif depth > depth_limit:
                        raise StreamError("policy-violation", "stanza nested too deeply")
                elif action == "end":
                    depth -= 1
                    if depth == 1:
                        stanzas.append(_standalone_copy(node))
                    elif depth == 0:
                        closed = True
                elif action == "start-ns":
                    if depth == 0:
                        self._header_ns[node[0]] = node[1]
                else:
                    raise StreamError("restricted-xml", f"no {action} allowed (RFC 6120 §11.1)")
        finally:
            self._depth = depth
        if stanzas:
            node = None  # with no Python reference left, lxml frees the originals outright
            root = self._root
            assert root is not None
            del root[: len(stanzas)]
        return opened, stanzas, closed

    def _open_stream(self, root: etree._Element) -> StreamOpened:
        if root.tag != _ROOT_TAG:
            raise StreamError("invalid-namespace", "the root must be <stream:stream/>")
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            raise StreamError("restricted-xml", "DTDs are not allowed (RFC 6120 §11.1)")
        default_ns = self._header_ns.get("", "")
        # RFC 6120 §4.8.2 lets a peer qualify content with a prefix instead; a declared
        # default namespace must be the one this listener serves.
        if default_ns and default_ns != self.stream_ns:
            raise StreamError("invalid-namespace", f"content namespace must be {self.stream_ns}")
        attrs = _header_attrs(root)
        if "version" in attrs:
            _check_version(attrs["version"])
        self._root = root
        # Only the bytes before the header need them: a stream lives for days.
        self._prologue_head = self._prologue_tail = b""
        self._header_ns.clear()
        return StreamOpened(attrs, default_ns)

    def _received(self, stanzas: list[etree._Element], size: int) -> list[StanzaReceived]:
        """The events for the stanzas a slice of `size` bytes finished, each checked
        against the limit.

        A finished stanza holds at most the bytes counted since the last slice that
        ended one, this slice, and (if it began in a slice that ended another) part of
        one more slice. Only when that bound passes the limit is each stanza measured,
        by serialising it: rare with the default limit, so the common path costs
        nothing, and no stanza over the limit gets through however the reads fall."""
        bound = self._unattributed + size + (self._slice if self._head_uncounted else 0)
        if bound <= self.max_stanza_size:
            share = self._attribute(size, len(stanzas))
            return [StanzaReceived(stanza, share) for stanza in stanzas]
        received = []
        for stanza in stanzas:
            measured = len(etree.tostring(stanza, encoding="utf-8"))
            if measured > self.max_stanza_size:
                raise StreamError("policy-violation", f"stanza over {self.max_stanza_size} bytes")
            received.append(StanzaReceived(stanza, measured))
        self._unattributed = 0
        return received

    def _attribute(self, size: int, finished: int) -> int:
        """Share the bytes fed since the last finished stanza among the `finished` ones;
        what does not divide evenly carries over to the next."""
        total = self._unattributed + size
        share = total // finished
        self._unattributed = total - share * finished
        return share

    def _count(self, size: int, blank: bool, opened: bool) -> None:
        """Count a slice that finished no stanza against the stanza (or header) in
        progress, and refuse it once over the limit."""
        if opened:
            self._unattributed = 0  # those bytes were the header's
        elif blank and self._depth <= 1:
            self._unproven_blank += size  # most likely a keepalive: see _drop_stream_text
            self._idle_blank += size
            if self._idle_blank > self.max_idle_whitespace:
                raise StreamError("policy-violation", "nothing but whitespace for too long")
        else:
            self._unattributed += size
        if self._counted() > self.max_stanza_size:
            where = "stanza" if self._root is not None else "stream header"
            raise StreamError("policy-violation", f"{where} over {self.max_stanza_size} bytes")

    def _counted(self) -> int:
        return self._unattributed + max(0, self._unproven_blank - _BLANK_SLACK)

    def _drop_stream_text(self) -> None:
        """Whitespace between stanzas lands in the root's text: check it and free it."""
        root = self._root
        assert root is not None
        text = root.text
        if text is None:
            return
        _require_whitespace(text)
        root.text = None  # safe: between stanzas the root has no element children
        self._unproven_blank = max(0, self._unproven_blank - len(text))


def _new_parser() -> etree.XMLPullParser:
    return etree.XMLPullParser(
        events=("start", "end", "comment", "pi", "start-ns"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        encoding="utf-8",
    )


def _standalone_copy(stanza: etree._Element) -> etree._Element:
    """A deep copy of a finished stanza, in a document of its own.

    Removing the original from the stream root would make lxml re-declare the root's
    default namespace on it under a generated prefix (`<ns0:message xmlns:ns0=...>`);
    a copy taken while it is still attached keeps `xmlns='jabber:client'`, so it
    serialises the way clients expect, and the original can then be freed whole.
    `__copy__` is lxml's deep copy without copy.deepcopy's memo overhead (~1 µs less)."""
    tail = stanza.tail  # text parsed after the stanza, up to the end of this feed
    if tail is not None:
        _require_whitespace(tail)
    clone = stanza.__copy__()
    if clone.tail is not None:
        clone.tail = None
    return clone


def _condition_for(entries: Iterable[etree._LogEntry]) -> str | None:
    """The stream error condition for libxml2 log entries; None if only warnings."""
    serious = [entry for entry in entries if entry.level >= etree.ErrorLevels.ERROR]
    if any(entry.type in _ENTITY_ERRORS for entry in serious):
        return "restricted-xml"
    for entry in serious:
        if entry.type in _SPECIFIC_ERRORS:
            return _SPECIFIC_ERRORS[entry.type]
    return "not-well-formed" if serious else None


def _header_attrs(root: etree._Element) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for key, name in _HEADER_ATTRS.items():
        value = root.get(name)
        if value is not None:
            attrs[key] = value
    return attrs


def _check_version(version: str) -> None:
    # RFC 6120 §4.7.5: major and minor are separate integers; we speak 1.x.
    match = _VERSION.fullmatch(version)
    if match is None or int(match.group(1)) != 1:
        raise StreamError("unsupported-version", f"version {version!r} is not 1.x")


def _require_whitespace(text: str) -> None:
    if text.strip(_XML_WHITESPACE):
        raise StreamError("bad-format", "character data between stanzas")
