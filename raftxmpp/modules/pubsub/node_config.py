"""Node configuration: defaults, the limits a write carries, and the data forms of
XEP-0060 §8.2 (pubsub#node_config), §7.1.5 (pubsub#publish-options) and §5.4
(pubsub#meta-data).

The state machine (raftxmpp.cluster.pubsub_state.check_config) has the last word on
what a configuration may hold; this module turns forms into configurations and back,
with the errors a client should see.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from raftxmpp.cluster import pubsub_state as ps
from raftxmpp.config import PubsubSection
from raftxmpp.modules.pubsub import forms
from raftxmpp.modules.pubsub.errors import PubsubError
from raftxmpp.xml import ns

PREFIX = "pubsub#"
LABELS = {
    "access_model": "Who may subscribe and retrieve items",
    "publish_model": "Who may publish",
    "max_items": "Max # of items to persist; max for the server's maximum",
    "persist_items": "Persist items to storage",
    "deliver_payloads": "Deliver payloads with event notifications",
    "deliver_notifications": "Deliver event notifications",
    "notify_retract": "Notify subscribers when items are removed",
    "notify_delete": "Notify subscribers when the node is deleted",
    "notify_config": "Notify subscribers when the configuration changes",
    "send_last_published_item": "When to send the last published item",
    "notification_type": "Message type of event notifications",
    "itemreply": "Whom replies to an item go to",
    "roster_groups_allowed": "Roster groups allowed to subscribe",
    "title": "A short name for the node",
    "description": "A description of the node",
    "type": "Payload semantic type information",
}
TRUE, FALSE = ("1", "true"), ("0", "false")


@dataclass(frozen=True)
class Settings:
    """The [pubsub] section, with what the protocol code asks of it."""

    section: PubsubSection

    def limits(self, owner: str, node: str) -> dict[str, int]:
        """The limits a write to `node` of `owner` carries into the state machine."""
        pep = ps.is_pep(owner)
        s = self.section
        return {
            "max_items": s.max_items,
            "item_bytes": s.max_avatar_bytes if node == ns.AVATAR_DATA else s.max_item_bytes,
            "node_bytes": s.max_node_bytes,
            "owner_bytes": s.max_account_bytes if pep else ps.HARD_LIMITS["owner_bytes"],
            "max_nodes": s.max_nodes_per_account if pep else s.max_service_nodes,
        }

    def default_config(self, owner: str) -> dict:
        """A new node's configuration: XEP-0163 §4.1 for PEP (presence access, last item
        on subscription and presence), an open node for the service."""
        pep = ps.is_pep(owner)
        return {
            "access_model": "presence" if pep else "open",
            "publish_model": "publishers",
            "send_last_published_item": "on_sub_and_presence" if pep else "on_sub",
            "notification_type": "headline",
            "itemreply": "owner",
            "persist_items": True,
            "deliver_payloads": True,
            "deliver_notifications": True,
            "notify_retract": True,
            "notify_delete": True,
            "notify_config": False,
            "title": "",
            "description": "",
            "type": "",
            "max_items": self.section.pep_default_max_items if pep
            else self.section.service_default_max_items,
            "roster_groups_allowed": [],
        }


# -- form values → configuration values ----------------------------------------------------------


def parse_value(key: str, values: list[str]) -> object:
    """One submitted field's value as the configuration holds it; not-acceptable if bad."""
    if key == "roster_groups_allowed":
        return [v for v in values if v]
    value = values[0].strip() if values else ""
    if key in ps.BOOLEANS:
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        raise PubsubError("not-acceptable", text=f"pubsub#{key} must be a boolean")
    if key == "max_items":
        if value == "max":
            return "max"
        if not value.isdigit() or int(value) < 1:
            raise PubsubError("not-acceptable", text="pubsub#max_items must be a positive "
                              "integer or max")
        return int(value)
    if key in ps.CHOICES and value not in ps.CHOICES[key]:
        if key == "access_model" and value == "authorize":
            raise PubsubError("not-acceptable", text="the authorize access model is not "
                              "supported")
        raise PubsubError("not-acceptable", text=f"pubsub#{key} must be one of "
                          f"{', '.join(ps.CHOICES[key])}")
    return value


def apply_form(config: dict, form: etree._Element | None, form_type: str,
               unknown_error: PubsubError | None = None) -> dict:
    """`config` changed by the fields of a submitted form; fields other than ours are
    ignored unless `unknown_error` says otherwise (publish-options must refuse them,
    XEP-0060 §7.1.5)."""
    submitted_type, values = forms.submitted(form)
    if submitted_type is not None and submitted_type != form_type:
        raise PubsubError("bad-request", text=f"expected a {form_type} form")
    changed = dict(config)
    for var, given in values.items():
        key = var[len(PREFIX):] if var.startswith(PREFIX) else None
        if key not in ps.CONFIG_FIELDS:
            if unknown_error is not None:
                raise unknown_error
            continue
        changed[key] = parse_value(key, given)
    return changed


def preconditions(form: etree._Element | None) -> dict:
    """The publish-options of a publish (XEP-0060 §7.1.5): {field: value}. An unknown
    field is refused with <conflict/> + <precondition-not-met/>."""
    submitted_type, values = forms.submitted(form)
    if submitted_type not in (None, ns.PUBSUB_PUBLISH_OPTIONS):
        raise PubsubError("bad-request", text="expected a publish-options form")
    wanted = {}
    for var, given in values.items():
        key = var[len(PREFIX):] if var.startswith(PREFIX) else None
        if key not in ps.CONFIG_FIELDS:
            raise PubsubError("conflict", "precondition-not-met",
                              f"publish option {var} is not supported")
        wanted[key] = parse_value(key, given)
    return wanted


# -- configuration → forms --------------------------------------------------------------------------


def _values(key: str, value: object) -> list[str]:
    if isinstance(value, bool):
        return ["1" if value else "0"]
    if isinstance(value, list):
        return list(value)
    return [str(value)]


def _kind(key: str) -> str:
    if key in ps.BOOLEANS:
        return "boolean"
    if key in ps.CHOICES:
        return "list-single"
    return "list-multi" if key == "roster_groups_allowed" else "text-single"


def config_form(config: dict, kind: str = "form") -> etree._Element:
    """The node_config form of a node (XEP-0060 §8.2.4, Example 128)."""
    fields = [forms.Field(PREFIX + key, _kind(key), _values(key, config[key]), LABELS.get(key),
                          ps.CHOICES.get(key, ())) for key in ps.CONFIG_FIELDS]
    return forms.build(ns.PUBSUB_NODE_CONFIG, fields, kind)


def meta_data_form(owner: str, record: dict) -> etree._Element:
    """The node meta-data of disco#info on a node (XEP-0060 §5.4)."""
    config = record["config"]
    owners = [j for j, a in record["affiliations"].items() if a == "owner"]
    fields = [
        forms.Field(PREFIX + "title", "text-single", [config["title"]]),
        forms.Field(PREFIX + "description", "text-single", [config["description"]]),
        forms.Field(PREFIX + "type", "text-single", [config["type"]]),
        forms.Field(PREFIX + "access_model", "list-single", [config["access_model"]]),
        forms.Field(PREFIX + "publish_model", "list-single", [config["publish_model"]]),
        forms.Field(PREFIX + "max_items", "text-single", [str(config["max_items"])]),
        forms.Field(PREFIX + "owner", "jid-multi", sorted(owners)),
        forms.Field(PREFIX + "num_subscribers", "text-single",
                    [str(len(record["subscriptions"]))]),
    ]
    return forms.build(ns.PUBSUB_META_DATA, fields, "result")
