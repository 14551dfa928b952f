"""The fuzz target shared by the normal run (test_fuzz.py, hypothesis) and the long run
(fuzz_long.py, atheris): client bytes through StreamFramer and ClientStream, the way
raftxmpp.c2s.connection drives them, with nothing but defined outcomes allowed.

`drive(chunks)` raises AssertionError on a broken property and lets any unexpected
exception escape; a StreamError from the framer is a defined outcome (the stream ends).
Properties:
- the negotiation core never raises; it returns only the actions it defines;
- after Close nothing more happens; a dead framer stays dead;
- everything the server sends frames cleanly through our own framer (the server
  never emits malformed XML, whatever it echoes back: no stanza smuggling).
"""

from __future__ import annotations

import base64
import functools

from raftxmpp import credentials
from raftxmpp.c2s.stream import (
    BindRequest,
    ClientStream,
    Close,
    PreAuthIq,
    ResetFramer,
    Send,
    Stanza,
    StartTLS,
    State,
    StreamSettings,
)
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StreamFramer

ACTIONS = (Send, StartTLS, ResetFramer, BindRequest, PreAuthIq, Stanza, Close)
PASSWORD = "fuzz-password"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
DECLARATION = b"<?xml version='1.0'?>"


@functools.lru_cache(maxsize=1)
def _alice() -> credentials.Credentials:
    return credentials.derive(PASSWORD, 4096)


def _settings(tls_available: bool) -> StreamSettings:
    return StreamSettings(
        hosts=lambda: {"localhost"},
        lookup_credentials=lambda user, domain: _alice() if user == "alice" else None,
        tls_available=tls_available,
        require_tls=tls_available,
        plaintext_auth=not tls_available,
        registration=True,
        channel_binding=None,
    )


def drive(chunks: list[bytes], tls_available: bool = False) -> list[bytes]:
    """Feeds `chunks` as a client would; returns what the server sent."""
    framer = StreamFramer(max_stanza_size=2048, max_depth=16, max_idle_whitespace=4096)
    core = ClientStream(_settings(tls_available))
    sent: list[bytes] = []
    closed = False
    for chunk in chunks:
        try:
            events = framer.feed(chunk)
        except StreamError as exc:
            _check(core.fail(exc), sent)
            closed = True
        else:
            for event in events:
                actions = core.receive(event)
                closed = _perform(actions, framer, core, sent)
                if closed:
                    break
        if closed:
            break
    if closed:
        assert core.state is State.CLOSED
    _check_output_frames(sent)
    return sent


def _perform(actions: list, framer: StreamFramer, core: ClientStream, sent: list[bytes]) -> bool:
    _check(actions, sent)
    for action in actions:
        if isinstance(action, ResetFramer):
            framer.reset()
        elif isinstance(action, StartTLS):
            framer.reset()
            core.settings.tls_active = True
        elif isinstance(action, BindRequest):
            resource = action.resource or "fuzz"
            _check(core.bound(action.iq, f"{core.username}@{core.domain}/{resource}"), sent)
        elif isinstance(action, Close):
            return True
    return False


def _check(actions: list, sent: list[bytes]) -> None:
    assert isinstance(actions, list)
    for index, action in enumerate(actions):
        assert isinstance(action, ACTIONS), action
        if isinstance(action, Send):
            assert isinstance(action.data, bytes) and action.data
            sent.append(action.data)
        if isinstance(action, Close):
            assert index == len(actions) - 1, "an action after Close"


def _check_output_frames(sent: list[bytes]) -> None:
    """The server's bytes, cut at each stream header it sent, frame without error."""
    output = b"".join(sent)
    for stream in output.split(DECLARATION)[1:]:
        framer = StreamFramer(max_stanza_size=1 << 20, max_depth=64)
        try:
            framer.feed(DECLARATION + stream)
        except StreamError as exc:
            raise AssertionError(f"the server sent XML its own framer refuses: {exc}: "
                                 f"{stream[:300]!r}") from None


# Building blocks that reach deep into negotiation; the fuzzers mutate and splice them.
def plain(user: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>".encode()


def scram_first(user: str) -> bytes:
    token = base64.b64encode(f"n,,n={user},r=fuzznonce".encode()).decode()
    return f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{token}</auth>".encode()


BIND = (b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>r</resource></bind></iq>")
FRAGMENTS = [
    HEADER, HEADER.replace(b"to='localhost'", b"to='other'"),
    plain("alice", PASSWORD), plain("alice", "bad"), plain("ghost", "x"),
    scram_first("alice"), scram_first("ghost"),
    f"<response xmlns='{SASL}'>Yz1iaXdzLHI9ZnV6em5vbmNlLHA9eHh4</response>".encode(),
    f"<response xmlns='{SASL}'>!!notbase64</response>".encode(),
    f"<abort xmlns='{SASL}'/>".encode(), f"<auth xmlns='{SASL}' mechanism='X'/>".encode(),
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    BIND, b"<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    b"<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>",
    b"<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>a</username></query></iq>",
    b"<message to='bob@localhost' id='m'><body>hi &amp; &#x1F600;</body></message>",
    b"<presence/>", b"<iq type='result' id='x'/>", b"<iq type='error' id='y'/>",
    b"<iq id='z'><a/><b/></iq>", b"<x:foo xmlns:x='urn:x'/>", b"<foo:bar/>",
    b"</stream:stream>", b" ", b"\n", b"<", b">", b"'", b"&", b"&lt;", b"&#0;", b"<!--",
    b"<?pi?>", b"<!DOCTYPE x>", b"<![CDATA[x]]>", b"\xff", b"\xc3", b"\x00",
    b"xmlns='jabber:server'", b"a" * 300, b"<a>" * 20,
]  # fmt: skip
