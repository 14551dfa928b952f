"""A small raw XMPP client over direct TLS (XEP-0368) for the chaos workload.

Why not slixmpp here: the checker needs to know exactly which request got which
answer and when, and to treat every broken connection as an "unknown" outcome;
a library that reconnects, retries or answers IQs on its own hides that. This
client does one thing at a time on asyncio streams and raises `Unknown` whenever
the outcome cannot be known (timeout, connection lost, a `wait` error from a node
that could not commit), `Refused` when the server gave a definite answer.

Must never do: retry on its own, or swallow an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import ssl
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

STREAM_NS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
REGISTER = "jabber:iq:register"
ROSTER = "jabber:iq:roster"
PING = "urn:xmpp:ping"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

_ids = itertools.count(1)


class Unknown(Exception):
    """The outcome of the request cannot be known (it may or may not have happened)."""


class Refused(Exception):
    """The server gave a definite negative answer; `condition` is its error condition."""

    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


class AuthFailed(Refused):
    pass


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    return context


class Connection:
    """One client stream: connect → (register | authenticate → bind) → stanzas."""

    def __init__(self, host: str, port: int, domain: str, tls: ssl.SSLContext,
                 timeout: float = 8.0) -> None:
        self.host, self.port, self.domain, self.tls = host, port, domain, tls
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.jid: str | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()  # stanzas nobody waits for
        self._pending: dict[str, asyncio.Future] = {}
        self._features: asyncio.Future | None = None
        self._nonza: asyncio.Future | None = None
        self._reader_task: asyncio.Task | None = None
        self._parser = None
        self.closed = asyncio.Event()
        self.on_stanza = None  # called with each stanza nobody waits for, as it arrives

    # -- stream plumbing ----------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.tls,
                                        server_hostname=self.domain), self.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise Unknown(f"connect {self.host}: {exc!r}") from None
        self._reader_task = asyncio.create_task(self._read_loop())
        await self._restart_stream()

    async def _restart_stream(self) -> etree._Element:
        loop = asyncio.get_running_loop()
        self._features = loop.create_future()
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False,
                                           no_network=True, load_dtd=False)
        self._depth = 0
        self._send(f"<?xml version='1.0'?><stream:stream to={quoteattr(self.domain)} "
                   f"xmlns='{CLIENT}' xmlns:stream='{STREAM_NS}' version='1.0'>")
        return await self._wait(self._features)

    def _send(self, data: str) -> None:
        if self.writer is None or self.closed.is_set():
            raise Unknown("connection closed")
        self.writer.write(data.encode())

    async def _wait(self, future: asyncio.Future):
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise Unknown("timeout") from None

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self._parser.feed(data)
                for event, element in self._parser.read_events():
                    if event == "start":
                        self._depth += 1
                    else:
                        self._depth -= 1
                        if self._depth == 1:
                            self._dispatch(element)
                            parent = element.getparent()
                            if parent is not None:
                                parent.remove(element)
                        elif self._depth == 0:
                            return  # </stream:stream>
        except (OSError, ssl.SSLError, etree.XMLSyntaxError, asyncio.CancelledError):
            pass
        finally:
            self.closed.set()
            error = Unknown("connection lost")
            for future in [*self._pending.values(), self._features, self._nonza]:
                if future is not None and not future.done():
                    future.set_exception(error)
                    future.exception()  # mark retrieved

    def _dispatch(self, element: etree._Element) -> None:
        tag = element.tag
        if tag == f"{{{STREAM_NS}}}features":
            if self._features and not self._features.done():
                self._features.set_result(element)
        elif tag.startswith(f"{{{SASL}}}"):
            if self._nonza and not self._nonza.done():
                self._nonza.set_result(element)
        elif tag == f"{{{STREAM_NS}}}error":
            self.closed.set()
        elif tag == f"{{{CLIENT}}}iq" and element.get("type") in ("result", "error") \
                and element.get("id") in self._pending:
            future = self._pending.pop(element.get("id"))
            if not future.done():
                future.set_result(element)
        else:
            if self.on_stanza is not None:
                self.on_stanza(element)
            self.inbox.put_nowait(element)

    async def iq(self, iq_type: str, payload: str, to: str | None = None) -> etree._Element:
        """Sends an IQ; returns the result; raises Refused / Unknown on an error reply."""
        iq_id = f"c{next(_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[iq_id] = future
        to_attr = f" to={quoteattr(to)}" if to else ""
        self._send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{payload}</iq>")
        reply = await self._wait(future)
        if reply.get("type") == "error":
            raise_stanza_error(reply)
        return reply

    async def close(self) -> None:
        """Ends the stream and reads until the server ends its own (nothing in flight is lost)."""
        if self.writer is None:
            return
        try:
            if not self.closed.is_set():
                self._send("</stream:stream>")
                await asyncio.wait_for(self.closed.wait(), 3)
        except (Unknown, TimeoutError, OSError):
            pass
        self.abort()

    def abort(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self.writer is not None:
            with contextlib.suppress(OSError, RuntimeError):  # the transport may be gone
                self.writer.transport.abort()
        self.closed.set()

    # -- XMPP operations ----------------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        """XEP-0077 in-band registration on an unauthenticated stream."""
        await self.iq("set", f"<query xmlns='{REGISTER}'><username>{escape(username)}</username>"
                             f"<password>{escape(password)}</password></query>")

    async def login(self, username: str, password: str, resource: str = "chaos") -> str:
        """SASL PLAIN (over TLS) then resource binding; AuthFailed on a wrong password."""
        loop = asyncio.get_running_loop()
        self._nonza = loop.create_future()
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self._send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        answer = await self._wait(self._nonza)
        if answer.tag == f"{{{SASL}}}failure":
            condition = etree.QName(answer[0]).localname if len(answer) else "failure"
            if condition == "not-authorized":
                raise AuthFailed(condition)
            raise Unknown(f"sasl failure {condition}")
        await self._restart_stream()
        reply = await self.iq("set", f"<bind xmlns='{BIND}'><resource>{escape(resource)}"
                                     "</resource></bind>")
        self.jid = reply.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid")
        return self.jid

    async def change_password(self, username: str, password: str) -> None:
        await self.iq("set", f"<query xmlns='{REGISTER}'><username>{escape(username)}</username>"
                             f"<password>{escape(password)}</password></query>")

    async def roster(self) -> dict[str, str | None]:
        """The roster as {contact: name}."""
        reply = await self.iq("get", f"<query xmlns='{ROSTER}'/>")
        items = {}
        for item in reply.iter(f"{{{ROSTER}}}item"):
            items[item.get("jid")] = item.get("name")
        return items

    async def roster_set(self, contact: str, name: str) -> None:
        await self.iq("set", f"<query xmlns='{ROSTER}'><item jid={quoteattr(contact)} "
                             f"name={quoteattr(name)}/></query>")

    async def roster_remove(self, contact: str) -> None:
        await self.iq("set", f"<query xmlns='{ROSTER}'><item jid={quoteattr(contact)} "
                             "subscription='remove'/></query>")

    def presence(self, priority: int = 0) -> None:
        self._send(f"<presence><priority>{priority}</priority></presence>")

    def message(self, to: str, body: str, msg_id: str) -> None:
        self._send(f"<message to={quoteattr(to)} type='chat' id={quoteattr(msg_id)}>"
                   f"<body>{escape(body)}</body></message>")

    async def ping(self) -> None:
        await self.iq("get", f"<ping xmlns='{PING}'/>", to=self.domain)

    def drain_inbox(self) -> list[etree._Element]:
        items = []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items


def raise_stanza_error(reply: etree._Element) -> None:
    error = reply.find(f"{{{CLIENT}}}error")
    condition, kind = "undefined-condition", None
    if error is not None:
        kind = error.get("type")
        for child in error:
            if etree.QName(child).namespace == STANZAS and etree.QName(child).localname != "text":
                condition = etree.QName(child).localname
                break
    # `wait` (the cluster could not commit in time) and internal errors are ambiguous:
    # the command may still commit later.
    if kind == "wait" or condition in ("resource-constraint", "internal-server-error",
                                       "remote-server-timeout", "service-unavailable",
                                       "undefined-condition"):
        raise Unknown(f"error {condition} ({kind})")
    raise Refused(condition)


def body_of(stanza: etree._Element) -> str | None:
    return stanza.findtext(f"{{{CLIENT}}}body")


def is_error_message(stanza: etree._Element) -> bool:
    return stanza.tag == f"{{{CLIENT}}}message" and stanza.get("type") == "error"
