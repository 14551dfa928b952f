"""Load-independent costs of one node (issue 22): server CPU-seconds per login and KiB
per idle TLS connection, read from /proc rather than from wall-clock rates, so that a
busy shared machine changes them little.

    python3 bench/conn_cost.py [--accounts 2000] [--idle 500] [--tracemalloc]

1. Starts a fresh node (bench/node.toml), registers user1..userN in-band (xmppload).
2. Logins: `xmppload-x -O -s login -n N -c 100`; reports the node's CPU-seconds per login,
   for the whole process and for the trio thread alone (/proc/PID/task/TID/stat), since
   key derivation in a worker thread moves CPU off the event loop rather than removing it.
3. Idle: M clients over direct TLS (port 5523), each logs in (PLAIN), binds and fetches
   its roster, then stays idle; reports the node's RSS growth per connection (after 20
   warm-up connections, so lazily built tables are not charged to the first ones).
   --tracemalloc starts the node with tracemalloc on and a SIGUSR2 snapshot dump
   (bench/tracemalloc_hook/sitecustomize.py) and prints the top allocation sites of the
   per-connection Python heap growth. Python-heap only: OpenSSL and libxml2 allocate with
   malloc directly and show only in the RSS figure.
Appends RESULT lines to bench/results/conn_cost.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import benchlib
from benchlib import BENCH, HEADER, BenchNode, load1, rss_kb

HOOK = BENCH / "tracemalloc_hook"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU-seconds of every thread of `pid`."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class TlsClient:
    def __init__(self, port: int, user: str) -> None:
        self.port, self.user, self.buf = port, user, b""

    async def _until(self, marker: bytes, timeout: float = 120) -> bytes:
        async def read():
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"{self.user}: closed: {self.buf[-300:]!r}")
                self.buf += chunk
        await asyncio.wait_for(read(), timeout)
        head, _, self.buf = self.buf.partition(marker)
        return head

    async def login(self, ctx: ssl.SSLContext, presence: bool = False) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=ctx, server_hostname="localhost")
        self.writer.write(HEADER.encode())
        await self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0pw".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          f"{token}</auth>".encode())
        if b"<success" not in await self._until(b"/>"):
            raise ConnectionError(f"{self.user}: authentication failed")
        self.buf = b""
        self.writer.write(HEADER.encode())
        await self._until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>idle</resource></bind></iq>")
        await self._until(b"</iq>")
        self.writer.write(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        await self._until(b"jabber:iq:roster")
        await self._until(b">")
        if presence:
            # The initial presence a real client (and tls_login.py idle) sends: the session
            # becomes available, and its own presence comes back to it (RFC 6121 4.2.2).
            self.writer.write(b"<presence/>")
            await self._until(b"<presence")
            await self._until(b">")


async def open_idle(port: int, users: list[str], presence: bool = False) -> list[TlsClient]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    clients = [TlsClient(port, u) for u in users]
    for start in range(0, len(clients), 50):
        await asyncio.gather(*(c.login(ctx, presence) for c in clients[start:start + 50]))
    return clients


def snapshot(node: BenchNode, path: Path) -> tracemalloc.Snapshot:
    path.unlink(missing_ok=True)
    os.kill(node.pid, signal.SIGUSR2)
    benchlib.wait_for(lambda: path.exists() and path.with_suffix(".done").exists(), 120,
                      "the tracemalloc snapshot")
    path.with_suffix(".done").unlink()
    return tracemalloc.Snapshot.load(str(path))


def by_own_frame(stats, top: int = 30) -> list[tuple[str, int, int]]:
    """Growth per allocation site, each charged to the innermost frame in raftxmpp's own
    code (who asked trio, lxml or ssl for it), else to the outermost frame kept."""
    own = os.sep + "raftxmpp" + os.sep
    sums: dict[str, list[int]] = {}
    for s in stats:
        frames = list(reversed(s.traceback))  # most recent call first
        frame = next((f for f in frames if own in f.filename), frames[-1])
        entry = sums.setdefault(f"{frame.filename}:{frame.lineno}", [0, 0])
        entry[0] += s.size_diff
        entry[1] += s.count_diff
    ranked = sorted(sums.items(), key=lambda kv: -kv[1][0])[:top]
    return [(where, size, count) for where, (size, count) in ranked]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--skip-logins", action="store_true")
    ap.add_argument("--frames", type=int, default=1,
                    help="with --tracemalloc: frames kept per allocation; above 1, the growth "
                         "is also charged to the innermost raftxmpp frame of each")
    ap.add_argument("--presence", action="store_true",
                    help="idle clients send the initial <presence/> after the roster")
    args = ap.parse_args()
    out = BENCH / "results" / "conn_cost.txt"
    data = BENCH / "data"
    subprocess.run(["rm", "-rf", str(data / "single")], check=True)
    if args.tracemalloc:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HOOK), os.environ.get("PYTHONPATH")) if p)
        os.environ["RAFTXMPP_TRACEMALLOC_DIR"] = str(data)
        os.environ["RAFTXMPP_TRACEMALLOC_FRAMES"] = str(args.frames)
    node = BenchNode(BENCH / "node.toml", data / "conn_cost.log")
    commit = subprocess.run(["git", "-C", str(benchlib.TREE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    head = f"date={time.strftime('%FT%TZ', time.gmtime())} commit={commit}"
    try:
        node.start(timeout=180 if args.frames > 1 else 30)  # deep tracebacks: a slow start
        benchlib.wait_for(lambda: node.status().get("ready"), 180, "the node to be ready")
        xl = str(BENCH / "xmppload-x")
        subprocess.run([xl, "-s", "register", "-p", "5522", "-n", str(args.accounts), "-b", "1",
                        "-c", "50", "-t", "600"], check=True, capture_output=True)
        lines = []
        if not args.skip_logins:
            l1 = load1()
            before, before_all = thread_cpu(node.pid), benchlib.cpu_seconds(node.pid)
            r = subprocess.run([xl, "-O", "-p", "5522", "-s", "login", "-n", str(args.accounts),
                                "-c", "100", "-t", "300", "-S", str(node.pid)],
                               capture_output=True, text=True)
            after = thread_cpu(node.pid)
            total = benchlib.cpu_seconds(node.pid) - before_all  # exited threads included
            main_t = after[node.pid] - before.get(node.pid, 0)
            rate = next((w for w in r.stdout.split() if w.startswith("logins_per_s")), "?")
            lines.append(f"RESULT test=login_cpu n={args.accounts} c=100 "
                         f"cpu_ms_per_login={total / args.accounts * 1000:.3f} "
                         f"trio_thread_ms_per_login={main_t / args.accounts * 1000:.3f} "
                         f"{rate} load1={l1:.1f} {head}")
            print(lines[-1], flush=True)
        loop = asyncio.new_event_loop()
        users = [f"user{i}" for i in range(1, args.accounts + 1)]
        warm = loop.run_until_complete(open_idle(5523, users[:20], args.presence))
        time.sleep(2)
        snap_path = data / "tracemalloc.snap"
        snap0 = snapshot(node, snap_path) if args.tracemalloc else None
        if snap0 is not None:
            snap0.dump(str(data / "tracemalloc-before.snap"))  # kept for a closer look
        r0 = rss_kb(node.pid)
        l1 = load1()
        idle = loop.run_until_complete(open_idle(5523, users[20:20 + args.idle], args.presence))
        time.sleep(3)
        r1 = rss_kb(node.pid)
        lines.append(f"RESULT test=idle_tls presence={int(args.presence)} conns={len(idle)} rss_before_kb={r0} rss_after_kb={r1} "
                     f"kb_per_conn={(r1 - r0) / len(idle):.1f} load1={l1:.1f} {head}")
        print(lines[-1], flush=True)
        if args.tracemalloc:
            snap1 = snapshot(node, snap_path)
            snap1.dump(str(data / "tracemalloc-idle.snap"))
            stats = snap1.compare_to(snap0, "lineno")
            grown = sum(s.size_diff for s in stats)
            print(f"python heap growth: {grown / len(idle) / 1024:.1f} KiB per connection; top sites:")
            for s in snap1.compare_to(snap0, "filename")[:12]:
                print(f"  {s.size_diff / len(idle):9.0f} B/conn  {s.traceback[-1].filename}")
            print("top lines:")
            for s in stats[:25]:
                print(f"  {s.size_diff / len(idle):9.0f} B/conn  {s.count_diff / len(idle):6.1f} "
                      f"blocks/conn  {s.traceback[-1]}")
            if args.frames > 1:
                print("by the innermost raftxmpp frame (else the outermost frame kept):")
                for where, size, count in by_own_frame(snap1.compare_to(snap0, "traceback")):
                    print(f"  {size / len(idle):9.0f} B/conn  {count / len(idle):6.1f} "
                          f"blocks/conn  {where}")
        for c in warm + idle:
            c.writer.close()
        with open(out, "a") as f:
            f.write("\n".join(lines) + "\n")
    finally:
        benchlib.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
