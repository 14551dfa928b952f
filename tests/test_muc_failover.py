"""Rooms survive the death of any node (issue 18): three real node processes, one
killed with SIGKILL mid-conversation.

- the node of one occupant dies: the others see that occupant leave (333) and go on
  talking, with the room's configuration, affiliations and subject intact;
- the node that orders the room's messages dies: another takes over, the survivors'
  messages still reach each other, and a newcomer gets the history from before.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import wait_for
from tests.im_nodes import start_cluster, tls_extra
from tests.test_muc_cluster import Member, account, codes, instant_room
from tests.xmpp_client import run

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path, ca_file):
    c = start_cluster(tmp_path, tls_extra(ca_file))
    yield c
    c.kill_all()


async def abandon(member: Member) -> None:
    """A client whose node was killed: drop its dead connection."""
    member.client.abort()


def test_killing_an_occupants_node_leaves_the_room_going(cluster, ca_file):
    node1, node2, node3 = cluster.nodes
    a, b, c = account(node1, "alice"), account(node2, "bob"), account(node3, "carol")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        bob = await Member(node2, ca_file, b).start()
        carol = await Member(node3, ca_file, c).start()
        room = await instant_room(alice, "Alice", persistentroom=True, roomname="Survivors")
        await alice.muc.set_affiliation(room, "admin", jid=b, timeout=20)
        await bob.join(room, "Bob")
        await carol.join(room, "Carol")
        alice.muc.set_subject(room, "before the crash")
        await alice.presence_of("Carol")
        await bob.presence_of("Carol")
        node3.kill()
        for member in (alice, bob):
            gone = await member.presence_of("Carol", "unavailable", timeout=30)
            assert 333 in codes(gone)
        bob.client.send_message(mto=room, mbody="still here", mtype="groupchat")
        for member in (alice, bob):
            assert await member.next_body() == ("Bob", "still here")
        info = node2.admin("muc.info", room=room)
        assert info["config"]["roomname"] == "Survivors" and info["config"]["persistentroom"]
        assert info["affiliations"] == {a: "owner", b: "admin"}
        assert info["subject"]["text"] == "before the crash"
        assert sorted(o["nick"] for o in info["occupants"]) == ["Alice", "Bob"]
        await abandon(carol)
        await alice.client.stop()
        await bob.client.stop()

    run(scenario(), 150)


def test_killing_the_ordering_node_hands_the_room_over(cluster, ca_file):
    node1 = cluster.nodes[0]
    owner = account(node1, "alice")

    async def scenario():
        alice = await Member(node1, ca_file, owner).start()
        room = await instant_room(alice, "Alice")
        orderer = node1.admin("muc.info", room=room)["orderer"]
        survivors = [n for n in cluster.nodes if n.name != orderer]
        doomed = next(n for n in cluster.nodes if n.name == orderer)
        members = []
        for i, node in enumerate(survivors):
            member = await Member(node, ca_file, account(node, f"user{i}")).start()
            await member.join(room, f"User{i}")
            members.append(member)
        speaker, listener = members
        speaker.client.send_message(mto=room, mbody="before", mtype="groupchat")
        assert await listener.next_body() == ("User0", "before")
        doomed.kill()
        wait_for(lambda: survivors[0].admin("muc.info", room=room)["orderer"] != orderer, 30,
                 "another node to order the room")
        wait_for(lambda: survivors[1].admin("muc.info", room=room)["orderer"] != orderer, 30,
                 "both survivors to agree")
        speaker.client.send_message(mto=room, mbody="after", mtype="groupchat")
        assert await listener.next_body(30) == ("User0", "after")
        newcomer = await Member(survivors[1], ca_file, account(survivors[1], "dave")).start()
        await newcomer.join(room, "Dave")
        history = [m["body"] for m in newcomer.joined[3]]
        assert history[-2:] == ["before", "after"]
        for member in (*members, newcomer):
            await member.client.stop()
        if doomed is node1:
            await abandon(alice)
        else:
            await alice.client.stop()

    run(scenario(), 150)


def test_a_temporary_room_ends_with_the_node_of_its_last_occupants(cluster, ca_file):
    """§10.1.1 for a node's death: when the only occupants' node dies, a temporary room
    is destroyed by the survivors (once), a persistent one stays."""
    node1, node2 = cluster.nodes[:2]
    a = account(node2, "alice")

    async def scenario():
        alice = await Member(node2, ca_file, a).start()
        temporary = await instant_room(alice, "Alice")
        persistent = await instant_room(alice, "Alice", persistentroom=True)
        node2.kill()
        wait_for(lambda: temporary not in {r["room"] for r in node1.admin("muc.list")}, 30,
                 "the temporary room to be destroyed")
        assert persistent in {r["room"] for r in node1.admin("muc.list")}
        await abandon(alice)

    run(scenario(), 120)


def test_rooms_outlive_a_restart_of_the_whole_cluster(cluster, ca_file):
    """Durable room state: configuration, affiliations and subject come back after every
    node stopped and started again (the Raft log and dump, not memory)."""
    node1, node2 = cluster.nodes[:2]
    a, b = account(node1, "alice"), account(node2, "bob")

    async def scenario():
        alice = await Member(node1, ca_file, a).start()
        room = await instant_room(alice, "Alice", persistentroom=True, roomname="Durable")
        await alice.muc.set_affiliation(room, "member", jid=b, timeout=20)
        alice.muc.set_subject(room, "kept")
        await asyncio.wait_for(alice.subjects.get(), 20)  # the join's empty subject
        while (await asyncio.wait_for(alice.subjects.get(), 20))["subject"] != "kept":
            pass
        await alice.client.stop()

    run(scenario(), 120)
    for node in cluster.nodes:
        node.stop()
    for node in cluster.nodes:
        node.start()
    cluster.leader()

    def restored():
        info = node2.admin("muc.info", room=room_of(node2))
        return info["config"]["roomname"] == "Durable" and info["subject"]["text"] == "kept" \
            and info["affiliations"] == {a: "owner", b: "member"}

    wait_for(restored, 30, "the room's durable state on a restarted node")


def room_of(node) -> str:
    rooms = [r["room"] for r in node.admin("muc.list") if r["name"] == "Durable"]
    assert len(rooms) == 1
    return rooms[0]


def test_room_messages_under_a_kill_reach_the_survivors_once_in_one_order(cluster, ca_file):
    """A room workload through a kill -9 of the room's ordering node: every message its
    sender saw echoed (accepted) reaches every occupant on the surviving nodes exactly
    once, and all survivors see the room's messages in the same order."""
    owner = account(cluster.nodes[0], "owner")

    async def scenario():
        founder = await Member(cluster.nodes[0], ca_file, owner).start()
        room = await instant_room(founder, "Founder", persistentroom=True)
        orderer = cluster.nodes[0].admin("muc.info", room=room)["orderer"]
        survivors = [n for n in cluster.nodes if n.name != orderer]
        doomed = next(n for n in cluster.nodes if n.name == orderer)
        members = []
        for i, node in enumerate([*survivors, *survivors]):
            member = await Member(node, ca_file, account(node, f"occ{i}")).start()
            await member.join(room, f"Occ{i}")
            members.append(member)
        victim = await Member(doomed, ca_file, account(doomed, "victim")).start()
        await victim.join(room, "Victim")
        for member in members:
            await member.presence_of("Victim")
        sent: dict[str, list[str]] = {m.jid: [] for m in members}

        async def talk(member: Member, count: int) -> None:
            for n in range(count):
                body = f"{member.jid}-{n}"
                sent[member.jid].append(body)
                member.client.send_message(mto=room, mbody=body, mtype="groupchat")
                await asyncio.sleep(0.02)

        first = asyncio.gather(*(talk(m, 15) for m in members[:2]))
        await asyncio.sleep(0.1)
        doomed.kill()
        await first
        for node in survivors:  # until then a message may go to the dead node (no echo)
            wait_for(lambda n=node: n.admin("muc.info", room=room)["orderer"] != orderer, 30,
                     "every survivor to name another ordering node")
        await asyncio.gather(*(talk(m, 10) for m in members[2:]))
        # Drain: every member's copies until the last message of each sender has come
        # (or nothing more arrives for a while).
        seen: dict[str, list[str]] = {m.jid: [] for m in members}

        async def drain(member: Member) -> None:
            while True:
                try:
                    _, body = await member.next_body(timeout=5)
                except TimeoutError:
                    return
                seen[member.jid].append(body)

        await asyncio.gather(*(drain(m) for m in members))
        accepted = {b for m in members for b in seen[m.jid] if b.startswith(m.jid + "-")}
        for member in members:
            got = seen[member.jid]
            assert len(got) == len(set(got)), f"{member.jid} got a message twice"
            missing = accepted - set(got)
            assert not missing, f"{member.jid} missed accepted messages {sorted(missing)}"
        reference = seen[members[0].jid]
        for member in members[1:]:
            assert seen[member.jid] == reference, "survivors saw different orders"
        later = [b for m in members[2:] for b in sent[m.jid]]
        assert set(later) <= accepted, "messages after the handover were lost"
        for member in (*members, founder):
            await member.client.stop()
        await abandon(victim)

    run(scenario(), 180)
