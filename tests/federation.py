"""A private network for federation tests: its own namespace, DNS, and a real Prosody.

- `Namespace` creates a network namespace holding only a loopback interface, with
  /etc/netns/NAME/resolv.conf pointing at 127.0.0.1 (which `ip netns exec` mounts
  over /etc/resolv.conf for every process it starts). `enter()` moves the calling
  thread into it (the test's own sockets and the processes it starts then live there);
  `destroy()` kills what runs inside, deletes it and its files, and is idempotent.
  Names are rxs2s<pid>: a crashed run's leftovers are removed by the next one, and
  nothing of another run or another engineer is ever touched.
- `DNS` runs tests/dns_server.py inside, serving the A and SRV records the test writes.
- `Prosody` is Debian's prosody package (installed here when missing, its own service
  kept from starting), run as a foreground process with a generated config on
  loopback ports, its accounts written straight into its internal storage.

Only loopback addresses inside namespaces this module creates are ever used.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dns.resolver

from tests.debian import ensure_command
from tests.harness import wait_for

CLONE_NEWNET = 0x40000000
# The name server's address inside the namespace: not loopback, because resolvers such
# as libunbound (Prosody's) refuse to query localhost; a /32 on
# the namespace's own loopback interface, reachable from nowhere else.
DNS_ADDRESS = "10.77.253.1"
NETNS_ETC = Path("/etc/netns")
PREFIX = "rxs2s"
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkUnavailable(Exception):
    pass


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


class Namespace:
    def __init__(self) -> None:
        self.name = f"{PREFIX}{os.getpid()}"
        self._home: int | None = None
        self.created = False

    @staticmethod
    def check() -> None:
        if os.geteuid() != 0:
            raise NetworkUnavailable("federation tests need root (network namespaces)")
        if shutil.which("ip") is None:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-qq", "iproute2"], capture_output=True,
                           env=env, check=False)
        if shutil.which("ip") is None:
            raise NetworkUnavailable("`ip` (iproute2) is required")

    @staticmethod
    def remove_leftovers() -> None:
        """Namespaces of earlier runs whose process is gone (a crash, a kill -9)."""
        listed = _sh("ip", "netns", "list", check=False).stdout
        for name in re.findall(rf"^({PREFIX}(\d+))\b", listed, re.M):
            if not Path(f"/proc/{name[1]}").exists():
                Namespace._remove(name[0])

    def create(self) -> Namespace:
        self.remove_leftovers()
        self._remove(self.name)
        self.created = True
        made = _sh("ip", "netns", "add", self.name, check=False)
        if made.returncode != 0:
            raise NetworkUnavailable(f"`ip netns add` is not permitted: {made.stderr.strip()}")
        _sh("ip", "-n", self.name, "link", "set", "lo", "up")
        _sh("ip", "-n", self.name, "addr", "add", f"{DNS_ADDRESS}/32", "dev", "lo")
        etc = NETNS_ETC / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:1 attempts:2\n")
        return self

    def enter(self) -> None:
        """Moves this thread into the namespace; `leave()` brings it back."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.name}")

    def leave(self) -> None:
        if self._home is not None:
            if _libc.setns(self._home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(self._home)
            self._home = None

    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def destroy(self) -> None:
        self.leave()
        if self.created:
            self._remove(self.name)
            self.created = False

    @staticmethod
    def _remove(name: str) -> None:
        for pid in _sh("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


class DNS:
    """The namespace's name server; `records` is rewritten with `set()`."""

    def __init__(self, namespace: Namespace, base: Path) -> None:
        self.namespace = namespace
        self.zone_path = base / "zone.json"
        self.records: dict[str, dict] = {}
        self.process: subprocess.Popen | None = None
        self.log = base / "dns.log"

    def set(self, name: str, rtype: str, values: list) -> None:
        self.records.setdefault(name.lower().rstrip(".") + ".", {})[rtype] = values
        tmp = self.zone_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records))
        os.replace(tmp, self.zone_path)

    def start(self) -> DNS:
        if not self.zone_path.exists():
            self.zone_path.write_text("{}")
        root = str(Path(__file__).resolve().parent.parent)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*self.namespace.prefix(), sys.executable, "-m", "tests.dns_server",
                 str(self.zone_path), DNS_ADDRESS], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [DNS_ADDRESS]
        resolver.lifetime = 1.0
        self.set("probe.test", "A", ["127.0.0.1"])

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the DNS server exited: {self.log.read_text()}")
            try:
                return bool(resolver.resolve("probe.test", "A"))
            except dns.exception.DNSException:
                return False

        wait_for(answers, 15, "the test DNS server to answer")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def issue_certificate(ca, base: Path, domain: str) -> tuple[Path, Path]:
    """A certificate and key for `domain` from a trustme CA, written under `base`."""
    cert = ca.issue_cert(domain)
    paths = base / f"{domain}.pem", base / f"{domain}.key"
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    return paths


# -- Prosody -----------------------------------------------------------------------------------


def ensure_prosody() -> str:
    """Debian's prosody, installed when missing (its packaged service never starts)."""
    return ensure_command("prosody", "prosody")


class Prosody:
    """One Prosody process serving `hosts` ({domain: (certificate, key)})."""

    def __init__(self, namespace: Namespace, base: Path, hosts: dict[str, tuple[Path, Path]],
                 c2s_port: int, s2s_port: int, ca_file: Path, log_level: str = "debug",
                 extra: str = "c2s_require_encryption = true\n") -> None:
        self.namespace = namespace
        self.base = base
        self.hosts = hosts
        self.c2s_port, self.s2s_port = c2s_port, s2s_port
        self.data = base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log_path = base / "prosody.log"
        self.config_path = base / "prosody.cfg.lua"
        virtual_hosts = "".join(
            f'VirtualHost "{host}"\n  ssl = {{ certificate = "{cert}"; key = "{key}"; }}\n'
            for host, (cert, key) in hosts.items())
        self.config_path.write_text(f"""-- generated by tests/federation.py
pidfile = "{base}/prosody.pid"
data_path = "{self.data}"
run_as_root = true
log = {{ {{ levels = {{ min = "{log_level}" }}, to = "file", filename = "{self.log_path}" }} }}
modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence",
                     "private", "version", "time" }}
modules_disabled = {{ "s2s_bidi", "posix" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ {s2s_port} }}
c2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
{extra}s2s_require_encryption = true
s2s_secure_auth = false
s2s_timeout = 10
authentication = "internal_plain"
storage = "internal"
allow_registration = false
ssl = {{ cafile = "{ca_file}" }}
{virtual_hosts}""")
        self.process: subprocess.Popen | None = None

    def add_user(self, user: str, host: str, password: str) -> None:
        """internal_plain storage: data/<host>/accounts/<user>.dat (hex-escaped names)."""
        accounts = self.data / _prosody_path(host) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        (accounts / f"{_prosody_path(user)}.dat").write_text(
            f'return {{\n\t["password"] = "{password}";\n}};\n')

    def start(self) -> Prosody:
        with open(self.base / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [*self.namespace.prefix(), ensure_prosody(), "-F", "--config",
                 str(self.config_path)], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"prosody exited:\n{self.log()[-3000:]}")
            with socket.socket() as probe:
                probe.settimeout(0.5)
                return probe.connect_ex(("127.0.0.1", self.s2s_port)) == 0

        wait_for(listening, 30, "prosody to listen")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _prosody_path(text: str) -> str:
    """Prosody's datamanager escapes every character outside [a-zA-Z0-9] as %xx."""
    return re.sub(r"[^a-zA-Z0-9]", lambda m: f"%{ord(m.group(0)):02x}", text)
