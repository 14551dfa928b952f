"""Contact addresses for XMPP services (XEP-0157): the [contact_addresses] of the config,
as a XEP-0128 form in the server's disco#info (FORM_TYPE http://jabber.org/network/serverinfo).
Conversations, Monal and Gajim show them; the entity-capabilities hash covers them."""

from __future__ import annotations

import dataclasses

from lxml import etree

from raftxmpp.config import ContactAddressesSection
from raftxmpp.routing.router import Router
from raftxmpp.xml import forms, ns


def setup(router: Router) -> None:
    addresses = router.config.contact_addresses
    if any(getattr(addresses, f.name) for f in dataclasses.fields(addresses)):
        router.server_info_forms.append(lambda: serverinfo_form(addresses))


def serverinfo_form(addresses: ContactAddressesSection) -> etree._Element:
    """XEP-0157 §3: one '<kind>-addresses' field per configured kind, its URIs as values."""
    fields = [forms.Field(f"{f.name}-addresses", type="", values=tuple(getattr(addresses, f.name)))
              for f in dataclasses.fields(addresses) if getattr(addresses, f.name)]
    return forms.form("result", fields, form_type=ns.SERVERINFO)
