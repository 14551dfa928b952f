"""The node's HTTP server (raftxmpp.web): bad HTTP gets the right status, headers for
browsers, host-meta (XEP-0156), the TLS listener; and the sans-IO parts, unit-tested."""

from __future__ import annotations

import json

import pytest
import trio

from raftxmpp.web import framing, hostmeta, signing
from raftxmpp.web.bosh import render_body
from raftxmpp.web.http import HTTPError
from raftxmpp.web.upload import _byte_range, _slot_and_name
from raftxmpp.web.websocket import accept_token
from tests.harness import free_ports
from tests.web_client import arequest, start_node


@pytest.fixture
async def node(nursery, tmp_path):
    https = free_ports(1)[0]
    from raftxmpp.config import Address

    node = await start_node(nursery, tmp_path, request_timeout=1.0,
                            tls_listen=Address("127.0.0.1", https))
    node.https_port = https
    yield node
    node.request_stop()


async def raw(port: int, data: bytes, wait: float = 5) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


# -- bad HTTP --------------------------------------------------------------------------------------


async def test_an_oversized_request_head_is_431(node):
    """RFC 6585 §5: request header fields too large."""
    reply = await raw(node.http_port, b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000
                      + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_a_slow_request_head_is_408_and_the_connection_ends(node):
    """Slowloris: the head must arrive within [http] request_timeout (1 s here)."""
    stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = trio.current_time()
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
                await stream.send_all(b"X-Drip: 1\r\n")
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert trio.current_time() - started < 3


async def test_malformed_requests_are_400(node):
    assert (await raw(node.http_port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    reply = await raw(node.http_port, b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_wrong_methods_are_405_with_allow(node):
    status, headers, _ = await arequest(node.http_port, "POST", "/health", b"x")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = await arequest(node.http_port, "DELETE",
                                        f"/upload/{'a' * 32}/file.txt")
    assert status == 405 and "PUT" in headers["allow"]
    status, _, _ = await arequest(node.http_port, "PUT", "/.well-known/host-meta", b"x")
    assert status == 405


async def test_unknown_paths_are_404_and_there_is_no_admin(node):
    for path in ("/admin", "/api/users", "/nothing", "/upload", "/upload/"):
        status, _, _ = await arequest(node.http_port, "GET", path)
        assert status == 404, path


async def test_keep_alive_serves_several_requests_on_one_connection(node):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = await raw(node.http_port, request * 3, wait=1.5)
    assert reply.count(b"HTTP/1.1 200 ") == 3


async def test_every_response_has_security_headers_and_cors_for_pages(node):
    status, headers, _ = await arequest(node.http_port, "GET", "/health",
                                        headers={"Origin": "http://page.example"})
    assert status == 200
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["access-control-allow-origin"] == "*"


async def test_cors_preflight_allows_bosh_and_upload(node):
    """Fetch standard: a page's POST text/xml (BOSH) and PUT (upload) are preflighted."""
    status, headers, _ = await arequest(node.http_port, "OPTIONS", "/http-bind", headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204
    assert "PUT" in headers["access-control-allow-methods"]
    assert "POST" in headers["access-control-allow-methods"]
    assert "Content-Type" in headers["access-control-allow-headers"]


async def test_host_meta_lists_both_endpoints(node):
    """XEP-0156 §3: the XRD and JSON forms list the BOSH and WebSocket endpoints."""
    base = f"https://127.0.0.1:{node.https_port}"  # the TLS listener's, without public_url
    websocket = f"wss://127.0.0.1:{node.https_port}/xmpp-websocket"
    status, headers, body = await arequest(node.http_port, "GET", "/.well-known/host-meta")
    assert status == 200 and headers["content-type"] == "application/xrd+xml"
    assert f'href="{base}/http-bind"' in body.decode()
    assert f'href="{websocket}"' in body.decode()
    status, headers, body = await arequest(node.http_port, "GET", "/.well-known/host-meta.json",
                                           headers={"Origin": "http://page.example"})
    assert headers["access-control-allow-origin"] == "*"
    links = {link["rel"]: link["href"] for link in json.loads(body)["links"]}
    assert links == {hostmeta.BOSH_REL: f"{base}/http-bind", hostmeta.WEBSOCKET_REL: websocket}


async def test_the_tls_listener_serves_the_same_routes(node):
    status, _, body = await arequest(node.https_port, "GET", "/health", tls=True)
    assert (status, body) == (200, b"ok\n")
    reply = await raw(node.https_port, b"GET /health HTTP/1.1\r\n\r\n", wait=2)
    assert b"200" not in reply  # plain HTTP on the TLS port gets no answer


async def test_metrics_are_served(node):
    status, headers, body = await arequest(node.http_port, "GET", "/metrics")
    assert status == 200 and b"raftxmpp_connections" in body


# -- sans-IO pieces ---------------------------------------------------------------------------------


def test_accept_token_matches_rfc_6455_example():
    """RFC 6455 §1.3: key 'dGhlIHNhbXBsZSBub25jZQ==' → 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='."""
    assert accept_token("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_stream_bytes_become_standalone_documents():
    """RFC 7395 §3.3.3: every message declares its namespaces."""
    data = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://"
            b"etherx.jabber.org/streams' from='localhost' id='abc' version='1.0' xml:lang='en'>"
            b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
            b"<message to='a@b'><body>x</body></message></stream:stream>")
    docs = framing.documents(data)
    assert docs[0] == framing.Open({"from": "localhost", "id": "abc", "version": "1.0",
                                    "xml:lang": "en"})
    assert docs[1].data.startswith(b"<stream:features xmlns:stream=")
    assert docs[2].data == b'<message xmlns="jabber:client" to="a@b"><body>x</body></message>'
    assert docs[3] == framing.Close()


def test_the_stanza_fast_path_inserts_the_namespace_only_where_missing():
    assert framing.standalone_stanza(b"<presence/>") == b'<presence xmlns="jabber:client"/>'
    declared = b'<iq xmlns="jabber:client" type="get"/>'
    assert framing.standalone_stanza(declared) == declared
    assert framing.standalone_stanza(b"<a xmlns='urn:xmpp:sm:3'/>") is None
    assert framing.standalone_stanza(b"<messages/>") is None


def test_bosh_bodies_render_with_their_namespaces():
    assert render_body({"sid": "1"}) == (
        b"<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' "
        b"xmlns:stream='http://etherx.jabber.org/streams' sid='1'/>")


def test_signed_urls_check_method_fields_and_expiry():
    urls = signing.UploadURLs(signing.upload_key("a" * 32), "https://h")
    put = urls.put_url("f" * 32, "a b.png", 10, "image/png", 2000)
    assert put.startswith(f"https://h/upload/{'f' * 32}/a%20b.png?e=2000&s=")
    query = dict(p.split("=", 1) for p in put.split("?")[1].split("&"))
    assert urls.check_put("f" * 32, "a b.png", 10, "image/png", query, 1000) is None
    assert "expired" in urls.check_put("f" * 32, "a b.png", 10, "image/png", query, 3000)
    assert "signature" in urls.check_put("f" * 32, "a b.png", 11, "image/png", query, 1000)
    assert "signature" in urls.check_get("f" * 32, "a b.png", query, 1000)  # PUT ≠ GET
    other = signing.UploadURLs(signing.upload_key("b" * 32), "https://h")
    assert "signature" in other.check_put("f" * 32, "a b.png", 10, "image/png", query, 1000)


@pytest.mark.parametrize("path", ["/upload/../etc/passwd", f"/upload/{'a' * 32}/../../x",
                                  f"/upload/{'a' * 32}/a/b", "/upload/AAAA/x",
                                  f"/upload/{'a' * 32}/%2e%2e", f"/upload/{'a' * 32}/%2F"])
def test_upload_paths_outside_the_scheme_are_404(path):
    with pytest.raises(HTTPError) as caught:
        _slot_and_name(path)
    assert caught.value.status == 404


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-0", (0, 0)), ("bytes=2-", (2, 9)), ("bytes=-3", (7, 9)), ("bytes=5-100", (5, 9))])
def test_byte_ranges(header, expected):
    """RFC 9110 §14.1.2."""
    assert _byte_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-2", "items=0-1", "bytes=0-1,3-4"])
def test_unsatisfiable_ranges_are_416(header):
    with pytest.raises(HTTPError) as caught:
        _byte_range(header, 10)
    assert caught.value.status == 416


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_our_text_frames_parse_as_wsproto_reads_them(size):
    """RFC 6455 §5.2: FIN + text opcode, unmasked, 7/16/64-bit lengths."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    from raftxmpp.web.websocket import text_frame

    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(b"x" * size))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == "x" * size and events[0].message_finished


async def test_the_per_address_connection_limit_of_c2s_applies_to_http(nursery, tmp_path):
    """[limits] connections_per_ip counts HTTP connections like c2s ones: past it a
    plain-HTTP client gets 429 and its connection is closed."""
    node = await start_node(nursery, tmp_path, limits={"exempt_ips": (),
                                                       "connections_per_ip": 2})
    try:
        held = [await trio.open_tcp_stream("127.0.0.1", node.http_port) for _ in range(2)]
        # The node counts a connection once it accepted it: ask until it has (bounded).
        with trio.move_on_after(15):
            while not (reply := await raw(node.http_port, b"GET /health HTTP/1.1\r\n"
                                          b"Host: x\r\n\r\n", wait=2)).startswith(b"HTTP/1.1 429 "):
                await trio.sleep(0.05)
        assert reply.startswith(b"HTTP/1.1 429 ")
        for stream in held:
            await stream.aclose()
        with trio.move_on_after(15):  # ... and forgets it once it saw the close
            while (await arequest(node.http_port, "GET", "/health"))[0] != 200:
                await trio.sleep(0.05)
        status, _, _ = await arequest(node.http_port, "GET", "/health")
        assert status == 200
    finally:
        node.request_stop()


async def test_orphan_upload_files_are_swept_only_when_old(tmp_path):
    """A file no slot refers to (a deletion missed while restored from a snapshot, a
    lost discard) goes once it is older than an hour; a PUT in progress never does."""
    import os
    import time

    from raftxmpp.web.files import ORPHAN_AGE, FileStore

    store = FileStore(tmp_path, call=None, max_size=100)
    old, young, known = "a" * 32, "b" * 32, "c" * 32
    for slot in (old, young, known):
        store.path(slot).parent.mkdir(exist_ok=True)
        store.path(slot).write_bytes(b"x")
    past = time.time() - ORPHAN_AGE - 10
    os.utime(store.path(old), (past, past))
    os.utime(store.path(known), (past, past))
    removed = await store.sweep_orphans(lambda slot: {} if slot == known else None, time.time())
    assert removed == 1
    assert not store.has(old) and store.has(young) and store.has(known)
