"""The chaos network: one namespace per node on a private bridge, faults as nftables rules.

Topology of one run (slot k, so that two runs on one machine never share a name):

    host netns ── rxc{k}h (10.77.0.{32k+30}/27) ═╗
                                               bridge rxbr in netns rxc{k}hub
    netns rxc{k}n{i} ── eth0 (10.77.0.{32k+i}/27) ═╝

The workload and the admin calls run on the host (the veth gives it a connected
/27 route; a blackhole route for 10.77.0.0/24 guarantees that no chaos packet ever
leaves through the default route, even if the veth is gone). Faults never touch the
host veth: a partition is an `inet chaos` nftables table inside a node's namespace
that silently drops traffic to and from the other nodes' addresses only, so clients
can still reach an isolated node (which is what lets the checker prove that an
isolated minority acknowledges no durable write). Healing deletes the table.

Must never do: touch any address outside 10.77.0.0/24, or leave a namespace,
veth, nft table or route behind (`Network.destroy` is idempotent and runs from
`finally` and from signal handlers).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0.0/24"
SLOTS = 8
LOCK_DIR = Path("/run/raftxmpp-chaos")


class NetworkUnavailable(Exception):
    """Namespaces or nftables cannot be used here; the message says what to do."""


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def ensure_tools() -> None:
    """Installs nftables/iproute2 when missing; checks that netns and nft really work."""
    if os.geteuid() != 0:
        raise NetworkUnavailable("the chaos suite needs root (network namespaces, nftables)")
    if not shutil.which("ip") or not shutil.which("nft"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if shutil.which("apt-get"):
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "nftables", "iproute2"]):
                subprocess.run(cmd, capture_output=True, env=env)
    if not shutil.which("ip") or not shutil.which("nft"):
        raise NetworkUnavailable("`ip` and `nft` are required: apt-get install -y nftables iproute2")
    probe = "rxcprobe"
    sh("ip", "netns", "del", probe, check=False)
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetworkUnavailable(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    try:
        ruleset = "add table inet chaos\nadd chain inet chaos input { type filter hook input priority 0; }\n"
        nft = sh("ip", "netns", "exec", probe, "nft", "-f", "-", input=ruleset, check=False)
        if nft.returncode != 0:
            raise NetworkUnavailable(f"nftables does not work in a namespace: {nft.stderr.strip()}")
    finally:
        sh("ip", "netns", "del", probe, check=False)


@dataclass
class Network:
    size: int
    slot: int = -1
    created: bool = False
    _lock_fd: int | None = field(default=None, repr=False)

    # -- names and addresses ---------------------------------------------------------------

    @property
    def hub(self) -> str:
        return f"rxc{self.slot}hub"

    def netns(self, index: int) -> str:
        """Namespace of node `index` (1-based)."""
        return f"rxc{self.slot}n{index}"

    def address(self, index: int) -> str:
        return f"10.77.0.{32 * self.slot + index}"

    @property
    def host_address(self) -> str:
        return f"10.77.0.{32 * self.slot + 30}"

    @property
    def host_veth(self) -> str:
        return f"rxc{self.slot}h"

    # -- life cycle ---------------------------------------------------------------------------

    def create(self) -> None:
        if not 1 <= self.size <= 9:
            raise ValueError("1 to 9 nodes")
        self._take_slot()
        self.destroy(keep_slot=True)  # leftovers of a crashed run in the same slot
        self.created = True
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "rxbr", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "rxbr", "up")
        sh("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "ph",
           "netns", self.hub)
        sh("ip", "-n", self.hub, "link", "set", "ph", "master", "rxbr")
        sh("ip", "-n", self.hub, "link", "set", "ph", "up")
        sh("ip", "addr", "add", f"{self.host_address}/27", "dev", self.host_veth)
        sh("ip", "link", "set", self.host_veth, "up")
        # Belt and braces: chaos traffic never follows the default route off the machine.
        sh("ip", "route", "replace", "blackhole", SUBNET, "metric", "4000")
        for i in range(1, self.size + 1):
            ns = self.netns(i)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"rxc{self.slot}v{i}", "netns", ns, "type", "veth",
               "peer", "name", f"p{i}", "netns", self.hub)
            sh("ip", "-n", ns, "link", "set", f"rxc{self.slot}v{i}", "name", "eth0")
            sh("ip", "-n", self.hub, "link", "set", f"p{i}", "master", "rxbr")
            sh("ip", "-n", self.hub, "link", "set", f"p{i}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/27", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def destroy(self, keep_slot: bool = False) -> None:
        if self.slot < 0:
            return
        for i in range(1, 10):
            # Processes a crashed run left in its namespaces would outlive the namespace.
            pids = sh("ip", "netns", "pids", self.netns(i), check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", self.netns(i), check=False)
        sh("ip", "netns", "del", self.hub, check=False)
        sh("ip", "link", "del", self.host_veth, check=False)
        if not keep_slot:
            others = sh("ip", "netns", "list", check=False).stdout
            if "hub" not in "".join(line for line in others.splitlines() if line.startswith("rxc")):
                sh("ip", "route", "del", "blackhole", SUBNET, check=False)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self.created = False

    def _take_slot(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in range(SLOTS):
            fd = os.open(LOCK_DIR / f"slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            return
        raise NetworkUnavailable(f"all {SLOTS} chaos network slots are in use")

    # -- faults ---------------------------------------------------------------------------------

    def cut(self, index: int, peers: list[int]) -> None:
        """Silently drops all traffic between node `index` and `peers`, both ways."""
        if not peers:
            return
        addresses = ", ".join(self.address(p) for p in peers)
        rules = (
            "add table inet chaos\n"
            "add chain inet chaos input { type filter hook input priority -10; policy accept; }\n"
            "add chain inet chaos output { type filter hook output priority -10; policy accept; }\n"
            f"add rule inet chaos input ip saddr {{ {addresses} }} drop\n"
            f"add rule inet chaos output ip daddr {{ {addresses} }} drop\n"
        )
        sh("ip", "netns", "exec", self.netns(index), "nft", "-f", "-", input=rules)

    def heal(self, index: int) -> None:
        sh("ip", "netns", "exec", self.netns(index), "nft", "delete", "table", "inet", "chaos",
           check=False)

    def heal_all(self) -> None:
        for i in range(1, self.size + 1):
            self.heal(i)

    def partition(self, groups: list[list[int]]) -> None:
        """Each group sees only itself (nodes in no group are untouched)."""
        for group in groups:
            others = [n for g in groups if g is not group for n in g]
            for index in group:
                self.cut(index, others)
