"""Protocol errors as values of the protocol: stream errors (RFC 6120 §4.9) and stanza
errors (RFC 6120 §8.3).

Inside the server they are exceptions; at the edge a `StreamError` becomes the bytes of
`<stream:error/>` followed by the stream close, and a `StanzaError` becomes an error
reply built by `error_reply`. Never reply with an error to an error (§8.3.1), or two
entities can bounce errors at each other forever.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from lxml import etree

from raftxmpp.xml.ns import CLIENT, STANZAS_ERR, STREAMS_ERR, XML

# RFC 6120 §4.9.3.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

# RFC 6120 §8.3.3: each defined condition with the error type its example uses.
STANZA_CONDITION_TYPES: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "modify",
    "unexpected-request": "wait",
}

# RFC 6120 §8.3.2.
STANZA_ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})

# Characters XML 1.0 cannot carry at all; dropped so an error text can never make our
# own output not-well-formed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return escape(_NOT_XML_CHAR.sub("", text))


class StreamError(Exception):
    """A stream-level error: the stream is closed after sending it (RFC 6120 §4.9.1)."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text

    def to_bytes(self) -> bytes:
        """`<stream:error/>` for a stream whose header declared the `stream` prefix."""
        body = f"<{self.condition} xmlns='{STREAMS_ERR}'/>"
        if self.text:
            body += f"<text xmlns='{STREAMS_ERR}' xml:lang='en'>{_xml_text(self.text)}</text>"
        return f"<stream:error>{body}</stream:error>".encode()


class StanzaError(Exception):
    """A stanza-level error: the stream stays up and the sender gets an error reply."""

    def __init__(
        self,
        condition: str,
        type: str | None = None,  # the RFC's attribute name, shadowing the builtin
        text: str | None = None,
        by: str | None = None,
        app_condition: str | None = None,
    ) -> None:
        if condition not in STANZA_CONDITION_TYPES:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        type = type or STANZA_CONDITION_TYPES[condition]
        if type not in STANZA_ERROR_TYPES:
            raise ValueError(f"unknown stanza error type {type!r}")
        super().__init__(f"{condition} ({type}): {text}" if text else f"{condition} ({type})")
        self.condition = condition
        self.type = type
        self.text = text
        self.by = by
        # An application-specific condition (RFC 6120 §8.3.4): an element after the defined
        # condition, e.g. XEP-0191's <blocked/> or XEP-0363's <file-too-large/>. Given as
        # "{namespace}name" for an empty one, or set to a built element by the raiser.
        self.application: etree._Element | None = None
        if app_condition:
            namespace = app_condition[1:].partition("}")[0]
            self.application = etree.Element(app_condition, nsmap={None: namespace})

    def element(self, ns: str = CLIENT) -> etree._Element:
        """The `<error/>` child of an error stanza, qualified by the stream's namespace."""
        error = etree.Element(f"{{{ns}}}error", nsmap={None: ns})
        error.set("type", self.type)
        if self.by:
            error.set("by", self.by)
        etree.SubElement(error, f"{{{STANZAS_ERR}}}{self.condition}", nsmap={None: STANZAS_ERR})
        if self.text:
            text = etree.SubElement(error, f"{{{STANZAS_ERR}}}text", nsmap={None: STANZAS_ERR})
            text.set(f"{{{XML}}}lang", "en")
            text.text = _NOT_XML_CHAR.sub("", self.text)
        if self.application is not None:
            error.append(self.application.__copy__())
        return error


def can_reply_with_error(stanza: etree._Element) -> bool:
    """False for stanzas that must never get an error back: errors themselves
    (RFC 6120 §8.3.1) and IQ results (RFC 6120 §8.2.3 rule 5)."""
    kind = stanza.get("type")
    if kind == "error":
        return False
    return not (kind == "result" and etree.QName(stanza).localname == "iq")


def error_reply(stanza: etree._Element, error: StanzaError) -> etree._Element:
    """The error stanza answering `stanza` (RFC 6120 §8.3.1): same kind and id, to/from
    swapped, type='error', the original payload included, then `<error/>`.

    The original is left untouched. Raises ValueError for a stanza that must not be
    answered with an error (see `can_reply_with_error`)."""
    if not can_reply_with_error(stanza):
        raise ValueError("refusing to answer an error or result stanza with an error")
    qname = etree.QName(stanza)
    ns = qname.namespace or CLIENT  # a stanza in no namespace gets a jabber:client reply
    reply = etree.Element(f"{{{ns}}}{qname.localname}", nsmap={None: ns})
    _copy_reply_attributes(stanza, reply)
    for child in stanza:
        reply.append(_detached_copy(child))
    reply.append(error.element(ns))
    return reply


def _copy_reply_attributes(stanza: etree._Element, reply: etree._Element) -> None:
    sender, recipient = stanza.get("from"), stanza.get("to")
    if sender is not None:
        reply.set("to", sender)
    if recipient is not None:
        reply.set("from", recipient)
    reply.set("type", "error")
    for name in ("id", f"{{{XML}}}lang"):
        value = stanza.get(name)
        if value is not None:
            reply.set(name, value)


def _detached_copy(child: etree._Element) -> etree._Element:
    # lxml's __copy__ is a deep copy that keeps the tail; whitespace from the original
    # stanza has no place in the reply.
    clone = child.__copy__()
    clone.tail = None
    return clone
