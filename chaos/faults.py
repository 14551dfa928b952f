"""Fault episodes: each one injects one fault, heals it, and records what it did when.

Every function here blocks (it runs in a worker thread of the runner) and returns
only when its fault is healed: processes restarted, paused ones continued, nft
tables deleted. Durations come from the episode's seeded Random.

Node replacement: the node is killed, its data dir wiped, and it is started again
with the same configuration (same Raft address, same peers). With pysyncobj this is
the replacement that works: the leader sees a follower whose log is empty and sends
it the full snapshot, then the log. A `cluster.change remove` + `add` + `--join`
round trip is not needed for a node that keeps its address (and pysyncobj refuses to
let a node remove itself, so it would need a second member anyway).
"""

from __future__ import annotations

import random
import time

from chaos.cluster import LINK_PORT, ChaosCluster, ChaosNode
from chaos.history import Fault, History

FAULTS = (
    "kill_leader", "kill_follower", "kill_random", "pause_leader", "isolate_leader",
    "isolate_minority", "pairwise_cut", "flapping", "restart_all", "replace_node",
    "power_loss", "power_loss_all",
)
# Not in the default mix; select with --faults.
OPT_IN = ("replace_node_join",)
# With any of these enabled, every node's data dir is a lazy disk (chaos.lazyfs) that
# forgets what was not fsynced.
POWER_FAULTS = ("power_loss", "power_loss_all")


class Injector:
    def __init__(self, cluster: ChaosCluster, history: History) -> None:
        self.cluster = cluster
        self.history = history
        self.net = cluster.network

    def run(self, kind: str, rng: random.Random) -> Fault:
        return getattr(self, kind)(rng)

    # -- helpers -----------------------------------------------------------------------------

    def _leader(self) -> ChaosNode:
        return self.cluster.wait_leader(timeout=30)

    def _begin(self, kind: str, targets: list[ChaosNode]) -> Fault:
        fault = Fault(kind, [n.name for n in targets], self.history.now())
        self.history.fault(fault)
        return fault

    def _healed(self, fault: Fault) -> None:
        fault.t_heal = self.history.now()
        self.history.fault_event(fault, "heal", t=fault.t_heal)

    def _restart(self, nodes: list[ChaosNode]) -> None:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_up()

    def _cut_off(self, fault: Fault, t_on: float, nodes: list[ChaosNode]) -> None:
        """Records that `nodes` lacked a majority from t_on until now (called just before
        the fault is lifted): no durable write may be acknowledged through them then."""
        fault.minority_windows.append((t_on, self.history.now(), [n.name for n in nodes]))

    def _minority_size(self) -> int:
        return max(1, (len(self.cluster.nodes) - 1) // 2)

    # -- process faults ------------------------------------------------------------------------------

    def _kill_restart(self, kind: str, node: ChaosNode, rng: random.Random,
                      wipe: bool = False) -> Fault:
        fault = self._begin(kind, [node])
        node.kill()
        t_on = self.history.now()
        time.sleep(rng.uniform(1.0, 4.0))
        if wipe:
            node.wipe()
            fault.notes.append("data dir wiped; restarted with the same config")
        self._cut_off(fault, t_on, [node])
        self._restart([node])
        self._healed(fault)
        return fault

    def kill_leader(self, rng: random.Random) -> Fault:
        return self._kill_restart("kill_leader", self._leader(), rng)

    def kill_follower(self, rng: random.Random) -> Fault:
        leader = self._leader()
        return self._kill_restart("kill_follower",
                                  rng.choice([n for n in self.cluster.nodes if n is not leader]), rng)

    def kill_random(self, rng: random.Random) -> Fault:
        return self._kill_restart("kill_random", rng.choice(self.cluster.nodes), rng)

    def replace_node(self, rng: random.Random) -> Fault:
        return self._kill_restart("replace_node", rng.choice(self.cluster.nodes), rng, wipe=True)

    def replace_node_join(self, rng: random.Random) -> Fault:
        """The operator's replacement: `cluster.change remove` through the leader (pysyncobj
        refuses to remove the current leader, so a follower is replaced), wipe, then
        `node start --join <leader's link>`, which asks for `add` and starts Raft."""
        leader = self._leader()
        node = rng.choice([n for n in self.cluster.nodes if n is not leader])
        fault = self._begin("replace_node_join", [node])
        leader.admin("cluster.change", timeout=30, action="remove", address=node.raft_address)
        node.kill()
        t_on = self.history.now()
        node.wipe()
        time.sleep(rng.uniform(0.5, 2.0))
        self._cut_off(fault, t_on, [node])
        node.start("--join", f"{leader.address}:{LINK_PORT}")
        node.wait_up()
        fault.notes.append(f"removed through {leader.name}, joined through {leader.name}")
        self._healed(fault)
        return fault

    def restart_all(self, rng: random.Random) -> Fault:
        fault = self._begin("restart_all", list(self.cluster.nodes))
        for node in self.cluster.nodes:
            node.kill()
        t_on = self.history.now()
        time.sleep(rng.uniform(0.2, 1.5))
        self._cut_off(fault, t_on, self.cluster.nodes)
        self._restart(list(self.cluster.nodes))
        self._healed(fault)
        return fault

    def _power_loss(self, kind: str, nodes: list[ChaosNode], rng: random.Random) -> Fault:
        """Power off `nodes` at once (kill -9 and every unsynced write gone), power them
        on again after 0.5–3 s, restart the nodes."""
        fault = self._begin(kind, nodes)
        for node in nodes:
            node.lose_power()
        t_on = self.history.now()
        time.sleep(rng.uniform(0.5, 3.0))
        self._cut_off(fault, t_on, nodes)
        for node in nodes:
            node.power_on()
        self._restart(nodes)
        self._healed(fault)
        return fault

    def power_loss(self, rng: random.Random) -> Fault:
        """A minority loses power (the leader among them as often as chance has it)."""
        return self._power_loss("power_loss", rng.sample(self.cluster.nodes,
                                                         self._minority_size()), rng)

    def power_loss_all(self, rng: random.Random) -> Fault:
        """The whole cluster loses power at once: only what was fsynced survives."""
        return self._power_loss("power_loss_all", list(self.cluster.nodes), rng)

    def pause_leader(self, rng: random.Random) -> Fault:
        leader = self._leader()
        fault = self._begin("pause_leader", [leader])
        leader.pause()
        t_on = self.history.now()
        time.sleep(rng.uniform(1.5, 4.0))  # well past election_timeout_max
        self._cut_off(fault, t_on, [leader])
        leader.resume()
        self._healed(fault)
        return fault

    # -- network faults ---------------------------------------------------------------------------------

    def _isolate(self, kind: str, group: list[ChaosNode], rng: random.Random) -> Fault:
        fault = self._begin(kind, group)
        others = [n.index for n in self.cluster.nodes if n not in group]
        self.net.partition([[n.index for n in group], others])
        t_on = self.history.now()
        self.history.partitioned = frozenset(n.name for n in group)
        time.sleep(rng.uniform(3.0, 7.0))
        self.history.partitioned = frozenset()
        self._cut_off(fault, t_on, group)
        self.net.heal_all()
        self._healed(fault)
        return fault

    def isolate_leader(self, rng: random.Random) -> Fault:
        return self._isolate("isolate_leader", [self._leader()], rng)

    def isolate_minority(self, rng: random.Random) -> Fault:
        group = rng.sample(self.cluster.nodes, self._minority_size())
        return self._isolate("isolate_minority", group, rng)

    def pairwise_cut(self, rng: random.Random) -> Fault:
        a, b = rng.sample(self.cluster.nodes, 2)
        fault = self._begin("pairwise_cut", [a, b])
        self.net.cut(a.index, [b.index])
        self.net.cut(b.index, [a.index])
        time.sleep(rng.uniform(3.0, 7.0))
        self.net.heal_all()
        self._healed(fault)
        return fault

    def flapping(self, rng: random.Random) -> Fault:
        fault = self._begin("flapping", [])
        end = time.monotonic() + rng.uniform(6.0, 10.0)
        touched: set[str] = set()
        while time.monotonic() < end:
            group = rng.sample(self.cluster.nodes, self._minority_size())
            touched |= {n.name for n in group}
            others = [n.index for n in self.cluster.nodes if n not in group]
            self.net.partition([[n.index for n in group], others])
            t_on = self.history.now()
            self.history.partitioned = frozenset(n.name for n in group)
            time.sleep(rng.uniform(1.0, 3.0))
            self.history.partitioned = frozenset()
            self._cut_off(fault, t_on, group)
            self.net.heal_all()
            time.sleep(rng.uniform(0.3, 1.5))
        fault.targets = sorted(touched)
        self._healed(fault)
        return fault

    # -- healing everything ------------------------------------------------------------------------------

    def heal_everything(self) -> None:
        self.history.partitioned = frozenset()
        self.net.heal_all()
        dead = []
        for node in self.cluster.nodes:
            if node.paused:
                node.resume()
            if not node.alive():
                dead.append(node)
                if node.disk is not None and node.disk.process is None:
                    node.power_on()
        self._restart(dead)
