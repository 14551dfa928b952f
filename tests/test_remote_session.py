"""A stanza for a session on another node that cannot be forwarded (the hop limit between
nodes whose session tables disagree, or a refused link) is counted and logged, never
dropped in silence (CONVENTIONS: errors on the stanza path are counted)."""

from __future__ import annotations

import logging

from raftxmpp import metrics
from raftxmpp.jid import JID
from raftxmpp.routing.sessions import MAX_HOPS, RemoteSession, link_hops


class Links:
    def __init__(self, accept: bool) -> None:
        self.accept, self.sent = accept, []

    def send_stanza(self, peer: str, target: str, data: bytes, hops: int) -> bool:
        self.sent.append((peer, data, hops))
        return self.accept


def session(links: Links) -> RemoteSession:
    return RemoteSession(jid=JID.parse("bob@localhost/phone"), node="node2", links=links,
                         gossip=None)


def test_a_forwarded_stanza_counts_as_remote():
    links = Links(accept=True)
    remote, dropped = metrics.ROUTED_REMOTE.value, metrics.ROUTED_DROPPED.value
    session(links).send(b"<message/>")
    assert links.sent == [("node2", b"<message/>", 0)]
    assert metrics.ROUTED_REMOTE.value == remote + 1
    assert metrics.ROUTED_DROPPED.value == dropped


def test_the_hop_limit_and_a_refused_link_are_counted_and_logged(caplog):
    dropped = metrics.ROUTED_DROPPED.value
    token = link_hops.set(MAX_HOPS)
    try:
        with caplog.at_level(logging.WARNING, logger="raftxmpp"):
            session(Links(accept=True)).send(b"<message/>")
    finally:
        link_hops.reset(token)
    session(Links(accept=False)).send(b"<message/>")
    assert metrics.ROUTED_DROPPED.value == dropped + 2
    assert "not forwarded" in caplog.text
