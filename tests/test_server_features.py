"""The small server features clients ask for, with slixmpp against real nodes: last
activity of accounts (XEP-0012), contact addresses in extended service discovery
(XEP-0157, XEP-0128), and the service-administration ad-hoc commands (XEP-0050, XEP-0133)
that go through the same code as the CLI."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from raftxmpp.modules.disco import CAPS_NODE
from tests.harness import NodeProcess, wait_for
from tests.im_nodes import start_cluster, start_node, tls_extra
from tests.test_cluster_xmpp import befriend
from tests.xmpp_client import TIMEOUT, Client, run, unique

pytestmark = pytest.mark.cluster

PASSWORD = "features-password"
ADMIN_NS = "http://jabber.org/protocol/admin"
COMMANDS = "http://jabber.org/protocol/commands"
BOSS = "boss@localhost"
CONTACTS = {
    "abuse": ["mailto:abuse@localhost", "xmpp:abuse@localhost"],
    "admin": ["xmpp:boss@localhost"],
    "support": ["https://support.example.org"],
}


@pytest.fixture(scope="module")
def service_node(tmp_path_factory, ca_file):
    """A node with [admins] and [contact_addresses] configured."""
    contacts = "\n".join(f"{kind} = {uris!r}".replace("'", '"') for kind, uris in CONTACTS.items())
    extra = tls_extra(ca_file) + f'\n[admins]\njids = ["{BOSS}"]\n\n[contact_addresses]\n{contacts}\n'
    process = start_node(tmp_path_factory.mktemp("service"), "service", extra)
    process.admin("user.add", jid=BOSS, password=PASSWORD)
    yield process
    process.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ca_file):
    c = start_cluster(tmp_path_factory.mktemp("features"), tls_extra(ca_file))
    yield c
    c.kill_all()


def account(node: NodeProcess, prefix: str) -> str:
    jid = f"{unique(prefix)}@localhost"
    node.admin("user.add", jid=jid, password=PASSWORD)
    return jid


def client(node: NodeProcess, ca_file, jid: str, resource: str | None = None,
           plugins: tuple[str, ...] = (), password: str = PASSWORD) -> Client:
    full = f"{jid}/{resource}" if resource else jid
    return Client(full, password, node.c2s_port, ca_file / "ca.pem", plugins=plugins)


# -- XEP-0012: last activity --------------------------------------------------------------------------


async def _last(asker: Client, jid: str) -> slixmpp.Iq:
    return await asker.plugin["xep_0012"].get_last_activity(jid, timeout=10)


def test_last_activity_of_an_account_follows_its_logout(node, ca_file):
    """XEP-0012 §4: "If the user has at least one available resource when the server
    receives the request, the response SHOULD contain an empty <query/> element whose
    'seconds' attribute is set to a value of '0'", and otherwise "the number of seconds
    that have passed since the user last logged out" with the status "of the last
    unavailable presence received from the user"; "a server MUST NOT return last activity
    information to an entity that is not authorized to view the user's presence
    information ..., and MUST return a "Forbidden" error"."""
    juliet_jid, romeo_jid, stranger_jid = (account(node, p) for p in ("juliet", "romeo", "nosy"))

    async def scenario():
        juliet = client(node, ca_file, juliet_jid)
        romeo = client(node, ca_file, romeo_jid, plugins=("xep_0012",))
        stranger = client(node, ca_file, stranger_jid, plugins=("xep_0012",))
        assert await juliet.start() and await romeo.start() and await stranger.start()
        await befriend(juliet, romeo)
        online = await _last(romeo, juliet_jid)
        assert online["last_activity"]["seconds"] == 0
        juliet.send_presence(ptype="unavailable", pstatus="Heading Home")
        await romeo.presence_from(juliet_jid, "unavailable")
        await juliet.stop()
        offline = await _last_after_logout(romeo, juliet_jid)
        assert 0 <= offline["last_activity"]["seconds"] < 60
        assert offline["last_activity"]["status"] == "Heading Home"
        with pytest.raises(IqError) as refused:
            await _last(stranger, juliet_jid)
        assert refused.value.iq["error"]["condition"] == "forbidden"
        uptime = await _last(romeo, "localhost")  # §6: the server's own uptime
        assert uptime["last_activity"]["seconds"] >= 0
        for c in (romeo, stranger):
            await c.stop()

    run(scenario())


async def _last_after_logout(asker: Client, jid: str) -> slixmpp.Iq:
    """The answer once the logout committed (that happens after the stream closed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        try:
            answer = await _last(asker, jid)
        except IqError as exc:
            assert exc.iq["error"]["condition"] == "item-not-found"
        else:
            if answer["last_activity"]["seconds"] != 0 or answer["last_activity"]["status"]:
                return answer
        assert loop.time() < deadline, "no logout recorded"
        await asyncio.sleep(0.1)


def test_last_activity_is_durable_and_answered_by_every_node(cluster, ca_file):
    """The last logout is replicated: another node answers it, also after the node the
    user used was killed."""
    node1, node2, _ = cluster.nodes
    juliet_jid, romeo_jid = account(node1, "juliet"), account(node1, "romeo")

    async def scenario():
        juliet = client(node1, ca_file, juliet_jid)
        romeo = client(node2, ca_file, romeo_jid, plugins=("xep_0012",))
        assert await juliet.start() and await romeo.start()
        # juliet's node must know romeo is available, or her request waits for his next login.
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(
            lambda: any(s["availability"] != "unavailable"
                        for s in node1.admin("user.sessions", jid=romeo_jid)), 15, "gossip"))
        await befriend(juliet, romeo)
        juliet.send_presence(ptype="unavailable", pstatus="gone fishing")
        await juliet.stop()
        assert (await _last_after_logout(romeo, juliet_jid))["last_activity"]["status"] == \
            "gone fishing"
        node1.kill()
        answer = await _last(romeo, juliet_jid)
        assert answer["last_activity"]["status"] == "gone fishing"
        await romeo.stop()

    run(scenario())


# -- XEP-0157 / XEP-0128: contact addresses -------------------------------------------------------------


def test_contact_addresses_are_in_the_servers_extended_disco_info(service_node, ca_file):
    """XEP-0157 §3: the server SHOULD return, in its disco#info, a XEP-0128 form "scoped
    using a FORM_TYPE of "http://jabber.org/network/serverinfo"" with the registered
    '<kind>-addresses' fields; XEP-0115 §5.4: the caps hash covers that form."""
    jid = account(service_node, "reader")

    async def scenario():
        c = client(service_node, ca_file, jid, plugins=("xep_0128", "xep_0115"))
        assert await c.start(presence=False)
        info = await c.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        x = info.xml.find("{http://jabber.org/protocol/disco#info}query/{jabber:x:data}x")
        assert x is not None and x.get("type") == "result"
        fields = {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
                  for f in x.findall("{jabber:x:data}field")}
        assert fields.pop("FORM_TYPE") == ["http://jabber.org/network/serverinfo"]
        assert fields == {f"{kind}-addresses": uris for kind, uris in CONTACTS.items()}
        ver = c.plugin["xep_0115"].generate_verstring(info["disco_info"], "sha-1")
        # The server answers its caps node only for the hash of what it advertises.
        await c.plugin["xep_0030"].get_info(jid="localhost", node=f"{CAPS_NODE}#{ver}", timeout=10)
        await c.stop()

    run(scenario())


def test_a_server_without_contact_addresses_adds_no_form(node, ca_file):
    jid = account(node, "plain")

    async def scenario():
        c = client(node, ca_file, jid)
        assert await c.start(presence=False)
        info = await c.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        assert info.xml.find(".//{jabber:x:data}x") is None
        await c.stop()

    run(scenario())


# -- XEP-0050 / XEP-0133: service administration -------------------------------------------------------


def _node(name: str) -> str:
    return f"{ADMIN_NS}#{name}"


async def command(c: Client, name: str, fields: dict[str, str | list[str]] | None = None,
                  action: str = "complete") -> slixmpp.Iq:
    """Runs the command: execute, then (if it answers with a form) submit `fields`."""
    adhoc = c.plugin["xep_0050"]
    first = await adhoc.send_command("localhost", _node(name), timeout=10)
    if first["command"]["status"] != "executing":
        return first
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN_NS)
    for var, value in (fields or {}).items():
        form.add_field(var=var, value=value)
    return await adhoc.send_command("localhost", _node(name), action=action, payload=form,
                                    sessionid=first["command"]["sessionid"], timeout=10)


def admin_client(node: NodeProcess, ca_file) -> Client:
    return client(node, ca_file, BOSS, plugins=("xep_0050", "xep_0004"))


def test_only_admins_see_and_run_the_service_administration_commands(service_node, ca_file):
    """XEP-0133 §3: commands are advertised through service discovery (XEP-0050 §2.1);
    §6: they "MUST NOT be granted to users who lack service-level administrative
    privileges" (§5: <forbidden/>)."""
    user_jid = account(service_node, "mortal")

    async def scenario():
        boss = admin_client(service_node, ca_file)
        mortal = client(service_node, ca_file, user_jid, plugins=("xep_0050", "xep_0004"))
        assert await boss.start(presence=False) and await mortal.start(presence=False)
        info = await boss.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        assert COMMANDS in info["disco_info"]["features"]
        listed = await boss.plugin["xep_0050"].get_commands("localhost", timeout=10)
        nodes = {item[1] for item in listed["disco_items"]["items"]}
        assert {_node(n) for n in ("add-user", "delete-user", "change-user-password",
                                   "get-online-users-num", "get-online-users-list", "announce",
                                   "set-motd", "edit-motd", "delete-motd")} == nodes
        hidden = await mortal.plugin["xep_0050"].get_commands("localhost", timeout=10)
        assert not hidden["disco_items"]["items"]
        with pytest.raises(IqError) as refused:
            await mortal.plugin["xep_0050"].send_command("localhost", _node("add-user"), timeout=10)
        assert refused.value.iq["error"]["condition"] == "forbidden"
        for c in (boss, mortal):
            await c.stop()

    run(scenario())


def test_add_user_change_password_and_delete_user_from_a_client(service_node, ca_file):
    """XEP-0133 §4.1 add-user, §4.7 change-user-password, §4.2 delete-user ("SHOULD
    result in the termination of any active sessions for the user"), with the errors of
    §5 (<conflict/> for an existing user)."""
    new_jid = f"{unique('hired')}@localhost"

    async def scenario():
        boss = admin_client(service_node, ca_file)
        assert await boss.start(presence=False)
        done = await command(boss, "add-user", {"accountjid": new_jid, "password": "first-pw",
                                                "password-verify": "first-pw"})
        assert done["command"]["status"] == "completed"
        with pytest.raises(IqError) as again:
            await command(boss, "add-user", {"accountjid": new_jid, "password": "x",
                                             "password-verify": "x"})
        assert again.value.iq["error"]["condition"] == "conflict"
        await command(boss, "change-user-password", {"accountjid": new_jid, "password": "second-pw"})
        old = client(service_node, ca_file, new_jid, password="first-pw")
        assert not await old.start(presence=False)
        old.abort()
        hired = client(service_node, ca_file, new_jid, password="second-pw")
        assert await hired.start()
        ended = asyncio.get_running_loop().create_future()
        hired.add_event_handler("stream_error", lambda e: ended.done() or ended.set_result(
            e["condition"]))
        await command(boss, "delete-user", {"accountjids": [new_jid]})
        assert await asyncio.wait_for(ended, TIMEOUT) == "not-authorized"
        hired.abort()
        await boss.stop()

    run(scenario())
    assert new_jid not in service_node.admin("user.list", current=True)


def test_online_users_announce_and_the_message_of_the_day(service_node, ca_file):
    """XEP-0133 §4.15 and §4.20 (online users), §4.22 announce ("sent only to users who
    currently have a session"), §4.23–§4.25 message of the day ("sent immediately to users
    who are online when the message is set, or after the next session initiation for other
    users", once); the CLI's `motd show` reads what the command set."""
    here_jid, later_jid = account(service_node, "here"), account(service_node, "later")

    async def scenario():
        boss = admin_client(service_node, ca_file)
        here = client(service_node, ca_file, here_jid)
        assert await boss.start(presence=False) and await here.start()
        number = await command(boss, "get-online-users-num")
        assert int(number["command"]["form"]["values"]["onlineusersnum"]) >= 2
        listed = await command(boss, "get-online-users-list")
        online = listed["command"]["form"]["values"]["onlineuserjids"]
        assert here_jid in online and BOSS in online and later_jid not in online

        headlines: asyncio.Queue = asyncio.Queue()
        here.add_event_handler("message", lambda m: m["type"] == "headline" and headlines.put_nowait(m))
        await command(boss, "announce", {"announcement": ["Maintenance at noon.", "Sorry!"]})
        announced = await asyncio.wait_for(headlines.get(), TIMEOUT)
        assert announced["from"] == slixmpp.JID("localhost")
        assert announced["body"] == "Maintenance at noon.\nSorry!"

        await command(boss, "set-motd", {"motd": ["Welcome to the new server."]})
        motd = await here.next_message()
        assert (motd["subject"], motd["body"]) == ("Message of the day", "Welcome to the new server.")
        assert service_node.admin("motd.show") == "Welcome to the new server."
        edit = await boss.plugin["xep_0050"].send_command("localhost", _node("edit-motd"), timeout=10)
        assert edit["command"]["form"].get_values()["motd"] == ["Welcome to the new server."]

        later = client(service_node, ca_file, later_jid)
        assert await later.start()
        assert (await later.next_message())["body"] == "Welcome to the new server."
        await later.stop()
        again = client(service_node, ca_file, later_jid)
        assert await again.start()
        await again.expect_no_message(within=1.0)  # once per user
        await again.stop()

        await command(boss, "delete-motd")
        assert service_node.admin("motd.show") is None
        for c in (boss, here):
            await c.stop()

    run(scenario())


def test_command_sessions_are_checked(service_node, ca_file):
    """XEP-0050 §4.6: a submission with an unknown session is <bad-request/> with
    <bad-sessionid/>; §4.3: cancelling a session answers status 'canceled'; an unknown
    command node is <item-not-found/>."""

    async def scenario():
        boss = admin_client(service_node, ca_file)
        assert await boss.start(presence=False)
        adhoc = boss.plugin["xep_0050"]
        with pytest.raises(IqError) as unknown:
            await adhoc.send_command("localhost", _node("add-user"), action="complete",
                                     sessionid="forged", timeout=10)
        error = unknown.value.iq.xml.find("{jabber:client}error")
        assert error.find(f"{{{COMMANDS}}}bad-sessionid") is not None
        started = await adhoc.send_command("localhost", _node("announce"), timeout=10)
        canceled = await adhoc.send_command("localhost", _node("announce"), action="cancel",
                                            sessionid=started["command"]["sessionid"], timeout=10)
        assert canceled["command"]["status"] == "canceled"
        with pytest.raises(IqError) as missing:
            await adhoc.send_command("localhost", _node("restart"), timeout=10)
        assert missing.value.iq["error"]["condition"] == "item-not-found"
        await boss.stop()

    run(scenario())
