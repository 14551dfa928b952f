"""The XEP-0114 component stream core (raftxmpp.component.stream), without sockets.

Bytes go through the real framer, as on a connection; the core's actions are checked
against XEP-0114 §3 and RFC 6120 §4.9.
"""

from __future__ import annotations

import pytest
from lxml import etree

from raftxmpp.component.stream import (
    Accepted,
    Close,
    ComponentStream,
    Send,
    Stanza,
    State,
    handshake_digest,
)
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.framer import StanzaReceived, StreamFramer
from raftxmpp.xml.ns import CLIENT, COMPONENT
from raftxmpp.xml.stanza import serialize

SECRET = "s3cret-of-the-muc"
STREAM_ID = "0123abcd"
HEADER = (b"<stream:stream xmlns='jabber:component:accept' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='muc.localhost'>")
GOOD = f"<handshake>{handshake_digest(STREAM_ID, SECRET)}</handshake>".encode()


class Wire:
    """A framer and a core fed like a connection feeds them."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        registered = {"muc.localhost": SECRET} if secrets is None else secrets
        self.looked_up: list[str] = []
        self.framer = StreamFramer(stream_ns=COMPONENT)
        self.core = ComponentStream(self._lookup, stream_id=STREAM_ID)
        self._registered = registered

    def _lookup(self, domain: str) -> str | None:
        self.looked_up.append(domain)
        return self._registered.get(domain)

    def feed(self, data: bytes) -> list:
        actions = []
        try:
            events = self.framer.feed(data)
        except StreamError as exc:
            return self.core.fail(exc)
        for event in events:
            actions += self.core.receive(event)
        return actions

    def accepted(self) -> Wire:
        assert isinstance(self.feed(HEADER)[0], Send)
        assert Accepted("muc.localhost") in self.feed(GOOD)
        return self


def closed_with(actions) -> str | None:
    close = actions[-1]
    assert isinstance(close, Close)
    return close.error.condition if close.error else None


def test_handshake_digest_is_lowercase_hex_sha1_of_stream_id_then_secret():
    assert handshake_digest("3BF96D32", "secret") == "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"


def test_header_is_answered_with_a_stream_id_and_no_version():
    actions = Wire().feed(HEADER)
    assert len(actions) == 1 and isinstance(actions[0], Send)
    header = actions[0].data.decode()
    assert f"id='{STREAM_ID}'" in header and "from='muc.localhost'" in header
    stream = header[header.index("<stream:stream"):]
    assert f"xmlns='{COMPONENT}'" in stream and "version" not in stream


def test_right_handshake_is_answered_with_an_empty_handshake_and_accepts():
    wire = Wire()
    wire.feed(HEADER)
    actions = wire.feed(GOOD)
    assert actions[0] == Send(f"<handshake xmlns='{COMPONENT}'/>".encode())
    assert actions[1] == Accepted("muc.localhost")
    assert wire.core.state is State.ACCEPTED


def test_uppercase_hex_handshake_is_accepted_too():
    wire = Wire()
    wire.feed(HEADER)
    upper = f"<handshake>{handshake_digest(STREAM_ID, SECRET).upper()}</handshake>".encode()
    assert Accepted("muc.localhost") in wire.feed(upper)


def test_wrong_handshake_is_not_authorized():
    wire = Wire()
    wire.feed(HEADER)
    bad = f"<handshake>{handshake_digest(STREAM_ID, 'guess')}</handshake>".encode()
    assert closed_with(wire.feed(bad)) == "not-authorized"
    assert wire.core.state is State.CLOSED


def test_handshake_for_another_stream_id_is_not_authorized():
    wire = Wire()
    wire.feed(HEADER)
    replayed = f"<handshake>{handshake_digest('other-id', SECRET)}</handshake>".encode()
    assert closed_with(wire.feed(replayed)) == "not-authorized"


def test_stanza_before_the_handshake_is_not_authorized():
    wire = Wire()
    wire.feed(HEADER)
    actions = wire.feed(b"<message from='muc.localhost' to='a@localhost'/>")
    assert closed_with(actions) == "not-authorized"


def test_unregistered_domain_is_host_unknown_after_our_header():
    wire = Wire(secrets={})
    actions = wire.feed(HEADER)
    assert isinstance(actions[0], Send) and actions[0].data.startswith(b"<?xml")
    assert closed_with(actions) == "host-unknown"
    assert wire.looked_up == ["muc.localhost"]


@pytest.mark.parametrize("to", ["", " to='user@muc.localhost'", " to='muc.localhost/res'",
                                " to='bad domain'"])
def test_header_without_a_bare_domain_is_host_unknown(to):
    header = (f"<stream:stream xmlns='jabber:component:accept' "
              f"xmlns:stream='http://etherx.jabber.org/streams'{to}>").encode()
    assert closed_with(Wire().feed(header)) == "host-unknown"


def test_client_namespace_stream_is_refused():
    header = HEADER.replace(b"jabber:component:accept", b"jabber:client")
    assert closed_with(Wire().feed(header)) == "invalid-namespace"


def test_lookup_error_ends_the_stream_with_its_condition():
    def unreadable(domain):
        raise StreamError("internal-server-error", "sealed with another cluster secret")

    core = ComponentStream(unreadable, stream_id=STREAM_ID)
    framer = StreamFramer(stream_ns=COMPONENT)
    actions = core.receive(framer.feed(HEADER)[0])
    assert isinstance(actions[0], Send) and closed_with(actions) == "internal-server-error"


def test_stanza_from_the_component_domain_is_routed_in_the_client_namespace():
    wire = Wire().accepted()
    actions = wire.feed(b"<message from='room@muc.localhost/nick' to='alice@localhost' "
                        b"type='groupchat'><body>hi</body><x xmlns='urn:x'><y/></x></message>")
    assert len(actions) == 1 and isinstance(actions[0], Stanza)
    element = actions[0].element
    assert element.tag == f"{{{CLIENT}}}message"
    assert [child.tag for child in element] == [f"{{{CLIENT}}}body", "{urn:x}x"]
    assert element[1][0].tag == "{urn:x}y"
    assert serialize(element) == (b'<message from="room@muc.localhost/nick" to="alice@localhost" '
                                  b'type="groupchat"><body>hi</body><x xmlns="urn:x"><y/></x>'
                                  b'</message>')


def test_stanza_in_the_client_namespace_is_accepted_as_is():
    wire = Wire().accepted()
    actions = wire.feed(b"<iq xmlns='jabber:client' from='muc.localhost' to='localhost' "
                        b"type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert etree.QName(actions[0].element).namespace == CLIENT


def test_payload_children_that_inherited_the_stream_namespace_move_to_the_client_one():
    wire = Wire().accepted()
    actions = wire.feed(b"<message from='muc.localhost' to='a@localhost' xmlns:p='urn:p'>"
                        b"<p:wrap><inner/></p:wrap></message>")
    wrap = actions[0].element[0]
    assert wrap.tag == "{urn:p}wrap" and wrap[0].tag == f"{{{CLIENT}}}inner"


@pytest.mark.parametrize("sender", ["alice@localhost", "muc.localhost.evil", "localhost",
                                    "x@other.muc.localhost"])
def test_stanza_from_outside_the_component_domain_is_invalid_from(sender):
    wire = Wire().accepted()
    data = f"<message from='{sender}' to='bob@localhost'><body>x</body></message>".encode()
    assert closed_with(wire.feed(data)) == "invalid-from"


def test_stanza_with_a_malformed_from_is_invalid_from():
    wire = Wire().accepted()
    assert closed_with(wire.feed(b"<message from='@@' to='bob@localhost'/>")) == "invalid-from"


@pytest.mark.parametrize("attrs", ["to='bob@localhost'", "from='muc.localhost'"])
def test_stanza_without_to_or_from_is_improper_addressing(attrs):
    wire = Wire().accepted()
    assert closed_with(wire.feed(f"<message {attrs}/>".encode())) == "improper-addressing"


def test_a_non_stanza_element_is_unsupported_stanza_type():
    wire = Wire().accepted()
    data = b"<db:result xmlns:db='jabber:server:dialback' from='muc.localhost' to='x'/>"
    assert closed_with(wire.feed(data)) == "unsupported-stanza-type"


def test_stream_close_is_answered_with_a_plain_close():
    wire = Wire().accepted()
    assert closed_with(wire.feed(b"</stream:stream>")) is None


def test_framer_errors_end_the_stream_with_their_condition():
    wire = Wire().accepted()
    assert closed_with(wire.feed(b"<message><!-- no --></message>")) == "restricted-xml"


def test_framer_error_before_the_header_still_opens_a_stream_for_the_error():
    actions = Wire().feed(b"<!DOCTYPE x>")
    assert isinstance(actions[0], Send) and closed_with(actions) == "restricted-xml"


def test_nothing_happens_after_the_stream_is_closed():
    wire = Wire()
    wire.feed(HEADER)
    wire.feed(b"<handshake>00</handshake>")
    assert wire.core.receive(StanzaReceived(etree.Element("message"), 9)) == []
