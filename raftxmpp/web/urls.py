"""Where clients reach this node over HTTP: [http] public_url, or one derived from the
listeners. Used by host-meta, upload slots and see-other-uri; no I/O."""

from __future__ import annotations

from raftxmpp.config import Address, HTTPSection


def public_url(config: HTTPSection) -> str:
    """[http] public_url, else the TLS listener's, else the plain listener's; "" if none."""
    if config.public_url:
        return config.public_url.rstrip("/")
    if config.tls_listen is not None:
        return f"https://{_host_port(config.tls_listen)}"
    if config.listen is not None:
        return f"http://{_host_port(config.listen)}"
    return ""


def _host_port(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"
