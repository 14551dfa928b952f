"""Stream management (XEP-0198) as real clients see it: slixmpp's xep_0198 plugin against
real node processes (STARTTLS with a test CA), a lost connection, a resumption."""

from __future__ import annotations

import asyncio

from tests.test_im_slixmpp import account, client
from tests.xmpp_client import TIMEOUT, run


def sm_client(node, ca_file, jid: str, resource: str, port: int | None = None):
    c = client(node, ca_file, jid, resource, plugins=("xep_0198",))
    if port is not None:
        c.port = port
    c.events = {name: asyncio.Queue() for name in ("sm_enabled", "session_resumed", "sm_failed")}
    for name, queue in c.events.items():
        c.add_event_handler(name, queue.put_nowait)
    return c


async def lose_connection(c) -> None:
    """What a phone going through a tunnel does: the TCP connection ends, no stream close."""
    gone = asyncio.get_running_loop().create_future()
    c.add_event_handler("disconnected", lambda _: gone.done() or gone.set_result(True),
                        disposable=True)
    c.abort()
    await asyncio.wait_for(gone, TIMEOUT)


async def reconnect(c, port: int) -> str:
    """Connects again; the plugin resumes. 'resumed' or 'failed'."""
    c.port = port
    c.connect("127.0.0.1", port)
    resumed = asyncio.ensure_future(c.events["session_resumed"].get())
    failed = asyncio.ensure_future(c.events["sm_failed"].get())
    done, pending = await asyncio.wait({resumed, failed}, timeout=TIMEOUT * 2,
                                       return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "neither resumed nor failed"
    return "resumed" if resumed in done else "failed"


def test_slixmpp_resumes_on_the_same_node_and_gets_what_was_sent_meanwhile(node, ca_file):
    alice_jid, bob_jid = account(node, "smalice"), account(node, "smbob")

    async def scenario():
        alice = sm_client(node, ca_file, alice_jid, "phone")
        bob = client(node, ca_file, bob_jid, "desk")
        assert await alice.start() and await bob.start()
        await asyncio.wait_for(alice.events["sm_enabled"].get(), TIMEOUT)
        assert alice.plugin["xep_0198"].sm_id
        bob.send_message(f"{alice_jid}/phone", "before", mtype="chat")
        assert (await alice.next_message())["body"] == "before"
        await lose_connection(alice)
        for body in ("during1", "during2"):
            bob.send_message(f"{alice_jid}/phone", body, mtype="chat")
        assert await reconnect(alice, node.c2s_port) == "resumed"
        got = [(await alice.next_message())["body"] for _ in range(2)]
        assert got == ["during1", "during2"]
        await alice.expect_no_message(within=1.5)  # exactly once: no copy of "before"
        alice.send_message(f"{bob_jid}/desk", "back", mtype="chat")
        assert (await bob.next_message())["body"] == "back"
        await alice.stop()
        await bob.stop()

    run(scenario())
