"""Group chat (XEP-0045) as slixmpp's xep_0045 plugin uses it, against three real node
processes, with the occupants of one room on different nodes.

One cluster serves the module; each test makes its own accounts and rooms. Room traffic
travels over node links, which keep order per link: a test that must show something did
*not* arrive waits for a later stanza on the same path instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from slixmpp.exceptions import IqError, PresenceError
from slixmpp.plugins.xep_0004.stanza import Form

from tests.harness import wait_for
from tests.im_nodes import start_cluster, tls_extra
from tests.xmpp_client import Client, run, unique

pytestmark = pytest.mark.cluster

PASSWORD = "muc-password"
SERVICE = "conference.localhost"
MUC_USER = "http://jabber.org/protocol/muc#user"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ca_file):
    # Archive rows wait up to 1 s for their batch: a room message reaches its occupants
    # well before its row commits, which the room-archive test relies on.
    extra = tls_extra(ca_file) + "\n[archive]\nflush_interval = 1.0\n"
    c = start_cluster(tmp_path_factory.mktemp("muc"), extra)
    yield c
    c.kill_all()


def account(node, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


class Member:
    """A slixmpp client with the xep_0045 plugin and queues of what rooms send it."""

    def __init__(self, node, ca_file, jid: str) -> None:
        self.client = Client(jid, PASSWORD, node.c2s_port, ca_file / "ca.pem",
                             plugins=("xep_0045", "xep_0004", "xep_0249", "xep_0410"))
        self.groupchat: asyncio.Queue = asyncio.Queue()
        self.room_presence: asyncio.Queue = asyncio.Queue()
        self.subjects: asyncio.Queue = asyncio.Queue()
        self.private: asyncio.Queue = asyncio.Queue()
        self.invites: asyncio.Queue = asyncio.Queue()
        self.unclaimed: list = []
        c = self.client
        c.add_event_handler("groupchat_message", self._groupchat)
        c.add_event_handler("groupchat_presence", self.room_presence.put_nowait)
        c.add_event_handler("groupchat_subject", self.subjects.put_nowait)
        c.add_event_handler("groupchat_invite", self.invites.put_nowait)
        c.add_event_handler("groupchat_direct_invite", self.invites.put_nowait)
        c.add_event_handler("message", self._message)

    def _groupchat(self, msg) -> None:
        if msg["body"]:
            self.groupchat.put_nowait(msg)

    def _message(self, msg) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"] and \
                msg["from"].domain == SERVICE:
            self.private.put_nowait(msg)

    @property
    def muc(self):
        return self.client.plugin["xep_0045"]

    @property
    def jid(self) -> str:
        return self.client.boundjid.bare

    async def start(self) -> Member:
        assert await self.client.start()
        return self

    async def join(self, room: str, nick: str, **kwargs):
        """Our own presence in the room; `self.joined` keeps the whole answer (presence,
        subject, occupants, history)."""
        self.joined = await self.muc.join_muc_wait(room, nick, timeout=30, **kwargs)
        return self.joined[0]

    async def next_body(self, timeout: float = 20) -> tuple[str, str]:
        msg = await asyncio.wait_for(self.groupchat.get(), timeout)
        return msg["from"].resource, msg["body"]

    async def presence_of(self, nick: str, ptype: str = "available", timeout: float = 20):
        """The first room presence of `nick` of that type not taken yet; the others wait
        in `self.unclaimed` for their own calls."""
        def matches(pres) -> bool:
            return pres["from"].resource == nick and pres["type"] == ptype

        for pres in self.unclaimed:
            if matches(pres):
                self.unclaimed.remove(pres)
                return pres
        while True:
            pres = await asyncio.wait_for(self.room_presence.get(), timeout)
            if matches(pres):
                return pres
            self.unclaimed.append(pres)


def rooms(node) -> set[str]:
    return {row["room"] for row in node.admin("muc.list", domain=SERVICE)}


def codes(presence) -> set[int]:
    return {int(s.get("code")) for s in presence.xml.iter(f"{{{MUC_USER}}}status")}


def item_of(presence):
    return next(presence.xml.iter(f"{{{MUC_USER}}}item"))


async def instant_room(owner: Member, nick: str, **config) -> str:
    """§10.1.2: create, then accept the default configuration (or the given fields)."""
    room = f"{unique('room')}@{SERVICE}"
    presence = await owner.join(room, nick)
    assert {110, 201} <= codes(presence)
    form = Form()
    form["type"] = "submit"
    for var, value in config.items():
        form.add_field(var=f"muc#roomconfig_{var}", value=value)
    await owner.muc.set_room_config(room, form, timeout=20)
    return room


async def stop_all(*members: Member) -> None:
    for m in members:
        await m.client.stop()


# -- stage 1: rooms, occupants, messages --------------------------------------------------------


def test_room_created_joined_and_chatted_in_from_three_nodes(cluster, ca_file):
    """§10.1.2 instant room; §7.2 joins with the others' presence first and 110 last;
    §7.4 a groupchat message reaches every occupant, on every node, sender included."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        assert item_of(await alice.presence_of("Bob")).get("role") == "participant"
        own = await carol.join(room, "Carol")
        assert 110 in codes(own)
        await bob.presence_of("Carol")
        bob.client.send_message(mto=room, mbody="hello from node2", mtype="groupchat")
        for member in (alice, bob, carol):
            assert await member.next_body() == ("Bob", "hello from node2")
        carol.client.send_message(mto=room, mbody="one", mtype="groupchat")
        alice.client.send_message(mto=room, mbody="two", mtype="groupchat")
        seen = [[await m.next_body() for _ in range(2)] for m in (alice, bob, carol)]
        assert seen[0] == seen[1] == seen[2], "every occupant sees the room's one order"
        await stop_all(alice, bob, carol)

    run(scenario(), 120)


def test_nick_conflict_private_message_and_subject(cluster, ca_file):
    """§7.2.9 a taken nick is <conflict/>; §7.5 private messages from the sender's nick;
    §8.1 the subject, sent to occupants and to whoever joins later."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        wait_for(lambda: any(o["nick"] == "Bob" for o in
                             node3.admin("muc.info", room=room)["occupants"]), 20,
                 "carol's node to know Bob is in the room")
        with pytest.raises(PresenceError) as err:
            await carol.join(room, "Bob")
        assert err.value.condition == "conflict"
        await alice.presence_of("Bob")
        alice.client.send_message(mto=f"{room}/Bob", mbody="psst", mtype="chat")
        msg = await asyncio.wait_for(bob.private.get(), 20)
        assert str(msg["from"]) == f"{room}/Alice" and msg["body"] == "psst"
        alice.muc.set_subject(room, "Raft and rooms")
        subject = await asyncio.wait_for(bob.subjects.get(), 20)
        while subject["subject"] != "Raft and rooms":
            subject = await asyncio.wait_for(bob.subjects.get(), 20)
        await carol.join(room, "Carol")
        subject = await asyncio.wait_for(carol.subjects.get(), 20)
        assert subject["subject"] == "Raft and rooms" and subject["from"].resource == "Alice"
        await stop_all(alice, bob, carol)

    run(scenario(), 120)


def test_leaving_and_logging_out_tell_the_others(cluster, ca_file):
    """§7.14: leaving sends unavailable to all, the leaver's own with 110; a closed
    connection leaves every room it was in."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        bob.muc.leave_muc(room, "Bob", "bye")
        gone = await alice.presence_of("Bob", "unavailable")
        assert gone["status"] == "bye"
        own = await bob.presence_of("Bob", "unavailable")
        assert 110 in codes(own)
        await bob.join(room, "Bob")
        await bob.client.stop()
        await alice.presence_of("Bob", "unavailable")
        await alice.client.stop()

    run(scenario(), 120)


def test_reserved_room_locked_until_configured_and_disco(cluster, ca_file):
    """§10.1.3 a reserved room: locked (others get <item-not-found/>) until its owner
    submits the form; §6.4 disco#info shows the configured features; §6.3 public rooms
    are listed by the service."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = f"{unique('reserved')}@{SERVICE}"
        assert 201 in codes(await alice.join(room, "Alice"))
        with pytest.raises(PresenceError) as err:
            await bob.join(room, "Bob")
        assert err.value.condition == "item-not-found"
        form = await alice.muc.get_room_config(room, timeout=20)
        assert "muc#roomconfig_persistentroom" in {f["var"] for f in form["fields"]}
        submit = Form()
        submit["type"] = "submit"
        submit.add_field(var="muc#roomconfig_persistentroom", value=True)
        submit.add_field(var="muc#roomconfig_roomname", value="The Reserved")
        submit.add_field(var="muc#roomconfig_whois", value="anyone")
        await alice.muc.set_room_config(room, submit, timeout=20)
        presence = await bob.join(room, "Bob")
        assert 100 in codes(presence)
        info = await bob.client.plugin["xep_0030"].get_info(jid=room, timeout=20)
        features = info["disco_info"]["features"]
        assert {"muc_persistent", "muc_nonanonymous", "http://jabber.org/protocol/muc"} <= \
            set(features)
        items = await bob.client.plugin["xep_0030"].get_items(jid=SERVICE, timeout=20)
        assert room in {str(i[0]) for i in items["disco_items"]["items"]}
        service = await bob.client.plugin["xep_0030"].get_info(jid="localhost", timeout=20)
        assert service is not None
        server_items = await bob.client.plugin["xep_0030"].get_items(jid="localhost", timeout=20)
        assert SERVICE in {str(i[0]) for i in server_items["disco_items"]["items"]}
        await stop_all(alice, bob)
        # A persistent room outlives its occupants, on every node.
        for node in cluster.nodes:
            wait_for(lambda n=node: room in rooms(n), 20,
                     "the persistent room on every node")

    run(scenario(), 120)


# -- stage 2: affiliations, roles, moderation, destruction ------------------------------------------


def test_kick_and_ban_reach_occupants_on_other_nodes(cluster, ca_file):
    """§8.2 a moderator kicks (307 to all, with actor and reason); §9.1 an admin bans
    (301), and a banned user cannot come back (§7.2.7 <forbidden/>)."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        await carol.join(room, "Carol")
        await alice.presence_of("Bob")  # alice's node knows them both now
        await alice.presence_of("Carol")
        await alice.muc.set_role(room, "Bob", "none", reason="too loud", timeout=20)
        kicked = await carol.presence_of("Bob", "unavailable")
        assert 307 in codes(kicked)
        own = await bob.presence_of("Bob", "unavailable")
        assert {110, 307} <= codes(own)
        assert own.xml.find(f".//{{{MUC_USER}}}reason").text == "too loud"
        assert own.xml.find(f".//{{{MUC_USER}}}actor").get("nick") == "Alice"
        await alice.muc.set_affiliation(room, "outcast", jid=c, reason="spam", timeout=20)
        banned = await alice.presence_of("Carol", "unavailable")
        assert 301 in codes(banned) and item_of(banned).get("affiliation") == "outcast"
        with pytest.raises(PresenceError) as err:
            await carol.join(room, "Carol")
        assert err.value.condition == "forbidden"
        outcasts = await alice.muc.get_affiliation_list(room, "outcast", timeout=20)
        assert [str(j) for j in outcasts] == [c]
        await stop_all(alice, bob, carol)

    run(scenario(), 120)


def test_members_only_room_and_mediated_invitation(cluster, ca_file):
    """§7.2.6 a members-only room refuses non-members (<registration-required/>);
    §7.8.2 an invitation through the room reaches the invitee on another node and
    makes it a member (§9.3), so it can enter."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice", membersonly=True)
        with pytest.raises(PresenceError) as err:
            await bob.join(room, "Bob")
        assert err.value.condition == "registration-required"
        alice.muc.invite(room, b, reason="come in")
        invite = await asyncio.wait_for(bob.invites.get(), 20)
        assert str(invite["from"]) == room
        assert invite["muc"]["invite"]["from"] == a
        presence = await bob.join(room, "Bob")
        assert item_of(presence).get("affiliation") == "member"
        members = await alice.muc.get_affiliation_list(room, "member", timeout=20)
        assert [str(j) for j in members] == [b]
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_direct_invitation_passes_between_users(cluster, ca_file):
    """XEP-0249: a direct invitation goes from user to user; the room needs nothing."""
    node1, node3 = cluster.nodes[0], cluster.nodes[2]
    a, c = account(node1, "alice"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice")
        alice.client.plugin["xep_0249"].send_invitation(c, room, reason="join us")
        invite = await asyncio.wait_for(carol.invites.get(), 20)
        assert str(invite["groupchat_invite"]["jid"]) == room
        await carol.join(room, "Carol")
        await stop_all(alice, carol)

    run(scenario(), 120)


def test_password_protected_room(cluster, ca_file):
    """§7.2.5: no or a wrong password is <not-authorized/>; the right one enters."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice", passwordprotectedroom=True,
                                  roomsecret="open sesame")
        for wrong in (None, "guess"):
            with pytest.raises(PresenceError) as err:
                await bob.join(room, "Bob", **({"password": wrong} if wrong else {}))
            assert err.value.condition == "not-authorized"
        await bob.join(room, "Bob", password="open sesame")
        info = await bob.client.plugin["xep_0030"].get_info(jid=room, timeout=20)
        assert "muc_passwordprotected" in info["disco_info"]["features"]
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_moderated_room_voice(cluster, ca_file):
    """§7.4 / §8.3: in a moderated room a visitor's message is <forbidden/>; once a
    moderator gives voice it reaches the room."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice", moderatedroom=True)
        presence = await bob.join(room, "Bob")
        assert item_of(presence).get("role") == "visitor"
        await alice.presence_of("Bob")
        errors: asyncio.Queue = asyncio.Queue()
        bob.client.add_event_handler("groupchat_message_error", errors.put_nowait)
        bob.client.send_message(mto=room, mbody="can I speak?", mtype="groupchat")
        error = await asyncio.wait_for(errors.get(), 20)
        assert error["error"]["condition"] == "forbidden"
        await alice.muc.set_role(room, "Bob", "participant", timeout=20)
        while item_of(await bob.presence_of("Bob")).get("role") != "participant":
            pass
        bob.client.send_message(mto=room, mbody="thanks", mtype="groupchat")
        assert await alice.next_body() == ("Bob", "thanks")
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_destroy_with_an_alternate_venue(cluster, ca_file):
    """§10.9: every occupant, on every node, gets unavailable with <destroy jid/> and the
    reason; the room is gone everywhere."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice", persistentroom=True)
        await bob.join(room, "Bob")
        await carol.join(room, "Carol")
        await alice.muc.destroy(room, reason="moving", altroom=f"new@{SERVICE}", timeout=20)
        for member, nick in ((bob, "Bob"), (carol, "Carol")):
            gone = await member.presence_of(nick, "unavailable")
            destroy = gone.xml.find(f".//{{{MUC_USER}}}destroy")
            assert destroy is not None and destroy.get("jid") == f"new@{SERVICE}"
            assert destroy.find(f"{{{MUC_USER}}}reason").text == "moving"
        await stop_all(alice, bob, carol)
        for node in cluster.nodes:
            wait_for(lambda n=node: room not in rooms(n), 20,
                     "the room gone on every node")

    run(scenario(), 120)


def test_nick_change_is_seen_as_303_then_the_new_nick(cluster, ca_file):
    """§7.6: the others get unavailable for the old nick with 303 and the new nick, then
    the new nick's presence; the changer gets both with 110."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        await alice.presence_of("Bob")
        await bob.muc.set_self_nick(room, "Robert", timeout=30)
        old = await alice.presence_of("Bob", "unavailable")
        assert 303 in codes(old) and item_of(old).get("nick") == "Robert"
        await alice.presence_of("Robert")
        bob.client.send_message(mto=room, mbody="renamed", mtype="groupchat")
        assert await alice.next_body() == ("Robert", "renamed")
        await stop_all(alice, bob)

    run(scenario(), 120)


# -- stage 4: history and self-ping ------------------------------------------------------------------


def test_history_on_join_follows_maxstanzas_seconds_and_since(cluster, ca_file):
    """§7.2.14: the last messages with <delay/> from the room; maxstanzas, seconds and
    since limit them; maxstanzas='0' sends none. The history was ordered on one node and
    is served by another."""
    node1, node2, node3 = cluster.nodes
    a = account(node1, "alice")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        room = await instant_room(alice, "Alice")
        for i in range(5):
            alice.client.send_message(mto=room, mbody=f"m{i}", mtype="groupchat")
            assert await alice.next_body() == ("Alice", f"m{i}")
        cases = [({}, ["m0", "m1", "m2", "m3", "m4"]), ({"maxstanzas": 2}, ["m3", "m4"]),
                 ({"maxstanzas": 0}, []), ({"seconds": 3600}, ["m0", "m1", "m2", "m3", "m4"]),
                 ({"since": datetime.now(UTC) + timedelta(minutes=1)}, [])]
        for n, (limits, expected) in enumerate(cases):
            node = (node2, node3)[n % 2]
            reader = await Member(node, ca_file, account(node, "reader")).start()
            await reader.join(room, f"Reader{n}", **limits)
            history = reader.joined[3]
            assert [m["body"] for m in history] == expected, limits
            for message in history:
                delay = message.xml.find("{urn:xmpp:delay}delay")
                assert delay is not None and delay.get("from") == room
            await reader.client.stop()
        await alice.client.stop()

    run(scenario(), 150)


def test_self_ping_is_answered_on_every_node(cluster, ca_file):
    """XEP-0410: pinging one's own occupant JID is answered by the service (a result
    while joined); once the occupant left, or for another nick, <not-acceptable/>."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        ping = bob.client.plugin["xep_0199"]
        await ping.send_ping(f"{room}/Bob", timeout=20)
        with pytest.raises(IqError) as err:
            await ping.send_ping(f"{room}/Alice", timeout=20)
        assert err.value.condition == "not-acceptable"
        bob.muc.leave_muc(room, "Bob")
        await bob.presence_of("Bob", "unavailable")
        with pytest.raises(IqError) as err:
            await ping.send_ping(f"{room}/Bob", timeout=20)
        assert err.value.condition == "not-acceptable"
        info = await alice.client.plugin["xep_0030"].get_info(jid=SERVICE, timeout=20)
        assert "http://jabber.org/protocol/muc#self-ping-optimization" in \
            info["disco_info"]["features"]
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_corner_cases_answer_with_the_xeps_errors(cluster, ca_file):
    """Raw stanzas: a join without a nick is <jid-malformed/> (§7.2.1); groupchat from a
    non-occupant is <not-acceptable/> (§7.4); groupchat to an occupant JID is
    <bad-request/>; a private message to a missing nick is <item-not-found/>; an IQ to
    a room that does not exist is <item-not-found/>."""
    node1 = cluster.nodes[0]
    a, b = account(node1, "alice"), account(node1, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node1, ca_file, b).start()
        room = await instant_room(alice, "Alice")
        errors: asyncio.Queue = asyncio.Queue()
        bob.client.add_event_handler("presence_error", errors.put_nowait)
        bob.client.add_event_handler("message_error", errors.put_nowait)
        bob.client.send_presence(pto=room)
        assert (await asyncio.wait_for(errors.get(), 20))["error"]["condition"] == \
            "jid-malformed"
        bob.client.send_message(mto=room, mbody="hi", mtype="groupchat")
        assert (await asyncio.wait_for(errors.get(), 20))["error"]["condition"] == \
            "not-acceptable"
        await bob.join(room, "Bob")
        bob.client.send_message(mto=f"{room}/Alice", mbody="hi", mtype="groupchat")
        assert (await asyncio.wait_for(errors.get(), 20))["error"]["condition"] == \
            "bad-request"
        bob.client.send_message(mto=f"{room}/Nobody", mbody="hi", mtype="chat")
        assert (await asyncio.wait_for(errors.get(), 20))["error"]["condition"] == \
            "item-not-found"
        with pytest.raises(IqError) as err:
            await bob.client.plugin["xep_0030"].get_info(jid=f"nowhere@{SERVICE}", timeout=20)
        assert err.value.condition == "item-not-found"
        with pytest.raises(IqError) as err:
            await bob.muc.get_room_config(room, timeout=20)
        assert err.value.condition == "forbidden"
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_operator_lists_inspects_and_destroys_rooms_from_the_cli(cluster, ca_file):
    """`raftxmpp muc list|info|destroy` on any node: the destruction reaches an occupant
    on another node (§10.9), and a missing room is a one-line error."""
    node1, node2 = cluster.nodes[:2]
    a = account(node1, "alice")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raftxmpp_cli.main", "muc", *args,
                               "--config", str(node2.config_path)],
                              capture_output=True, text=True, timeout=30)

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        room = await instant_room(alice, "Alice", roomname="Ops")
        listed = cli("list", SERVICE)
        assert listed.returncode == 0 and room in listed.stdout
        info = json.loads(cli("info", room).stdout)
        assert info["affiliations"] == {a: "owner"} and "secret" not in info["config"]
        assert cli("destroy", room, "--reason", "maintenance").returncode == 0
        gone = await alice.presence_of("Alice", "unavailable")
        destroy = gone.xml.find(f".//{{{MUC_USER}}}destroy")
        assert destroy.find(f"{{{MUC_USER}}}reason").text == "maintenance"
        missing = cli("info", room)
        assert missing.returncode == 1 and "no room" in missing.stderr
        assert "Traceback" not in missing.stderr
        await alice.client.stop()

    run(scenario(), 120)


def test_voice_request_reaches_the_moderator_who_grants_it(cluster, ca_file):
    """§7.13: a visitor's voice request reaches the moderators (on another node) as a
    muc#request form; §8.6 the moderator's approval makes the visitor a participant."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        room = await instant_room(alice, "Alice", moderatedroom=True)
        requests: asyncio.Queue = asyncio.Queue()
        alice.client.add_event_handler("message_xform", requests.put_nowait)
        await bob.join(room, "Bob")
        await alice.presence_of("Bob")
        bob.muc.request_voice(room, "participant")
        request = await asyncio.wait_for(requests.get(), 20)
        values = request["form"].get_values()
        assert values["FORM_TYPE"] in ("http://jabber.org/protocol/muc#request",
                                       ["http://jabber.org/protocol/muc#request"])
        assert values["muc#roomnick"] == "Bob" and str(values["muc#jid"]).startswith(b)
        approval = alice.client.make_message(room)
        form = approval["form"]
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden",
                       value="http://jabber.org/protocol/muc#request")
        form.add_field(var="muc#role", value="participant")
        form.add_field(var="muc#roomnick", value="Bob")
        form.add_field(var="muc#request_allow", ftype="boolean", value=True)
        approval.send()
        while item_of(await bob.presence_of("Bob")).get("role") != "participant":
            pass
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_iqs_to_an_occupant_are_passed_on_and_vcards_answered(cluster, ca_file):
    """An IQ to an occupant JID reaches the occupant (on another node) from the asker's
    occupant JID, and the answer comes back from the occupant JID (real JIDs stay
    hidden); a vCard request is answered with the occupant's account vCard."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        for m in (alice, bob):
            m.client.register_plugin("xep_0092")
            m.client.register_plugin("xep_0054")
        card = alice.client.plugin["xep_0054"].make_vcard()
        card["FN"] = "Alice Liddell"
        await alice.client.plugin["xep_0054"].publish_vcard(card, timeout=20)
        room = await instant_room(alice, "Alice")
        await bob.join(room, "Bob")
        await bob.presence_of("Alice")
        version = await bob.client.plugin["xep_0092"].get_version(f"{room}/Alice", timeout=20)
        assert str(version["from"]) == f"{room}/Alice"
        assert version["software_version"]["name"]
        vcard = await bob.client.plugin["xep_0054"].get_vcard(f"{room}/Alice", local=False,
                                                              cached=False, timeout=20)
        assert vcard["vcard_temp"]["FN"] == "Alice Liddell"
        with pytest.raises(IqError) as err:
            await bob.client.plugin["xep_0092"].get_version(f"{room}/Nobody", timeout=20)
        assert err.value.condition == "item-not-found"
        await stop_all(alice, bob)

    run(scenario(), 120)


def test_the_room_archive_answers_mam_queries_on_any_node(cluster, ca_file):
    """XEP-0313 on the room JID: the ordered messages are archived once, by the room, with
    the stanza-id every occupant saw; newcomers on the two other nodes page through them
    at once (the rows still wait for their batch on the ordering node, which is remote to
    at least one of them); an outcast may not read them."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        for m in (alice, bob, carol):
            m.client.register_plugin("xep_0313")
            m.client.register_plugin("xep_0059")
        room = await instant_room(alice, "Alice", persistentroom=True)
        ids = []
        for i in range(4):
            alice.client.send_message(mto=room, mbody=f"archived {i}", mtype="groupchat")
            msg = await asyncio.wait_for(alice.groupchat.get(), 20)
            ids.append(msg.xml.find("{urn:xmpp:sid:0}stanza-id").get("id"))
        info = await carol.client.plugin["xep_0030"].get_info(jid=room, timeout=20)
        assert "urn:xmpp:mam:2" in info["disco_info"]["features"]
        for member in (carol, bob):
            mam = member.client.plugin["xep_0313"]
            found = [m async for m in mam.iterate(jid=room, rsm={"max": 3})]
            assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in found] == \
                [f"archived {i}" for i in range(4)]
            assert [m["mam_result"]["id"] for m in found] == ids
            assert {str(m["mam_result"]["forwarded"]["stanza"]["from"]) for m in found} == \
                {f"{room}/Alice"}
        await alice.muc.set_affiliation(room, "outcast", jid=b, timeout=20)
        with pytest.raises(IqError) as err:
            await bob.client.plugin["xep_0313"].retrieve(jid=room, timeout=20)
        assert err.value.condition == "forbidden"
        await stop_all(alice, bob, carol)

    run(scenario(), 120)


def test_nickname_registration_reserves_the_nick_everywhere(cluster, ca_file):
    """§7.10: registering a nick (the muc#register form) makes a member; §7.12 the
    x-roomuser-item node tells the user its nick; nobody else may enter with it."""
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice")
        iq = bob.client.make_iq_get(queryxmlns="jabber:iq:register", ito=room)
        form = (await iq.send(timeout=20)).xml.find(".//{jabber:x:data}x")
        assert form is not None and form.find(
            "{jabber:x:data}field[@var='muc#register_roomnick']") is not None
        submit = bob.client.make_iq_set(ito=room)
        query = ET.SubElement(submit.xml, "{jabber:iq:register}query")
        x = ET.SubElement(query, "{jabber:x:data}x", type="submit")
        for var, value in (("FORM_TYPE", "http://jabber.org/protocol/muc#register"),
                           ("muc#register_roomnick", "Bobby")):
            ET.SubElement(ET.SubElement(x, "{jabber:x:data}field", var=var),
                          "{jabber:x:data}value").text = value
        await submit.send(timeout=20)
        info = await bob.client.plugin["xep_0030"].get_info(jid=room, node="x-roomuser-item",
                                                            timeout=20)
        assert [i[3] for i in info["disco_info"]["identities"]] == ["Bobby"]
        wait_for(lambda: node3.admin("muc.info", room=room)["nicks"] == {b: "Bobby"}, 20,
                 "carol's node to have applied the registration")
        with pytest.raises(PresenceError) as err:
            await carol.join(room, "Bobby")
        assert err.value.condition == "conflict"
        presence = await bob.join(room, "Bobby")
        assert item_of(presence).get("affiliation") == "member"
        await stop_all(alice, bob, carol)

    run(scenario(), 120)
