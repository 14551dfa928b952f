"""Builds one node's federation edge from its config (called by the composition root)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from raftxmpp.config import Address, Config, ConfigError, S2SSection
from raftxmpp.routing.s2s import S2SManager
from raftxmpp.s2s.certs import build_contexts
from raftxmpp.s2s.connection import S2SEdge
from raftxmpp.s2s.dialback import dialback_secret

Listen = Callable[[Address, str], Awaitable[trio.SocketListener]]


async def open_listeners(config: S2SSection, listen: Listen) -> list[tuple[trio.SocketListener, bool]]:
    """The s2s ports, bound before Raft starts so a busy port is a clear start-up error."""
    if not config.enabled:
        return []
    wanted = [(config.listen, False), (config.tls_listen, True)]
    return [(await listen(address, "s2s"), direct_tls) for address, direct_tls in wanted
            if address is not None]


def build(manager: S2SManager, config: Config, cluster_secret: str,
          certificate: tuple[Path, Path] | None) -> S2SEdge:
    if certificate is None:
        raise ConfigError("[s2s] needs the node's TLS certificate ([tls])")
    try:
        contexts = build_contexts(certificate[0], certificate[1], config.s2s.ca_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[s2s] cannot set up TLS: {exc}") from None
    return S2SEdge(manager, config.s2s, contexts, dialback_secret(cluster_secret))
