"""WebSocket message rate against c2s (TCP), in the same sitting, on one node.

    nice -n 10 python3 bench/web_rate.py [--pairs 50] [--window 10] [--seconds 15] [--reps 3]

One fresh node (bench/node.toml: c2s on 5522, HTTP on 5580). The same trio generator
drives both transports so the ratio compares the server's two paths, not two clients:
P sender/receiver pairs, each sender keeps W messages in flight (a received message
frees one), for T seconds after a warm-up; RESULT lines give messages/s, the server's
CPU and the generator's, and the 1-minute load average. Repetitions alternate the
transports (TCP, WS, TCP, WS …) so a change of machine load hits both. Appends to
bench/results/web.txt.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402 - bench/ is a folder of scripts, not a package
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import AcceptConnection, Ping, Request, TextMessage  # noqa: E402

CONFIG = benchlib.BENCH / "node.toml"
PASSWORD = "pw"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def plain(user: str) -> str:
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"


BIND = ("<iq type='set' id='b' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:"
        "xmpp-bind'><resource>r</resource></bind></iq>")


class TCPClient:
    """RFC 6120 over plain TCP, SASL PLAIN on loopback (the bench config allows it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = b""

    async def login(self, user: str) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        await self.stream.send_all(HEADER)
        await self._until(b"</stream:features>")
        await self.stream.send_all(plain(user).encode())
        await self._until(b"<success")
        await self.stream.send_all(HEADER)
        await self._until(b"</stream:features>")
        await self.stream.send_all(BIND.encode())
        await self._until(b"</iq>")
        await self.stream.send_all(b"<presence/>")

    async def _until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            self.buffer += await self.stream.receive_some(65536)
        self.buffer = self.buffer.split(marker, 1)[1]

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def messages(self):
        """Yields the number of messages in each read."""
        tail = b""
        while True:
            data = tail + await self.stream.receive_some(65536)
            count = data.count(b"</message>")
            tail = data[data.rfind(b"</message>") + 10:] if count else data[-16:]
            if count:
                yield count


class WSClient:
    """RFC 7395 over one WebSocket, the same steps."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[str] = []

    async def login(self, user: str) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        await self.stream.send_all(self.ws.send(Request(host="localhost", target="/xmpp-websocket",
                                                        subprotocols=["xmpp"])))
        await self._event(AcceptConnection)
        open_frame = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
        await self.send_text(open_frame)
        await self._text("mechanisms")
        await self.send_text(plain(user))
        await self._text("<success")
        await self.send_text(open_frame)
        await self._text("<bind")
        await self.send_text(BIND)
        await self._text("<jid>")
        await self.send_text("<presence xmlns='jabber:client'/>")

    async def _event(self, kind):
        while True:
            for event in self.ws.events():
                if isinstance(event, kind):
                    return event
                if isinstance(event, TextMessage):
                    self.pending.append(event.data)
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
            self.ws.receive_data(await self.stream.receive_some(65536))

    async def _text(self, marker: str) -> None:
        while True:
            while self.pending:
                if marker in self.pending.pop(0):
                    return
            self.pending.append((await self._event(TextMessage)).data)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=data.decode())))

    async def messages(self):
        while True:
            count = 0
            for event in self.ws.events():
                if isinstance(event, TextMessage) and event.data.startswith("<message"):
                    count += 1
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
            if count:
                yield count
            self.ws.receive_data(await self.stream.receive_some(65536))


async def run_pairs(kind: str, port: int, pairs: int, window: int, seconds: float,
                    warmup: float, server_pid: int) -> tuple[int, float, float]:
    """Messages received during the measured `seconds`, and the server's and the
    generator's CPU seconds in that window."""
    make = TCPClient if kind == "tcp" else WSClient
    clients = []
    async with trio.open_nursery() as nursery:
        for i in range(pairs):
            sender, receiver = make(port), make(port)
            nursery.start_soon(sender.login, f"user{2 * i + 1}")
            nursery.start_soon(receiver.login, f"user{2 * i + 2}")
            clients.append((sender, receiver, i))
    counted = [0]
    measuring = [False]
    ns = "" if kind == "tcp" else " xmlns='jabber:client'"

    async def pair(sender, receiver, i) -> None:
        credit = trio.Semaphore(window)
        data = (f"<message{ns} to='user{2 * i + 2}@localhost/r' type='chat'>"
                f"<body>benchmark message {i}</body></message>").encode()

        async def send_loop():
            while True:
                await credit.acquire()
                await sender.send(data)

        async def receive_loop():
            async for count in receiver.messages():
                if measuring[0]:
                    counted[0] += count
                for _ in range(count):
                    credit.release()

        async with trio.open_nursery() as inner:
            inner.start_soon(send_loop)
            inner.start_soon(receive_loop)

    with trio.move_on_after(warmup + seconds + 30):  # a bound; cancelled at the end below
        async with trio.open_nursery() as nursery:
            for sender, receiver, i in clients:
                nursery.start_soon(pair, sender, receiver, i)
            await trio.sleep(warmup)
            measuring[0] = True
            server0, gen0 = benchlib.cpu_seconds(server_pid), time.process_time()
            await trio.sleep(seconds)
            server1, gen1 = benchlib.cpu_seconds(server_pid), time.process_time()
            measuring[0] = False
            nursery.cancel_scope.cancel()
    for sender, receiver, _ in clients:
        for client in (sender, receiver):
            await client.stream.aclose()
    return counted[0], server1 - server0, gen1 - gen0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--transports", default="tcp,ws", help="for profiling one of them")
    args = parser.parse_args()
    load = benchlib.wait_for_quiet()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = benchlib.BENCH / "results" / "web.txt"
    out.parent.mkdir(exist_ok=True)
    rates: dict[str, list[float]] = {"tcp": [], "ws": []}
    costs: dict[str, list[float]] = {"tcp": [], "ws": []}
    node = benchlib.BenchNode(CONFIG)
    shutil.rmtree(node.data_dir, ignore_errors=True)
    try:
        node.start()
        benchlib.wait_leader([node])
        for n in range(1, 2 * args.pairs + 1):
            node.admin("user.add", jid=f"user{n}@localhost", password=PASSWORD)
        with open(out, "a") as results:
            results.write(f"# web_rate {stamp} {benchlib.machine()} load1={load} "
                          f"commit={os.environ.get('BENCH_COMMIT', '?')}\n")
            for rep in range(1, args.reps + 1):
                for kind, port in (("tcp", node.c2s_port), ("ws", node.config.http.listen.port)):
                    if kind not in args.transports.split(","):
                        continue
                    line = measure(node, kind, port, args, rep)
                    rates[kind].append(line["rate"])
                    costs[kind].append(line["msgs_per_cpu_s"])
                    text = " ".join(f"{k}={v}" for k, v in line.items())
                    print(f"RESULT {text}")
                    results.write(f"RESULT {text} date={stamp}\n")
    finally:
        benchlib.stop_all()
    if rates["tcp"] and rates["ws"]:
        tcp, ws = statistics.median(rates["tcp"]), statistics.median(rates["ws"])
        print(f"median tcp {tcp:.0f} msg/s, ws {ws:.0f} msg/s, ws/tcp {ws / tcp:.2f}")
        tcp, ws = statistics.median(costs["tcp"]), statistics.median(costs["ws"])
        print(f"median msgs per server CPU-second: tcp {tcp:.0f}, ws {ws:.0f}, "
              f"ws/tcp {ws / tcp:.2f}")
    return 0


def measure(node, kind: str, port: int, args, rep: int) -> dict:
    load = benchlib.load1()
    received, server, generator = trio.run(run_pairs, kind, port, args.pairs, args.window,
                                           args.seconds, args.warmup, node.pid)
    # Messages per CPU-second of the server: on a shared, loaded machine the rate follows
    # the CPU share the scheduler gives the server; the cost per message does not.
    return {"transport": kind, "rep": rep, "pairs": args.pairs, "window": args.window,
            "rate": round(received / args.seconds),
            "server_cpu": round(100 * server / args.seconds),
            "msgs_per_cpu_s": round(received / server) if server else 0,
            "gen_cpu": round(100 * generator / args.seconds), "load1": load}


if __name__ == "__main__":
    sys.exit(main())
