"""A test-controlled DNS server (dnslib): A and SRV records from a JSON zone file.

    python -m tests.dns_server ZONE.json [ADDRESS [PORT]]

Run inside the test's own network namespace (tests/federation.py), on ADDRESS:53
(default 127.0.0.1), UDP and TCP. The zone file maps names to record lists and is re-read when it changes:

    {"a.test.": {"A": ["127.0.0.1"]},
     "_xmpp-server._tcp.a.test.": {"SRV": [[0, 5, 5269, "node1.a.test."]]}}

A name with no entry is NXDOMAIN; a known name without the asked type is an empty
answer (NOERROR). Nothing else: no recursion, no forwarding, nothing leaves the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from dnslib import QTYPE, RCODE, RR, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self, path: str) -> None:
        self.path = path
        self.mtime = 0.0
        self.zone: dict = {}
        self.lock = threading.Lock()

    def _current(self) -> dict:
        with self.lock:
            mtime = os.stat(self.path).st_mtime
            if mtime != self.mtime:
                with open(self.path) as f:
                    self.zone = {k.lower(): v for k, v in json.load(f).items()}
                self.mtime = mtime
            return self.zone

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        entry = self._current().get(name)
        print(f"query {name} {qtype} -> {'NXDOMAIN' if entry is None else entry.get(qtype, [])}",
              flush=True)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for value in entry.get(qtype, []):
            if qtype == "A":
                reply.add_answer(RR(name, QTYPE.A, rdata=A(value), ttl=5))
            elif qtype == "SRV":
                priority, weight, port, target = value
                reply.add_answer(RR(name, QTYPE.SRV, rdata=SRV(priority, weight, port, target),
                                    ttl=5))
        return reply


class _QuietLogger:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def main() -> None:
    path = sys.argv[1]
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 53
    resolver = ZoneResolver(path)
    servers = [DNSServer(resolver, address=address, port=port, tcp=tcp, logger=_QuietLogger())
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("dns server ready", flush=True)
    while not stop.is_set():
        time.sleep(0.2)
    for server in servers:
        server.stop()


if __name__ == "__main__":
    main()
