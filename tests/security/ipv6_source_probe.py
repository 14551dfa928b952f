"""Run inside a fresh network namespace (`unshare -rn`): a node listening on IPv6 and
clients from many addresses of one /64, and of another /64. Prints one JSON object.

tests/security/test_source_prefixes.py runs it; loopback alone has a single IPv6
address (::1), so the namespace is where a test can be a whole /64 of clients.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.security.conftest import first_answer

NODE = "fd00:0:0:1::1"
SAME_64 = [f"fd00:0:0:1:{i:x}::{i:x}" for i in range(2, 7)]  # five addresses, one /64
OTHER_64 = "fd00:0:0:2::2"


def set_up_addresses() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in [NODE, *SAME_64, OTHER_64]:
        subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
                       check=True)


async def main(data_dir: Path) -> dict:
    base = config_mod.embedded_default(data_dir)
    cfg = dataclasses.replace(
        base,
        c2s=dataclasses.replace(base.c2s, listen=config_mod.Address(NODE, 5222),
                                tls_listen=None),
        limits=dataclasses.replace(base.limits, exempt_ips=(), pre_auth_connections_per_ip=3,
                                   connection_rate_per_ip=0),
    )
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        held: list = []
        results = {"same_64": [await first_answer(5222, s, held, NODE) for s in SAME_64],
                   "other_64": await first_answer(5222, OTHER_64, held, NODE)}
        for raw in held:
            await raw.aclose()
        node.request_stop()
    return results


if __name__ == "__main__":
    set_up_addresses()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(trio.run(main, Path(tmp) / "data")))
    sys.exit(0)
