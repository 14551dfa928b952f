"""XML namespace names used on XMPP streams, spelled once.

Core names come from RFC 6120; the rest from RFC 6121 and the XEPs each line names.
"""

from __future__ import annotations

# RFC 6120: streams, stream and stanza errors, negotiation.
STREAM = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SERVER = "jabber:server"
COMPONENT = "jabber:component:accept"  # XEP-0114
STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"  # RFC 3921, kept for old clients
XML = "http://www.w3.org/XML/1998/namespace"

# RFC 6121: roster and presence stream features.
ROSTER = "jabber:iq:roster"
ROSTERVER = "urn:xmpp:features:rosterver"
PREAPPROVAL = "urn:xmpp:features:pre-approval"

# XEPs.
REGISTER = "jabber:iq:register"  # XEP-0077
REGISTER_FEATURE = "http://jabber.org/features/iq-register"  # XEP-0077
DISCO_INFO = "http://jabber.org/protocol/disco#info"  # XEP-0030
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"  # XEP-0030
PING = "urn:xmpp:ping"  # XEP-0199
VERSION = "jabber:iq:version"  # XEP-0092
TIME = "urn:xmpp:time"  # XEP-0202
VCARD = "vcard-temp"  # XEP-0054
PRIVATE = "jabber:iq:private"  # XEP-0049
BLOCKING = "urn:xmpp:blocking"  # XEP-0191
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"  # XEP-0191
CARBONS = "urn:xmpp:carbons:2"  # XEP-0280
EXTDISCO = "urn:xmpp:extdisco:2"  # XEP-0215 (raftxmpp.modules.external_services)
CSI = "urn:xmpp:csi:0"  # XEP-0352 (raftxmpp.c2s.csi)
SM = "urn:xmpp:sm:3"  # XEP-0198 (raftxmpp.c2s.sm, raftxmpp.modules.stream_management)
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
DELAY = "urn:xmpp:delay"  # XEP-0203
CAPS = "http://jabber.org/protocol/caps"  # XEP-0115
LAST = "jabber:iq:last"  # XEP-0012
DATA_FORMS = "jabber:x:data"  # XEP-0004
COMMANDS = "http://jabber.org/protocol/commands"  # XEP-0050
ADMIN = "http://jabber.org/protocol/admin"  # XEP-0133 (FORM_TYPE and command nodes)
SERVERINFO = "http://jabber.org/network/serverinfo"  # XEP-0157 (XEP-0128 FORM_TYPE)
HTTP_UPLOAD = "urn:xmpp:http:upload:0"  # XEP-0363

# Publish-subscribe (XEP-0060) and what travels over it (raftxmpp.modules.pubsub).
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
PUBSUB_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
PUBSUB_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
PUBSUB_META_DATA = "http://jabber.org/protocol/pubsub#meta-data"
RSM = "http://jabber.org/protocol/rsm"  # XEP-0059
AVATAR_DATA = "urn:xmpp:avatar:data"  # XEP-0084
AVATAR_METADATA = "urn:xmpp:avatar:metadata"  # XEP-0084
VCARD_UPDATE = "vcard-temp:x:update"  # XEP-0153
PEP_VCARD_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"  # XEP-0398
BOOKMARKS = "storage:bookmarks"  # XEP-0048
BOOKMARKS2 = "urn:xmpp:bookmarks:1"  # XEP-0402
NICK = "http://jabber.org/protocol/nick"  # XEP-0172
