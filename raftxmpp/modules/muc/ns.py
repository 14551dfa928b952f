"""XEP-0045 namespaces, spelled once (and those it travels with)."""

from raftxmpp.xml.ns import CLIENT, DATA_FORMS, DELAY, DISCO_INFO, DISCO_ITEMS, PING  # noqa: F401

MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
REQUEST = "http://jabber.org/protocol/muc#request"
CONFERENCE = "jabber:x:conference"  # XEP-0249 direct invitations
STANZA_ID = "urn:xmpp:sid:0"  # XEP-0359
SELF_PING = "http://jabber.org/protocol/muc#self-ping-optimization"  # XEP-0410
