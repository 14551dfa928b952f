"""Memory of stream-management sessions: N clients log in (user1..userN, password "pw",
SASL PLAIN on the loopback listener as bench/node.toml allows), enable XEP-0198 with
resume and send presence; then every connection is cut (no </stream:stream>), so the
node holds N detached sessions waiting for resumption. The node's RSS is read before,
with the N sessions connected, and with them detached.

    python3 bench/sm_memory.py --port 5522 --pid PID --metrics 5580 [-n 2000]

Prints one RESULT line: kib_per_sm_session (connected) and kib_per_detached (after the
cut; the detached session keeps its queue, counters and presence, the socket is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
import urllib.request
from pathlib import Path

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def detached(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("raftxmpp_sm_detached_sessions{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buffer = reader, writer, b""

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = await asyncio.wait_for(self.reader.read(65536), 30)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.buffer[-200:]!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker


async def login(port: int, user: int) -> Raw:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    writer.write(HEADER)
    await raw.until(b"</stream:features>")
    token = base64.b64encode(f"\0user{user}\0pw".encode()).decode()
    writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
                 "</auth>".encode())
    await raw.until(b"<success")
    writer.write(HEADER)
    await raw.until(b"</stream:features>")
    writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 b"<resource>phone</resource></bind></iq>")
    await raw.until(b"</iq>")
    writer.write(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>")
    await raw.until(b"<enabled")
    return raw


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5522)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--metrics", type=int, default=5580)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("-c", type=int, default=50, help="logins in progress at once")
    args = parser.parse_args()
    before = rss_kib(args.pid)
    gate = asyncio.Semaphore(args.c)

    async def one(user: int) -> Raw:
        async with gate:
            return await login(args.port, user)

    clients = await asyncio.gather(*(one(i + 1) for i in range(args.n)))
    await asyncio.sleep(3)
    connected = rss_kib(args.pid)
    for client in clients:
        client.writer.transport.abort()  # the connection is lost: no stream close
    deadline = time.monotonic() + 120
    while detached(args.metrics) < args.n:
        if time.monotonic() > deadline:
            sys.exit(f"only {detached(args.metrics):.0f} of {args.n} sessions detached")
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)
    after = rss_kib(args.pid)
    print(f"RESULT scenario=sm_detached n={args.n} rss_before_kib={before} "
          f"rss_connected_kib={connected} rss_detached_kib={after} "
          f"kib_per_sm_session={(connected - before) / args.n:.1f} "
          f"kib_per_detached={(after - before) / args.n:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
