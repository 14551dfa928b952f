"""Service administration (XEP-0133): the ad-hoc commands Gajim and Psi offer an admin on
the server, and the message of the day shown at login.

Only the accounts in [admins] jids see or run them (§6: "MUST NOT be granted to users
who lack service-level administrative privileges"). Each command goes through the same
code as the matching CLI command (raftxmpp.admin.accounts), so both doors check, log and
refuse alike. Offered: add-user, delete-user, change-user-password,
get-online-users-num, get-online-users-list, announce, set-motd, edit-motd, delete-motd.
"""

from __future__ import annotations

import logging
from functools import partial

from lxml import etree

from raftxmpp.admin import accounts
from raftxmpp.admin.accounts import AdminError
from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID
from raftxmpp.modules.adhoc import Command, Outcome, add_command
from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.xml import forms, ns
from raftxmpp.xml.errors import StanzaError

log = logging.getLogger("raftxmpp.service_admin")

F = forms.Field
ACCOUNT = F("accountjid", "jid-single", "The Jabber ID of the account", required=True)
PASSWORD = F("password", "text-private", "The password for this account", required=True)
MOTD = F("motd", "text-multi", "Message of the Day", required=True)


def setup(router: Router) -> None:
    admins = frozenset(str(JID.parse(jid).bare) for jid in router.config.admins.jids)

    def allowed(request: IqRequest) -> bool:
        return str(request.from_jid.bare) in admins

    def command(name: str, title: str, run, form=None) -> None:
        add_command(router, Command(f"{ns.ADMIN}#{name}", title, allowed, run, form))

    command("add-user", "Add a User", add_user, _form("Adding a User", (
        ACCOUNT, PASSWORD, F("password-verify", "text-private", "Retype password",
                             required=True))))
    command("delete-user", "Delete a User", delete_user, _form("Deleting a User", (
        F("accountjids", "jid-multi", "The Jabber ID(s) to delete", required=True),)))
    command("change-user-password", "Change User Password", change_password,
            _form("Changing a User Password", (ACCOUNT, PASSWORD)))
    command("get-online-users-num", "Get Number of Online Users", online_users_num)
    command("get-online-users-list", "Get List of Online Users", online_users_list)
    command("announce", "Send Announcement to Online Users", announce, _form(
        "Making an Announcement", (F("announcement", "text-multi", "Announcement",
                                     required=True),)))
    command("set-motd", "Set Message of the Day", partial(set_motd, edit=False),
            _form("Setting the Message of the Day", (MOTD,)))
    command("edit-motd", "Edit Message of the Day", partial(set_motd, edit=True), edit_motd_form)
    command("delete-motd", "Delete Message of the Day", delete_motd)
    router.add_hook("initial-presence", partial(show_motd, router))


def _form(title: str, fields: tuple[forms.Field, ...]):
    def make(request: IqRequest) -> etree._Element:
        return forms.form("form", fields, ns.ADMIN, title=title,
                          instructions="Fill out this form.")
    return make


def _one(values: dict[str, list[str]], var: str) -> str:
    found = [v for v in values.get(var, []) if v]
    if len(found) != 1:
        raise StanzaError("bad-request", text=f"give exactly one {var}")
    return found[0]


def _text(values: dict[str, list[str]], var: str) -> str:
    """A text-multi field: its values are the lines (XEP-0004 §3.3)."""
    return "\n".join(values.get(var, []))


def _hosts(request: IqRequest) -> frozenset[str]:
    return request.router.served_hosts()


def _refusal(error: AdminError) -> StanzaError:
    return StanzaError(error.condition, text=str(error))


# -- accounts (§4.1, §4.2, §4.7) ----------------------------------------------------------------------------


async def add_user(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    password = _one(values, "password")
    if values.get("password-verify", [password])[:1] != [password]:
        raise StanzaError("not-acceptable", text="the passwords differ")
    try:
        jid = await accounts.add_user(request.router.store, _hosts(request),
                                      _one(values, "accountjid"), password)
    except AdminError as exc:
        raise _refusal(exc) from None
    return Outcome(note=f"created {jid}")


async def delete_user(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    """Every listed account is tried; any refusal is the answer, naming what was done."""
    router = request.router
    removed, refused = [], []
    for text in [v for v in values.get("accountjids", []) if v]:
        try:
            removed.append(await accounts.remove_user(router.store, router.sessions,
                                                      _hosts(request), text))
        except AdminError as exc:
            refused.append(exc)
    if refused:
        done = f"; removed {', '.join(removed)}" if removed else ""
        raise StanzaError(refused[0].condition, text="; ".join(map(str, refused)) + done)
    if not removed:
        raise StanzaError("bad-request", text="give at least one account")
    return Outcome(note=f"removed {', '.join(removed)}")


async def change_password(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    try:
        jid = await accounts.change_password(request.router.store, _hosts(request),
                                             _one(values, "accountjid"), _one(values, "password"))
    except AdminError as exc:
        raise _refusal(exc) from None
    return Outcome(note=f"password changed for {jid}")


# -- online users (§4.15, §4.20) ----------------------------------------------------------------------------


async def online_users_num(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    count = len(accounts.online_users(request.router.sessions, request.to_jid.domain))
    return Outcome(result=forms.form("result", (
        F("onlineusersnum", "text-single", "The number of online users", values=(str(count),)),),
        ns.ADMIN))


async def online_users_list(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    """§4.20 lets the service "simply return the list of online users"."""
    online = accounts.online_users(request.router.sessions, request.to_jid.domain)
    return Outcome(result=forms.form("result", (
        F("onlineuserjids", "jid-multi", "The list of all online users", values=tuple(online)),),
        ns.ADMIN))


# -- announcements and the message of the day (§4.22–§4.25) -------------------------------------------------


async def announce(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    try:
        sent = accounts.announce(request.router.sessions, request.to_jid.domain,
                                 _text(values, "announcement"))
    except AdminError as exc:
        raise _refusal(exc) from None
    return Outcome(note=f"sent to {sent} session(s)")


async def set_motd(request: IqRequest, values: dict[str, list[str]], edit: bool) -> Outcome:
    router = request.router
    try:
        sent = await accounts.set_motd(router.store, router.sessions, _hosts(request),
                                       _text(values, "motd"), edit=edit)
    except AdminError as exc:
        raise _refusal(exc) from None
    return Outcome(note="message of the day edited" if edit
                   else f"message of the day set; sent to {sent} online session(s)")


def edit_motd_form(request: IqRequest) -> etree._Element:
    """§4.24: the form "SHOULD include the current message of the day"."""
    current = request.router.store.motd()
    lines = tuple(current[0].split("\n")) if current else ()
    field = F(MOTD.var, MOTD.type, MOTD.label, required=True, values=lines)
    return forms.form("form", (field,), ns.ADMIN, title="Editing the Message of the Day",
                      instructions="Fill out this form.")


async def delete_motd(request: IqRequest, values: dict[str, list[str]]) -> Outcome:
    deleted = await accounts.delete_motd(request.router.store)
    return Outcome(note="message of the day deleted" if deleted else "no message of the day")


async def show_motd(router: Router, session: LocalSession) -> None:
    """At login, a message of the day the account has not been shown yet ("sent once to
    all users ... after the next session initiation", §4.23 note), then marked as shown."""
    motd = router.store.motd()
    if motd is None or router.store.motd_seen(session.bare_jid) >= motd[1]:
        return
    text, version = motd
    session.send_stanza(accounts.motd_message(session.jid.domain, session.full_jid, text))
    try:
        await router.store.record_motd_seen(session.bare_jid, version)
    except (StoreError, RaftUnavailable) as exc:
        log.info("message of the day shown to %s, not marked as seen: %s", session.full_jid, exc)
