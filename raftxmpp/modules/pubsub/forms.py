"""Data forms (XEP-0004) as pubsub uses them: node configuration, publish-options,
node meta-data. Parsing takes what a client submitted; building writes a form or a
result. Nothing here knows what a field means."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from raftxmpp.xml import ns

X = f"{{{ns.DATA_FORMS}}}x"
FIELD = f"{{{ns.DATA_FORMS}}}field"
VALUE = f"{{{ns.DATA_FORMS}}}value"
OPTION = f"{{{ns.DATA_FORMS}}}option"


@dataclass
class Field:
    var: str
    kind: str  # text-single, list-single, boolean, jid-multi, list-multi, hidden, text-multi …
    values: list[str] = field(default_factory=list)
    label: str | None = None
    options: tuple[str, ...] = ()


def submitted(form: etree._Element | None) -> tuple[str | None, dict[str, list[str]]]:
    """(FORM_TYPE, {var: values}) of a submitted form; (None, {}) for no form.

    A form of type 'cancel' submits nothing (XEP-0004 §3.2)."""
    if form is None or form.get("type") == "cancel":
        return None, {}
    values: dict[str, list[str]] = {}
    for element in form.iter(FIELD):
        var = element.get("var")
        if var:
            values[var] = [v.text or "" for v in element.findall(VALUE)]
    form_type = values.pop("FORM_TYPE", [None])
    return (form_type[0] if form_type else None), values


def find_form(parent: etree._Element | None) -> etree._Element | None:
    return None if parent is None else parent.find(X)


def build(form_type: str, fields: list[Field], kind: str = "form") -> etree._Element:
    form = etree.Element(X, nsmap={None: ns.DATA_FORMS}, type=kind)
    hidden = etree.SubElement(form, FIELD, var="FORM_TYPE", type="hidden")
    etree.SubElement(hidden, VALUE).text = form_type
    for spec in fields:
        element = etree.SubElement(form, FIELD, var=spec.var, type=spec.kind)
        if spec.label and kind == "form":
            element.set("label", spec.label)
        if kind == "form":
            for option in spec.options:
                etree.SubElement(etree.SubElement(element, OPTION), VALUE).text = option
        for value in spec.values:
            etree.SubElement(element, VALUE).text = value
    return form
