"""Shared helpers of the bench/ scripts: node processes, readiness, load average, RSS,
and a small asyncio XMPP client for the Raft-write benchmark.

Every wait here has a deadline; every process started is stopped by `stop_all()`,
which the scripts call from `finally` (the shell scripts from `trap ... EXIT`).
Command line (used by the .sh scripts):
    python3 bench/benchlib.py wait-ready CONFIG [CONFIG...]   # until each node has a leader
    python3 bench/benchlib.py load-wait [MAX_LOAD]             # poll uptime, <= 10 min; prints load1
    python3 bench/benchlib.py leader-port CONFIG [CONFIG...]   # c2s port of the current leader
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# RAFTXMPP_TREE=DIR runs the server code from a frozen copy (bench/snapshot_tree.sh DIR).
TREE = Path(os.environ.get("RAFTXMPP_TREE") or REPO).resolve()
if os.environ.get("RAFTXMPP_TREE"):
    os.environ["PYTHONPATH"] = str(TREE)
if str(TREE) not in sys.path:
    sys.path.insert(0, str(TREE))

from raftxmpp import config as config_mod  # noqa: E402 - after the sys.path switch to the frozen tree
from raftxmpp.admin.client import AdminClientError, call  # noqa: E402 - after the sys.path switch to the frozen tree

_STARTED: list[BenchNode] = []


# -- machine -------------------------------------------------------------------------------------

def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(max_load: float | None = None, poll: float = 30, limit: float = 600) -> float:
    """Waits (bounded) until the 1-min load average is at most max_load (default: $LOAD_MAX
    or 1.0); returns it. The machine has 2 cores and is shared: others' tests raise it."""
    if max_load is None:
        max_load = float(os.environ.get("LOAD_MAX") or 1.0)
    deadline = time.monotonic() + limit
    load = load1()
    while load > max_load and time.monotonic() < deadline:
        print(f"load average {load:.2f} > {max_load}: waiting {poll:.0f}s", file=sys.stderr)
        time.sleep(poll)
        load = load1()
    return load


def machine() -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {"nproc": os.cpu_count(), "mem_mib": int(mem) // 1024, "cpu": cpu}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- node processes ------------------------------------------------------------------------------

def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (AdminClientError, OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


class BenchNode:
    """One `raftxmpp node start --config FILE` process."""

    def __init__(self, config_path: Path, log_path: Path | None = None) -> None:
        self.config_path = Path(config_path).resolve()
        self.config = config_mod.load(self.config_path)
        self.data_dir = self.config.node.data_dir
        self.name = self.config.node.name
        self.log_path = log_path or (self.data_dir.parent / f"{self.name}.log")
        self.process: subprocess.Popen | None = None

    @property
    def c2s_port(self) -> int:
        return self.config.c2s.listen.port

    @property
    def raft_address(self) -> str:
        return str(self.config.cluster.raft)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, wait: bool = True, timeout: float = 30) -> BenchNode:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raftxmpp_cli.main", "node", "start", "--config",
                 str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=TREE)
        _STARTED.append(self)
        if wait:
            wait_for(self._admin_up, timeout, f"{self.name} to open its admin socket")
        return self

    def _admin_up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                               f"see {self.log_path}")
        return bool(self.admin("node.status"))

    def admin(self, cmd: str, timeout: float = 15, **args):
        return call(self.data_dir, cmd, timeout=timeout, **args)

    def status(self) -> dict:
        return self.admin("node.status")["raft"]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def stop_all() -> None:
    for node in _STARTED:
        try:
            node.stop()
        except Exception as exc:  # keep stopping the others
            print(f"stopping {node.name}: {exc}", file=sys.stderr)
            node.kill()


def wait_leader(nodes: list[BenchNode], timeout: float = 30) -> BenchNode:
    """The node every live member agrees leads, once they agree and it is ready."""
    def agreed():
        live = [n for n in nodes if n.alive()]
        statuses = [n.status() for n in live]
        leaders = {s.get("leader") for s in statuses}
        if len(leaders) != 1 or None in leaders or not all(s.get("ready") for s in statuses):
            return None
        address = leaders.pop()
        return next((n for n in live if n.raft_address == address), None)

    return wait_for(agreed, timeout, "the live nodes to agree on a leader", interval=0.1)


# -- a small XMPP client (asyncio) for Raft-path writes -------------------------------------------

HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class XmppClient:
    """Plain TCP + SASL PLAIN + bind; then `request(xml, marker)` waits for `marker`."""

    def __init__(self, port: int, user: str, password: str = "pw") -> None:
        self.port, self.user, self.password = port, user, password
        self.buf = b""

    async def _until(self, marker: bytes, timeout: float = 30) -> bytes:
        async def read():
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"{self.user}: server closed the stream: {self.buf[-300:]!r}")
                self.buf += chunk
        await asyncio.wait_for(read(), timeout)
        head, _, self.buf = self.buf.partition(marker)
        return head

    async def login(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(HEADER.encode())
        await self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          f"{token}</auth>".encode())
        head = await self._until(b"/>")
        if b"<success" not in head:
            raise ConnectionError(f"{self.user}: authentication failed: {head!r}")
        self.buf = b""
        self.writer.write(HEADER.encode())
        await self._until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>bench</resource></bind></iq>")
        await self._until(b"</iq>")
        self.buf = b""

    async def request(self, xml: str, marker: bytes, timeout: float = 30) -> bytes:
        self.writer.write(xml.encode())
        return await self._until(marker, timeout)

    def close(self) -> None:
        try:
            self.writer.write(b"</stream:stream>")
            self.writer.close()
        except Exception:
            pass


def _error_in(head: bytes) -> bool:
    return re.search(rb"type=['\"]error['\"]", head) is not None


async def write_load(port: int, kind: str, clients: int, seconds: float, warmup: float = 2,
                     first_user: int = 1, target_first: int = 1001, targets: int = 1000) -> dict:
    """Closed-loop durable writes over XMPP, one in flight per connection (the server
    handles a connection's stanzas in order, so a second one would only queue).
    kind 'roster': <iq type='set'> roster item, acknowledged by the iq result (after commit);
    kind 'offline': a chat message to an offline account, then an iq ping: the ping's result
    comes back only after the message was committed to the offline store."""
    conns = [XmppClient(port, f"user{first_user + i}") for i in range(clients)]
    for start in range(0, clients, 50):
        await asyncio.gather(*(c.login() for c in conns[start:start + 50]))
    counts = {"done": 0, "errors": 0}
    first_error: list[bytes] = []
    lat: list[float] = []
    t_start = time.monotonic() + warmup
    t_end = t_start + seconds

    async def loop(i: int, c: XmppClient) -> None:
        seq = 0
        while time.monotonic() < t_end:
            seq += 1
            target = f"user{target_first + (i * 7919 + seq) % targets}@localhost"
            rid = f"w{i}-{seq}"
            if kind == "roster":
                xml = (f"<iq type='set' id='{rid}'><query xmlns='jabber:iq:roster'>"
                       f"<item jid='{target}' name='c{seq}'/></query></iq>")
            else:
                xml = (f"<message to='{target}' type='chat'><body>offline {rid}</body></message>"
                       f"<iq type='get' id='{rid}'><ping xmlns='urn:xmpp:ping'/></iq>")
            t0 = time.monotonic()
            head = await c.request(xml, f"id=\"{rid}\"".encode(), 30)
            head += await c._until(b">")
            t1 = time.monotonic()
            if _error_in(head[-400:]):
                counts["errors"] += 1
                if not first_error:
                    first_error.append(head[-400:])
            elif t_start <= t1 < t_end:
                counts["done"] += 1
                lat.append(t1 - t0)

    await asyncio.gather(*(loop(i, c) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    lat.sort()
    def pct(q):
        return (lat[int(q * (len(lat) - 1))] * 1000 if lat else -1)
    return {"writes_per_s": counts["done"] / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "errors": counts["errors"], "clients": clients,
            "first_error": first_error[0].decode(errors="replace") if first_error else ""}


# -- command line for the shell scripts ------------------------------------------------------------

def _main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "load-wait":
        print(f"{wait_for_quiet(float(args[0]) if args else None):.2f}")
    elif cmd == "wait-ready":
        nodes = [BenchNode(Path(a)) for a in args]

        def ready():
            return all(n.status().get("ready") and n.status().get("leader") for n in nodes)
        wait_for(ready, 60, "the nodes to be ready with a leader", interval=0.1)
    elif cmd == "leader-port":
        nodes = [BenchNode(Path(a)) for a in args]

        def leader():
            addr = nodes[0].status().get("leader")
            return next((n for n in nodes if n.raft_address == addr), None)
        print(wait_for(leader, 30, "a leader").c2s_port)
    elif cmd == "machine":
        print(machine())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
