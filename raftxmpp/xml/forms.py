"""Data forms (XEP-0004): the forms the server sends, and the ones clients submit.

Sans-IO: elements in, values out. Only what the server's own forms use: the field types
of XEP-0004 §3.3, a hidden FORM_TYPE (XEP-0068), and reading a submitted form by 'var'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from raftxmpp.xml.ns import DATA_FORMS

X = f"{{{DATA_FORMS}}}x"
FIELD = f"{{{DATA_FORMS}}}field"
VALUE = f"{{{DATA_FORMS}}}value"


@dataclass(frozen=True)
class Field:
    var: str
    type: str = "text-single"
    label: str | None = None
    required: bool = False
    values: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # (label, value) of list-single / list-multi


def form(kind: str, fields: Iterable[Field], form_type: str | None = None,
         title: str | None = None, instructions: str | None = None) -> etree._Element:
    """An <x xmlns='jabber:x:data' type=kind/> (form, result), FORM_TYPE first."""
    x = etree.Element(X, nsmap={None: DATA_FORMS}, type=kind)
    if title:
        etree.SubElement(x, f"{{{DATA_FORMS}}}title").text = title
    if instructions:
        etree.SubElement(x, f"{{{DATA_FORMS}}}instructions").text = instructions
    if form_type:
        _field(x, Field("FORM_TYPE", "hidden", values=(form_type,)))
    for f in fields:
        _field(x, f)
    return x


def _field(x: etree._Element, f: Field) -> None:
    element = etree.SubElement(x, FIELD, var=f.var)
    if f.type:
        element.set("type", f.type)
    if f.label:
        element.set("label", f.label)
    if f.required:
        etree.SubElement(element, f"{{{DATA_FORMS}}}required")
    for label, value in f.options:
        option = etree.SubElement(element, f"{{{DATA_FORMS}}}option", label=label)
        etree.SubElement(option, VALUE).text = value
    for value in f.values:
        etree.SubElement(element, VALUE).text = value


def find(parent: etree._Element) -> etree._Element | None:
    return parent.find(X)


def submitted_values(x: etree._Element) -> dict[str, list[str]]:
    """The values of a submitted form by field 'var' (XEP-0004 §3.2: type 'submit')."""
    if x.get("type") != "submit":
        raise ValueError("not a submitted form")
    values: dict[str, list[str]] = {}
    for field in x.findall(FIELD):
        var = field.get("var")
        if var:
            values[var] = [v.text or "" for v in field.findall(VALUE)]
    return values


def caps_string(x: etree._Element) -> str:
    """One extended-information form as XEP-0115 §5.4 step 3.6 hashes it: the FORM_TYPE,
    then each other field by 'var', its values sorted, every item followed by '<'."""
    fields = {f.get("var"): sorted(v.text or "" for v in f.findall(VALUE))
              for f in x.findall(FIELD) if f.get("var")}
    out = "".join(v + "<" for v in fields.pop("FORM_TYPE", []))
    for var in sorted(fields):
        out += var + "<" + "".join(v + "<" for v in fields[var])
    return out
