"""The XEP-0115 verification string and hash (§5.1, §5.4), from the XEP's own examples,
and the cluster-wide caps cache's bookkeeping (without sockets)."""

from __future__ import annotations

from types import SimpleNamespace

from lxml import etree

from raftxmpp.jid import JID
from raftxmpp.modules.pubsub import caps
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import ns

SIMPLE = f"""<query xmlns='{ns.DISCO_INFO}' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

COMPLEX = f"""<query xmlns='{ns.DISCO_INFO}' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>"""


def query(text: str) -> etree._Element:
    return etree.fromstring(text.encode())


def test_simple_generation_example():
    """XEP-0115 §5.2: ver = QgayPKawpkPSDYmwT/WM94uAlu0="""
    assert caps.verification_hash(query(SIMPLE), "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_complex_generation_example_with_an_extended_form():
    """XEP-0115 §5.3: ver = q07IKJEyjvHSyhy//CH0CxmKi8w="""
    assert caps.verification_string(query(COMPLEX)).startswith(
        "client/pc/el/Ψ 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<")
    assert caps.verification_hash(query(COMPLEX), "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_duplicate_features_make_the_answer_ill_formed():
    """§5.4 rule 3.4."""
    bad = SIMPLE.replace("</query>", "<feature var='http://jabber.org/protocol/muc'/></query>")
    assert caps.verification_hash(query(bad), "sha-1") is None


def test_duplicate_identities_make_the_answer_ill_formed():
    """§5.4 rule 3.3."""
    bad = SIMPLE.replace("</query>",
                         "<identity category='client' name='Exodus 0.9.1' type='pc'/></query>")
    assert caps.verification_hash(query(bad), "sha-1") is None


def test_a_form_without_a_hidden_form_type_is_ignored():
    """§5.4 rule 3.6: ignored, and the rest still verifies."""
    extra = SIMPLE.replace("</query>", "<x xmlns='jabber:x:data' type='result'>"
                           "<field var='FORM_TYPE'><value>urn:x</value></field></x></query>")
    assert caps.verification_hash(query(extra), "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_two_forms_of_one_form_type_make_the_answer_ill_formed():
    """§5.4 rule 3.5."""
    form = ("<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
            "<value>urn:x</value></field></x>")
    bad = SIMPLE.replace("</query>", form + form + "</query>")
    assert caps.verification_hash(query(bad), "sha-1") is None


def test_unknown_hash_functions_are_not_verified():
    """§5.4 rule 2: such an answer is never cached globally."""
    assert caps.verification_hash(query(SIMPLE), "md5") is None


def test_notify_namespaces_are_the_plus_notify_features():
    answer = query(SIMPLE.replace("</query>", "<feature var='urn:xmpp:avatar:metadata+notify'/>"
                                  "<feature var='+notify'/></query>"))
    assert caps.notify_namespaces(answer) == {"urn:xmpp:avatar:metadata"}


def test_gossiped_caps_are_kept_after_their_node_dies_and_malformed_ones_ignored():
    cache = caps.Caps(SimpleNamespace(sessions=SimpleNamespace(gossip=None)))
    cache.on_gossip("node2", "e:sha-1:abc=", None, {"n": ["urn:a", "urn:b"]})
    cache.on_gossip("node2", "e:sha-1:abc=", {"n": ["urn:a"]}, None)  # node2 died
    cache.session_keys["bob@x/phone"] = "sha-1:abc="
    assert cache.wants("bob@x/phone", "urn:a") and not cache.wants("bob@x/phone", "urn:c")
    cache.on_gossip("node3", "e:sha-1:bad=", None, {"n": "not a list"})
    assert "sha-1:bad=" not in cache.by_key


def test_a_session_with_unknown_caps_wants_nothing_yet():
    cache = caps.Caps(SimpleNamespace(sessions=SimpleNamespace(gossip=None)))
    cache.session_keys["bob@x/phone"] = "sha-1:unknown="
    assert cache.namespaces("bob@x/phone") is None
    assert not cache.wants("bob@x/phone", "urn:a")


def _presence_with_caps(ver: str) -> etree._Element:
    return etree.fromstring(f"<presence xmlns='jabber:client'><c xmlns='{ns.CAPS}' "
                            f"hash='sha-1' node='http://example.org/client' ver='{ver}'/></presence>")


def _queries(session) -> list[etree._Element]:
    return [etree.fromstring(chunk) for chunk in session.outbox]


def test_a_caps_query_answered_with_an_error_is_asked_again_at_the_next_presence():
    """A client that could not answer (its disco info not set up yet) is asked again when
    it sends the same caps again, instead of being taken to want nothing for good."""
    session = LocalSession(jid=JID.parse("frank@localhost/phone"))
    router = SimpleNamespace(iq_callbacks={}, sessions=SimpleNamespace(
        gossip=None, local_session=lambda jid: session if str(jid) == session.full_jid else None))
    cache = caps.Caps(router)
    cache.local_presence(session, _presence_with_caps("QgayPKawpkPSDYmwT/WM94uAlu0="))
    first = _queries(session)[-1]
    error = etree.fromstring(f"<iq xmlns='jabber:client' type='error' id='{first.get('id')}' "
                             f"from='{session.full_jid}'/>")
    router.iq_callbacks.pop(first.get("id"))(error)
    assert cache.namespaces(session.full_jid) == frozenset()
    cache.local_presence(session, _presence_with_caps("QgayPKawpkPSDYmwT/WM94uAlu0="))
    second = _queries(session)[-1]
    assert second.get("id") != first.get("id") and second.get("id") in router.iq_callbacks
    answer = etree.fromstring(f"<iq xmlns='jabber:client' type='result' id='{second.get('id')}' "
                              f"from='{session.full_jid}'>{SIMPLE}</iq>")
    router.iq_callbacks.pop(second.get("id"))(answer)
    assert cache.namespaces(session.full_jid) == frozenset()  # SIMPLE asks for no +notify
    assert "sha-1:QgayPKawpkPSDYmwT/WM94uAlu0=" in cache.by_key  # verified, remembered
    cache.local_presence(session, _presence_with_caps("QgayPKawpkPSDYmwT/WM94uAlu0="))
    assert len(session.outbox) == 2  # answered: the same caps are not asked for again
