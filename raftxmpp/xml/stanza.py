"""Building and serialising stanzas for a client stream.

Output is always re-serialised from a tree, never echoed from received bytes
(shared/notes/reliability-and-chaos.md): the tree is what we checked.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from lxml import etree

from raftxmpp.xml.ns import CLIENT, STREAM

STREAM_CLOSE = b"</stream:stream>"

_ATTR_ENTITIES = {"'": "&apos;", '"': "&quot;"}
_CLIENT_QUALIFIER = f"{{{CLIENT}}}"
_REDUNDANT_XMLNS = f' xmlns="{CLIENT}"'.encode()


def make(tag: str, attrs: dict[str, str] | None = None, ns: str = CLIENT) -> etree._Element:
    """A new element `tag` in `ns`, declared as the default namespace so it serialises
    without generated prefixes (`ns0:`). A tag already in `{ns}name` form is kept."""
    qualified = tag if tag.startswith("{") else f"{{{ns}}}{tag}"
    return etree.Element(qualified, attrs, nsmap={None: ns})


def serialize(element: etree._Element) -> bytes:
    """Bytes of `element` for a stream whose default namespace is jabber:client.

    lxml declares `xmlns="jabber:client"` on the top element; the stream header already
    did, so that declaration is cut, but only where lxml writes it first, right after an
    unprefixed tag name: there it cannot be part of an attribute or another namespace
    name. Anything else is returned as lxml wrote it, which is also correct XML."""
    data = etree.tostring(element, with_tail=False)
    tag = element.tag
    if not (isinstance(tag, str) and tag.startswith(_CLIENT_QUALIFIER)):
        return data
    start = b"<" + tag[len(_CLIENT_QUALIFIER) :].encode()
    if not data.startswith(start + _REDUNDANT_XMLNS):
        return data
    return start + data[len(start) + len(_REDUNDANT_XMLNS) :]


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
