"""Raw web clients for the tests: a WebSocket client on wsproto, BOSH and plain HTTP on
http.client (in a thread), and an in-process node with its HTTP ports."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import re
import ssl

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from raftxmpp import config as config_mod
from raftxmpp.node import Node
from tests.harness import free_ports, listener_sections

PASSWORD = "web-password"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
HTTPBIND = "http://jabber.org/protocol/httpbind"


async def start_node(nursery, tmp_path, limits: dict | None = None, **http) -> Node:
    """A single node in this trio run, HTTP on an ephemeral port, alice and bob registered."""
    raft, link, c2s, tls, web = free_ports(5)
    base = config_mod.embedded_default(tmp_path / "data")
    cfg = dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, raft=config_mod.Address("127.0.0.1", raft),
                                    link=config_mod.Address("127.0.0.1", link)),
        **{name: dataclasses.replace(getattr(base, name), listen=config_mod.Address("127.0.0.1", 0))
           for name in listener_sections()},
        c2s=dataclasses.replace(base.c2s, listen=config_mod.Address("127.0.0.1", c2s),
                                tls_listen=config_mod.Address("127.0.0.1", tls)),
    )
    cfg = dataclasses.replace(cfg, http=dataclasses.replace(
        cfg.http, listen=config_mod.Address("127.0.0.1", web), **http),
        limits=dataclasses.replace(cfg.limits, **(limits or {})))
    node = await nursery.start(Node(cfg).run)
    with trio.fail_after(10):
        while not node.raft.status().get("leader"):
            await trio.sleep(0.02)
    await node.store.register("alice@localhost", PASSWORD)
    await node.store.register("bob@localhost", PASSWORD)
    node.http_port = web
    return node


class WSClient:
    """One WebSocket connection, as a browser would open it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str] = []
        self.closed: CloseConnection | None = None
        self.subprotocol: str | None = None
        self._text: list[str] = []

    @classmethod
    async def connect(cls, port: int, subprotocols=("xmpp",), path="/xmpp-websocket",
                      extra_headers=()) -> WSClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client._send(client.ws.send(Request(
            host="localhost", target=path, subprotocols=list(subprotocols),
            extra_headers=list(extra_headers))))
        while True:
            for event in client.ws.events():
                if isinstance(event, AcceptConnection):
                    client.subprotocol = event.subprotocol
                    return client
                if isinstance(event, RejectConnection | RejectData):
                    raise ConnectionRefusedError(getattr(event, "status_code", "rejected"))
            data = await client.stream.receive_some(65536)
            if not data:
                raise ConnectionRefusedError("closed during the handshake")
            client.ws.receive_data(data)

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, text: str) -> None:
        await self._send(self.ws.send(TextMessage(data=text)))

    async def receive(self, timeout: float = 10) -> str:
        """The next text message; raises EOFError once the server closed."""
        with trio.fail_after(timeout):
            while not self.messages:
                if self.closed is not None:
                    raise EOFError(f"closed with code {self.closed.code}")
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        self._text.append(event.data)
                        if event.message_finished:
                            self.messages.append("".join(self._text))
                            self._text = []
                    elif isinstance(event, Ping):
                        await self._send(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closed = event
                if self.messages or self.closed is not None:
                    continue
                data = await self.stream.receive_some(65536)
                if not data:
                    self.closed = CloseConnection(code=1006)
                    continue
                self.ws.receive_data(data)
        return self.messages.pop(0)

    async def receive_until(self, pattern: str, timeout: float = 10) -> str:
        with trio.fail_after(timeout):
            while True:
                message = await self.receive(timeout)
                if re.search(pattern, message):
                    return message

    async def aclose(self) -> None:
        await self.stream.aclose()


def open_frame(to: str = "localhost") -> str:
    return f"<open xmlns='{FRAMING}' to='{to}' version='1.0'/>"


def plain_auth(user: str, password: str = PASSWORD) -> str:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"


BIND = ("<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:"
        "xmpp-bind'><resource>{}</resource></bind></iq>")


async def ws_login(port: int, user: str, resource: str = "web") -> WSClient:
    """Open, PLAIN (the plain listener counts as behind a TLS proxy), restart, bind."""
    client = await WSClient.connect(port)
    await client.send(open_frame())
    await client.receive_until("<open")
    await client.receive_until("mechanisms")
    await client.send(plain_auth(user))
    await client.receive_until("<success")
    await client.send(open_frame())
    await client.receive_until("<open")
    await client.receive_until("bind")
    await client.send(BIND.format(resource))
    await client.receive_until("<jid>")
    return client


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, tls: bool = False,
            timeout: float = 90) -> tuple[int, dict, bytes]:
    """One HTTP request (blocking: run it with trio.to_thread.run_sync)."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def arequest(*args, **kwargs) -> tuple[int, dict, bytes]:
    return await trio.to_thread.run_sync(lambda: request(*args, **kwargs))


async def bosh(port: int, body: str, **kwargs) -> str:
    status, headers, data = await arequest(
        port, "POST", "/http-bind", body.encode(),
        {"Content-Type": "text/xml; charset=utf-8"}, **kwargs)
    assert status == 200, (status, data)
    assert headers["content-type"].startswith("text/xml")
    return data.decode()


def rand_rid() -> int:
    return int.from_bytes(os.urandom(4), "big") + 1000


class BoshClient:
    """A BOSH client speaking raw XEP-0124; `ports` are used in turn, one per request,
    as a load balancer without sticky sessions would."""

    def __init__(self, *ports: int) -> None:
        self.ports = list(ports)
        self.rid = rand_rid()
        self.sid: str | None = None
        self._turn = 0

    def _port(self) -> int:
        port = self.ports[self._turn % len(self.ports)]
        self._turn += 1
        return port

    def body(self, children: str = "", rid: int | None = None, **attrs: str) -> str:
        rendered = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        sid = f" sid='{self.sid}'" if self.sid else ""
        return (f"<body xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh' rid='{rid or self.rid}'"
                f"{sid}{rendered}>{children}</body>")

    async def create(self, to: str = "localhost", **attrs: str) -> str:
        wanted = {"to": to, "wait": "2", "hold": "1", "ver": "1.6", "xmpp__version": "1.0"}
        answer = await bosh(self._port(), self.body(**{**wanted, **attrs}))
        match = re.search(r"sid='([^']+)'", answer)
        self.sid = match.group(1) if match else None
        return answer

    async def send(self, children: str = "", **attrs: str) -> str:
        self.rid += 1
        return await bosh(self._port(), self.body(children, **attrs))

    async def send_until(self, pattern: str, children: str = "", timeout: float = 15) -> str:
        """Sends `children`, then polls with empty requests until an answer matches."""
        with trio.fail_after(timeout):
            answer = await self.send(children)
            while not re.search(pattern, answer):
                assert "type='terminate'" not in answer, answer
                answer = await self.send()
            return answer

    async def login(self, user: str, resource: str = "bosh") -> str:
        await self.create()
        await self.send_until("<success", plain_auth(user))
        self.rid += 1
        answer = await bosh(self._port(), self.body(xmpp__restart="true", to="localhost"))
        assert "bind" in answer, answer
        answer = await self.send_until("<jid>", BIND.format(resource))
        return re.search(r"<jid>([^<]+)</jid>", answer).group(1)
