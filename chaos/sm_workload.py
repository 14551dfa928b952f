"""Stream-management clients moving between nodes while nodes are killed (issue 16).

Not part of the default chaos run (chaos/runner.py): a standalone workload on three local
node processes (tests/harness.py, loopback, direct TLS), run as

    python -m chaos.sm_workload --minutes 5 --pairs 5 --seed 1

Each pair is a sender and a receiver ("phone"). Senders keep one stream-management session
and send a numbered message every 0.2 s to their receiver's full JID, asking for acks; a
message counts as *acknowledged* once the server's <a h/> covers it. Receivers lose their
connection every few seconds (no stream close) and come back on a random node with
<resume/>; when that fails (its node was killed) they bind again and their initial presence
brings what was parked in offline storage. Every `--kill-every` seconds a random node is
killed -9 and restarted. At the end every receiver connects once more and the check is:
every acknowledged message was received (lost = acknowledged − received must be empty);
duplicates and resumption outcomes are counted. Prints a JSON summary; exit 1 if anything
acknowledged was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from lxml import etree

from chaos import xmpp
from tests.harness import Cluster, wait_for

SM = "urn:xmpp:sm:3"
WRAP = 1 << 32
PASSWORD = "sm-chaos-password"


class SmConnection(xmpp.Connection):
    """chaos.xmpp.Connection plus the client side of XEP-0198."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counting = False
        self.handled = 0  # stanzas received since <enabled/> (or <resumed/>)
        self.sm_answer: asyncio.Future | None = None
        self.on_acked = None  # called with each acknowledged outgoing stanza's tag

    def _dispatch(self, element: etree._Element) -> None:
        qname = etree.QName(element)
        if qname.namespace == SM:
            if qname.localname == "r":
                self._send(f"<a xmlns='{SM}' h='{self.handled}'/>")
            elif qname.localname == "a" and self.on_acked is not None:
                self.on_acked(int(element.get("h")))
            elif self.sm_answer is not None and not self.sm_answer.done():
                self.sm_answer.set_result(element)
            return
        if self.counting and qname.namespace == xmpp.CLIENT:
            self.handled = (self.handled + 1) % WRAP
        super()._dispatch(element)

    async def authenticate(self, username: str, password: str) -> None:
        """SASL PLAIN and the stream restart, no bind (a <resume/> comes instead)."""
        loop = asyncio.get_running_loop()
        self._nonza = loop.create_future()
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self._send(f"<auth xmlns='{xmpp.SASL}' mechanism='PLAIN'>{token}</auth>")
        answer = await self._wait(self._nonza)
        if answer.tag != f"{{{xmpp.SASL}}}success":
            raise xmpp.Unknown("sasl failed")
        await self._restart_stream()

    async def bind(self, resource: str) -> None:
        reply = await self.iq("set", f"<bind xmlns='{xmpp.BIND}'><resource>{resource}"
                                     "</resource></bind>")
        self.jid = reply.findtext(f"{{{xmpp.BIND}}}bind/{{{xmpp.BIND}}}jid")

    async def _sm(self, request: str) -> etree._Element:
        self.sm_answer = asyncio.get_running_loop().create_future()
        self._send(request)
        return await self._wait(self.sm_answer)

    async def enable(self) -> str:
        answer = await self._sm(f"<enable xmlns='{SM}' resume='true'/>")
        if etree.QName(answer).localname != "enabled":
            raise xmpp.Unknown("enable failed")
        self.counting, self.handled = True, 0
        return answer.get("id")

    async def resume(self, previd: str, handled: int) -> tuple[bool, int | None]:
        """(resumed, the server's h: how many of our stanzas it handled, if it said)."""
        answer = await self._sm(f"<resume xmlns='{SM}' previd='{previd}' h='{handled}'/>")
        h = answer.get("h")
        if etree.QName(answer).localname == "resumed":
            self.counting, self.handled = True, handled
            return True, int(h)
        return False, int(h) if h is not None else None


class Stats:
    def __init__(self, trace: TextIO | None = None) -> None:
        self.events: Counter[str] = Counter()
        self.acked: dict[str, set[str]] = {}
        self.received: dict[str, Counter[str]] = {}
        self.bounced: set[str] = set()  # messages answered with an error to their sender
        # What happened when, for finding out why a message was lost (--trace FILE):
        # sends and acks, receiver sessions and what they got, kills and restarts.
        self._trace = trace
        self._t0 = time.monotonic()

    def trace(self, ev: str, **fields) -> None:
        if self._trace is not None:
            fields.update(ev=ev, t=round(time.monotonic() - self._t0, 3))
            self._trace.write(json.dumps(fields) + "\n")


class Sender:
    """Sends numbered messages; tracks which the server acknowledged (XEP-0198 §4)."""

    def __init__(self, run: SmRun, name: str, to: str) -> None:
        self.run, self.name, self.to = run, name, to
        self.unacked: list[str] = []  # bodies sent and not yet acknowledged, oldest first
        self.last_h = 0
        self.acked = run.stats.acked.setdefault(to, set())
        self.serial = 0
        self.node = ""

    def on_stanza(self, element: etree._Element) -> None:
        """A message of ours bounced with an error: the server told us it was not
        delivered (offline queue full, no such account …). XEP-0198 counts it handled,
        so its ack may cover it; the check counts it apart from losses."""
        if element.tag == f"{{{xmpp.CLIENT}}}message" and element.get("type") == "error":
            body = element.get("id") or ""
            if body.startswith(f"{self.name}-"):
                self.run.stats.bounced.add(body)
                self.run.stats.trace("bounced", body=body, node=self.node)

    def on_acked(self, h: int) -> None:
        covered = (h - self.last_h) % WRAP
        for body in self.unacked[:covered]:
            self.acked.add(body)
            self.run.stats.trace("acked", body=body, node=self.node)
        del self.unacked[:covered]
        self.last_h = h

    async def loop(self, stop: asyncio.Event) -> None:
        rng = self.run.rng(self.name)
        while not stop.is_set():
            conn = await self.run.connect(rng)
            if conn is None:
                continue
            self.node = conn.node
            try:
                await conn.authenticate(self.name, PASSWORD)
                await conn.bind("desk")
                await conn.enable()
                conn.on_acked = self.on_acked
                conn.on_stanza = self.on_stanza
                self.last_h = 0
                # Unacknowledged ones of a session that is gone: sent again (XEP-0198 §4:
                # the client may), so they may arrive twice; only acked ones must arrive.
                again, self.unacked = self.unacked, []
                for body in again:
                    self._send(conn, body)
                while not stop.is_set() and not conn.closed.is_set():
                    self.serial += 1
                    self._send(conn, f"{self.name}-{self.serial}")
                    if self.serial % 5 == 0:
                        conn._send(f"<r xmlns='{SM}'/>")
                    await asyncio.sleep(0.2)
                if not conn.closed.is_set():
                    await self._final_ack(conn)
            except (xmpp.Unknown, xmpp.Refused, OSError):
                self.run.stats.events["sender_reconnects"] += 1
            finally:
                conn.abort()

    def _send(self, conn: SmConnection, body: str) -> None:
        conn.message(self.to, body, body)
        self.run.stats.trace("sent", body=body, node=conn.node)
        self.unacked.append(body)

    async def _final_ack(self, conn: SmConnection) -> None:
        deadline = time.monotonic() + 10
        while self.unacked and time.monotonic() < deadline and not conn.closed.is_set():
            conn._send(f"<r xmlns='{SM}'/>")
            await asyncio.sleep(0.3)


class Receiver:
    """A phone: loses its connection every few seconds, resumes on a random node."""

    def __init__(self, run: SmRun, name: str) -> None:
        self.run, self.name = run, name
        self.jid = f"{name}@localhost/phone"
        self.received = run.stats.received.setdefault(self.jid, Counter())
        self.previd: str | None = None
        self.handled = 0
        self.node = ""

    def on_stanza(self, element: etree._Element) -> None:
        if element.tag == f"{{{xmpp.CLIENT}}}message":
            body = xmpp.body_of(element)
            if body:
                self.received[body] += 1
                self.run.stats.trace("received", body=body, to=self.name, node=self.node)

    async def session(self, rng: random.Random, hold: float) -> None:
        conn = await self.run.connect(rng)
        if conn is None:
            return
        conn.on_stanza = self.on_stanza
        self.node = conn.node
        stats = self.run.stats.events
        trace = self.run.stats.trace
        try:
            await conn.authenticate(self.name, PASSWORD)
            resumed = False
            if self.previd is not None:
                resumed, h = await conn.resume(self.previd, self.handled)
                stats["resumed" if resumed else "resume_failed"] += 1
                trace("resumed" if resumed else "resume_failed", to=self.name, node=conn.node,
                      h=h, handled=self.handled)
            if not resumed:
                await conn.bind("phone")
                self.previd = await conn.enable()
                conn.presence()
                trace("bound", to=self.name, node=conn.node)
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline and not conn.closed.is_set():
                self.handled = conn.handled
                await asyncio.sleep(0.1)
            self.handled = conn.handled
            if conn.closed.is_set():
                stats["receiver_cut_by_fault"] += 1
        except (xmpp.Unknown, xmpp.Refused, OSError):
            self.handled = conn.handled if conn.counting else self.handled
            stats["receiver_errors"] += 1
        finally:
            trace("cut", to=self.name, node=conn.node, handled=self.handled)
            conn.abort()  # the phone loses its network: no stream close

    async def loop(self, stop: asyncio.Event) -> None:
        rng = self.run.rng(self.name)
        while not stop.is_set():
            await self.session(rng, rng.uniform(2, 8))


class SmRun:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, stats: Stats) -> None:
        self.args, self.cluster, self.stats = args, cluster, stats
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE  # the nodes' self-signed certificates, loopback

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.args.seed}-{name}")

    async def connect(self, rng: random.Random) -> SmConnection | None:
        live = [n for n in self.cluster.nodes if n.alive()]
        node = rng.choice(live or self.cluster.nodes)
        conn = SmConnection("127.0.0.1", node.ports["c2s_tls"], "localhost", self.tls)
        conn.node = node.name
        try:
            await conn.open()
            return conn
        except (xmpp.Unknown, xmpp.Refused, OSError):
            conn.abort()
            await asyncio.sleep(0.5)
            return None

    async def faults(self, stop: asyncio.Event) -> None:
        rng = self.rng("faults")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.kill_every)
            if stop.is_set():
                return
            victim = rng.choice(self.cluster.nodes)
            victim.kill()
            self.stats.events["kills"] += 1
            self.stats.trace("kill", node=victim.name)
            await asyncio.sleep(5)
            await asyncio.to_thread(victim.start)
            self.stats.trace("started", node=victim.name)
            await asyncio.to_thread(self.cluster.leader, 30)


async def main_async(args: argparse.Namespace, cluster: Cluster) -> dict:
    if args.trace is None:
        return await _workload(args, cluster, Stats())
    with open(args.trace, "w") as trace:
        return await _workload(args, cluster, Stats(trace))


async def _workload(args: argparse.Namespace, cluster: Cluster, stats: Stats) -> dict:
    run = SmRun(args, cluster, stats)
    senders, receivers = [], []
    for i in range(args.pairs):
        for name in (f"sms{i}", f"smr{i}"):
            cluster.nodes[0].admin("user.add", jid=f"{name}@localhost", password=PASSWORD)
        receivers.append(Receiver(run, f"smr{i}"))
        senders.append(Sender(run, f"sms{i}", f"smr{i}@localhost/phone"))
    stop, stop_senders = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(r.loop(stop)) for r in receivers]
    send_tasks = [asyncio.create_task(s.loop(stop_senders)) for s in senders]
    fault_task = asyncio.create_task(run.faults(stop))
    await asyncio.sleep(args.minutes * 60)
    stop.set()
    await fault_task
    await asyncio.gather(*tasks)
    # Quiet end: senders get their last acks with every node up, then each phone comes
    # back once more (resumed, or a new session whose presence brings the parked ones).
    await asyncio.to_thread(lambda: [n.start() for n in cluster.nodes if not n.alive()])
    await asyncio.to_thread(cluster.leader, 30)
    await asyncio.sleep(3)
    stop_senders.set()
    await asyncio.gather(*send_tasks)
    rng = random.Random(args.seed)
    await asyncio.gather(*(r.session(rng, 15) for r in receivers))
    lost, duplicates, acked_total, bounced = {}, 0, 0, 0
    for to, acked in run.stats.acked.items():
        received = run.stats.received.get(to, Counter())
        acked_total += len(acked)
        undelivered = acked - set(received)
        bounced += len(undelivered & run.stats.bounced)
        missing = sorted(undelivered - run.stats.bounced)
        if missing:
            lost[to] = missing
        duplicates += sum(count - 1 for count in received.values() if count > 1)
    return {"minutes": args.minutes, "pairs": args.pairs, "seed": args.seed,
            "acknowledged": acked_total,
            "received": sum(len(c) for c in run.stats.received.values()),
            "lost": sum(len(v) for v in lost.values()),
            "acked_then_bounced": bounced,  # the sender got an error for it: not lost
            "lost_examples": {
                k: v[:5] for k, v in lost.items()},
            "duplicates": duplicates, **dict(run.stats.events)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--trace", type=Path, default=None,
                        help="write every send, ack, receipt, session and kill here (JSON lines)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="sm-chaos-"))
    cluster = Cluster(base, 3)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        cluster.start()
        cluster.leader()
        wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes),
                 30, "gossip")
        summary = asyncio.run(main_async(args, cluster))
    finally:
        cluster.kill_all()
    summary["dir"] = str(base)
    print(json.dumps(summary, indent=2))
    return 1 if summary["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
