"""Pacing of each session's presence broadcasts, with coalescing (issue 13, finding 1).

A broadcast costs work on every node for every subscribed contact, so one client
sending presence as fast as TCP takes it could keep every node busy. Each session may
broadcast `rate` presences a second with bursts of `burst` (a token bucket that starts
full, so a normal client never notices); past that its presence waits, and a newer one
replaces the waiting one: contacts get the latest presence, late by at most about a
second, and never an older one after a newer one (one session's broadcasts go out one
at a time, in order). Once the session ends, a waiting presence is dropped: the
unavailable presence sent for it is the last word.

Directed presence, subscriptions and probes are not paced here: they go to one contact.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from lxml import etree

from raftxmpp.c2s.limits import TokenBucket
from raftxmpp.routing.sessions import LocalSession

log = logging.getLogger("raftxmpp.presence")

Deliver = Callable[[LocalSession, etree._Element], Awaitable[None]]
Spawn = Callable[..., bool]


class _Pace:
    """One session's bucket, its waiting presence, and the lock that keeps its
    broadcasts one at a time."""

    __slots__ = ("bucket", "waiting", "flushing", "closed", "lock")

    def __init__(self, rate: float, burst: int) -> None:
        self.bucket = TokenBucket(rate, burst, trio.current_time())
        self.waiting: etree._Element | None = None
        self.flushing = False
        self.closed = False
        self.lock = trio.Lock()


class PresencePacer:
    """`rate` broadcasts a second per session, bursts of `burst`; rate 0: not paced."""

    def __init__(self, rate: float, burst: int, deliver: Deliver, spawn: Spawn) -> None:
        self.rate = rate
        self.burst = burst
        self._deliver = deliver
        self._spawn = spawn
        self._paces: weakref.WeakKeyDictionary[LocalSession, _Pace] = weakref.WeakKeyDictionary()

    async def broadcast(self, sender: LocalSession, stanza: etree._Element) -> None:
        """Broadcasts now if the session's bucket allows, otherwise makes `stanza` the
        presence that goes out when it does."""
        if self.rate <= 0:
            await self._deliver(sender, stanza)
            return
        pace = self._paces.get(sender)
        if pace is None:
            pace = self._paces[sender] = _Pace(self.rate, self.burst)
        if pace.closed:
            return
        if pace.waiting is None and pace.bucket.try_take(1, trio.current_time()):
            async with pace.lock:
                await self._deliver(sender, stanza)
            return
        pace.waiting = stanza  # the latest presence wins
        if not pace.flushing:
            pace.flushing = True
            if not self._spawn(self._flush, sender, pace):  # the node is stopping
                pace.flushing = False
                pace.waiting = None

    async def _flush(self, sender: LocalSession, pace: _Pace) -> None:
        try:
            while pace.waiting is not None and not pace.closed:
                await trio.sleep(1 / self.rate)
                if sender.closing is not None:
                    return
                if pace.waiting is None or not pace.bucket.try_take(1, trio.current_time()):
                    continue
                stanza, pace.waiting = pace.waiting, None
                async with pace.lock:
                    if not pace.closed:
                        await self._deliver_logged(sender, stanza)
        finally:
            pace.flushing = False

    async def _deliver_logged(self, sender: LocalSession, stanza: etree._Element) -> None:
        # Nobody is left to bounce an error to: the client's stanza was accepted long ago.
        try:
            await self._deliver(sender, stanza)
        except Exception:
            log.exception("paced presence of %s not broadcast", sender.full_jid)

    @contextlib.asynccontextmanager
    async def closing(self, session: LocalSession) -> AsyncIterator[None]:
        """Around the session's last broadcast: nothing waiting goes out after it."""
        pace = self._paces.get(session)
        if pace is None:
            yield
            return
        pace.closed = True
        pace.waiting = None
        async with pace.lock:
            yield


def pacer_for(router: Any, deliver: Deliver) -> PresencePacer:
    """The pacer with the node's [limits] presence_rate and presence_burst."""
    limits = router.config.limits
    return PresencePacer(limits.presence_rate, limits.presence_burst, deliver, router.spawn)
