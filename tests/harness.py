"""Real node processes for tests: configs on ephemeral ports, start, kill -9, restart.

Every wait is a poll with a deadline on something observable (the admin socket, the
Raft status), never a bare sleep; every process started is killed at teardown.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftxmpp import config as config_mod
from raftxmpp.admin.client import AdminClientError, call

SECRET = "test-cluster-secret-0123456789abcdef"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL_LOW = _ephemeral_range()[0]
_HANDED_OUT: set[int] = set()
_PICKER = random.Random(os.getpid() ^ time.monotonic_ns())


def free_ports(count: int) -> list[int]:
    """Free loopback ports *below* the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the same range as the source
    ports of outgoing connections, so on a busy machine another connection could take
    it between this check and a node's (re)start ("Address already in use"). Ports
    below the range are only ever taken by an explicit bind; a port is never handed
    out twice by one test process.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = _PICKER.randrange(15000, _EPHEMERAL_LOW)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        ports.append(port)
    return ports


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (AdminClientError, OSError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class NodeProcess:
    def __init__(self, base: Path, name: str, ports: dict[str, int], peers: list[int],
                 extra: str = "", hosts: tuple[str, ...] = ("localhost",),
                 prefix: tuple[str, ...] = (), s2s: str = "", http_extra: str = "") -> None:
        self.name = name
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NAME): run the node in a namespace
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.ports = ports
        self.config_path = self.dir / "node.toml"
        self.log_path = self.dir / "node.log"
        self.raft_address = f"127.0.0.1:{ports['raft']}"
        secret = f'secret = "{SECRET}"' if peers else ""
        peer_list = ", ".join(f'"127.0.0.1:{p}"' for p in peers)
        self.config_path.write_text(f"""
[node]
name = "{name}"
data_dir = "{self.data_dir}"
hosts = [{", ".join(f'"{h}"' for h in hosts)}]

[http]
listen = "127.0.0.1:{ports.get('http', 0)}"
{f'tls_listen = "127.0.0.1:{ports["https"]}"' if "https" in ports else ""}
{http_extra}

[s2s]
listen = "127.0.0.1:{ports.get('s2s', 0)}"
{s2s}

[components]
listen = "127.0.0.1:{ports.get('component', 0)}"

[cluster]
raft = "127.0.0.1:{ports['raft']}"
peers = [{peer_list}]
link = "127.0.0.1:{ports['link']}"
{secret}

[c2s]
listen = "127.0.0.1:{ports['c2s']}"
tls_listen = "127.0.0.1:{ports['c2s_tls']}"
registration = true
{extra}
""")
        self.process: subprocess.Popen | None = None

    @property
    def c2s_port(self) -> int:
        return self.ports["c2s"]

    @property
    def component_port(self) -> int:
        return self.ports["component"]

    def start(self, *args: str) -> NodeProcess:
        """Starts `raftxmpp node start --config ...` with extra command-line `args`."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "raftxmpp_cli.main", "node", "start", "--config",
                 str(self.config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(self._up, 20, f"{self.name} to open its admin socket")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
        return bool(self.admin("node.status"))

    def admin(self, cmd: str, **args: Any) -> Any:
        return call(self.data_dir, cmd, timeout=15, **args)

    def status(self) -> dict:
        return self.admin("node.status")["raft"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.process.wait(timeout=15)

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        self.kill(signal.SIGTERM)
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    def __init__(self, base: Path, size: int, extra: str = "",
                 hosts: tuple[str, ...] = ("localhost",), prefix: tuple[str, ...] = (),
                 s2s: str = "", http_extra: str = "") -> None:
        ports = free_ports(size * 7)
        self.raft_ports = ports[:size]
        self.nodes = []
        for i in range(size):
            node_ports = {"raft": ports[i], "link": ports[size + i],
                          "c2s": ports[2 * size + i], "c2s_tls": ports[3 * size + i],
                          "http": ports[4 * size + i], "component": ports[5 * size + i],
                          "s2s": ports[6 * size + i]}
            peers = [p for j, p in enumerate(self.raft_ports) if j != i]
            self.nodes.append(NodeProcess(base, f"node{i + 1}", node_ports, peers, extra,
                                          hosts, prefix, s2s, http_extra))

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def leader(self, timeout: float = 20) -> NodeProcess:
        """The node every live member agrees leads, once they agree."""
        def agreed():
            live = [n for n in self.nodes if n.alive()]
            leaders = {n.status().get("leader") for n in live}
            if len(leaders) == 1 and None not in leaders:
                address = leaders.pop()
                return next((n for n in live if n.raft_address == address), None)
            return None

        return wait_for(agreed, timeout, "the live nodes to agree on a leader")

    def kill_all(self) -> None:
        """Kills every node, even when one of them fails to die in time (then raises)."""
        failures = []
        for node in self.nodes:
            try:
                node.kill()
            except Exception as exc:  # keep killing the others; a leftover node outlives the test
                failures.append(exc)
        if failures:
            raise failures[0]


def listener_sections() -> list[str]:
    """Config sections other than [c2s] that open a listener with a fixed default port."""
    return [f.name for f in dataclasses.fields(config_mod.Config)
            if f.name not in ("c2s", "cluster", "source")
            and "listen" in {g.name for g in dataclasses.fields(config_mod._SECTION_TYPES[f.name])}]
