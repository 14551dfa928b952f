"""What an administrator does to accounts and online users, shared by both doors: the
admin API the CLI talks to (raftxmpp.admin.server) and the XEP-0133 ad-hoc commands
clients such as Gajim and Psi send (raftxmpp.modules.service_admin). One code path, so
both check, log and refuse the same way.

Functions take what they touch (the store, the session table, the served hosts), never
the node. A refusal is an AdminError whose message is one line, fit for a terminal and
for a data form's note alike. Passwords go straight into SCRAM key derivation and are
never logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lxml import etree

from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID, InvalidJID
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StreamError
from raftxmpp.xml.stanza import make

if TYPE_CHECKING:
    from raftxmpp.cluster.store import Store
    from raftxmpp.routing.sessions import SessionManager

log = logging.getLogger("raftxmpp.admin")

MOTD_SUBJECT = "Message of the day"


class AdminError(Exception):
    """A request the node cannot carry out, phrased for the CLI's one-line error; the
    `condition` is the stanza error an ad-hoc command answers with (RFC 6120 §8.3.3)."""

    def __init__(self, message: str, condition: str = "bad-request") -> None:
        super().__init__(message)
        self.condition = condition


def account_jid(hosts: Iterable[str], text: str) -> str:
    """`text` as an account JID (user@domain) of a domain this cluster serves."""
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise AdminError(f"{text!r} is not a valid JID: {exc}", "jid-malformed") from None
    if jid.local is None or jid.resource is not None:
        raise AdminError(f"{text!r} is not an account JID (user@domain)")
    if jid.domain not in hosts:
        raise AdminError(f"{jid.domain} is not served by this cluster", "not-allowed")
    return str(jid)


@contextlib.contextmanager
def _refusals(jid: str) -> Iterator[None]:
    """The state machine's refusals of an account write, as one-line AdminErrors."""
    try:
        yield
    except StoreError as exc:
        if exc.condition == "conflict":
            raise AdminError(f"{jid} already exists", "conflict") from None
        if exc.condition == "item-not-found":
            raise AdminError(f"no account {jid}", "item-not-found") from None
        raise


def _password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise AdminError("the password must not be empty", "not-acceptable")
    return password


async def add_user(store: Store, hosts: Iterable[str], text: str, password: object) -> str:
    jid = account_jid(hosts, text)
    with _refusals(jid):
        await store.register(jid, _password(password))
    log.info("account %s created by admin", jid)
    return jid


async def remove_user(store: Store, sessions: SessionManager, hosts: Iterable[str],
                      text: str) -> str:
    """Deletes the account and ends its sessions wherever they are (XEP-0133 §4.2: "SHOULD
    result in the termination of any active sessions for the user")."""
    jid = account_jid(hosts, text)
    with _refusals(jid):
        await store.unregister(jid)
    for session in sessions.resources(jid):
        session.close(StreamError("not-authorized", "account removed"))
    log.info("account %s removed by admin", jid)
    return jid


async def change_password(store: Store, hosts: Iterable[str], text: str, password: object) -> str:
    jid = account_jid(hosts, text)
    with _refusals(jid):
        await store.set_password(jid, _password(password))
    log.info("password of %s changed by admin", jid)
    return jid


def online_users(sessions: SessionManager, host: str | None = None) -> list[str]:
    """Accounts with at least one session anywhere in the cluster, as this node knows them."""
    return sorted({s.bare_jid for s in sessions.everywhere()
                   if host is None or s.jid.domain == host})


def announce(sessions: SessionManager, host: str, text: str) -> int:
    """Sends `text` as a headline from `host` to every session of its users (XEP-0133
    §4.22: "sent only to users who currently have a session"); returns how many."""
    text = _announcement(text)
    sent = 0
    for session in sessions.everywhere():
        if session.jid.domain == host:
            session.send_stanza(_message(host, session.full_jid, text, "headline"))
            sent += 1
    log.info("announcement from %s sent to %d sessions by admin", host, sent)
    return sent


async def set_motd(store: Store, sessions: SessionManager, hosts: Iterable[str], text: str,
                   edit: bool = False) -> int:
    """Sets the message of the day. A new one goes at once to every online user (XEP-0133
    §4.23) and to the others at their next login; an edit only corrects it for those who
    have not seen it yet. Returns the number of sessions it was sent to now."""
    text = _announcement(text)
    version = await store.motd_set(text, edit=edit)
    log.info("message of the day %s by admin (version %d)", "edited" if edit else "set", version)
    if edit:
        return 0
    hosts = set(hosts)
    sent = 0
    for session in sessions.everywhere():
        if session.jid.domain in hosts:
            session.send_stanza(motd_message(session.jid.domain, session.full_jid, text))
            sent += 1
    return sent


async def delete_motd(store: Store) -> bool:
    deleted = await store.motd_delete()
    log.info("message of the day deleted by admin" if deleted else "no message of the day to delete")
    return deleted


def motd_message(host: str, to: str, text: str) -> etree._Element:
    return _message(host, to, text, "normal", MOTD_SUBJECT)


def _announcement(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise AdminError("the message must not be empty", "not-acceptable")
    return text


def _message(host: str, to: str, text: str, kind: str,
             subject: str | None = None) -> etree._Element:
    message = make("message", {"from": host, "to": to, "type": kind})
    if subject:
        etree.SubElement(message, f"{{{ns.CLIENT}}}subject").text = subject
    etree.SubElement(message, f"{{{ns.CLIENT}}}body").text = text
    return message
