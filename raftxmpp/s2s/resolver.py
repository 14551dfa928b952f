"""Where a remote domain's server listens: SRV records (RFC 6120 §3.2, XEP-0368).

`_xmpps-server._tcp` (direct TLS) and `_xmpp-server._tcp` (STARTTLS) are looked up
together and tried in one order: by priority, then by weight (RFC 2782's weighted
random choice among equal priorities), direct TLS first at equal priority (XEP-0368 §3). No SRV record at all means the domain itself on 5269 with STARTTLS (RFC 6120
§3.2.2); a lone "." target means the service is decidedly not offered there (RFC 2782).

DNS goes through dnspython's async resolver on trio, which reads /etc/resolv.conf; the
addresses of each target are left to the connection (getaddrinfo), so /etc/hosts works.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

DEFAULT_PORT = 5269


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    direct_tls: bool


class ResolutionFailed(Exception):
    """No target for the domain: its stanzas bounce with `condition`."""

    def __init__(self, condition: str, reason: str) -> None:
        super().__init__(reason)
        self.condition = condition


# RFC 6761 §6.4: names under .invalid never resolve; "localhost" is this machine, never
# a federated server. Refusing them early spares a DNS round trip per stanza.
_NEVER_REMOTE = (".invalid", ".localhost")


async def resolve(domain: str, timeout: float, rng: random.Random | None = None) -> list[Target]:
    """The targets to try for `domain`, in order."""
    lowered = domain.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith(_NEVER_REMOTE) or lowered == "invalid":
        raise ResolutionFailed("remote-server-not-found", f"{domain} is not a public name")
    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    rng = rng or random.Random()
    records: list[tuple[int, int, str, int, bool]] = []
    answered = False
    for service, direct_tls in (("_xmpps-server", True), ("_xmpp-server", False)):
        try:
            answer = await resolver.resolve(f"{service}._tcp.{lowered}.", "SRV",
                                            raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            continue
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise ResolutionFailed("remote-server-timeout", f"DNS did not answer for {domain}") from None
        except dns.exception.DNSException as exc:
            raise ResolutionFailed("remote-server-not-found", f"DNS lookup for {domain} "
                                   f"failed: {exc}") from None
        if answer.rrset is None:
            continue
        answered = True
        for record in answer.rrset:
            target = record.target.to_text(omit_final_dot=True)
            if target in ("", "."):
                continue
            records.append((record.priority, record.weight, target, record.port, direct_tls))
    if not records:
        if answered:
            raise ResolutionFailed("remote-server-not-found",
                                   f"{domain} says it offers no XMPP server service")
        return [Target(lowered, DEFAULT_PORT, False)]
    return order(records, rng)


def order(records: list[tuple[int, int, str, int, bool]], rng: random.Random) -> list[Target]:
    """RFC 2782: ascending priority, and within one priority a weighted random order;
    at equal priority direct TLS comes before STARTTLS (XEP-0368 §3)."""
    result: list[Target] = []
    for priority in sorted({r[0] for r in records}):
        for direct_tls in (True, False):
            group = [r for r in records if r[0] == priority and r[4] is direct_tls]
            result += [Target(r[2], r[3], r[4]) for r in _weighted(group, rng)]
    return result


def _weighted(group: list[tuple[int, int, str, int, bool]], rng: random.Random) -> list:
    group, ordered = list(group), []
    while group:
        total = sum(r[1] for r in group)
        chosen = group[0]
        if total > 0:
            point, running = rng.uniform(0, total), 0
            for record in group:
                running += record[1]
                if running >= point:
                    chosen = record
                    break
        group.remove(chosen)
        ordered.append(chosen)
    return ordered
