"""Client State Indication (XEP-0352): announces the stream feature.

The holding back itself happens where stanzas are written (raftxmpp.c2s.csi, driven by
raftxmpp.c2s.connection), since it concerns one connection's output only.
"""

from __future__ import annotations

from lxml import etree

from raftxmpp.routing.router import Router
from raftxmpp.xml import ns


def setup(router: Router) -> None:
    if router.config.c2s.csi_max_held:
        router.stream_features.append(feature)


def feature() -> etree._Element:
    return etree.Element(f"{{{ns.CSI}}}csi", nsmap={None: ns.CSI})
