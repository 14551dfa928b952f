"""What users see: slixmpp clients against a real node, over STARTTLS with a test CA."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp

from tests.xmpp_client import Client, run, unique

PASSWORD = "interop-password"


def account(node, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


def client(node, ca_file, jid: str, resource: str | None = None, **kwargs) -> Client:
    full = f"{jid}/{resource}" if resource else jid
    return Client(full, kwargs.pop("password", PASSWORD), node.c2s_port, ca_file / "ca.pem",
                  **kwargs)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_login_with_each_sasl_mechanism(node, ca_file, mech):
    jid = account(node, "login")

    async def scenario():
        c = client(node, ca_file, jid, mech=mech)
        assert await c.start(presence=False)
        assert c.boundjid.bare == jid and c.boundjid.resource
        await c.stop()

    run(scenario())


def test_login_over_direct_tls(node, ca_file):
    jid = account(node, "direct")

    async def scenario():
        c = Client(jid, PASSWORD, node.ports["c2s_tls"], ca_file / "ca.pem", direct_tls=True)
        assert await c.start(presence=False)
        await c.stop()

    run(scenario())


def test_wrong_password_fails_authentication(node, ca_file):
    jid = account(node, "wrong")

    async def scenario():
        c = client(node, ca_file, jid, password="not-the-password")
        assert not await c.start(presence=False)
        c.abort()

    run(scenario())


def test_in_band_registration_then_login(node, ca_file):
    jid = f"{unique('inband')}@localhost"

    async def scenario():
        c = client(node, ca_file, jid, plugins=("xep_0077",))
        c.plugin["xep_0077"].force_registration = True
        registered = asyncio.get_running_loop().create_future()

        async def on_register(_):
            iq = c.Iq(stype="set")
            iq["register"]["username"] = c.boundjid.user
            iq["register"]["password"] = PASSWORD
            await iq.send(timeout=10)
            registered.set_result(True)

        c.add_event_handler("register", on_register)
        assert await c.start(presence=False)
        assert await asyncio.wait_for(registered, 10)
        await c.stop()
        again = client(node, ca_file, jid)
        assert await again.start(presence=False)
        await again.stop()

    run(scenario())
    assert jid in node.admin("user.list")


def test_chat_both_ways_and_presence_after_subscription_handshake(node, ca_file):
    alice_jid, bob_jid = account(node, "alice"), account(node, "bob")

    async def scenario():
        alice, bob = client(node, ca_file, alice_jid), client(node, ca_file, bob_jid)
        assert await alice.start() and await bob.start()
        bob.auto_authorize = True  # bob approves alice's request
        alice.auto_authorize = True
        bob.auto_subscribe = True  # and asks back
        alice.send_presence(pto=bob_jid, ptype="subscribe")
        await alice.presence_from(bob_jid)
        await bob.presence_from(alice_jid)
        await asyncio.sleep(0)
        wait_items = [alice.client_roster[bob_jid]["subscription"],
                      bob.client_roster[alice_jid]["subscription"]]
        assert set(wait_items) <= {"to", "from", "both"}
        alice.send_message(mto=bob_jid, mbody="hello bob", mtype="chat")
        msg = await bob.next_message()
        assert msg["body"] == "hello bob" and msg["from"].bare == alice_jid
        bob.send_message(mto=msg["from"], mbody="hello alice", mtype="chat")
        reply = await alice.next_message()
        assert reply["body"] == "hello alice" and reply["from"].bare == bob_jid
        await alice.stop()
        gone = await bob.presence_from(alice_jid, "unavailable")
        assert gone["from"].bare == alice_jid
        await bob.stop()

    run(scenario())
    roster_alice = node.admin("user.list")
    assert alice_jid in roster_alice


def test_offline_message_is_delivered_once_with_a_delay_stamp(node, ca_file):
    sender_jid, rcpt_jid = account(node, "sender"), account(node, "offline")

    async def scenario():
        sender = client(node, ca_file, sender_jid)
        assert await sender.start()
        sender.send_message(mto=rcpt_jid, mbody="while you were out", mtype="chat")
        # The message is stored through Raft; a ping round-trip orders us after it.
        await sender.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        await sender.stop()
        rcpt = client(node, ca_file, rcpt_jid, plugins=("xep_0203",))
        assert await rcpt.start()
        msg = await rcpt.next_message()
        assert msg["body"] == "while you were out"
        assert msg["delay"]["stamp"] is not None
        await rcpt.stop()
        again = client(node, ca_file, rcpt_jid)
        assert await again.start()
        await again.expect_no_message(within=1.0)
        await again.stop()

    run(scenario())


def test_message_to_bare_jid_goes_to_highest_priority_resource(node, ca_file):
    sender_jid, rcpt_jid = account(node, "prio-s"), account(node, "prio-r")

    async def scenario():
        low = client(node, ca_file, rcpt_jid, "low")
        high = client(node, ca_file, rcpt_jid, "high")
        sender = client(node, ca_file, sender_jid)
        assert await low.start(priority=1) and await high.start(priority=10)
        assert await sender.start()
        await sender.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        sender.send_message(mto=rcpt_jid, mbody="to the top", mtype="chat")
        assert (await high.next_message())["body"] == "to the top"
        await low.expect_no_message(within=0.5)
        for c in (low, high, sender):
            await c.stop()

    run(scenario())


def test_carbons_copy_a_received_message_to_another_resource(node, ca_file):
    sender_jid, rcpt_jid = account(node, "carb-s"), account(node, "carb-r")

    async def scenario():
        phone = client(node, ca_file, rcpt_jid, "phone", plugins=("xep_0280",))
        laptop = client(node, ca_file, rcpt_jid, "laptop", plugins=("xep_0280",))
        sender = client(node, ca_file, sender_jid)
        assert await phone.start() and await laptop.start() and await sender.start()
        await laptop.plugin["xep_0280"].enable(timeout=10)
        carbon = asyncio.get_running_loop().create_future()
        laptop.add_event_handler("carbon_received",
                                 lambda m: carbon.done() or carbon.set_result(m))
        sender.send_message(mto=f"{rcpt_jid}/phone", mbody="for the phone", mtype="chat")
        assert (await phone.next_message())["body"] == "for the phone"
        copied = await asyncio.wait_for(carbon, 10)
        assert copied["carbon_received"]["body"] == "for the phone"
        for c in (phone, laptop, sender):
            await c.stop()

    run(scenario())


def test_vcard_set_then_get_from_another_account(node, ca_file):
    owner_jid, reader_jid = account(node, "vc-o"), account(node, "vc-r")

    async def scenario():
        owner = client(node, ca_file, owner_jid, plugins=("xep_0054",))
        reader = client(node, ca_file, reader_jid, plugins=("xep_0054",))
        assert await owner.start() and await reader.start()
        vcard = owner.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Owner Person"
        await owner.plugin["xep_0054"].publish_vcard(vcard, timeout=10)
        result = await reader.plugin["xep_0054"].get_vcard(owner_jid, cached=False, timeout=10)
        assert result["vcard_temp"]["FN"] == "Owner Person"
        await owner.stop()
        await reader.stop()

    run(scenario())


def test_private_storage_round_trip(node, ca_file):
    jid = account(node, "priv")

    async def scenario():
        c = client(node, ca_file, jid, plugins=("xep_0049", "xep_0048"))
        assert await c.start()
        bookmarks = slixmpp.plugins.xep_0048.Bookmarks()
        bookmarks.add_conference("room@muc.example.org", "me", name="Room")
        await c.plugin["xep_0049"].store(bookmarks, timeout=10)
        fetched = await c.plugin["xep_0049"].retrieve("bookmarks", timeout=10)
        conferences = fetched["private"]["bookmarks"]["conferences"]
        assert conferences[0]["jid"] == "room@muc.example.org"
        await c.stop()

    run(scenario())


def test_blocking_stops_delivery(node, ca_file):
    pest_jid, victim_jid = account(node, "pest"), account(node, "victim")

    async def scenario():
        victim = client(node, ca_file, victim_jid, plugins=("xep_0191",))
        pest = client(node, ca_file, pest_jid)
        assert await victim.start() and await pest.start()
        await victim.plugin["xep_0191"].block(pest_jid, timeout=10)
        blocked = await victim.plugin["xep_0191"].get_blocked(timeout=10)
        assert pest_jid in {str(item["jid"]) for item in blocked["blocklist"]["items"]}
        pest.send_message(mto=victim_jid, mbody="let me in", mtype="chat")
        await victim.expect_no_message(within=1.0)
        await victim.plugin["xep_0191"].unblock(pest_jid, timeout=10)
        pest.send_message(mto=victim_jid, mbody="thanks", mtype="chat")
        assert (await victim.next_message())["body"] == "thanks"
        await victim.stop()
        await pest.stop()

    run(scenario())


def test_disco_version_and_ping_of_the_server(node, ca_file):
    jid = account(node, "disco")

    async def scenario():
        c = client(node, ca_file, jid, plugins=("xep_0092",))
        assert await c.start(presence=False)
        info = await c.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        features = info["disco_info"]["features"]
        for feature in ("urn:xmpp:ping", "urn:xmpp:carbons:2", "urn:xmpp:blocking", "vcard-temp",
                        "http://jabber.org/protocol/disco#info"):
            assert feature in features
        version = await c.plugin["xep_0092"].get_version("localhost", timeout=10)
        assert version["software_version"]["name"] == "raftxmpp"
        await c.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        await c.stop()

    run(scenario())


def test_new_session_with_same_full_jid_replaces_the_old_one(node, ca_file):
    jid = account(node, "conflict")

    async def scenario():
        first = client(node, ca_file, jid, "desk")
        assert await first.start(presence=False)
        replaced = asyncio.get_running_loop().create_future()
        first.add_event_handler("stream_error",
                                lambda e: replaced.done() or replaced.set_result(e["condition"]))
        second = client(node, ca_file, jid, "desk")
        assert await second.start(presence=False)
        assert await asyncio.wait_for(replaced, 10) == "conflict"
        await second.stop()
        first.abort()

    run(scenario())
