"""From RFC 6120 stream bytes to standalone XML documents, and back. Sans-IO.

The c2s connection writes what it sends as for a TCP stream: a stream header, elements
whose `jabber:client` namespace (and `stream` prefix) the header declared, and
`</stream:stream>`. WebSocket (RFC 7395 §3.3.3) needs each message to be a complete
document that declares its own namespaces, with `<open/>` and `<close/>` in place of
the header and the close tag; BOSH (XEP-0206) needs the same elements as children of
a `<body/>`. `OutgoingDocuments` turns the one into the other.

A bound session's queue holds one serialised stanza per chunk (`LocalSession.send`);
for the three stanza kinds in jabber:client the missing declaration is inserted into
the bytes directly, which is all the hot path pays. Anything else (negotiation, stream
errors, a chunk in an unexpected form) is parsed and re-serialised; those bytes are
ours, written by our own serialiser, so parsing them back is safe and rare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from raftxmpp.xml import ns
from raftxmpp.xml.stanza import STREAM_CLOSE

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"  # RFC 7395 §3.3

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False)
_HEADER = re.compile(rb"^(?:<\?xml[^>]*\?>)?\s*(<stream:stream\b[^>]*>)", re.S)
_WRAP_OPEN = (f"<w xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'>").encode()
_CLIENT_DECLARATION = f' xmlns="{ns.CLIENT}"'.encode()
# Stanzas as `serialize` writes them: the tag name, then attributes or the end of the tag.
_STANZA_START = re.compile(rb"^<(message|presence|iq)(?=[\s/>])")


@dataclass(frozen=True)
class Open:
    """The stream header: its attributes (from, id, version, xml:lang)."""

    attrs: dict[str, str]


@dataclass(frozen=True)
class Element:
    """One top-level element, as a standalone document."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """`</stream:stream>`."""


Document = Open | Element | Close


def standalone_stanza(chunk: bytes) -> bytes | None:
    """A serialised jabber:client stanza with its namespace declared, or None when
    the chunk is not in the form `serialize` gives stanzas (then parse it)."""
    match = _STANZA_START.match(chunk)
    if match is None:
        return None
    end = match.end()
    if chunk.startswith(b" xmlns=", end):
        return chunk  # declared already
    return chunk[:end] + _CLIENT_DECLARATION + chunk[end:]


def documents(data: bytes) -> list[Document]:
    """Splits stream bytes into documents: header, standalone elements, close."""
    out: list[Document] = []
    header = _HEADER.match(data)
    if header is not None:
        root = etree.fromstring(header.group(1) + STREAM_CLOSE, _PARSER)
        out.append(Open(_header_attrs(root)))
        data = data[header.end():]
    closed = data.rstrip().endswith(STREAM_CLOSE)
    if closed:
        data = data.rstrip()[: -len(STREAM_CLOSE)]
    if data.strip():
        wrapper = etree.fromstring(_WRAP_OPEN + data + b"</w>", _PARSER)
        for child in wrapper:
            if isinstance(child.tag, str):
                out.append(Element(_tostring(child)))
    if closed:
        out.append(Close())
    return out


def stanza_documents(chunks: list[bytes]) -> list[Document]:
    """A bound session's queue as documents; the hot path of the outgoing side."""
    out: list[Document] = []
    for chunk in chunks:
        fast = standalone_stanza(chunk)
        if fast is not None:
            out.append(Element(fast))
        else:
            out.extend(documents(chunk))
    return out


def _tostring(element: etree._Element) -> bytes:
    # A copy taken while attached keeps the namespaces it uses declared on itself.
    copy = element.__copy__()
    copy.tail = None
    return etree.tostring(copy)


def _header_attrs(root: etree._Element) -> dict[str, str]:
    attrs = {key: value for key, value in root.attrib.items() if not key.startswith("{")}
    lang = root.get(f"{{{ns.XML}}}lang")
    if lang is not None:
        attrs["xml:lang"] = lang
    return attrs
