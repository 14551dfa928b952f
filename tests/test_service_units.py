"""Sans-IO parts of the server features: data forms (XEP-0004), their place in the caps
hash (XEP-0115 §5.3), the XEP-0157 form, and the [admins] / [contact_addresses] config."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from raftxmpp import config as config_mod
from raftxmpp.config import ConfigError, ContactAddressesSection
from raftxmpp.modules.contact_addresses import serverinfo_form
from raftxmpp.xml import forms

# XEP-0115 §5.3, the complex generation example: its software-information form.
SOFTWAREINFO = b"""<x xmlns='jabber:x:data' type='result'>
  <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
  <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>
  <field var='os'><value>Mac</value></field>
  <field var='os_version'><value>10.5.1</value></field>
  <field var='software'><value>Psi</value></field>
  <field var='software_version'><value>0.11</value></field>
</x>"""


def test_an_extended_form_hashes_as_in_the_xep_0115_example():
    assert forms.caps_string(etree.fromstring(SOFTWAREINFO)) == (
        "urn:xmpp:dataforms:softwareinfo<ip_version<ipv4<ipv6<os<Mac<os_version<10.5.1<"
        "software<Psi<software_version<0.11<")


def test_a_submitted_form_is_read_by_var():
    x = forms.form("form", (forms.Field("a"), forms.Field("b", "text-multi")), "urn:example")
    x.set("type", "submit")
    for field in x.findall(forms.FIELD)[1:]:
        etree.SubElement(field, forms.VALUE).text = field.get("var")
    assert forms.submitted_values(x) == {"FORM_TYPE": ["urn:example"], "a": ["a"], "b": ["b"]}
    with pytest.raises(ValueError):
        forms.submitted_values(forms.form("form", ()))


def test_the_contact_addresses_form_follows_xep_0157():
    x = serverinfo_form(ContactAddressesSection(abuse=("mailto:abuse@example.org",),
                                                security=("xmpp:sec@example.org",)))
    assert forms.caps_string(x) == ("http://jabber.org/network/serverinfo<abuse-addresses<"
                                    "mailto:abuse@example.org<security-addresses<"
                                    "xmpp:sec@example.org<")


@pytest.mark.parametrize("section, fragment", [
    ('[admins]\njids = ["not a jid@@"]', "[admins] jids: 'not a jid@@' is not a JID"),
    ('[admins]\njids = ["example.org"]', "is not an account"),
    ('[contact_addresses]\nabuse = ["abuse@example.org"]', "[contact_addresses] abuse:"),
    ('[contact_addresses]\nhelp = ["xmpp:x@example.org"]', "unknown key 'help'"),
])
def test_service_config_mistakes_are_one_line_errors(tmp_path: Path, section, fragment):
    path = tmp_path / "node.toml"
    path.write_text(section + "\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_service_config_is_read():
    cfg = config_mod.from_dict({"admins": {"jids": ["Admin@Example.org"]},
                                "contact_addresses": {"admin": ["xmpp:admin@example.org"]}},
                               "<test>", Path("."))
    assert cfg.admins.jids == ("Admin@Example.org",)
    assert cfg.contact_addresses.admin == ("xmpp:admin@example.org",)
