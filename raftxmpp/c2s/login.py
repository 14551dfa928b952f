"""The login throttle at the edge of one client connection, for any transport.

`AuthThrottle` (raftxmpp.c2s.limits) decides; this glues it to the sans-IO negotiation
core, which cannot wait and does not know the client's address:

- `before(account)`: a SASL message that names an account is about to be received; a
  login the per-account limit slows down waits its turn here, before the exchange runs;
- `begin(account)`: the mechanism looks the account up; a throttled login is refused
  with <temporary-auth-failure/> before anything is read, otherwise the attempt counts
  as a failure from now on;
- `outcome(...)` after each event the core received: success refunds the attempt and
  remembers the source, failure shares it cluster-wide;
- `close()`: an exchange left unfinished (a SCRAM client-first, then silence or a
  closed socket) is a failed guess.

It must never tell an existing account from a missing one: every path here is taken
the same way for both, before any account is looked up.
"""

from __future__ import annotations

import trio

from raftxmpp import metrics
from raftxmpp.c2s.limits import AuthThrottle, LoginAttempt, Throttled
from raftxmpp.c2s.sasl import SaslFailure


class LoginGuard:
    def __init__(self, throttle: AuthThrottle | None, ip: str) -> None:
        self._throttle = throttle
        self.ip = ip
        self._attempt: LoginAttempt | None = None
        self._waited_for: str | None = None
        self._not_a_guess = False  # this exchange was refused by us, not failed by the client
        self._counted_success = False

    async def before(self, account: str | None) -> None:
        if self._throttle is None or account is None:
            return
        wait = self._throttle.delay(self.ip, account)
        if wait > 0:
            self._waited_for = account
            await trio.sleep(wait)

    def begin(self, account: str) -> None:
        """Raises SaslFailure('temporary-auth-failure') for a throttled login."""
        if self._throttle is None:
            return
        waited, self._waited_for = account == self._waited_for, None
        try:
            self._attempt = self._throttle.begin(self.ip, account, waited)
        except Throttled:
            self._not_a_guess = True
            raise SaslFailure("temporary-auth-failure", "too many failed logins") from None

    def withdraw(self) -> None:
        """The node could not check the login (no quorum): not the client's guess."""
        self._not_a_guess = True
        if self._attempt is not None:
            self._attempt.withdrawn()
            self._attempt = None

    def outcome(self, failed: bool, succeeded: bool) -> None:
        """After the core received an event: did an exchange just fail or succeed?"""
        self._count(failed, succeeded)
        if self._throttle is None:
            self._not_a_guess = self._not_a_guess and not failed  # counted: the next is new
            return
        if not (failed or succeeded):
            return
        attempt, self._attempt, self._waited_for = self._attempt, None, None
        if succeeded and attempt is not None:
            attempt.succeeded()
        elif failed and attempt is not None:
            attempt.failed()
        elif failed and not self._not_a_guess:
            self._throttle.record_failure(self.ip)  # it never named an account
        self._not_a_guess = False

    def _count(self, failed: bool, succeeded: bool) -> None:
        """raftxmpp_c2s_logins_total, throttle or not; `succeeded` stays true after the
        exchange (the core reports it for every later event), so it counts once."""
        if failed:
            (metrics.LOGIN_REFUSED if self._not_a_guess else metrics.LOGIN_FAILED).inc()
        elif succeeded and not self._counted_success:
            self._counted_success = True
            metrics.LOGIN_SUCCEEDED.inc()

    def close(self) -> None:
        if self._attempt is not None:
            self._attempt.abandoned()
            self._attempt = None
