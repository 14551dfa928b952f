"""The list of supported standards stays true: raftxmpp.doap (XEP-0453) and the README's
table agree, and every feature a node advertises belongs to a listed specification."""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from raftxmpp.modules import disco
from tests import test_c2s_raw

ROOT = Path(__file__).resolve().parent.parent
NS = {"d": "http://usefulinc.com/ns/doap#", "x": "https://linkmauve.fr/ns/xmpp-doap#",
      "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
RESOURCE = f"{{{NS['rdf']}}}resource"
STATUSES = {"complete", "partial", "planned", "deprecated", "removed", "wontfix"}

# Where each advertised feature comes from: "XEP-nnnn" or "RFC nnnn".
SPEC_OF_FEATURE = {
    "http://jabber.org/protocol/disco#info": "XEP-0030",
    "http://jabber.org/protocol/disco#items": "XEP-0030",
    "http://jabber.org/protocol/commands": "XEP-0050",
    "jabber:iq:last": "XEP-0012",
    "jabber:iq:version": "XEP-0092",
    "urn:xmpp:time": "XEP-0202",
    "urn:xmpp:ping": "XEP-0199",
    "urn:xmpp:blocking": "XEP-0191",
    "urn:xmpp:carbons:2": "XEP-0280",
    "vcard-temp": "XEP-0054",
    "msgoffline": "XEP-0160",
    "urn:xmpp:extdisco:2": "XEP-0215",
    "urn:ietf:params:xml:ns:xmpp-session": "RFC 3921",
}
SPEC_OF_STREAM_FEATURE = {
    "{http://jabber.org/protocol/caps}c": "XEP-0115",
    "{urn:xmpp:features:rosterver}ver": "RFC 6121",
    "{urn:xmpp:features:pre-approval}sub": "RFC 6121",
    "{urn:xmpp:sm:3}sm": "XEP-0198",
    "{urn:xmpp:csi:0}csi": "XEP-0352",
}

node = test_c2s_raw.node  # the fixture: a node running in the test's nursery


def doap() -> tuple[dict[str, tuple[str, str]], set[str]]:
    """({"XEP-nnnn": (version, status)}, {"RFC nnnn"}) from raftxmpp.doap."""
    tree = etree.parse(str(ROOT / "raftxmpp.doap"), etree.XMLParser(resolve_entities=False,
                                                                    no_network=True))
    xeps = {}
    for supported in tree.iterfind(".//x:SupportedXep", NS):
        number = re.search(r"xep-(\d{4})", supported.find("x:xep", NS).get(RESOURCE)).group(1)
        xeps[f"XEP-{number}"] = (supported.findtext("x:version", namespaces=NS),
                                 supported.findtext("x:status", namespaces=NS))
    rfcs = {f"RFC {m.group(1)}" for el in tree.iterfind("d:Project/d:implements", NS)
            if (m := re.search(r"rfc(\d+)", el.get(RESOURCE) or ""))}
    return xeps, rfcs


def readme_xeps() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| \[XEP-(\d{4})\]\([^)]*\) \| [^|]+ \| ([^|]+) \| ([^|]+) \|", text, re.M)
    return {f"XEP-{n}": (version.strip(), status.strip()) for n, version, status in rows}


def test_the_doap_file_describes_each_xep_with_a_version_and_a_status():
    xeps, rfcs = doap()
    assert {"RFC 6120", "RFC 6121", "RFC 7622"} <= rfcs
    for xep, (version, status) in xeps.items():
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", version or ""), xep
        assert status in STATUSES, xep


def test_the_readme_lists_the_same_xeps_as_the_doap_file():
    assert readme_xeps() == doap()[0]


async def test_every_advertised_feature_belongs_to_a_listed_specification(node):
    xeps, rfcs = doap()
    listed = set(xeps) | rfcs
    features = disco.server_features(node.router)
    unknown = [f for f in features if f not in SPEC_OF_FEATURE]
    assert not unknown, f"advertised but not mapped to a specification here: {unknown}"
    stream = [f().tag for f in node.router.stream_features]
    assert set(stream) <= set(SPEC_OF_STREAM_FEATURE), stream
    specs = {SPEC_OF_FEATURE[f] for f in features} | {SPEC_OF_STREAM_FEATURE[t] for t in stream}
    assert specs <= listed, f"advertised but not in raftxmpp.doap / README: {specs - listed}"
