"""Building and serialising stanzas for a client stream.

Output is always re-serialised from a tree, never echoed from received bytes
(shared/notes/reliability-and-chaos.md): the tree is what we checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape

from lxml import etree

from raftxmpp.xml.ns import CLIENT, STREAM

STREAM_CLOSE = b"</stream:stream>"

_ATTR_ENTITIES = {"'": "&apos;", '"': "&quot;"}

# Namespaces our stream header declares, with the prefix it gives each: an element in
# one of them is written without declaring it again.
_HEADER_PREFIXES = {CLIENT: None, STREAM: "stream"}
_HEADER_DECLARATIONS = {
    CLIENT: (b"", f' xmlns="{CLIENT}"'.encode()),
    STREAM: (b"stream:", f' xmlns:stream="{STREAM}"'.encode()),
}


def make(
    tag: str, attrs: Mapping[str, str | None] | None = None, ns: str = CLIENT
) -> etree._Element:
    """A new element `tag` in `ns` (a tag already in `{ns}name` form is kept as is);
    attributes whose value is None are left out.

    jabber:client and other namespaces become the default namespace, the stream
    namespace gets the `stream` prefix, so output never carries generated `ns0:`
    prefixes and `serialize` can leave out what the stream header declared."""
    if attrs:
        attrs = {name: value for name, value in attrs.items() if value is not None}
    if tag.startswith("{"):
        ns = tag[1:].partition("}")[0]
    else:
        tag = f"{{{ns}}}{tag}"
    return etree.Element(tag, attrs, nsmap={_HEADER_PREFIXES.get(ns): ns})


def serialize(element: etree._Element) -> bytes:
    """Bytes of `element` for a client stream opened by `stream_header`.

    lxml declares the top element's namespace on it; when the stream header already
    declared it (jabber:client as default, or the `stream` prefix), that declaration is
    cut, but only where lxml writes it first, right after the tag name: there it cannot
    be part of an attribute or of another namespace name. Anything else is returned as
    lxml wrote it, which is also correct XML."""
    data = etree.tostring(element, with_tail=False)
    tag = element.tag
    if not (isinstance(tag, str) and tag.startswith("{")):
        return data
    namespace, _, local = tag[1:].partition("}")
    declared = _HEADER_DECLARATIONS.get(namespace)
    if declared is None:
        return data
    prefix, declaration = declared
    start = b"<" + prefix + local.encode()
    if not data.startswith(start + declaration):
        return data
    return start + data[len(start) + len(declaration) :]


def stream_header(
    from_domain: str,
    stream_id: str,
    to: str | None,
    lang: str = "en",
    ns: str = CLIENT,
) -> bytes:
    """Our response stream header (RFC 6120 §4.7), version 1.0, `stream` prefix."""
    attrs = [("from", from_domain), ("id", stream_id)]
    if to is not None:
        attrs.append(("to", to))
    attrs += [("version", "1.0"), ("xml:lang", lang)]
    rendered = "".join(f" {name}='{escape(value, _ATTR_ENTITIES)}'" for name, value in attrs)
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='{STREAM}'{rendered}>"
    ).encode()


def rebind_to_client(element: etree._Element, source_ns: str) -> etree._Element:
    """`element` with every element in `source_ns` (jabber:component:accept,
    jabber:server) moved to jabber:client, the namespace the router works in.

    Renaming tags in place would make lxml declare jabber:client under a generated
    prefix (<ns0:message>); rebuilding the source-namespace elements, and moving other
    children over whole, gives the tree a client stream would have produced."""
    prefix = f"{{{source_ns}}}"
    local = element.tag[len(prefix):]
    rebuilt = etree.Element(f"{{{CLIENT}}}{local}", nsmap={None: CLIENT})
    _move_content(element, rebuilt, source_ns, prefix)
    return rebuilt


def _move_content(source: etree._Element, target: etree._Element, source_ns: str,
                  prefix: str) -> None:
    for name, value in source.attrib.items():
        target.set(name, value)
    target.text = source.text
    for child in list(source):
        tag = child.tag
        if not isinstance(tag, str):
            continue  # comments and PIs never reach here (the framer refuses them)
        if tag.startswith(prefix):
            copy = etree.SubElement(target, f"{{{CLIENT}}}{tag[len(prefix):]}")
        elif next(child.iter(f"{prefix}*"), None) is None:
            target.append(child)  # moves it whole, its namespaces reconciled by lxml
            continue
        else:  # a payload with unqualified children that inherited the stream's namespace
            nsmap = {p: uri for p, uri in child.nsmap.items() if uri != source_ns}
            copy = etree.SubElement(target, tag, nsmap=nsmap)
        _move_content(child, copy, source_ns, prefix)
        copy.tail = child.tail
