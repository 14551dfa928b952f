"""Node configuration forms and publish-options (XEP-0060 §8.2, §7.1.5, XEP-0004), and
result set paging of items (XEP-0059), without sockets."""

from __future__ import annotations

import pytest
from lxml import etree

from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.config import PubsubSection
from raftxmpp.modules.pubsub import node_config, protocol
from raftxmpp.modules.pubsub.errors import PubsubError
from raftxmpp.xml import ns

SETTINGS = node_config.Settings(PubsubSection())


def form(form_type: str | None, **fields) -> etree._Element:
    x = etree.Element(f"{{{ns.DATA_FORMS}}}x", nsmap={None: ns.DATA_FORMS}, type="submit")
    if form_type:
        field = etree.SubElement(x, f"{{{ns.DATA_FORMS}}}field", var="FORM_TYPE", type="hidden")
        etree.SubElement(field, f"{{{ns.DATA_FORMS}}}value").text = form_type
    for var, values in fields.items():
        field = etree.SubElement(x, f"{{{ns.DATA_FORMS}}}field", var=f"pubsub#{var}")
        for value in values if isinstance(values, list) else [values]:
            etree.SubElement(field, f"{{{ns.DATA_FORMS}}}value").text = value
    return x


def test_pep_and_service_defaults_are_valid_configurations():
    """XEP-0163 §4.1 (presence access, last item on subscription and presence)."""
    pep = SETTINGS.default_config("alice@example.com")
    assert ps.check_config(pep)["access_model"] == "presence"
    assert pep["send_last_published_item"] == "on_sub_and_presence"
    assert ps.check_config(SETTINGS.default_config("pubsub.example.com"))["access_model"] == "open"


def test_a_submitted_configuration_changes_the_fields_it_names():
    config = node_config.apply_form(
        SETTINGS.default_config("alice@example.com"),
        form(ns.PUBSUB_NODE_CONFIG, access_model="roster", max_items="max",
             notify_retract="0", roster_groups_allowed=["Family", "Friends"]),
        ns.PUBSUB_NODE_CONFIG)
    assert config["access_model"] == "roster" and config["max_items"] == "max"
    assert config["notify_retract"] is False
    assert config["roster_groups_allowed"] == ["Family", "Friends"]
    assert ps.check_config(config) is config


@pytest.mark.parametrize("field,value", [("access_model", "authorize"), ("max_items", "0"),
                                         ("max_items", "many"), ("persist_items", "maybe")])
def test_invalid_configuration_values_are_not_acceptable(field, value):
    with pytest.raises(PubsubError) as refused:
        node_config.apply_form(SETTINGS.default_config("a@b"),
                               form(ns.PUBSUB_NODE_CONFIG, **{field: value}),
                               ns.PUBSUB_NODE_CONFIG)
    assert refused.value.condition == "not-acceptable"


def test_a_form_of_another_type_is_a_bad_request():
    with pytest.raises(PubsubError) as refused:
        node_config.apply_form(SETTINGS.default_config("a@b"), form("urn:other"),
                               ns.PUBSUB_NODE_CONFIG)
    assert refused.value.condition == "bad-request"


def test_publish_options_become_preconditions():
    """XEP-0060 §7.1.5 / XEP-0223 §4: the fields are compared with the node's config."""
    wanted = node_config.preconditions(form(ns.PUBSUB_PUBLISH_OPTIONS, persist_items="true",
                                            access_model="whitelist"))
    assert wanted == {"persist_items": True, "access_model": "whitelist"}


def test_an_unknown_publish_option_is_precondition_not_met():
    """XEP-0060 §7.1.5: the service "MUST reject the publication upon encountering
    unknown fields"."""
    with pytest.raises(PubsubError) as refused:
        node_config.preconditions(form(ns.PUBSUB_PUBLISH_OPTIONS, no_such_option="1"))
    assert (refused.value.condition, refused.value.app) == ("conflict", "precondition-not-met")


def test_the_error_element_carries_the_application_condition_second():
    """RFC 6120 §8.3.2: the defined condition, then the application-specific one."""
    error = PubsubError("not-authorized", "presence-subscription-required").element()
    names = [etree.QName(child).localname for child in error]
    assert names == ["not-authorized", "presence-subscription-required"]


def test_the_configuration_form_round_trips():
    config = {**SETTINGS.default_config("alice@example.com"), "max_items": 7, "title": "T"}
    rendered = node_config.config_form(config)
    submitted = etree.fromstring(etree.tostring(rendered).replace(b'type="form"',
                                                                   b'type="submit"'))
    assert node_config.apply_form(SETTINGS.default_config("alice@example.com"), submitted,
                                  ns.PUBSUB_NODE_CONFIG) == config


ITEMS = [(f"i{n}", {}) for n in range(7)]


def page(**parts) -> etree._Element:
    rsm = etree.Element(f"{{{ns.RSM}}}set", nsmap={None: ns.RSM})
    for name, text in parts.items():
        etree.SubElement(rsm, f"{{{ns.RSM}}}{name}").text = text
    return rsm


def ids(shown) -> list[str]:
    return [i for i, _ in shown]


def test_rsm_pages_forward_with_after():
    """XEP-0059 §2.2: <max/> then <after/> the last id of the previous page."""
    first, answer = protocol._page(ITEMS, page(max="3"))
    assert ids(first) == ["i0", "i1", "i2"]
    assert answer.findtext(f"{{{ns.RSM}}}count") == "7"
    assert answer.find(f"{{{ns.RSM}}}first").get("index") == "0"
    second, _ = protocol._page(ITEMS, page(max="3", after="i2"))
    assert ids(second) == ["i3", "i4", "i5"]


def test_rsm_empty_before_gives_the_last_page():
    """XEP-0059 §2.5: an empty <before/> asks for the last page."""
    last, answer = protocol._page(ITEMS, page(max="2", before=""))
    assert ids(last) == ["i5", "i6"]
    assert answer.find(f"{{{ns.RSM}}}first").get("index") == "5"
    earlier, _ = protocol._page(ITEMS, page(max="2", before="i5"))
    assert ids(earlier) == ["i3", "i4"]


def test_rsm_after_an_unknown_id_is_item_not_found():
    """XEP-0059 §2.6."""
    with pytest.raises(PubsubError) as refused:
        protocol._page(ITEMS, page(max="2", after="gone"))
    assert refused.value.condition == "item-not-found"
