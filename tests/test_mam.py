"""Message archive (XEP-0313) as clients see it: slixmpp's MAM plugin and the XEP's own
examples as raw XML, against a real node process."""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.test_im_slixmpp import account, client
from tests.xmpp_client import TIMEOUT, run

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
CLIENT = "jabber:client"
_queries = itertools.count()


def stanza_id(msg, by: str) -> str | None:
    for element in msg.xml.findall(f"{{{SID}}}stanza-id"):
        if element.get("by") == by:
            return element.get("id")
    return None


async def chat(sender, to: str, bodies: list[str], receiver=None) -> list:
    """Sends the bodies in order; with a receiver, returns the messages it got."""
    got = []
    for body in bodies:
        sender.send_message(mto=to, mbody=body, mtype="chat")
        if receiver is not None:
            got.append(await receiver.next_message())
    return got


def query_xml(queryid: str, fields: dict | None = None, rsm: dict | None = None,
              flip: bool = False) -> ET.Element:
    query = ET.Element(f"{{{MAM}}}query", queryid=queryid)
    if fields:
        x = ET.SubElement(query, "{jabber:x:data}x", type="submit")
        form_type = ET.SubElement(x, "{jabber:x:data}field", var="FORM_TYPE", type="hidden")
        ET.SubElement(form_type, "{jabber:x:data}value").text = MAM
        for var, values in fields.items():
            field = ET.SubElement(x, "{jabber:x:data}field", var=var)
            for value in values if isinstance(values, list) else [values]:
                ET.SubElement(field, "{jabber:x:data}value").text = value
    if rsm:
        rsm_set = ET.SubElement(query, f"{{{RSM}}}set")
        for key, value in rsm.items():
            ET.SubElement(rsm_set, f"{{{RSM}}}{key}").text = value
    if flip:
        ET.SubElement(query, f"{{{MAM}}}flip-page")
    return query


async def raw_query(c, fields=None, rsm=None, flip=False) -> tuple[list[tuple[str, str]], ET.Element]:
    """Sends a MAM query; returns ([(archive id, body)], <fin/>)."""
    queryid = f"q{next(_queries)}"
    arrived: asyncio.Queue = asyncio.Queue()
    # slixmpp fires no "message" event for MAM results: a handler of our own collects them.
    c.register_handler(Callback(queryid, MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"),
                                arrived.put_nowait))
    iq = c.Iq(stype="set")
    iq.append(query_xml(queryid, fields, rsm, flip))
    try:
        reply = await iq.send(timeout=TIMEOUT)
    finally:
        c.remove_handler(queryid)
    fin = reply.xml.find(f"{{{MAM}}}fin")
    # The results came before the answer, but slixmpp may hand them over after it: read
    # until the page's last result (in <fin/>) is in.
    last = fin.findtext(f"{{{RSM}}}set/{{{RSM}}}last")
    results = []
    while last is not None and (not results or results[-1][0] != last):
        msg = await asyncio.wait_for(arrived.get(), TIMEOUT)
        result = msg.xml.find(f"{{{MAM}}}result")
        if result is None or result.get("queryid") != queryid:
            continue
        inner = result.find(f"{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
        results.append((result.get("id"), inner.findtext(f"{{{CLIENT}}}body")))
    return results, fin


def fin_set(fin: ET.Element) -> dict:
    rsm = fin.find(f"{{{RSM}}}set")
    first = rsm.find(f"{{{RSM}}}first")
    return {"complete": fin.get("complete") == "true",
            "first": first.text if first is not None else None,
            "index": first.get("index") if first is not None else None,
            "last": rsm.findtext(f"{{{RSM}}}last"),
            "count": int(rsm.findtext(f"{{{RSM}}}count"))}


async def pair(node, ca_file, plugins=("xep_0313", "xep_0059")):
    alice_jid, bob_jid = account(node, "alice"), account(node, "bob")
    alice = client(node, ca_file, alice_jid, "pc", plugins=plugins)
    bob = client(node, ca_file, bob_jid, "phone", plugins=plugins)
    assert await alice.start() and await bob.start()
    return alice, bob


def test_slixmpp_pages_a_conversation_forwards_and_backwards(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        bodies = [f"line {i}" for i in range(7)]
        received = await chat(alice, bob.boundjid.bare, bodies, bob)
        ids = [stanza_id(m, bob.boundjid.bare) for m in received]
        assert all(ids) and len(set(ids)) == 7
        mam = alice.plugin["xep_0313"]
        forwards = [m async for m in mam.iterate(with_jid=bob.boundjid.bare, rsm={"max": 3})]
        assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in forwards] == bodies
        # One message, one id: the sender's archive holds the id the recipient saw.
        assert [m["mam_result"]["id"] for m in forwards] == ids
        # Backwards: the last page (slixmpp's iterator stops after it: it takes index +
        # page size = count for the end whichever way it pages), then page by page with
        # <before/> until the server says complete.
        last = [m async for m in mam.iterate(with_jid=bob.boundjid.bare, reverse=True,
                                             rsm={"max": 3})]
        pages = [[m["mam_result"]["id"] for m in reversed(last)]]
        while True:
            reply = await mam.retrieve(with_jid=bob.boundjid.bare, timeout=TIMEOUT,
                                       rsm={"max": 3, "before": pages[0][0]})
            pages.insert(0, [m["mam_result"]["id"] for m in reply["mam"]["results"]])
            if reply["mam_fin"]["complete"]:
                break
        assert [len(p) for p in pages] == [1, 3, 3] and sum(pages, []) == ids
        bob_side = [m async for m in bob.plugin["xep_0313"].iterate(rsm={"max": 5})]
        assert [m["mam_result"]["id"] for m in bob_side] == ids
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_rsm_paging_in_raw_xml_with_complete_count_and_index(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        await chat(alice, bob.boundjid.bare, [f"m{i}" for i in range(5)], bob)
        page, fin = await raw_query(alice, rsm={"max": "2"})
        assert [b for _, b in page] == ["m0", "m1"]
        assert fin_set(fin) == {"complete": False, "first": page[0][0], "index": "0",
                                "last": page[1][0], "count": 5}
        rest, fin = await raw_query(alice, rsm={"max": "10", "after": page[1][0]})
        assert [b for _, b in rest] == ["m2", "m3", "m4"] and fin_set(fin)["complete"]
        assert fin_set(fin)["index"] == "2"
        # XEP-0059 §2.5: an empty <before/> asks for the last page.
        last, fin = await raw_query(alice, rsm={"max": "2", "before": ""})
        assert [b for _, b in last] == ["m3", "m4"] and not fin_set(fin)["complete"]
        earlier, fin = await raw_query(alice, rsm={"max": "5", "before": last[0][0]})
        assert [b for _, b in earlier] == ["m0", "m1", "m2"] and fin_set(fin)["complete"]
        # XEP-0313 §4.3.4: flip-page returns the same page newest first.
        flipped, fin = await raw_query(alice, rsm={"max": "2", "before": ""}, flip=True)
        assert [b for _, b in flipped] == ["m4", "m3"]
        assert fin_set(fin)["first"] == flipped[0][0]
        counted, fin = await raw_query(alice, rsm={"max": "0"})
        assert counted == [] and fin_set(fin)["count"] == 5
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_filters_with_ids_after_id_before_id_and_time(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        carol = client(node, ca_file, account(node, "carol"), "x")
        assert await carol.start()
        await chat(alice, bob.boundjid.bare, ["to bob 1", "to bob 2"], bob)
        await chat(alice, carol.boundjid.bare, ["to carol"], carol)
        await chat(alice, bob.boundjid.bare, ["to bob 3"], bob)
        everything, _ = await raw_query(alice)
        ids = [i for i, _ in everything]
        assert [b for _, b in everything] == ["to bob 1", "to bob 2", "to carol", "to bob 3"]
        with_carol, _ = await raw_query(alice, {"with": carol.boundjid.bare})
        assert [b for _, b in with_carol] == ["to carol"]
        # A full JID matches that resource only (XEP-0313 §4.1.1): bob's copies came from
        # alice's full JID.
        from_pc, _ = await raw_query(bob, {"with": str(alice.boundjid)})
        assert len(from_pc) == 3
        from_elsewhere, _ = await raw_query(bob, {"with": f"{alice.boundjid.bare}/other"})
        assert from_elsewhere == []
        between, _ = await raw_query(alice, {"after-id": ids[0], "before-id": ids[3]})
        assert [b for _, b in between] == ["to bob 2", "to carol"]
        picked, _ = await raw_query(alice, {"ids": [ids[3], ids[1]]})
        assert [b for _, b in picked] == ["to bob 2", "to bob 3"]
        future, fin = await raw_query(alice, {"start": "2100-01-01T00:00:00Z"})
        assert future == [] and fin_set(fin) == {"complete": True, "first": None, "index": None,
                                                 "last": None, "count": 0}
        past, _ = await raw_query(alice, {"end": "2000-01-01T00:00:00Z"})
        assert past == []
        for c in (alice, bob, carol):
            await c.stop()

    run(scenario())


@pytest.mark.parametrize(("fields", "rsm", "condition"), [
    (None, {"after": "no-such-id"}, "item-not-found"),
    ({"after-id": "no-such-id"}, None, "item-not-found"),
    ({"start": "yesterday"}, None, "bad-request"),
    ({"unknown-field": "x"}, None, "bad-request"),
    (None, {"max": "many"}, "bad-request"),
])
def test_bad_queries_get_the_xeps_errors(node, ca_file, fields, rsm, condition):
    async def scenario():
        c = client(node, ca_file, account(node, "bad"))
        assert await c.start(presence=False)
        with pytest.raises(IqError) as failure:
            await raw_query(c, fields, rsm)
        assert failure.value.iq["error"]["condition"] == condition
        await c.stop()

    run(scenario())


def test_another_accounts_archive_is_forbidden(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        iq = alice.Iq(stype="set", sto=bob.boundjid.bare)
        iq.append(query_xml("spy"))
        with pytest.raises(IqError) as failure:
            await iq.send(timeout=TIMEOUT)
        assert failure.value.iq["error"]["condition"] in ("forbidden", "service-unavailable")
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_offline_copy_and_carbons_carry_the_archived_stanza_id(node, ca_file):
    async def scenario():
        alice_jid, bob_jid = account(node, "alice"), account(node, "bob")
        alice = client(node, ca_file, alice_jid, "pc", plugins=("xep_0280", "xep_0313"))
        alice2 = client(node, ca_file, alice_jid, "tablet", plugins=("xep_0280",))
        assert await alice.start() and await alice2.start()
        await alice2.plugin["xep_0280"].enable()
        sent_carbon = asyncio.get_running_loop().create_future()
        alice2.add_event_handler("carbon_sent", lambda m: sent_carbon.done()
                                 or sent_carbon.set_result(m))
        alice.send_message(mto=bob_jid, mbody="while you were away", mtype="chat")
        carbon = await asyncio.wait_for(sent_carbon, TIMEOUT)
        carbon_id = stanza_id(carbon["carbon_sent"], alice_jid)
        bob = client(node, ca_file, bob_jid, "phone", plugins=("xep_0313",))
        assert await bob.start()
        offline = await bob.next_message()
        assert offline["body"] == "while you were away"
        bob_id = stanza_id(offline, bob_jid)
        archived = [m async for m in bob.plugin["xep_0313"].iterate()]
        assert [m["mam_result"]["id"] for m in archived] == [bob_id]
        alice_archived = [m async for m in alice.plugin["xep_0313"].iterate()]
        assert [m["mam_result"]["id"] for m in alice_archived] == [carbon_id] == [bob_id]
        for c in (alice, alice2, bob):
            await c.stop()

    run(scenario())


def test_hints_and_bodiless_messages(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        hinted = alice.make_message(mto=bob.boundjid.bare, mbody="secret", mtype="chat")
        hinted.append(ET.Element("{urn:xmpp:hints}no-store"))
        hinted.send()
        state = alice.make_message(mto=bob.boundjid.bare, mtype="chat")
        state.append(ET.Element("{http://jabber.org/protocol/chatstates}composing"))
        state.send()
        kept = alice.make_message(mto=bob.boundjid.bare, mtype="chat")
        kept.append(ET.Element("{urn:xmpp:hints}store"))
        kept.append(ET.Element("{urn:xmpp:receipts}received", id="x"))
        kept.send()
        await chat(alice, bob.boundjid.bare, ["plain"], bob)
        everything, _ = await raw_query(alice)
        assert [b for _, b in everything] == [None, "plain"]  # the <store/> one, then plain
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_preferences_never_and_roster(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        carol = client(node, ca_file, account(node, "carol"), "x")
        assert await carol.start()
        iq = alice.Iq(stype="get")
        iq.append(ET.Element(f"{{{MAM}}}prefs"))
        prefs = (await iq.send(timeout=TIMEOUT)).xml.find(f"{{{MAM}}}prefs")
        assert prefs.get("default") == "always"
        # XEP-0313 §6.1's example: roster by default, one JID always, one never.
        iq = alice.Iq(stype="set")
        prefs = ET.Element(f"{{{MAM}}}prefs", default="roster")
        ET.SubElement(ET.SubElement(prefs, f"{{{MAM}}}always"), f"{{{MAM}}}jid").text = \
            carol.boundjid.bare
        ET.SubElement(prefs, f"{{{MAM}}}never")
        iq.append(prefs)
        answer = (await iq.send(timeout=TIMEOUT)).xml.find(f"{{{MAM}}}prefs")
        assert answer.get("default") == "roster"
        assert answer.findtext(f"{{{MAM}}}always/{{{MAM}}}jid") == carol.boundjid.bare
        await chat(alice, bob.boundjid.bare, ["bob is not in the roster"], bob)
        await chat(alice, carol.boundjid.bare, ["carol always"], carol)
        mine, _ = await raw_query(alice)
        assert [b for _, b in mine] == ["carol always"]
        bobs, _ = await raw_query(bob)  # bob's own preferences (always) still archive it
        assert [b for _, b in bobs] == ["bob is not in the roster"]
        for c in (alice, bob, carol):
            await c.stop()

    run(scenario())


def test_form_metadata_and_disco_features(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        fields = await alice.plugin["xep_0313"].get_fields(timeout=TIMEOUT)
        assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= \
            {f["var"] for f in fields["fields"]}
        iq = alice.Iq(stype="get")
        iq.append(ET.Element(f"{{{MAM}}}metadata"))
        empty = (await iq.send(timeout=TIMEOUT)).xml.find(f"{{{MAM}}}metadata")
        assert list(empty) == []
        await chat(alice, bob.boundjid.bare, ["first", "second"], bob)
        everything, _ = await raw_query(alice)
        iq = alice.Iq(stype="get")
        iq.append(ET.Element(f"{{{MAM}}}metadata"))
        metadata = (await iq.send(timeout=TIMEOUT)).xml.find(f"{{{MAM}}}metadata")
        assert metadata.find(f"{{{MAM}}}start").get("id") == everything[0][0]
        assert metadata.find(f"{{{MAM}}}end").get("id") == everything[-1][0]
        assert metadata.find(f"{{{MAM}}}end").get("timestamp").endswith("Z")
        info = await alice.plugin["xep_0030"].get_info(jid=alice.boundjid.bare, timeout=TIMEOUT)
        features = info["disco_info"]["features"]
        assert {MAM, f"{MAM}#extended", SID} <= set(features)
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_a_message_too_large_to_archive_costs_the_others_nothing(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        # Fits the stream's stanza limit (262144) but not once stamped with from and id.
        huge = "h" * (262144 - 140)
        await chat(alice, bob.boundjid.bare, [huge, "small"], bob)
        everything, _ = await raw_query(alice)
        assert [b for _, b in everything] == ["small"]
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_a_malformed_address_is_refused_and_costs_the_archive_nothing(node, ca_file):
    async def scenario():
        alice, bob = await pair(node, ca_file)
        errors = asyncio.Queue()
        alice.add_event_handler("message_error", errors.put_nowait)
        alice.send_message(mto="x" * 1100 + "@localhost", mbody="to nobody", mtype="chat")
        error = await asyncio.wait_for(errors.get(), TIMEOUT)
        assert error["error"]["condition"] == "jid-malformed"
        await chat(alice, bob.boundjid.bare, ["after"], bob)
        everything, _ = await raw_query(alice)
        assert [b for _, b in everything] == ["after"]
        await alice.stop()
        await bob.stop()

    run(scenario())


def test_a_note_to_self_is_archived_once(node, ca_file):
    async def scenario():
        jid = account(node, "self")
        pc = client(node, ca_file, jid, "pc", plugins=("xep_0313", "xep_0059"))
        assert await pc.start()
        await chat(pc, jid, ["note to self"], pc)
        everything, _ = await raw_query(pc)
        assert [b for _, b in everything] == ["note to self"]
        await pc.stop()

    run(scenario())


def test_quota_and_retention_of_a_configured_node(tmp_path, ca_file):
    """[archive] max_per_account keeps the newest; retention_days deletes the old, on a
    real node (retention of 17 s here, swept every quarter of it)."""
    from tests.im_nodes import start_node, tls_extra

    extra = tls_extra(ca_file) + "\n[archive]\nmax_per_account = 3\nretention_days = 0.0002\n"
    configured = start_node(tmp_path, "retention", extra)
    try:
        async def scenario():
            alice, bob = await pair(configured, ca_file)
            await chat(alice, bob.boundjid.bare, [f"q{i}" for i in range(5)], bob)
            kept, fin = await raw_query(alice)
            assert [b for _, b in kept] == ["q2", "q3", "q4"] and fin_set(fin)["count"] == 3
            deadline = asyncio.get_running_loop().time() + 60
            while (await raw_query(alice))[0]:
                assert asyncio.get_running_loop().time() < deadline, "retention never applied"
                await asyncio.sleep(1)
            await alice.stop()
            await bob.stop()

        run(scenario(), timeout=90)
    finally:
        configured.kill()


def test_a_sender_faster_than_the_archive_is_paced_and_nothing_is_dropped(tmp_path, ca_file):
    """With one row per Raft entry the archive writer falls behind a burst of messages:
    the sender is held back (raftxmpp_archive_paced) instead of rows being dropped, and
    every message is delivered and archived."""
    import re
    import urllib.request

    from tests.im_nodes import start_node, tls_extra

    extra = tls_extra(ca_file) + "\n[archive]\nbatch_rows = 1\n"
    configured = start_node(tmp_path, "paced", extra, http=True)
    http = configured.ports["http"]
    bodies = [f"burst {i}" for i in range(60)]
    try:
        async def scenario():
            alice, bob = await pair(configured, ca_file)
            # bob's initial presence is processed before his message (one stream, in
            # order): the burst then meets an available bob, none of it goes offline.
            await chat(bob, alice.boundjid.bare, ["ready"], alice)
            await chat(alice, bob.boundjid.bare, bodies)  # all sent before any arrives
            got = [(await bob.next_message())["body"] for _ in bodies]
            assert got == bodies
            _, fin = await raw_query(alice, rsm={"max": "5"})
            assert fin_set(fin)["count"] == len(bodies) + 1  # and "ready"
            await alice.stop()
            await bob.stop()

        run(scenario(), timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as reply:
            text = reply.read().decode()

        def sample(name: str) -> float:
            found = re.search(rf"^{name} (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        assert sample(r'raftxmpp_archive_paced_total\{reason="behind"\}') > 0
        assert sample(r'raftxmpp_archive_rows_total\{outcome="dropped"\}') == 0
    finally:
        configured.kill()


async def test_pacing_waits_only_while_behind_a_cluster_that_commits():
    import trio

    from raftxmpp.config import ArchiveSection
    from raftxmpp.modules.mam import PACE_BATCHES, ArchiveWriter

    writer = ArchiveWriter(None, ArchiveSection(batch_rows=2))
    writer.rows = [("row",)] * (PACE_BATCHES * 2)
    with trio.move_on_after(0.05) as behind:
        await writer.room()
    assert behind.cancelled_caught  # behind: the sender waits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.room)
        await trio.testing.wait_all_tasks_blocked()
        writer._drop_front(1, "committed")  # one committed batch's worth frees the sender
    writer.rows = [("row",)] * (PACE_BATCHES * 2)
    writer.committing = False
    with trio.fail_after(1):
        await writer.room()  # no quorum: routing goes on, the rows wait
