"""PEP, the pubsub service, avatars, bookmarks and OMEMO publishing as slixmpp's plugins use
them, against three real node processes, with publisher and subscriber on different nodes.

One cluster serves the module; each test makes its own accounts. Notifications travel
over node links, which keep order per link: a test that must show something did *not*
arrive waits for a later stanza on the same path instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004.stanza import Form

from tests.harness import Cluster, wait_for
from tests.im_nodes import start_cluster, tls_extra
from tests.xmpp_client import Client, run, unique

pytestmark = pytest.mark.cluster

PASSWORD = "pubsub-password"
SERVICE = "pubsub.localhost"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
RSM = "http://jabber.org/protocol/rsm"
PEP_PLUGINS = ("xep_0060", "xep_0163", "xep_0115")
OMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ca_file):
    c = start_cluster(tmp_path_factory.mktemp("pubsub"), tls_extra(ca_file))
    yield c
    c.kill_all()


def account(node, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


def client(node, ca_file, jid: str, plugins=PEP_PLUGINS, resource: str | None = None) -> Client:
    full = f"{jid}/{resource}" if resource else jid
    return Client(full, PASSWORD, node.c2s_port, ca_file / "ca.pem", plugins=plugins)


def events(c: Client, name: str) -> asyncio.Queue:
    """A queue of the messages of one slixmpp event."""
    queue: asyncio.Queue = asyncio.Queue()
    c.add_event_handler(name, queue.put_nowait)
    return queue


async def befriend(a: Client, b: Client) -> None:
    """Mutual presence subscription through the real protocol."""
    for c in (a, b):
        c.auto_authorize = True
        c.auto_subscribe = True
    a.send_presence(pto=b.boundjid.bare, ptype="subscribe")
    # Four roster commits and two presence broadcasts: generous under a loaded machine.
    await a.presence_from(b.boundjid.bare, timeout=30)
    await b.presence_from(a.boundjid.bare, timeout=30)


def options(**fields) -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def node_config(**fields) -> Form:
    form = Form()
    form["type"] = "submit"
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def app_condition(error: IqError) -> str | None:
    """The XEP-0060 application condition of an error reply."""
    for element in error.iq.xml.iter():
        if element.tag.startswith(f"{{{PUBSUB_ERRORS}}}"):
            return element.tag.split("}", 1)[1]
    return None


def item_ids(notification) -> list[str]:
    return [item["id"] for item in notification["pubsub_event"]["items"]]


async def next_event(queue: asyncio.Queue, timeout: float = 20):
    return await asyncio.wait_for(queue.get(), timeout)


# -- PEP (XEP-0163) --------------------------------------------------------------------------------


def test_pep_notification_reaches_a_contact_on_another_node_filtered_by_caps(cluster, ca_file):
    """XEP-0163 §4.3.2: a contact whose caps ask for a node (+notify) gets its events,
    one whose caps do not, does not; §4.3.3 the owner's own resources get them too."""
    node1, node2, node3 = cluster.nodes
    alice_jid, bob_jid, carol_jid = account(node1, "alice"), account(node2, "bob"), \
        account(node3, "carol")

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0172", "xep_0118"))
        bob = client(node2, ca_file, bob_jid, (*PEP_PLUGINS, "xep_0172"))  # nick only
        carol = client(node3, ca_file, carol_jid, (*PEP_PLUGINS, "xep_0118"))  # tune only
        bob_nicks, carol_tunes = events(bob, "user_nick_publish"), events(carol, "user_tune_publish")
        carol_any = events(carol, "pubsub_publish")
        own_nicks = events(alice, "user_nick_publish")
        for c in (alice, bob, carol):
            assert await c.start()
        await befriend(alice, bob)
        await befriend(alice, carol)
        await alice.plugin["xep_0172"].publish_nick("Alice in Wonderland", timeout=10)
        await alice.plugin["xep_0118"].publish_tune(artist="Gerald Finzi", title="Introduction",
                                                    timeout=10)
        nick = await next_event(bob_nicks)
        assert nick["from"] == alice_jid and nick["pubsub_event"]["items"]["node"] == \
            "http://jabber.org/protocol/nick"
        assert (await next_event(own_nicks))["from"] == alice_jid
        tune = await next_event(carol_tunes)
        assert tune["from"] == alice_jid
        # The tune left node1 after the nick on the same link: had carol got the nick, it
        # would be in her queue before the tune.
        seen = []
        while not carol_any.empty():
            seen.append(carol_any.get_nowait()["pubsub_event"]["items"]["node"])
        assert "http://jabber.org/protocol/nick" not in seen
        for c in (alice, bob, carol):
            await c.stop()

    run(scenario(), timeout=120)


def test_a_contact_logging_in_on_another_node_gets_the_last_item(cluster, ca_file):
    """XEP-0163 §4.3.3: the last published item goes to a newly available resource that
    asks for it, from the node that holds that resource."""
    node1, _, node3 = cluster.nodes
    alice_jid, dave_jid = account(node1, "alice"), account(node3, "dave")

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0172"))
        dave = client(node3, ca_file, dave_jid, (*PEP_PLUGINS, "xep_0172"))
        assert await alice.start() and await dave.start()
        await befriend(alice, dave)
        await dave.stop()
        await alice.plugin["xep_0172"].publish_nick("published while dave was away", timeout=10)
        again = client(node3, ca_file, dave_jid, (*PEP_PLUGINS, "xep_0172"))
        nicks = events(again, "user_nick_publish")
        assert await again.start()
        nick = await next_event(nicks)
        assert nick["from"] == alice_jid
        assert nick["pubsub_event"]["items"]["item"]["payload"] is not None
        await again.stop()
        await alice.stop()

    run(scenario(), timeout=120)


def test_a_caps_change_brings_the_last_item_of_the_new_interest(cluster, ca_file):
    """XEP-0163 §4.3.3 / XEP-0115 §4: a resource that starts asking for a node (+notify,
    new caps in a presence broadcast) gets that node's last item, resolved by its node."""
    node1, _, node3 = cluster.nodes
    alice_jid, frank_jid = account(node1, "alice"), account(node3, "frank")

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0172"))
        frank = client(node3, ca_file, frank_jid, (*PEP_PLUGINS, "xep_0118"))
        nicks = events(frank, "pubsub_publish")
        assert await alice.start() and await frank.start()
        await befriend(alice, frank)
        await alice.plugin["xep_0172"].publish_nick("already there", timeout=10)
        await alice.plugin["xep_0060"].publish(
            None, "urn:example:later", id="one", timeout=10,
            payload=ET.fromstring("<later xmlns='urn:example:later'>first</later>"))
        frank.plugin["xep_0163"].add_interest("urn:example:later")
        await wait_caps(frank)
        later = await next_event(nicks)
        assert later["from"] == alice_jid
        assert later["pubsub_event"]["items"]["node"] == "urn:example:later"
        await alice.stop()
        await frank.stop()

    run(scenario(), timeout=120)


def test_a_contact_whose_caps_only_its_node_knows_is_notified_through_that_node(
        cluster, ca_file):
    """XEP-0115 §5.4: caps without a hash (legacy) are not shared, so only the contact's
    own node knows what it wants; a publish on another node reaches it through that
    node, which filters by +notify."""
    node1, node2, _ = cluster.nodes
    alice_jid, grace_jid = account(node1, "alice"), account(node2, "grace")

    async def scenario():
        alice = client(node1, ca_file, alice_jid)
        grace = client(node2, ca_file, grace_jid, ("xep_0060",))  # no xep_0115: caps by hand
        published = events(grace, "pubsub_publish")
        assert await alice.start() and await grace.start()
        await befriend(alice, grace)
        grace.plugin["xep_0030"].add_feature("urn:example:legacy+notify", node="urn:legacy#v1")
        grace.send_raw("<presence><c xmlns='http://jabber.org/protocol/caps' node='urn:legacy' "
                       "ver='v1'/></presence>")
        for _ in range(2):  # the node's disco#info query, then grace's answer, come first
            await grace.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        pubsub = alice.plugin["xep_0060"]
        for node, item_id in (("urn:example:unwanted", "u1"), ("urn:example:legacy", "l1"),
                              ("urn:example:legacy", "l2")):
            await pubsub.publish(None, node, id=item_id, timeout=10,
                                 payload=ET.fromstring(f"<x xmlns='{node}'>{item_id}</x>"))
        received = [item_ids(await next_event(published)) for _ in range(2)]
        assert received == [["l1"], ["l2"]]
        await alice.stop()
        await grace.stop()

    run(scenario(), timeout=120)


def test_a_new_presence_subscriber_gets_the_last_items(cluster, ca_file):
    """XEP-0163 §4.3.3: "a PEP service MUST send the last published item to all new
    subscribers" — here a contact whose presence subscription was just approved."""
    node1, node2, _ = cluster.nodes
    alice_jid, erin_jid = account(node1, "alice"), account(node2, "erin")

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0172"))
        erin = client(node2, ca_file, erin_jid, (*PEP_PLUGINS, "xep_0172"))
        nicks = events(erin, "user_nick_publish")
        assert await alice.start() and await erin.start()
        await alice.plugin["xep_0172"].publish_nick("before we met", timeout=10)
        await befriend(erin, alice)  # erin asks, alice approves
        nick = await next_event(nicks)
        assert nick["from"] == alice_jid
        await alice.stop()
        await erin.stop()

    run(scenario(), timeout=120)


def test_omemo_device_list_published_open_is_readable_by_a_stranger_on_another_node(
        cluster, ca_file):
    """XEP-0384 §5.3.1 publishes the device list with publish-options access_model=open
    (XEP-0060 §7.1.5, XEP-0223); anyone may then read it, while a node with the PEP
    default (presence) refuses a non-contact (XEP-0060 §6.5.9.2)."""
    node1, _, node3 = cluster.nodes
    alice_jid, stranger_jid = account(node1, "alice"), account(node3, "stranger")

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0172"))
        stranger = client(node3, ca_file, stranger_jid)
        assert await alice.start() and await stranger.start()
        devices = ET.fromstring("<list xmlns='eu.siacs.conversations.axolotl'>"
                                "<device id='1001'/><device id='2002'/></list>")
        await alice.plugin["xep_0060"].publish(None, OMEMO_DEVICES, id="current", payload=devices,
                                               options=options(access_model="open"), timeout=10)
        result = await stranger.plugin["xep_0060"].get_items(alice_jid, OMEMO_DEVICES, timeout=10)
        listed = result["pubsub"]["items"]["item"]["payload"]
        assert [d.get("id") for d in listed] == ["1001", "2002"]
        await alice.plugin["xep_0172"].publish_nick("contacts only", timeout=10)
        with pytest.raises(IqError) as refused:
            await stranger.plugin["xep_0060"].get_items(alice_jid,
                                                        "http://jabber.org/protocol/nick",
                                                        timeout=10)
        assert refused.value.condition == "not-authorized"
        assert app_condition(refused.value) == "presence-subscription-required"
        await alice.stop()
        await stranger.stop()

    run(scenario(), timeout=120)


def test_publish_options_that_do_not_match_the_node_are_precondition_not_met(cluster, ca_file):
    """XEP-0060 §7.1.5: <conflict/> + <precondition-not-met/>; the client then
    reconfigures the node (what Conversations does for OMEMO) and publishes."""
    node1 = cluster.nodes[0]
    alice_jid = account(node1, "alice")
    node = "urn:example:precondition"

    async def scenario():
        alice = client(node1, ca_file, alice_jid)
        assert await alice.start()
        pubsub = alice.plugin["xep_0060"]
        payload = ET.fromstring("<x xmlns='urn:example:precondition'/>")
        await pubsub.publish(None, node, id="1", payload=payload, timeout=10)
        with pytest.raises(IqError) as refused:
            await pubsub.publish(None, node, id="2", payload=payload,
                                 options=options(access_model="open"), timeout=10)
        assert refused.value.condition == "conflict"
        assert app_condition(refused.value) == "precondition-not-met"
        await pubsub.set_node_config(None, node, node_config(access_model="open"), timeout=10)
        await pubsub.publish(None, node, id="2", payload=payload,
                             options=options(access_model="open"), timeout=10)
        await alice.stop()

    run(scenario(), timeout=120)


# -- avatars (XEP-0084, XEP-0153, XEP-0398) -----------------------------------------------------------

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_pep_avatar_reaches_contacts_and_becomes_the_vcard_photo_and_presence_hash(
        cluster, ca_file):
    """XEP-0084 §4 publish and notify; XEP-0398 §3.1 (PEP → vCard) and §4 (the server puts
    the hash in presence)."""
    node1, node2, _ = cluster.nodes
    alice_jid, bob_jid = account(node1, "alice"), account(node2, "bob")
    image_id = hashlib.sha1(PNG).hexdigest()

    async def scenario():
        plugins = (*PEP_PLUGINS, "xep_0084", "xep_0054")
        alice, bob = client(node1, ca_file, alice_jid, plugins), client(node2, ca_file, bob_jid,
                                                                         plugins)
        metadata = events(bob, "avatar_metadata_publish")
        assert await alice.start() and await bob.start()
        await befriend(alice, bob)
        avatar = alice.plugin["xep_0084"]
        await avatar.publish_avatar(PNG, timeout=10)
        await avatar.publish_avatar_metadata({"id": image_id, "type": "image/png",
                                              "bytes": len(PNG)}, timeout=10)
        notified = await next_event(metadata)
        assert notified["pubsub_event"]["items"]["item"]["id"] == image_id
        data = await bob.plugin["xep_0084"].retrieve_avatar(alice_jid, image_id, timeout=10)
        assert base64.b64decode(data["pubsub"]["items"]["item"]["payload"].text) == PNG
        vcard = await bob.plugin["xep_0054"].get_vcard(alice_jid, cached=False, timeout=10)
        assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PNG
        alice.send_presence(pstatus="with an avatar")
        while True:
            presence = await bob.presence_from(alice_jid)
            if presence["status"] == "with an avatar":
                break
        photo = presence.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
        assert photo is not None and photo.text == image_id
        await alice.stop()
        await bob.stop()

    run(scenario(), timeout=120)


def test_a_vcard_photo_is_published_as_a_pep_avatar(cluster, ca_file):
    """XEP-0398 §3.2: a vCard with a PHOTO publishes data, then metadata, notified."""
    node1, _, node3 = cluster.nodes
    alice_jid, bob_jid = account(node1, "alice"), account(node3, "bob")
    image_id = hashlib.sha1(PNG).hexdigest()

    async def scenario():
        alice = client(node1, ca_file, alice_jid, (*PEP_PLUGINS, "xep_0054", "xep_0153"))
        bob = client(node3, ca_file, bob_jid, (*PEP_PLUGINS, "xep_0084"))
        metadata = events(bob, "avatar_metadata_publish")
        assert await alice.start() and await bob.start()
        await befriend(alice, bob)
        await alice.plugin["xep_0153"].set_avatar(avatar=PNG, mtype="image/png", timeout=10)
        notified = await next_event(metadata)
        assert notified["pubsub_event"]["items"]["item"]["id"] == image_id
        data = await bob.plugin["xep_0084"].retrieve_avatar(alice_jid, image_id, timeout=10)
        assert base64.b64decode(data["pubsub"]["items"]["item"]["payload"].text) == PNG
        await alice.stop()
        await bob.stop()

    run(scenario(), timeout=120)


# -- bookmarks (XEP-0402 with XEP-0048 compatibility) ------------------------------------------------


def test_the_account_advertises_pep_and_bookmark_compatibility(cluster, ca_file):
    """XEP-0163 §6.1 identity pubsub/pep; XEP-0402 §5.3 #compat and #compat-pep;
    XEP-0398 §2; the server lists its pubsub service (XEP-0060 §5.1)."""
    node2 = cluster.nodes[1]
    jid = account(node2, "disco")

    async def scenario():
        c = client(node2, ca_file, jid)
        assert await c.start()
        info = await c.plugin["xep_0030"].get_info(jid=jid, timeout=10)
        features = set(info["disco_info"]["features"])
        assert ("pubsub", "pep") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        assert {"urn:xmpp:bookmarks:1#compat", "urn:xmpp:bookmarks:1#compat-pep",
                "http://jabber.org/protocol/pubsub#publish-options",
                "http://jabber.org/protocol/pubsub#config-node-max",
                "urn:xmpp:pep-vcard-conversion:0"} <= features
        items = await c.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert SERVICE in {i[0] for i in items["disco_items"]["items"]}
        service = await c.plugin["xep_0030"].get_info(jid=SERVICE, timeout=10)
        assert ("pubsub", "service") in {(i[0], i[1]) for i in service["disco_info"]["identities"]}
        await c.stop()

    run(scenario(), timeout=120)


def test_bookmarks_in_private_xml_appear_as_bookmarks2_on_another_node(cluster, ca_file):
    """XEP-0402 §5.3: a XEP-0048 client writes private XML (XEP-0049); a XEP-0402 client
    on another node reads one item per room, and is notified of the change."""
    node1, node2, _ = cluster.nodes
    jid = account(node1, "books")

    async def scenario():
        legacy = client(node1, ca_file, jid, ("xep_0048", "xep_0049"), "legacy")
        modern = client(node2, ca_file, jid, (*PEP_PLUGINS, "xep_0402"), "modern")
        modern.plugin["xep_0163"].add_interest("urn:xmpp:bookmarks:1")
        changes = events(modern, "pubsub_publish")
        assert await modern.start() and await legacy.start()
        await wait_caps(modern)
        storage = legacy.plugin["xep_0048"].stanza.Bookmarks()
        storage.add_conference("coven@chat.shakespeare.lit", "Puck", name="The Coven",
                               autojoin=True)
        await legacy.plugin["xep_0048"].set_bookmarks(storage, method="xep_0049", timeout=10)
        notified = await next_event(changes)
        assert item_ids(notified) == ["coven@chat.shakespeare.lit"]
        result = await modern.plugin["xep_0060"].get_items(None, "urn:xmpp:bookmarks:1",
                                                           timeout=10)
        conference = result["pubsub"]["items"]["item"]["payload"]
        assert conference.get("name") == "The Coven" and conference.get("autojoin") == "true"
        assert conference.find("{urn:xmpp:bookmarks:1}nick").text == "Puck"
        await legacy.stop()
        await modern.stop()

    run(scenario(), timeout=120)


def test_bookmarks2_published_are_read_through_private_xml_on_another_node(cluster, ca_file):
    """XEP-0402 §5.3 the other way: a XEP-0402 publish (with the publish-options of §3),
    then a XEP-0048 client reads <storage xmlns='storage:bookmarks'/> via XEP-0049."""
    node2, node3 = cluster.nodes[1], cluster.nodes[2]
    jid = account(node2, "books")

    async def scenario():
        modern = client(node2, ca_file, jid, (*PEP_PLUGINS, "xep_0402"), "modern")
        legacy = client(node3, ca_file, jid, ("xep_0048", "xep_0049"), "legacy")
        assert await modern.start() and await legacy.start()
        conference = ET.fromstring("<conference xmlns='urn:xmpp:bookmarks:1' name='Council' "
                                   "autojoin='true'><nick>Oberon</nick></conference>")
        await modern.plugin["xep_0060"].publish(
            None, "urn:xmpp:bookmarks:1", id="council@conference.underhill.org",
            payload=conference, options=options(persist_items="true", access_model="whitelist",
                                                max_items="max",
                                                send_last_published_item="never"),
            timeout=10)
        result = await legacy.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
        conferences = result["private"]["bookmarks"]["conferences"]
        assert [(c["jid"], c["name"], c["nick"], c["autojoin"]) for c in conferences] == \
            [("council@conference.underhill.org", "Council", "Oberon", True)]
        await modern.stop()
        await legacy.stop()

    run(scenario(), timeout=120)


async def wait_caps(c: Client) -> None:
    """Sends presence again with the client's current caps (its interests changed)."""
    await c.plugin["xep_0115"].update_caps(broadcast=True)
    await c.plugin["xep_0199"].ping(jid="localhost", timeout=10)


# -- the pubsub service (XEP-0060) -------------------------------------------------------------------


def test_service_notifications_reach_subscribers_on_three_nodes_exactly_once(cluster, ca_file):
    """XEP-0060 §7.1.2: each subscriber's resource gets each notification once, whichever
    node it is on; the publish is acknowledged after it committed."""
    node1, node2, node3 = cluster.nodes
    owner_jid = account(node2, "owner")
    subscribers = [(account(n, "sub"), n) for n in (node1, node2, node3)]
    node = unique("exactly-once")
    ids = [f"i{n}" for n in range(25)]

    async def scenario():
        owner = client(node2, ca_file, owner_jid)
        assert await owner.start()
        await owner.plugin["xep_0060"].create_node(SERVICE, node,
                                                   config=node_config(max_items="100"),
                                                   timeout=10)
        resources = []
        for jid, where in subscribers:
            c = client(where, ca_file, jid, resource="main")
            resources.append((c, events(c, "pubsub_publish")))
            assert await c.start()
            await c.plugin["xep_0060"].subscribe(SERVICE, node, timeout=10)
        # A second resource of the node3 subscriber, on node1: a bare subscription reaches both.
        extra = client(node1, ca_file, subscribers[2][0], resource="second")
        resources.append((extra, events(extra, "pubsub_publish")))
        assert await extra.start()
        for item_id in [*ids, "end"]:
            payload = ET.fromstring(f"<entry xmlns='urn:example:news'>{item_id}</entry>")
            await owner.plugin["xep_0060"].publish(SERVICE, node, id=item_id, payload=payload,
                                                   timeout=10)
        for c, queue in resources:
            received = []
            while not received or received[-1] != "end":
                received.extend(item_ids(await next_event(queue)))
            assert received == [*ids, "end"], c.boundjid
        for c, _ in resources:
            await c.stop()
        await owner.stop()

    run(scenario(), timeout=120)


def test_service_node_lifecycle_with_items_rsm_retract_purge_and_delete(cluster, ca_file):
    """XEP-0060 §8.1 create with configure, §8.2 configure, §6.5.7 max_items, §6.5.4 RSM,
    §7.2 retract with notification, §8.5 purge, §8.4 delete notifying subscribers."""
    node1, node2, node3 = cluster.nodes
    owner_jid, reader_jid = account(node1, "owner"), account(node3, "reader")
    node = unique("lifecycle")

    async def scenario():
        owner, reader = client(node1, ca_file, owner_jid), client(node3, ca_file, reader_jid,
                                                                  PEP_PLUGINS)
        retracts, purges = events(reader, "pubsub_retract"), events(reader, "pubsub_purge")
        deletes = events(reader, "pubsub_delete")
        assert await owner.start() and await reader.start()
        pubsub = owner.plugin["xep_0060"]
        await pubsub.create_node(SERVICE, node, config=node_config(max_items="5",
                                                                   title="Lifecycle"),
                                 timeout=10)
        with pytest.raises(IqError) as exists:
            await reader.plugin["xep_0060"].create_node(SERVICE, node, timeout=10)
        assert exists.value.condition == "conflict"
        config = await pubsub.get_node_config(SERVICE, node, timeout=10)
        fields = config["pubsub_owner"]["configure"]["form"].get_fields()
        assert fields["pubsub#max_items"]["value"] == "5"
        assert fields["pubsub#title"]["value"] == "Lifecycle"
        with pytest.raises(IqError) as not_owner:
            await reader.plugin["xep_0060"].get_node_config(SERVICE, node, timeout=10)
        assert not_owner.value.condition == "forbidden"
        await reader.plugin["xep_0060"].subscribe(SERVICE, node, timeout=10)
        for n in range(7):
            await pubsub.publish(SERVICE, node, id=f"n{n}",
                                 payload=ET.fromstring(f"<n xmlns='urn:example'>{n}</n>"),
                                 timeout=10)
        everything = await reader.plugin["xep_0060"].get_items(SERVICE, node, timeout=10)
        assert [i["id"] for i in everything["pubsub"]["items"]] == ["n2", "n3", "n4", "n5", "n6"]
        latest = await reader.plugin["xep_0060"].get_items(SERVICE, node, max_items=2, timeout=10)
        assert [i["id"] for i in latest["pubsub"]["items"]] == ["n5", "n6"]
        pages = await rsm_pages(reader, node, 2)
        assert pages == [["n2", "n3"], ["n4", "n5"], ["n6"]]
        await pubsub.retract(SERVICE, node, "n2", timeout=10)
        retracted = await next_event(retracts)
        assert retracted["pubsub_event"]["items"]["retract"]["id"] == "n2"
        await pubsub.purge(SERVICE, node, timeout=10)
        assert (await next_event(purges))["pubsub_event"]["purge"]["node"] == node
        assert len((await pubsub.get_items(SERVICE, node, timeout=10))["pubsub"]["items"]) == 0
        await pubsub.delete_node(SERVICE, node, timeout=10)
        assert (await next_event(deletes))["pubsub_event"]["delete"]["node"] == node
        with pytest.raises(IqError) as gone:
            await pubsub.get_items(SERVICE, node, timeout=10)
        assert gone.value.condition == "item-not-found"
        await owner.stop()
        await reader.stop()

    run(scenario(), timeout=120)


async def rsm_pages(c: Client, node: str, size: int) -> list[list[str]]:
    """Pages of item ids through XEP-0059 (`after` the last id of each page)."""
    pages, after = [], None
    while True:
        iq = c.Iq(sto=SERVICE, stype="get")
        iq["pubsub"]["items"]["node"] = node
        rsm = ET.SubElement(iq["pubsub"].xml, f"{{{RSM}}}set")
        ET.SubElement(rsm, f"{{{RSM}}}max").text = str(size)
        if after:
            ET.SubElement(rsm, f"{{{RSM}}}after").text = after
        result = await iq.send(timeout=10)
        page = [i["id"] for i in result["pubsub"]["items"]]
        if not page:
            return pages
        pages.append(page)
        after = result["pubsub"].xml.find(f"{{{RSM}}}set/{{{RSM}}}last").text


def test_subscription_sends_the_last_item_and_whitelist_nodes_refuse_strangers(
        cluster, ca_file):
    """XEP-0060 §6.1.7 (last item on subscription, send_last_published_item on_sub),
    §7.1.2.2 (notification without payload), §6.1.3.4 (<not-allowed/> + <closed-node/>),
    then §8.9 affiliations open the node."""
    node1, node2, _ = cluster.nodes
    owner_jid, member_jid = account(node1, "owner"), account(node2, "member")
    open_node, closed_node = unique("open"), unique("closed")

    async def scenario():
        owner, member = client(node1, ca_file, owner_jid), client(node2, ca_file, member_jid)
        published = events(member, "pubsub_publish")
        assert await owner.start() and await member.start()
        pubsub = owner.plugin["xep_0060"]
        await pubsub.create_node(SERVICE, open_node, timeout=10)
        await pubsub.publish(SERVICE, open_node, id="last",
                             payload=ET.fromstring("<x xmlns='urn:example'>hello</x>"), timeout=10)
        await member.plugin["xep_0060"].subscribe(SERVICE, open_node, timeout=10)
        assert item_ids(await next_event(published)) == ["last"]
        # §7.1.2.2: a node configured without payloads notifies the item id alone.
        await pubsub.set_node_config(SERVICE, open_node, node_config(deliver_payloads="0"),
                                     timeout=10)
        await pubsub.publish(SERVICE, open_node, id="bare",
                             payload=ET.fromstring("<x xmlns='urn:example'>secret</x>"),
                             timeout=10)
        notified = await next_event(published)
        assert item_ids(notified) == ["bare"]
        assert len(notified["pubsub_event"]["items"]["item"].xml) == 0  # no payload
        await pubsub.create_node(SERVICE, closed_node,
                                 config=node_config(access_model="whitelist"), timeout=10)
        with pytest.raises(IqError) as closed:
            await member.plugin["xep_0060"].subscribe(SERVICE, closed_node, timeout=10)
        assert closed.value.condition == "not-allowed" and app_condition(closed.value) == \
            "closed-node"
        await pubsub.modify_affiliations(SERVICE, closed_node, [(member_jid, "member")],
                                         timeout=10)
        await member.plugin["xep_0060"].subscribe(SERVICE, closed_node, timeout=10)
        subscriptions = await pubsub.get_node_subscriptions(SERVICE, closed_node, timeout=10)
        assert [s["jid"].bare for s in subscriptions["pubsub_owner"]["subscriptions"]] == \
            [member_jid]
        await owner.stop()
        await member.stop()

    run(scenario(), timeout=120)


def test_pubsub_errors_of_the_xep(cluster, ca_file):
    """XEP-0060 §7.1.3.3 (no node: item-not-found), §7.1.3.1 (forbidden), §6.2.3.2
    (not-subscribed), §7.2.3.4 (nodeid-required)."""
    node1, node2, _ = cluster.nodes
    owner_jid, other_jid = account(node1, "owner"), account(node2, "other")
    node = unique("errors")

    async def scenario():
        owner, other = client(node1, ca_file, owner_jid), client(node2, ca_file, other_jid)
        assert await owner.start() and await other.start()
        payload = ET.fromstring("<x xmlns='urn:example'/>")
        with pytest.raises(IqError) as missing:
            await owner.plugin["xep_0060"].publish(SERVICE, node, payload=payload, timeout=10)
        assert missing.value.condition == "item-not-found"
        await owner.plugin["xep_0060"].create_node(SERVICE, node, timeout=10)
        with pytest.raises(IqError) as forbidden:
            await other.plugin["xep_0060"].publish(SERVICE, node, payload=payload, timeout=10)
        assert forbidden.value.condition == "forbidden"
        with pytest.raises(IqError) as not_subscribed:
            await other.plugin["xep_0060"].unsubscribe(SERVICE, node, timeout=10)
        assert not_subscribed.value.condition == "unexpected-request"
        assert app_condition(not_subscribed.value) == "not-subscribed"
        with pytest.raises(IqError) as no_node:
            await owner.plugin["xep_0060"].retract(SERVICE, "", "x", timeout=10)
        assert app_condition(no_node.value) == "nodeid-required"
        await owner.stop()
        await other.stop()

    run(scenario(), timeout=120)


# -- operators: admin API, CLI, metrics ------------------------------------------------------------


def test_operator_lists_and_deletes_nodes_and_metrics_count_pubsub(cluster, ca_file):
    node1, node2, _ = cluster.nodes
    owner_jid = account(node1, "ops")
    node = unique("ops")

    async def scenario():
        owner = client(node1, ca_file, owner_jid)
        deleted = events(owner, "pubsub_delete")
        assert await owner.start()
        await owner.plugin["xep_0060"].create_node(SERVICE, node, timeout=10)
        await owner.plugin["xep_0060"].subscribe(SERVICE, node, timeout=10)
        await owner.plugin["xep_0060"].publish(SERVICE, node, id="a",
                                               payload=ET.fromstring("<x xmlns='urn:e'/>"),
                                               timeout=10)
        rows = node2.admin("pubsub.list", owner=SERVICE)
        assert {"node": node, "items": 1, "subscribers": 1}.items() <= _row(rows, node).items()
        listed = subprocess.run(
            [sys.executable, "-m", "raftxmpp_cli.main", "pubsub", "list", SERVICE, "--config",
             str(node2.config_path)], capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and node in listed.stdout
        node2.admin("pubsub.delete", owner=SERVICE, node=node)
        assert (await next_event(deleted))["pubsub_event"]["delete"]["node"] == node
        missing = subprocess.run(
            [sys.executable, "-m", "raftxmpp_cli.main", "pubsub", "delete", SERVICE, node,
             "--config", str(node2.config_path)], capture_output=True, text=True, timeout=30)
        assert missing.returncode == 1 and "no node" in missing.stderr
        assert "Traceback" not in missing.stderr
        await owner.stop()

    run(scenario(), timeout=120)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{node1.ports['http']}/metrics",
                                     timeout=10).read().decode()
    assert 'raftxmpp_pubsub_requests_total{request="publish"}' in metrics
    assert "raftxmpp_pubsub_nodes " in metrics


def _row(rows: list[dict], node: str) -> dict:
    return next(r for r in rows if r["node"] == node)


# -- durability: kill -9 during publishes -------------------------------------------------------------


def test_a_node_killed_during_publishes_loses_no_acknowledged_item(tmp_path, ca_file):
    """A publish is acknowledged only after it committed (DESIGN.md, Raft rules): with
    publishers on every node, the leader is killed with SIGKILL mid-stream; every item
    whose publish was acknowledged is then on both survivors and, once it restarts, on
    the killed node too. Unacknowledged publishes may or may not be there."""
    extra = f'\n[tls]\ncertificate = "{ca_file / "cert.pem"}"\nkey = "{ca_file / "key.pem"}"\n'
    cluster = Cluster(tmp_path, 3, extra).start()
    try:
        leader = cluster.leader()
        survivors = [n for n in cluster.nodes if n is not leader]
        owner_jid = account(survivors[0], "durable")
        wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes),
                 20, "gossip")
        node = unique("durable")
        acked: set[str] = set()
        killed = asyncio.Event()

        async def publisher(c: Client, name: str, until_after_kill: int) -> None:
            after_kill = 0
            for n in range(400):
                if not c.is_connected():
                    return  # the killed node's client lost its stream
                item_id = f"{name}-{n}"
                payload = ET.fromstring(f"<n xmlns='urn:example:durable'>{n}</n>")
                try:
                    await c.plugin["xep_0060"].publish(SERVICE, node, id=item_id, payload=payload,
                                                       timeout=10)
                except (IqError, IqTimeout):
                    continue  # not acknowledged: it may or may not have committed
                acked.add(item_id)
                if killed.is_set():
                    after_kill += 1
                    if after_kill >= until_after_kill:
                        return

        async def scenario():
            owner = client(survivors[0], ca_file, owner_jid, resource="setup")
            assert await owner.start()
            await owner.plugin["xep_0060"].create_node(
                SERVICE, node, config=node_config(max_items="max"), timeout=10)
            clients = [client(n, ca_file, owner_jid, resource=n.name) for n in cluster.nodes]
            for c in clients:
                assert await c.start()
            tasks = [asyncio.create_task(publisher(c, n.name, 15))
                     for c, n in zip(clients, cluster.nodes, strict=True)]
            while len(acked) < 30:
                await asyncio.sleep(0.01)  # polling our own counter, not waiting on the server
            await asyncio.to_thread(leader.kill)
            killed.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 90)
            for c in [*clients, owner]:
                c.abort()

        async def read_items(where) -> set[str]:
            reader = client(where, ca_file, owner_jid, resource=f"reader-{unique('r')}")
            assert await reader.start()
            result = await reader.plugin["xep_0060"].get_items(SERVICE, node, timeout=15)
            await reader.stop()
            return {i["id"] for i in result["pubsub"]["items"]}

        run(scenario(), timeout=150)
        assert len(acked) >= 45
        for survivor in survivors:
            stored = run(read_items(survivor))
            assert acked <= stored, f"lost on {survivor.name}: {sorted(acked - stored)[:10]}"
        leader.start()
        wait_for(lambda: leader.status()["leader"] is not None, 30, "the restarted node to rejoin")
        stored = run(read_items(leader))
        assert acked <= stored, f"lost on the restarted node: {sorted(acked - stored)[:10]}"
    finally:
        cluster.kill_all()
