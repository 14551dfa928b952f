"""HTTP File Upload (XEP-0363) throughput: PUT (stored on a majority before the 201)
and GET, on three nodes (bench/cluster-3) and on one (bench/node.toml, no copies).

    nice -n 10 python3 bench/upload_throughput.py [--size-mib 16] [--files 6] [--parallel 3]

For each setup, fresh data: one account logs in over WebSocket on node 1 and asks for
slots; PUTs go to node 1 (sequentially, then `--parallel` at once); GETs come back from
node 1 and from node 2 (both hold a copy once the PUT succeeded; the three-node figure
therefore includes pushing the bytes to the two peers over the node links). MB/s are
file bytes over wall time. RESULT lines are appended to bench/results/web.txt.
"""

from __future__ import annotations

import argparse
import html
import http.client
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402 - bench/ is a folder of scripts, not a package
from web_rate import PASSWORD, WSClient  # noqa: E402 - the same WebSocket client
from wsproto.events import TextMessage  # noqa: E402

UPLOAD = "urn:xmpp:http:upload:0"


async def slots(port: int, count: int, size: int) -> list[tuple[str, str]]:
    client = WSClient(port)
    await client.login("uploader")
    found = []
    for n in range(count):
        await client.send_text(
            f"<iq xmlns='jabber:client' type='get' id='s{n}' to='upload.localhost'>"
            f"<request xmlns='{UPLOAD}' filename='f{n}.bin' size='{size}' "
            "content-type='application/octet-stream'/></iq>")
        while True:
            text = client.pending.pop(0) if client.pending else \
                (await client._event(TextMessage)).data
            if f'id="s{n}"' in text:
                put = html.unescape(re.search(r'<put url="([^"]+)"', text).group(1))
                get = html.unescape(re.search(r'<get url="([^"]+)"', text).group(1))
                found.append((put, get))
                break
    await client.stream.aclose()
    return found


def transfer(port: int, method: str, url: str, body: bytes | None = None) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        conn.request(method, f"{parts.path}?{parts.query}", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"{method} {response.status}: {data[:200]!r}")
        return len(data) if method == "GET" else len(body)
    finally:
        conn.close()


async def timed(jobs) -> float:
    """Runs the blocking jobs at once (threads); returns the wall time."""
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(trio.to_thread.run_sync, job)
    return time.monotonic() - started


async def scenario(nodes, args, label: str, out) -> None:
    size = args.size_mib * 1024 * 1024
    data = os.urandom(size)
    ports = [n.config.http.listen.port for n in nodes]
    urls = await slots(ports[0], args.files + args.parallel, size)
    figures = {}
    await timed([lambda: transfer(ports[0], "PUT", urls[0][0], data)])  # warm-up, not counted
    wall = 0.0
    for put, _ in urls[1:args.files]:
        wall += await timed([lambda put=put: transfer(ports[0], "PUT", put, data)])
    figures["put_seq"] = (args.files - 1) * size / wall
    wall = await timed([lambda put=put: transfer(ports[0], "PUT", put, data)
                        for put, _ in urls[args.files:]])
    figures[f"put_par{args.parallel}"] = args.parallel * size / wall
    for name, port in (("get_node1", ports[0]), ("get_node2", ports[-1])):
        wall = await timed([lambda get=get, port=port: transfer(port, "GET", get)
                            for _, get in urls[:args.files]])
        figures[name] = args.files * size / wall
    load = benchlib.load1()
    for name, rate in figures.items():
        line = (f"RESULT setup={label} figure={name} size_mib={args.size_mib} "
                f"mb_s={rate / 1e6:.1f} load1={load}")
        print(line)
        out.write(line + "\n")


def run_setup(configs: list[Path], label: str, args, out) -> None:
    nodes = [benchlib.BenchNode(c) for c in configs]
    for node in nodes:
        shutil.rmtree(node.data_dir, ignore_errors=True)
    try:
        for node in nodes:
            node.start()
        benchlib.wait_leader(nodes)
        if len(nodes) > 1:
            benchlib.wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == len(nodes)
                                          for n in nodes), 30, "gossip")
        nodes[0].admin("user.add", jid="uploader@localhost", password=PASSWORD)
        trio.run(scenario, nodes, args, label, out)
    finally:
        benchlib.stop_all()
        benchlib._STARTED.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=3)
    args = parser.parse_args()
    load = benchlib.wait_for_quiet()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_path = benchlib.BENCH / "results" / "web.txt"
    out_path.parent.mkdir(exist_ok=True)
    with open(out_path, "a") as out:
        out.write(f"# upload_throughput {stamp} {benchlib.machine()} load1={load} "
                  f"commit={os.environ.get('BENCH_COMMIT', '?')}\n")
        cluster = benchlib.BENCH / "cluster-3"
        run_setup([cluster / f"node{i}.toml" for i in (1, 2, 3)], "three_nodes", args, out)
        run_setup([benchlib.BENCH / "node.toml"], "one_node", args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
