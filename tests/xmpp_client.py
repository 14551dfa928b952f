"""slixmpp clients for tests: a real XMPP library driving real node processes.

slixmpp runs on asyncio; each test runs its scenario with `run()` (one event loop in
the test's thread; the node is another process, so two loops never share a thread).
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import slixmpp

TIMEOUT = 10.0
_names = itertools.count()

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, port: int, ca: Path, mech: str | None = None,
                 plugins: tuple[str, ...] = (), direct_tls: bool = False) -> None:
        super().__init__(jid, password, sasl_mech=mech)
        self.ca_certs = Path(ca)
        self.port = port
        # One port speaks one of them: STARTTLS (5222) or direct TLS (5223, XEP-0368).
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.subscriptions: asyncio.Queue = asyncio.Queue()
        self._started: asyncio.Future = asyncio.get_event_loop().create_future()
        self._gone: asyncio.Future = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: _settle(self._started, True))
        self.add_event_handler("failed_all_auth", lambda _: _settle(self._started, False))
        self.add_event_handler("connection_failed", lambda e: _fail(self._started, e))
        self.add_event_handler("disconnected", lambda _: _settle(self._gone, True))
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence_available", self.presences.put_nowait)
        self.add_event_handler("presence_unavailable", self.presences.put_nowait)
        self.add_event_handler("presence_subscribe", self.subscriptions.put_nowait)
        for plugin in ("xep_0030", "xep_0199", *plugins):
            self.register_plugin(plugin)

    async def start(self, presence: bool = True, priority: int | None = None) -> bool:
        """Connects, authenticates and binds; True on success, False on failed auth."""
        self.connect("127.0.0.1", self.port)
        ok = await asyncio.wait_for(self._started, TIMEOUT)
        if ok and presence:
            await self.get_roster(timeout=TIMEOUT)
            if priority is None:
                self.send_presence()
            else:
                self.send_presence(ppriority=priority)
        return ok

    async def stop(self) -> None:
        self.disconnect()
        try:
            await asyncio.wait_for(self._gone, TIMEOUT)
        except TimeoutError:
            self.abort()

    async def next_message(self, timeout: float = TIMEOUT) -> slixmpp.Message:
        while True:
            msg = await asyncio.wait_for(self.messages.get(), timeout)
            if msg["type"] in ("chat", "normal") and msg["body"]:
                return msg

    async def expect_no_message(self, within: float = 1.0) -> None:
        try:
            msg = await asyncio.wait_for(self.next_message(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {msg}")

    async def presence_from(self, bare: str, ptype: str = "available",
                            timeout: float = TIMEOUT) -> slixmpp.Presence:
        while True:
            presence = await asyncio.wait_for(self.presences.get(), timeout)
            if presence["from"].bare == bare and presence["type"] == ptype:
                return presence


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error) -> None:
    if not future.done():
        future.set_exception(ConnectionError(str(error)))
