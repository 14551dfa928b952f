#!/usr/bin/env python3
"""Federation throughput and the cost of the extra hop, raftxmpp ↔ raftxmpp against
Prosody ↔ Prosody in the same sitting.

usage: nice python3 bench/s2s.py [--seconds 10] [--pairs 20] [--window 10]

Everything runs in a private network namespace with its own DNS (tests/federation.py:
SRV records carry each node's ephemeral port), on loopback only:
- raftxmpp: cluster A (a.example, 2 nodes) and cluster B (b.example, 1 node);
- Prosody (Debian's package): p1.example and p2.example, two processes;
all with certificates from one throw-away CA every server trusts (SASL EXTERNAL both
ways), TLS on every server stream, log level warning.

Load: P sender accounts on the first server, P receivers on the second, each pair with a
window of W messages in flight: a receiver echoes every message back to its sender, and a
sender sends a new message for each echo. Each message crosses the federation twice, so
s2s messages/s = 2 × echoes/s, counted over `--seconds` after a 2 s warm-up. Shapes:
- raftxmpp, senders on the node that holds the outgoing stream and receives the peer's
  stream (`direct`: no node link) and on the other node (`via_link`: one node-link hop
  out and one back per round trip);
- Prosody ↔ Prosody;
- then one pair with a window of 1 (`rtt`) for the round-trip latency p50, which shows the
  extra hop's cost per message: `--rounds` alternating rounds of each, and their medians.
Prints RESULT lines and appends them to bench/results/s2s.txt with date, machine, commit
and load average. Every process is killed and the namespace removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401 - imported for its effect: the frozen tree on sys.path
import trustme  # noqa: E402 - after the sys.path switch to the frozen tree
from benchlib import BENCH, load1, machine

from tests.federation import (  # noqa: E402 - after the sys.path switch to the frozen tree
    DNS,
    Namespace,
    Prosody,
    ensure_prosody,
    issue_certificate,
)
from tests.harness import Cluster, free_ports, wait_for  # noqa: E402 - after the sys.path switch to the frozen tree

PASSWORD = "s2s-bench-password"
MESSAGE = re.compile(rb"<message[^>]*>.*?</message>", re.S)
BODY = re.compile(rb"<body>([^<]*)</body>")


class Client:
    """Plain TCP + SASL PLAIN + bind + presence, for loopback benchmarks only."""

    def __init__(self, port: int, user: str, domain: str) -> None:
        self.port, self.user, self.domain = port, user, domain
        self.buf = b""

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.domain}/bench"

    def header(self) -> bytes:
        return (f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()

    async def until(self, marker: bytes, timeout: float = 30) -> bytes:
        async def read():
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"{self.user}: closed: {self.buf[-300:]!r}")
                self.buf += chunk
        await asyncio.wait_for(read(), timeout)
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    async def login(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.header())
        await self.until(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{PASSWORD}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          f"{token}</auth>".encode())
        if b"<success" not in await self.until(b"/>"):
            raise ConnectionError(f"{self.user}@{self.domain}: authentication failed")
        self.buf = b""
        self.writer.write(self.header())
        await self.until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>bench</resource></bind></iq><presence/>")
        await self.until(b"</iq>")

    async def messages(self):
        """Yields (from attribute, body) of each message as it arrives."""
        while True:
            match = MESSAGE.search(self.buf)
            if match is None:
                chunk = await self.reader.read(65536)
                if not chunk:
                    return
                self.buf += chunk
                continue
            self.buf = self.buf[match.end():]
            body = BODY.search(match.group(0))
            if body is not None:
                yield body.group(1)

    def send(self, to: str, body: str) -> None:
        self.writer.write(f"<message to='{to}' type='chat'><body>{body}</body></message>".encode())

    def close(self) -> None:
        self.writer.write(b"</stream:stream>")
        self.writer.close()


async def echo_load(senders: list[Client], receivers: list[Client], window: int,
                    seconds: float, warmup: float = 2.0) -> dict:
    for start in range(0, len(senders), 20):
        await asyncio.gather(*(c.login() for c in senders[start:start + 20] +
                               receivers[start:start + 20]))
    t_start = time.monotonic() + warmup
    t_end = t_start + seconds
    echoes = 0
    # Messages still in flight when an earlier run stopped reach these accounts later
    # (offline storage): only echoes of this run's own messages count.
    run_tag = os.urandom(4).hex()
    rtts: list[float] = []

    async def echo(receiver: Client, sender: Client) -> None:
        async for body in receiver.messages():
            receiver.send(sender.jid, body.decode())

    async def drive(sender: Client, receiver: Client) -> None:
        nonlocal echoes
        sent_at: dict[str, float] = {}
        for n in range(window):
            sent_at[f"{run_tag}.{n}"] = time.monotonic()
            sender.send(receiver.jid, f"{run_tag}.{n}")
        n = window
        async for body in sender.messages():
            now = time.monotonic()
            started = sent_at.pop(body.decode(), None)
            if started is None:
                continue  # not one of ours (a leftover of an earlier run)
            if t_start <= now < t_end:
                echoes += 1
                rtts.append(now - started)
            if now >= t_end:
                return
            sent_at[f"{run_tag}.{n}"] = now
            sender.send(receiver.jid, f"{run_tag}.{n}")
            n += 1

    echo_tasks = [asyncio.create_task(echo(r, s)) for s, r in zip(senders, receivers, strict=True)]
    try:
        await asyncio.wait_for(asyncio.gather(*(drive(s, r) for s, r in
                                                zip(senders, receivers, strict=True))),
                               seconds + warmup + 60)
    finally:
        for task in echo_tasks:
            task.cancel()
        for client in senders + receivers:
            client.close()
    rtts.sort()
    return {"s2s_msgs_per_s": round(2 * echoes / seconds), "round_trips": echoes,
            "rtt_p50_ms": round(statistics.median(rtts) * 1000, 2) if rtts else -1,
            "rtt_p99_ms": round(rtts[int(0.99 * (len(rtts) - 1))] * 1000, 2) if rtts else -1}


class Sitting:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ns = Namespace()
        self.ca = trustme.CA()
        self.ca_file = base / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.stops: list = []

    def issue(self, domain: str) -> tuple[Path, Path]:
        return issue_certificate(self.ca, self.base, domain)

    def start(self, pairs: int) -> None:
        ensure_prosody()
        self.ns.create()
        self.ns.enter()
        self.dns = DNS(self.ns, self.base).start()
        self.stops.append(self.dns.stop)
        self.a = self._cluster("a.example", 2)
        self.b = self._cluster("b.example", 1)
        self.p1 = self._prosody("p1.example")
        self.p2 = self._prosody("p2.example")
        for cluster in (self.a, self.b):
            cluster.start()
            cluster.leader()
        for i in range(pairs):
            self.a.nodes[0].admin("user.add", jid=f"s{i}@a.example", password=PASSWORD)
            self.b.nodes[0].admin("user.add", jid=f"r{i}@b.example", password=PASSWORD)
            self.p1.add_user(f"s{i}", "p1.example", PASSWORD)
            self.p2.add_user(f"r{i}", "p2.example", PASSWORD)
        for prosody in (self.p1, self.p2):
            prosody.start()
        wait_for(lambda: all(len(n.admin("user.list", current=True)) == pairs
                             for n in self.a.nodes), 60, "accounts on both A nodes")

    def _cluster(self, domain: str, size: int) -> Cluster:
        cert = self.issue(domain)
        extra = (f'\n[tls]\ncertificate = "{cert[0]}"\nkey = "{cert[1]}"\n'
                 '\n[log]\nlevel = "warning"\n'
                 '\n[limits]\nc2s_read_rate = 0\nresources_per_account = 100\n')
        cluster = Cluster(self.base / domain, size, extra=extra, hosts=(domain,),
                          prefix=self.ns.prefix(),
                          s2s=f'ca_file = "{self.ca_file}"\nmax_queue = 100000\n')
        for node in cluster.nodes:  # the load generator logs in with PLAIN over loopback
            text = node.config_path.read_text().replace(
                "registration = true", "registration = true\nplaintext_auth_on_loopback = true")
            node.config_path.write_text(text)
        self.stops.append(cluster.kill_all)
        self.dns.set(domain, "A", ["127.0.0.1"])
        # One SRV record, for the first node: b.example's stream to a.example lands there,
        # and the warm-up makes that node hold a.example's stream to b.example, so `direct`
        # crosses no node link at all and `via_link` crosses one each way.
        first = cluster.nodes[0]
        self.dns.set(f"_xmpp-server._tcp.{domain}", "SRV", [[0, 5, first.ports["s2s"], f"{domain}."]])
        return cluster

    def _prosody(self, domain: str) -> Prosody:
        c2s, s2s = free_ports(2)
        prosody = Prosody(self.ns, self.base / domain, {domain: self.issue(domain)}, c2s, s2s,
                          self.ca_file, log_level="warn",
                          extra='c2s_require_encryption = false\nallow_unencrypted_plain_auth = true\n'
                                'network_backend = "epoll"\n')
        self.stops.append(prosody.stop)
        self.dns.set(domain, "A", ["127.0.0.1"])
        self.dns.set(f"_xmpp-server._tcp.{domain}", "SRV", [[0, 5, s2s, f"{domain}."]])
        return prosody

    def stop(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop everything whatever fails
                print(f"stop: {exc!r}", file=sys.stderr)
        self.ns.destroy()

    def holder(self) -> int:
        rows = self.a.nodes[0].admin("s2s.list")
        name = next(r["node"] for r in rows if r["direction"] == "out" and r["remote"] == "b.example")
        return next(i for i, n in enumerate(self.a.nodes) if n.name == name)


def run_shape(sitting: Sitting, server: str, pairs: int, window: int, seconds: float,
              sender_node: int = 0) -> dict:
    """One measurement; fresh connections (the accounts are reused across shapes)."""
    if server == "raftxmpp":
        port_s, port_r = sitting.a.nodes[sender_node].c2s_port, sitting.b.nodes[0].c2s_port
        senders = [Client(port_s, f"s{i}", "a.example") for i in range(pairs)]
        receivers = [Client(port_r, f"r{i}", "b.example") for i in range(pairs)]
    else:
        senders = [Client(sitting.p1.c2s_port, f"s{i}", "p1.example") for i in range(pairs)]
        receivers = [Client(sitting.p2.c2s_port, f"r{i}", "p2.example") for i in range(pairs)]
    return asyncio.run(echo_load(senders, receivers, window, seconds))


def commit() -> str:
    tree = Path(os.environ.get("RAFTXMPP_TREE", BENCH.parent))
    info = tree / "TREE_INFO"
    if info.exists():
        return info.read_text().split()[0]
    result = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="alternating latency rounds")
    args = parser.parse_args()
    base = BENCH / "data" / "s2s"
    subprocess.run(["rm", "-rf", str(base)], check=False)
    base.mkdir(parents=True)
    sitting = Sitting(base)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = machine()
    head = (f"date={stamp} commit={commit()} nproc={info.get('nproc')} "
            f"cpu={str(info.get('cpu', '?')).replace(' ', '_')}")
    lines = []
    try:
        sitting.start(args.pairs)
        # Warm both federations up (streams set up, TLS done) before measuring.
        run_shape(sitting, "raftxmpp", 1, 1, 1.0)
        run_shape(sitting, "prosody", 1, 1, 1.0)
        holder = sitting.holder()
        other = 1 - holder
        throughput = [("raftxmpp-2+1", "direct", holder), ("raftxmpp-2+1", "via_link", other),
                      ("prosody-0.12", "p2p", 0)]
        # Latency shapes alternate, several short rounds each, so that the load others put
        # on the machine falls on all three alike; the medians are what to compare.
        latency = [("raftxmpp-2+1", "rtt_direct", holder), ("raftxmpp-2+1", "rtt_via_link", other),
                   ("prosody-0.12", "rtt", 0)] * args.rounds
        shapes = ([(server, tag, args.pairs, args.window, node, args.seconds)
                   for server, tag, node in throughput]
                  + [(server, tag, 1, 1, node, args.seconds / 2) for server, tag, node in latency])
        medians: dict[str, list[float]] = {}
        for server, tag, pairs, window, node, seconds in shapes:
            l1 = load1()
            result = run_shape(sitting, "prosody" if server.startswith("prosody") else "raftxmpp",
                               pairs, window, seconds, node)
            medians.setdefault(f"{server} {tag}", []).append(result["rtt_p50_ms"])
            line = (f"RESULT server={server} tag={tag}_p{pairs}_w{window} "
                    + " ".join(f"{k}={v}" for k, v in result.items())
                    + f" load1={l1} {head}")
            print(line, flush=True)
            lines.append(line)
        for name, values in medians.items():
            if len(values) > 1:
                server, tag = name.split()
                line = (f"RESULT server={server} tag={tag}_median_of_{len(values)} "
                        f"rtt_p50_ms={statistics.median(values)} {head}")
                print(line, flush=True)
                lines.append(line)
    finally:
        sitting.stop()
        results = BENCH / "results"
        results.mkdir(exist_ok=True)
        with open(results / "s2s.txt", "a") as out:
            for line in lines:
                out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
