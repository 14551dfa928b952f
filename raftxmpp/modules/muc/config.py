"""The room configuration form (XEP-0045 §10.1–§10.2, muc#roomconfig) and room passwords.

A password never enters the Raft log (DESIGN.md): the config holds
"salt$sha256(salt + password)" in `secret`, made here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from lxml import etree

from raftxmpp.cluster.muc_state import BOOLEANS, CHOICES, Refused, check_config
from raftxmpp.modules.muc import ns
from raftxmpp.modules.pubsub.forms import Field, build, submitted
from raftxmpp.xml.errors import StanzaError

PREFIX = "muc#roomconfig_"
LABELS = {
    "roomname": "Room name", "roomdesc": "Description", "persistentroom": "Persistent room",
    "publicroom": "Listed in the directory", "membersonly": "Members only",
    "moderatedroom": "Moderated", "passwordprotectedroom": "Password protected",
    "changesubject": "Occupants may change the subject", "allowinvites":
    "Occupants may invite others", "enablelogging": "Logged", "whois": "Who sees real JIDs",
    "allowpm": "Who may send private messages", "maxusers": "Most occupants",
    "roomsecret": "Password",
}


def hash_password(password: str) -> str:
    salt = secrets.token_hex(8)
    return f"{salt}${hashlib.sha256((salt + password).encode()).hexdigest()}"


def password_matches(secret: str, given: str) -> bool:
    salt, _, digest = secret.partition("$")
    computed = hashlib.sha256((salt + given).encode()).hexdigest()
    return bool(digest) and hmac.compare_digest(computed, digest)


def form(config: dict) -> etree._Element:
    fields = [Field(f"{PREFIX}roomname", "text-single", [config["roomname"]]),
              Field(f"{PREFIX}roomdesc", "text-single", [config["roomdesc"]])]
    fields += [Field(f"{PREFIX}{key}", "boolean", ["1" if config[key] else "0"])
               for key in BOOLEANS]
    fields += [Field(f"{PREFIX}{key}", "list-single", [config[key]], options=choices)
               for key, choices in CHOICES.items()]
    fields.append(Field(f"{PREFIX}maxusers", "text-single", [str(config["maxusers"])]))
    fields.append(Field(f"{PREFIX}roomsecret", "text-private", []))
    for spec in fields:
        spec.label = LABELS.get(spec.var[len(PREFIX):])
    return build(ns.ROOMCONFIG, fields)


def apply_form(current: dict, element: etree._Element) -> dict:
    """The configuration a submitted form asks for: fields it leaves out keep their value."""
    form_type, values = submitted(element)
    if form_type not in (None, ns.ROOMCONFIG):
        raise StanzaError("bad-request", text=f"FORM_TYPE must be {ns.ROOMCONFIG}")
    config = dict(current)
    for var, given in values.items():
        key = var[len(PREFIX):] if var.startswith(PREFIX) else None
        value = given[0] if given else ""
        if key in BOOLEANS:
            if value not in ("0", "1", "true", "false"):
                raise StanzaError("not-acceptable", text=f"{var} is a boolean")
            config[key] = value in ("1", "true")
        elif key in CHOICES or key in ("roomname", "roomdesc"):
            config[key] = value
        elif key == "maxusers":
            try:
                config[key] = int(value)
            except ValueError:
                raise StanzaError("not-acceptable", text=f"{var} is a number") from None
        elif key == "roomsecret":
            config["secret"] = hash_password(value) if value else ""
    if not config["passwordprotectedroom"]:
        config["secret"] = ""
    try:
        return check_config(config)
    except Refused as exc:
        raise StanzaError(exc.condition, text=exc.text) from None
