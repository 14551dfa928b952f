"""Connection discovery (XEP-0156 §3): /.well-known/host-meta (XRD) and host-meta.json,
listing the BOSH and WebSocket endpoints under this node's public URL."""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

from raftxmpp.web.http import HTTPError, Request, Response

PATHS = ("/.well-known/host-meta", "/.well-known/host-meta.json")
BOSH_REL = "urn:xmpp:alt-connections:xbosh"
WEBSOCKET_REL = "urn:xmpp:alt-connections:websocket"


def endpoints(public_url: str) -> dict[str, str]:
    base = public_url.rstrip("/")
    websocket = "wss" + base[len("https"):] if base.startswith("https") else "ws" + base[len("http"):]
    return {BOSH_REL: f"{base}/http-bind", WEBSOCKET_REL: f"{websocket}/xmpp-websocket"}


def handle(request: Request, public_url: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise HTTPError(405, "GET only", [("Allow", "GET, HEAD, OPTIONS")])
    links = endpoints(public_url)
    if request.path.endswith(".json"):
        body = json.dumps({"links": [{"rel": rel, "href": href} for rel, href in links.items()]})
        return Response(200, body.encode(), "application/json")
    rendered = "".join(f"  <Link rel={quoteattr(rel)} href={quoteattr(href)}/>\n"
                       for rel, href in links.items())
    body = ("<?xml version='1.0' encoding='utf-8'?>\n"
            "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
            f"{rendered}</XRD>\n")
    return Response(200, body.encode(), "application/xrd+xml")
