"""Ad-hoc commands (XEP-0050): discovery and execution; the commands come from other
modules (the XEP-0133 service-administration set is raftxmpp.modules.service_admin).

A command has at most one form: `execute` without a session answers with the form
(status "executing", a session id, <actions execute='complete'/>); submitting it with
that session id (action complete or execute) runs the command (status "completed",
with a note or a result form); `cancel` ends the session. A command without a form runs
at once. Sessions live on the node that holds the requester's stream (the requests of one
c2s session always arrive there), are bound to the requester's full JID, expire after
SESSION_TTL and are bounded in number.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from lxml import etree

from raftxmpp.routing.router import IqRequest, Router
from raftxmpp.xml import forms, ns
from raftxmpp.xml.errors import StanzaError

COMMAND = f"{{{ns.COMMANDS}}}command"
SESSION_TTL = 600.0
MAX_SESSIONS = 1000
ACTIONS = ("execute", "complete", "next", "prev", "cancel")


@dataclass(frozen=True)
class Outcome:
    """What a completed command tells the requester."""

    note: str | None = None
    result: etree._Element | None = None  # a data form of type "result"


@dataclass(frozen=True)
class Command:
    node: str
    name: str
    allowed: Callable[[IqRequest], bool]
    run: Callable[[IqRequest, dict[str, list[str]]], Awaitable[Outcome]]
    form: Callable[[IqRequest], etree._Element] | None = None  # None: runs at once


@dataclass
class _Session:
    requester: str  # full JID
    node: str
    expires: float


def setup(router: Router) -> None:
    sessions: OrderedDict[str, _Session] = OrderedDict()
    router.register_iq("server", "set", ns.COMMANDS, partial(execute, sessions))
    router.server_features.add(ns.COMMANDS)
    router.disco_items_nodes[ns.COMMANDS] = list_commands
    router.disco_info_nodes[ns.COMMANDS] = command_list_info


def add_command(router: Router, command: Command) -> None:
    router.adhoc_commands[command.node] = command
    router.disco_info_nodes[command.node] = partial(command_info, command)


# -- discovery (§2) ----------------------------------------------------------------------------------------


async def list_commands(request: IqRequest) -> etree._Element:
    """§2.1: the commands this requester may run, as items of the commands node."""
    query = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS},
                          node=ns.COMMANDS)
    server = str(request.to_jid)
    for command in request.router.adhoc_commands.values():
        if command.allowed(request):
            etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=server, node=command.node,
                             name=command.name)
    return query


async def command_list_info(request: IqRequest) -> etree._Element:
    query = _info_query(ns.COMMANDS)
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="automation",
                     type="command-list")
    return query


async def command_info(command: Command, request: IqRequest) -> etree._Element:
    """§2.2: a command node is an automation/command-node speaking commands and data forms."""
    if not command.allowed(request):
        raise StanzaError("item-not-found")
    query = _info_query(command.node)
    etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category="automation",
                     type="command-node", name=command.name)
    for feature in (ns.COMMANDS, ns.DATA_FORMS):
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    return query


def _info_query(node: str) -> etree._Element:
    return etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO}, node=node)


# -- execution (§3, §4) ------------------------------------------------------------------------------------


async def execute(sessions: OrderedDict[str, _Session], request: IqRequest) -> etree._Element:
    payload = request.payload
    if payload.tag != COMMAND:
        raise StanzaError("bad-request", text="expected <command/>")
    command = request.router.adhoc_commands.get(payload.get("node"))
    if command is None:
        raise StanzaError("item-not-found", text="no such command")
    if not command.allowed(request):
        raise StanzaError("forbidden", text="you may not run this command")  # XEP-0133 §5
    action = payload.get("action", "execute")
    if action not in ACTIONS:
        raise _command_error("bad-request", "malformed-action")
    sessionid = payload.get("sessionid")
    if sessionid is None:
        if action != "execute":
            raise _command_error("bad-request", "bad-sessionid")
        if command.form is None:
            return _completed(command, None, await command.run(request, {}))
        return _open_session(sessions, command, request)
    _take_session(sessions, sessionid, command, request)
    if action == "cancel":
        return _response(command, sessionid, "canceled")
    if action in ("next", "prev"):
        raise _command_error("bad-request", "bad-action")  # one stage only
    submitted = forms.find(payload)
    if submitted is None or submitted.get("type") != "submit":
        raise StanzaError("bad-request", text="submit the form")
    outcome = await command.run(request, forms.submitted_values(submitted))
    return _completed(command, sessionid, outcome)


def _open_session(sessions: OrderedDict[str, _Session], command: Command,
                  request: IqRequest) -> etree._Element:
    now = time.monotonic()
    for stale in [sid for sid, s in sessions.items() if s.expires < now]:
        del sessions[stale]
    while len(sessions) >= MAX_SESSIONS:
        sessions.popitem(last=False)
    sessionid = secrets.token_hex(12)
    sessions[sessionid] = _Session(str(request.from_jid), command.node, now + SESSION_TTL)
    response = _response(command, sessionid, "executing")
    actions = etree.SubElement(response, f"{{{ns.COMMANDS}}}actions", execute="complete")
    etree.SubElement(actions, f"{{{ns.COMMANDS}}}complete")
    response.append(command.form(request))
    return response


def _take_session(sessions: OrderedDict[str, _Session], sessionid: str, command: Command,
                  request: IqRequest) -> None:
    session = sessions.pop(sessionid, None)
    if session is None or session.requester != str(request.from_jid) or session.node != command.node:
        raise _command_error("bad-request", "bad-sessionid")
    if session.expires < time.monotonic():
        raise _command_error("not-allowed", "session-expired")


def _completed(command: Command, sessionid: str | None, outcome: Outcome) -> etree._Element:
    response = _response(command, sessionid or secrets.token_hex(12), "completed")
    if outcome.note:
        etree.SubElement(response, f"{{{ns.COMMANDS}}}note", type="info").text = outcome.note
    if outcome.result is not None:
        response.append(outcome.result)
    return response


def _response(command: Command, sessionid: str, status: str) -> etree._Element:
    return etree.Element(COMMAND, nsmap={None: ns.COMMANDS}, node=command.node,
                         sessionid=sessionid, status=status)


def _command_error(condition: str, specific: str) -> StanzaError:
    """An error with XEP-0050 §4.6's application-specific condition."""
    return StanzaError(condition, app_condition=f"{{{ns.COMMANDS}}}{specific}")
