"""Pubsub stanza errors: an RFC 6120 condition plus XEP-0060's application condition
(`<precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/>` …)."""

from __future__ import annotations

from lxml import etree

from raftxmpp.cluster.pubsub_state import decode_text
from raftxmpp.cluster.store import StoreError
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError


class PubsubError(StanzaError):
    def __init__(self, condition: str, app: str = "", text: str | None = None,
                 feature: str | None = None, type: str | None = None) -> None:
        super().__init__(condition, type=type, text=text)
        self.app = app
        self.feature = feature  # for <unsupported feature='…'/> (XEP-0060 §7.1.3.1 …)

    def element(self, namespace: str = ns.CLIENT) -> etree._Element:
        error = super().element(namespace)
        if self.app:
            app = etree.Element(f"{{{ns.PUBSUB_ERRORS}}}{self.app}",
                                nsmap={None: ns.PUBSUB_ERRORS})
            if self.feature:
                app.set("feature", self.feature)
            # RFC 6120 §8.3.2: the application condition follows the defined one.
            error.insert(1, app)
        return error


def unsupported(feature: str, text: str | None = None) -> PubsubError:
    return PubsubError("feature-not-implemented", "unsupported", text, feature=feature)


def from_store(exc: StoreError) -> PubsubError:
    """The state machine refused a pubsub command: its condition, application
    condition and text (raftxmpp.cluster.pubsub_state.encode_text)."""
    app, text = decode_text(exc.text)
    return PubsubError(exc.condition, app, text or None)
