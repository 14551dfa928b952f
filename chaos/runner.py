"""One chaos run: network, nodes, workload, fault episodes, final checks, artifacts.

The run is seeded: `random.Random(seed)` picks the order of faults (a shuffled cycle
through every enabled fault, so even a short run covers many kinds) and every
duration; each workload worker has its own Random derived from the seed. Timing on
a real machine still varies, so a replay reproduces the same fault schedule and the
same operations, not the same interleaving.

Cleanup is unconditional: node processes, nft tables, namespaces and routes are
removed in `finally`, on SIGINT and on SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from chaos import faults as faults_module
from chaos import lazyfs
from chaos.checker import Report
from chaos.cluster import ChaosCluster
from chaos.faults import FAULTS, Injector
from chaos.history import History
from chaos.net import Network, NetworkUnavailable, ensure_tools
from chaos.workload import Workload
from raftxmpp.admin.client import AdminClientError

HEALTHY_DEADLINE = 60.0
CONVERGENCE_DEADLINE = 60.0


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    def __init__(self, nodes: int, minutes: float, seed: int, faults: list[str],
                 artifacts: Path, keep: bool, timeouts: dict[str, float]) -> None:
        self.nodes, self.minutes, self.seed = nodes, minutes, seed
        self.faults = faults
        self.artifacts = artifacts
        self.keep = keep
        self.timeouts = timeouts
        self.network = Network(nodes)
        self.cluster: ChaosCluster | None = None
        self.injection_errors: list[str] = []

    # -- the whole run ---------------------------------------------------------------------------

    def execute(self) -> int:
        ensure_tools()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        previous = signal.signal(signal.SIGTERM, _terminate)
        passed = False
        try:
            self.network.create()
            log(f"network slot {self.network.slot}: nodes at "
                f"{', '.join(self.network.address(i) for i in range(1, self.nodes + 1))}, "
                f"host {self.network.host_address}; artifacts {self.artifacts}")
            lazy = any(f in faults_module.POWER_FAULTS for f in self.faults)
            if lazy and (why := lazyfs.available()) is not None:
                raise NetworkUnavailable(f"power-loss faults: {why}")
            self.cluster = ChaosCluster(self.artifacts / "nodes", self.network, self.timeouts,
                                        lazy=lazy)
            self.cluster.start()
            self.cluster.wait_leader()
            passed = asyncio.run(self._main())
        finally:
            if self.cluster is not None:
                self.cluster.kill_all()
            self.network.destroy()
            signal.signal(signal.SIGTERM, previous)
            self._artifacts(passed)
            from chaos.plot import draw_run  # matplotlib is optional: draw_run says if missing

            log(draw_run(self.artifacts))
        return 0 if passed else 1

    async def _main(self) -> bool:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=48))
        history = History(self.artifacts / "history.jsonl")
        history.note(f"seed {self.seed}, {self.nodes} nodes, {self.minutes} min, "
                     f"faults {','.join(self.faults)}")
        workload = Workload(self.cluster, history, self.seed, f"s{self.seed}")
        injector = Injector(self.cluster, history)
        final: dict = {}
        try:
            await self._wait_healthy(history, None)
            await workload.setup()
            if not any(n.name for n in self.cluster.nodes):
                raise RuntimeError("no nodes")
            final["t_workload_start"] = history.now()
            tasks = [asyncio.create_task(t) for t in workload.tasks()]
            try:
                await self._episodes(history, injector)
            finally:
                final["t_workload_end"] = history.now()
                workload.stop()
                done, pending = await asyncio.wait(tasks, timeout=20)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in done:
                    if task.exception() is not None:
                        history.note(f"workload task failed: {task.exception()!r}")
                        log(f"workload task failed: {task.exception()!r}")
            history.close_pending()
            await self._final(history, injector, workload, final)
            report = Report(history, workload, final)
            passed = report.run()
            print(report.table(), flush=True)
            (self.artifacts / "summary.json").write_text(
                json.dumps({"seed": self.seed, "nodes": self.nodes, "minutes": self.minutes,
                            **report.as_dict()}, indent=1, default=str))
            return passed
        finally:
            history.dump_faults(self.artifacts / "faults.jsonl")
            history.close()

    async def _episodes(self, history: History, injector: Injector) -> None:
        rng = random.Random(self.seed)
        deadline = time.monotonic() + self.minutes * 60
        cycle: list[str] = []
        episode = 0
        while time.monotonic() < deadline:
            if not cycle:
                cycle = list(self.faults)
                rng.shuffle(cycle)
            kind = cycle.pop()
            episode += 1
            episode_rng = random.Random(f"{self.seed}:episode{episode}")
            log(f"episode {episode}: {kind}")
            try:
                fault = await asyncio.to_thread(injector.run, kind, episode_rng)
            except (RuntimeError, AdminClientError, OSError) as exc:
                # The fault could not be carried out (a node did not come back, a
                # membership change was refused): a finding, and the run goes on.
                text = f"episode {episode} {kind}: injection failed: {exc}"
                log(text)
                history.note(text)
                self.injection_errors.append(text)
                await asyncio.to_thread(injector.heal_everything)
                continue
            log(f"episode {episode}: {kind} {fault.targets} healed after "
                f"{fault.t_heal - fault.t_start:.1f}s")
            await self._wait_healthy(history, fault)
            await asyncio.sleep(episode_rng.uniform(2.0, 4.0))  # quiet period
            fault.t_end = history.now()

    async def _wait_healthy(self, history: History, fault) -> bool:
        start = time.monotonic()
        while time.monotonic() - start < HEALTHY_DEADLINE:
            if await asyncio.to_thread(self.cluster.healthy):
                if fault is not None:
                    fault.t_healthy = history.now()
                    history.fault_event(fault, "healthy", t=fault.t_healthy)
                return True
            await asyncio.sleep(0.2)
        log(f"cluster not healthy {HEALTHY_DEADLINE:.0f}s after "
            f"{fault.kind if fault else 'start'}; healing everything")
        if fault is None:
            raise RuntimeError("the cluster did not become healthy at start")
        history.fault_event(fault, "not-healthy")
        await asyncio.to_thread(self._dump_status, history)
        return False

    def _dump_status(self, history: History) -> None:
        for node in self.cluster.nodes:
            try:
                history.note(f"{node.name} status: {json.dumps(node.admin('node.status', 3))}")
            except (AdminClientError, OSError) as exc:
                history.note(f"{node.name} status: unavailable ({exc})")

    # -- after the last fault -----------------------------------------------------------------------

    async def _final(self, history: History, injector: Injector, workload: Workload,
                     final: dict) -> None:
        log("final phase: heal everything, wait for convergence, read back")
        await asyncio.to_thread(injector.heal_everything)
        final["recovery_errors"] = list(self.injection_errors)
        if not await self._wait_healthy_final(history):
            final["recovery_errors"].append("cluster not healthy after the final heal")
            await asyncio.to_thread(self._dump_status, history)
        final["convergence"] = await asyncio.to_thread(self._convergence)
        nodes = self.cluster.nodes
        final["accounts"] = {n.name: await _admin_or_none(n, "user.list", current=True)
                             for n in nodes}
        components = {n.name: await _admin_or_none(n, "component.list") for n in nodes}
        final["components"] = {k: None if v is None else [c["domain"] for c in v]
                               for k, v in components.items()}
        await self._final_logins(workload, final)
        final["crashes"] = self.cluster.crashes
        for owner in [*workload.roster_owners, *workload.minority_owners]:
            for node in nodes:
                conn = await workload.session(node, owner, workload.password, "final",
                                              read_roster=True)
                if conn is not None:
                    await conn.close()
        for round_ in range(2):
            for i, inbox in enumerate(workload.inboxes):
                await workload.drain(inbox, nodes[(i + round_) % len(nodes)], linger=1.5)
        history.close_pending()
        # Read last: every line the nodes wrote during the faults and the final checks.
        final["logs"] = {n.name: n.log_path.read_text(errors="replace") if n.log_path.exists()
                         else "" for n in nodes}

    async def _wait_healthy_final(self, history: History) -> bool:
        start = time.monotonic()
        while time.monotonic() - start < 90:
            if await asyncio.to_thread(self.cluster.healthy):
                return True
            await asyncio.sleep(0.3)
        return False

    async def _final_logins(self, workload: Workload, final: dict) -> None:
        rng = random.Random(f"{self.seed}:final")
        race_logins: dict[str, set[str]] = {}
        for a, b in workload.races[-40:]:
            jid = a.key.split(":", 1)[1]
            winners, answered = set(), False
            for node in self.cluster.nodes:
                for op in (a, b):
                    check = await workload.login_check(node, jid, op.args["password"])
                    answered |= check.status in ("ok", "fail")
                    if check.status == "ok":
                        winners.add(op.args["password"])
            if answered:
                race_logins[jid] = winners
        final["race_logins"] = race_logins
        others = [m for m in workload.accounts.values()
                  if not m.jid.startswith(("owner", "sender", "inbox", "talk"))]
        for model in rng.sample(others, min(40, len(others))):
            for node in self.cluster.nodes:
                for password in sorted(model.candidates):
                    await workload.login_check(node, model.jid, password)

    def _convergence(self) -> dict:
        start = time.monotonic()
        last: dict = {}
        while time.monotonic() - start < CONVERGENCE_DEADLINE:
            last = {}
            for node in self.cluster.nodes:
                try:
                    last[node.name] = node.admin("state.digest", 5)
                except (AdminClientError, OSError) as exc:
                    last[node.name] = {"error": str(exc)}
            digests = {v.get("digest") for v in last.values()}
            applied = {v.get("applied_index") for v in last.values()}
            if len(digests) == 1 and len(applied) == 1 and None not in digests:
                return {"equal": True, "seconds": round(time.monotonic() - start, 2),
                        "applied": applied.pop(), "digest": digests.pop()}
            time.sleep(0.5)
        return {"equal": False, "seconds": CONVERGENCE_DEADLINE,
                "applied": {k: v.get("applied_index") for k, v in last.items()},
                "details": [f"{k}: {v}" for k, v in last.items()]}

    # -- artifacts --------------------------------------------------------------------------------

    def _artifacts(self, passed: bool) -> None:
        if passed and not self.keep:
            for node_dir in (self.artifacts / "nodes").glob("node*"):
                shutil.rmtree(node_dir / "data", ignore_errors=True)
                shutil.rmtree(node_dir / "disk", ignore_errors=True)
            log(f"PASSED; history, node logs and summary in {self.artifacts}")
        else:
            log(f"{'FAILED' if not passed else 'done'}; history, node logs and data dirs kept in "
                f"{self.artifacts}")


async def _admin_or_none(node, cmd: str, **args):
    try:
        return await asyncio.to_thread(node.admin, cmd, 15, **args)
    except (AdminClientError, OSError):
        return None


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main_run(args) -> int:
    faults = FAULTS if not args.faults else [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in (*faults_module.FAULTS, *faults_module.OPT_IN)]
    if unknown:
        print(f"unknown fault(s) {unknown}; known: "
              f"{', '.join((*FAULTS, *faults_module.OPT_IN))}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    artifacts = Path(args.artifacts or f"/tmp/raftxmpp-chaos-{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    log(f"seed {seed} (replay: python -m chaos run --nodes {args.nodes} --minutes "
        f"{args.minutes:g} --seed {seed} --faults {','.join(faults)})")
    timeouts = {"election_timeout_min": args.election_min, "election_timeout_max": args.election_max,
                "heartbeat_period": args.heartbeat}
    run = Run(args.nodes, args.minutes, seed, list(faults), artifacts, args.keep, timeouts)
    try:
        return run.execute()
    except NetworkUnavailable as exc:
        print(f"chaos: cannot build the test network: {exc}", file=sys.stderr)
        return 3
