"""Memory stays flat under hostile load, measured on a real node process (VmRSS from
/proc/PID/status): a client that stops reading while another floods it, and clients
that send as fast as they can. Both are bounded in bytes and time, and stop by
themselves."""

from __future__ import annotations

import time

import pytest
import trio

from tests.harness import wait_for
from tests.security.conftest import PASSWORD, authenticated, node_process, rss_kib

pytestmark = pytest.mark.cluster  # starts real node processes

MiB = 1024


@pytest.fixture
def memory_node(tmp_path):
    node = node_process(tmp_path, c2s="send_timeout = 2.0\nmax_stanza_size = 65536\n",
                        limits="c2s_read_rate = 1048576\nc2s_read_burst = 1048576\n")
    node.start()
    for user in ("alice", "bob"):
        wait_for(lambda u=user: node.admin("user.add", jid=f"{u}@localhost", password=PASSWORD),
                 20, f"{user} registered")
    yield node
    node.kill()


async def _sample_rss(pid: int, peak: list[int], stop: trio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib(pid))
        with trio.move_on_after(0.05):
            await stop.wait()


async def _drain(raw) -> None:
    """Reads and forgets: a client that keeps up with what the server sends it."""
    while await raw.stream.receive_some(65536):
        pass


def _sessions(node) -> int:
    return node.admin("node.status")["sessions"]


async def test_a_slow_reader_flooded_by_another_client_is_cut_and_memory_stays_flat(
        memory_node, record_property):
    node, pid = memory_node, memory_node.process.pid
    slow = await authenticated(node.c2s_port, "bob", "slow", rcvbuf=4096)  # never reads again
    flooder = await authenticated(node.c2s_port, "alice", "flood")
    stanza = b"<message to='bob@localhost/slow' type='chat'><body>" + b"f" * 16000 + b"</body></message>"
    total = 8 * 1024 * 1024  # 8 times the outbox cap; the read rate paces it at 1 MiB/s
    before, flooded = rss_kib(pid), 0
    peak_box, stop = [before], trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_rss, pid, peak_box, stop)
        nursery.start_soon(_drain, flooder)  # bounces come back once bob is gone
        with trio.fail_after(30):
            for count in range(total // len(stanza)):
                await flooder.send(stanza)
                flooded += len(stanza)
                if count % 64 == 63 and _sessions(node) == 1:
                    break  # bob is gone; the rest would only go to offline storage
        with trio.fail_after(15):
            while _sessions(node) > 1:  # the slow session is closed
                await trio.sleep(0.1)
        stop.set()
        nursery.cancel_scope.cancel()
    peak = peak_box[0]
    after = rss_kib(pid)
    record_property("rss_kib", {"before": before, "peak": peak, "after": after,
                                "sent_kib": flooded >> 10})
    print(f"slow reader: RSS before {before} KiB, peak {peak} KiB, after {after} KiB; "
          f"{flooded >> 10} KiB flooded at it until it was cut, in "
          f"{time.monotonic() - started:.1f}s")
    assert peak - before < 48 * MiB, f"RSS grew from {before} to {peak} KiB"
    await slow.aclose()


async def test_clients_sending_as_fast_as_they_can_are_paced_and_memory_stays_flat(
        memory_node, record_property):
    node, pid = memory_node, memory_node.process.pid
    flooders = [await authenticated(node.c2s_port, "alice", f"f{i}") for i in range(4)]
    # IQ results to the server: accepted and dropped, so all the cost is reading them.
    stanza = b"<iq type='result' to='localhost' id='" + b"i" * 4000 + b"'/>"
    seconds, sent = 4.0, [0]
    before = rss_kib(pid)
    peak_box, stop = [before], trio.Event()

    async def flood(raw) -> None:
        with trio.move_on_after(seconds):
            while True:
                await raw.send(stanza * 16)
                sent[0] += len(stanza) * 16

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_rss, pid, peak_box, stop)
        async with trio.open_nursery() as flooding:
            for raw in flooders:
                flooding.start_soon(flood, raw)
        stop.set()
    peak, after = peak_box[0], rss_kib(pid)
    rate_bound = 4 * (1048576 * seconds + 1048576 + 65536)  # rate × time + burst + a read
    kernel_buffers = 4 * 8 * 1024 * 1024  # what the sockets hold that the node never read
    record_property("flood", {"before": before, "peak": peak, "after": after,
                              "sent_mib": sent[0] >> 20})
    print(f"flood: {sent[0] >> 20} MiB sent by 4 clients in {seconds:.0f}s; RSS before "
          f"{before} KiB, peak {peak} KiB, after {after} KiB")
    assert sent[0] <= rate_bound + kernel_buffers, "the read rate did not push back"
    assert peak - before < 48 * MiB, f"RSS grew from {before} to {peak} KiB"
    assert _sessions(node) == 4  # paced, not disconnected
