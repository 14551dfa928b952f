"""Smoke test of bench/: the scripts parse, the configs load, the generator builds and drives
a node. Never a timed assertion: benchmarks are run by hand (bench/RESULTS.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from raftxmpp import config
from tests.harness import NodeProcess, free_ports

BENCH = Path(__file__).resolve().parent.parent / "bench"
SOURCE = BENCH.parent.parent / "shared" / "bench" / "xmppload.c"


def test_bench_configs_load_and_scripts_parse():
    for path in [BENCH / "node.toml", *sorted((BENCH / "cluster-3").glob("node*.toml"))]:
        cfg = config.load(path)
        assert cfg.c2s.plaintext_auth_on_loopback and cfg.c2s.listen.is_loopback
    for script in BENCH.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    for script in BENCH.glob("*.py"):
        compile(script.read_text(), str(script), "exec")


def test_xmppload_logs_in_and_exchanges_messages_with_a_bench_node(tmp_path):
    for tool in ("gcc", "patch"):
        assert shutil.which(tool), f"{tool} is needed to build the load generator"
    assert SOURCE.exists(), f"{SOURCE} missing: ../shared/bench must sit beside the checkout"
    subprocess.run([str(BENCH / "build_xmppload.sh")], check=True, capture_output=True,
                   env={"XMPPLOAD_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    ports = dict(zip(("raft", "link", "c2s", "c2s_tls", "http", "component"), free_ports(6),
                     strict=True))
    node = NodeProcess(tmp_path, "bench", ports, [], extra="plaintext_auth_on_loopback = true")
    try:
        node.start()
        port = str(node.c2s_port)

        def xmppload(*args: str, binary: str = "xmppload") -> subprocess.CompletedProcess:
            return subprocess.run([str(tmp_path / binary), "-p", port, "-t", "10", *args],
                                  capture_output=True, text=True, timeout=30)

        assert xmppload("-s", "register", "-n", "20", "-c", "10").returncode == 0
        # The shared generator as it is; else the bench's -O (skip an <optional/> session IQ),
        # which is what bench/lib.sh's pick_generator falls back to.
        binary, extra = "xmppload", []
        if xmppload("-s", "login", "-n", "1", "-c", "1").returncode != 0:
            binary, extra = "xmppload-x", ["-O"]
        login = xmppload("-s", "login", "-n", "20", "-c", "10", *extra, binary=binary)
        assert login.returncode == 0, login.stdout + login.stderr
        assert re.search(r"^RESULT scenario=login .*ok=20 failed=0", login.stdout, re.M)
        messages = xmppload("-s", "messages", "-P", "5", "-W", "2", "-T", "2", "-U", "0.5",
                            *extra, binary=binary)
        assert messages.returncode == 0, messages.stdout + messages.stderr
        assert re.search(r"^RESULT scenario=messages .*pairs_ok=5 ", messages.stdout, re.M)
    finally:
        node.kill()
