#!/usr/bin/env python3
"""Logins over TLS with SCRAM-SHA-256, and KiB per idle TLS connection, against any server
(issue 22; raftxmpp, ejabberd and Prosody alike: it only needs a direct-TLS c2s port).

    python3 bench/tls_login.py prime --port P --n 2000 [--server NAME]
    python3 bench/tls_login.py login --port P --n 2000 -c 100 [--pid PID[,PID]] [--mech M]
    python3 bench/tls_login.py idle  --port P --n 2000 -c 100 --pid PID [--hold 5]

Accounts user1..userN with password pw (as xmppload registers them). Direct TLS
(XEP-0368 style: TLS from the first byte, no STARTTLS round trip), no certificate check.

A login = TCP connect, TLS handshake, stream open, SASL (SCRAM-SHA-256 by default, the
server signature checked), stream restart, bind, the session IQ if the server advertises
it (as ../shared/bench/xmppload does), `<presence/>`. Latency: connect start -> bind (or
session) result. `login` then closes the stream; logins/s = completed logins / (last
login done - first connect), xmppload's definition.

The client's own PBKDF2 (4096 x SHA-256 per login) would make the generator as costly
as the server: `prime` asks each account's salt once (SASL step 1 only, before the fresh
server start) and stores the salted passwords in bench/data/scram-cache.json; `login` and
`idle` use them (and derive on a miss). The server still does all of its work each time.

`idle`: N clients log in (c at once) and fetch their roster, then stay connected; after
--hold s the server's RSS is read again: kb_per_conn = RSS growth / connections, measured
after 20 warm-up connections (lazily built tables are not charged to the first ones).

Prints one RESULT line (key=value, like xmppload) and exits 1 if any client failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import ssl
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "data" / "scram-cache.json"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}


def header(domain: str) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()


def iq_done(ident: str) -> re.Pattern:
    return re.compile(rb"<iq[^>]*id=['\"]" + ident.encode() + rb"['\"][^>]*?(/>|>.*?</iq>)", re.S)


BIND_DONE, SESSION_DONE, ROSTER_DONE = iq_done("b1"), iq_done("s1"), iq_done("r1")
SASL_END = re.compile(rb"<(challenge|success|failure)[^>]*?(/>|>(.*?)</\1>)", re.S)


def cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
        except OSError:
            pass
    return total


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def machine_busy() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


class Client:
    def __init__(self, args, user: str, cache: dict) -> None:
        self.args, self.user, self.cache, self.buf = args, user, cache, b""
        self.writer = None

    async def _match(self, pattern: re.Pattern) -> re.Match:
        while True:
            m = pattern.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"{self.user}: closed: {self.buf[-300:]!r}")
            self.buf += chunk

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"{self.user}: closed: {self.buf[-300:]!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    async def _sasl_step(self) -> tuple[bytes, bytes]:
        m = await self._match(SASL_END)
        return m.group(1), base64.b64decode(m.group(3) or b"")

    async def connect(self, ctx: ssl.SSLContext) -> bytes:
        self.reader, self.writer = await asyncio.open_connection(
            self.args.host, self.args.port, ssl=ctx, server_hostname=self.args.domain)
        self.writer.write(header(self.args.domain))
        return await self._until(b"</stream:features>")

    async def first_step(self, mech: str) -> tuple[bytes, bytes, str]:
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n={self.user},r={nonce}"
        data = base64.b64encode(f"n,,{bare}".encode()).decode()
        self.writer.write(f"<auth xmlns='{SASL}' mechanism='{mech}'>{data}</auth>".encode())
        kind, challenge = await self._sasl_step()
        if kind != b"challenge":
            raise ConnectionError(f"{self.user}: {kind!r} instead of a challenge")
        return challenge, bare.encode(), nonce

    def salted(self, mech: str, salt: bytes, iterations: int) -> bytes:
        key = f"{mech} {self.user} {base64.b64encode(salt).decode()} {iterations}"
        hit = self.cache.get(key)
        if hit is None:
            hit = hashlib.pbkdf2_hmac(HASHES[mech], self.args.password.encode(), salt, iterations)
            self.cache[key] = hit = base64.b64encode(hit).decode()
        return base64.b64decode(hit)

    async def login(self, ctx: ssl.SSLContext, roster: bool = False) -> float:
        args, t0 = self.args, time.monotonic()
        features = await self.connect(ctx)
        mech = args.mech
        if f"<mechanism>{mech}</mechanism>".encode() not in features:
            raise ConnectionError(f"{self.user}: {mech} not offered: {features[-400:]!r}")
        if mech == "PLAIN":
            token = base64.b64encode(f"\0{self.user}\0{args.password}".encode()).decode()
            self.writer.write(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>".encode())
        else:
            challenge, bare, nonce = await self.first_step(mech)
            fields = dict(p.split("=", 1) for p in challenge.decode().split(","))
            if not fields["r"].startswith(nonce):
                raise ConnectionError(f"{self.user}: bad server nonce")
            salted = self.salted(mech, base64.b64decode(fields["s"]), int(fields["i"]))
            h = HASHES[mech]
            client_key = hmac.digest(salted, b"Client Key", h)
            final_bare = f"c=biws,r={fields['r']}".encode()
            auth_msg = bare + b"," + challenge + b"," + final_bare
            signature = hmac.digest(hashlib.new(h, client_key).digest(), auth_msg, h)
            proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            final = final_bare + b",p=" + base64.b64encode(proof)
            self.writer.write(f"<response xmlns='{SASL}'>{base64.b64encode(final).decode()}"
                              "</response>".encode())
            kind, data = await self._sasl_step()
            if kind != b"success":
                raise ConnectionError(f"{self.user}: {kind!r} {data!r}")
            server_key = hmac.digest(salted, b"Server Key", h)
            expect = base64.b64encode(hmac.digest(server_key, auth_msg, h))
            if data and data != b"v=" + expect:
                raise ConnectionError(f"{self.user}: wrong server signature")
        if mech == "PLAIN":
            kind, _ = await self._sasl_step()
            if kind != b"success":
                raise ConnectionError(f"{self.user}: PLAIN {kind!r}")
        self.buf = b""
        self.writer.write(header(args.domain))
        features = await self._until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>bench</resource></bind></iq>")
        await self._match(BIND_DONE)
        if b"urn:ietf:params:xml:ns:xmpp-session" in features:
            self.writer.write(b"<iq type='set' id='s1'><session "
                              b"xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            await self._match(SESSION_DONE)
        latency = time.monotonic() - t0
        if roster:
            self.writer.write(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
            await self._match(ROSTER_DONE)
        self.writer.write(b"<presence/>")
        return latency

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(b"</stream:stream>")
            await asyncio.wait_for(self._until(b"</stream:stream>"), 5)
        except (TimeoutError, OSError, ConnectionError, ssl.SSLError):
            pass
        self.writer.close()


def context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def load_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


async def run(args) -> str:
    ctx, cache = context(), load_cache()
    users = [f"user{i}" for i in range(args.first, args.first + args.n)]
    pids = [int(p) for p in args.pid.split(",") if p] if args.pid else []
    sem = asyncio.Semaphore(args.c)
    lat, fails, done_at = [], [], []
    errors: list[str] = []
    clients: list[Client] = []

    async def one(user: str, *, roster: bool, keep: bool) -> None:
        async with sem:
            c = Client(args, user, cache)
            try:
                if args.mode == "prime":
                    await c.connect(ctx)
                    challenge, _, _ = await c.first_step(args.mech)
                    fields = dict(p.split("=", 1) for p in challenge.decode().split(","))
                    c.salted(args.mech, base64.b64decode(fields["s"]), int(fields["i"]))
                    c.writer.close()
                    return
                lat.append(await asyncio.wait_for(c.login(ctx, roster), args.timeout))
                done_at.append(time.monotonic())
                if keep:
                    clients.append(c)
                else:
                    await c.close()
            except (TimeoutError, OSError, ConnectionError, ssl.SSLError, KeyError) as exc:
                fails.append(user)
                if len(errors) < 3:
                    errors.append(repr(exc)[:300])
                if c.writer is not None:
                    c.writer.close()

    extra = ""
    if args.mode == "idle":
        await asyncio.gather(*(one(u, roster=True, keep=True) for u in users[:20]))
        await asyncio.sleep(2)
        users = users[20:]
        lat.clear(), done_at.clear()
        rss0 = rss_kb(pids)
    busy0, all0 = machine_busy()
    cpu0, gen0 = cpu_s(pids), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.gather(*(one(u, roster=args.mode == "idle", keep=args.mode == "idle")
                           for u in users))
    t1 = max(done_at) if done_at else time.monotonic()
    cpu1, gen1 = cpu_s(pids), resource.getrusage(resource.RUSAGE_SELF)
    busy1, all1 = machine_busy()
    if args.mode == "prime":
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache))
        return f"RESULT test=prime n={len(users)} failed={len(fails)} cached={len(cache)}"
    span = max(t1 - t0, 1e-9)
    wall = time.monotonic() - t0
    server = 100 * (cpu1 - cpu0) / span
    gen = 100 * ((gen1.ru_utime + gen1.ru_stime) - (gen0.ru_utime + gen0.ru_stime)) / span
    machine = 100 * os.cpu_count() * (busy1 - busy0) / max(all1 - all0, 1) if all1 > all0 else 0
    if args.mode == "idle":
        await asyncio.sleep(args.hold)
        rss1 = rss_kb(pids)
        alive = len(clients) - 20
        extra = (f" rss_before_kb={rss0} rss_after_kb={rss1} alive={alive}"
                 f" kb_per_conn={(rss1 - rss0) / max(alive, 1):.1f}")
        for c in clients:
            c.writer.close()
    lat.sort()
    pct = (lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: 0)
    rate = len(done_at) / span
    return (f"RESULT test={args.mode}_tls mech={args.mech} n={len(users)} c={args.c} "
            f"ok={len(done_at)} failed={len(fails)} logins_per_s={rate:.1f} "
            f"lat_p50_ms={pct(0.5):.1f} lat_p99_ms={pct(0.99):.1f} "
            f"lat_mean_ms={1000 * statistics.fmean(lat) if lat else 0:.1f} "
            f"server_cpu={server:.0f} gen_cpu={gen:.0f} "
            f"other_cpu={max(0.0, machine - server - gen):.0f} wall_s={wall:.1f}{extra}"
            + (f" errors={errors[0]!r}" if errors else ""))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("prime", "login", "idle"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--password", default="pw")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("-n", "--n", type=int, default=2000)
    ap.add_argument("-c", "--c", type=int, default=100)
    ap.add_argument("--pid", default="")
    ap.add_argument("--mech", default="SCRAM-SHA-256")
    ap.add_argument("--hold", type=float, default=5)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    line = asyncio.run(run(args))
    print(line, flush=True)
    return 1 if " failed=0 " not in line + " " else 0


if __name__ == "__main__":
    sys.exit(main())
