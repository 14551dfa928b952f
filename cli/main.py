"""`raftxmpp`: start a node, manage accounts, inspect the cluster.

Every failure is one line on stderr and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from raftxmpp import config as config_mod
from raftxmpp.admin.client import AdminClientError, call
from raftxmpp.config import ConfigError

DATA_DIR_HELP = (
    "Data directory of the node (default: the config file's [node] data_dir, "
    f"else {config_mod.default_data_dir()})."
)


class Fail(click.ClickException):
    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"raftxmpp: error: {self.message}", err=True)


def load_config(config_file: Path | None, data_dir: Path | None) -> config_mod.Config:
    try:
        if config_file is None:
            return config_mod.embedded_default(data_dir)
        return config_mod.load(config_file, data_dir)
    except ConfigError as exc:
        raise Fail(str(exc)) from None


def node_options(fn):
    fn = click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)(fn)
    fn = click.option("--config", "config_file", type=click.Path(path_type=Path),
                      help="TOML config file of the node (default: the embedded single node).")(fn)
    return fn


def admin(config_file: Path | None, data_dir: Path | None, cmd: str, **args):
    cfg = load_config(config_file, data_dir)
    try:
        return call(cfg.node.data_dir, cmd, **args)
    except AdminClientError as exc:
        raise Fail(str(exc)) from None


def emit(result, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        render(result)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftxmpp")
def main() -> None:
    """raftxmpp: a multi-master clustered XMPP server."""


# -- node --------------------------------------------------------------------------------------


@main.group()
def node() -> None:
    """Run and inspect a node."""


@node.command("start")
@node_options
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Override [log] format.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--join", "join", metavar="HOST:PORT",
              help="Join a running cluster through any member's link address ([cluster] link).")
def node_start(config_file, data_dir, log_format, log_level, join) -> None:
    """Start a node in the foreground.

    With no options: one node serving the domain `localhost`, in-band registration on,
    STARTTLS on 127.0.0.1:5222 and direct TLS on 127.0.0.1:5223 with a self-signed
    certificate generated on first start, data under ~/.local/share/raftxmpp
    (or $XDG_DATA_HOME/raftxmpp; see --data-dir).
    """
    import trio

    from raftxmpp import logs
    from raftxmpp.node import Node, NodeStartError

    cfg = load_config(config_file, data_dir)
    warn_example_secret(cfg)
    # Everything the node creates (data dir, Raft journal and dump, keys, sockets) is
    # for the node's user alone (issue 13).
    os.umask(0o077)
    logs.setup(cfg.node.name, log_level or cfg.log.level, log_format or cfg.log.format)
    try:
        trio.run(Node(cfg, join=parse_join(join, cfg)).run)
    except (NodeStartError, ConfigError) as exc:
        raise Fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


def warn_example_secret(cfg: config_mod.Config) -> None:
    warning = config_mod.example_secret_warning(cfg)
    if warning is not None:
        click.echo(f"raftxmpp: warning: {warning}", err=True)


def parse_join(join: str | None, cfg: config_mod.Config) -> config_mod.Address | None:
    if join is None:
        return None
    try:
        address = config_mod.Address.parse(join)
    except ValueError as exc:
        raise Fail(f"--join: {exc}") from None
    if cfg.cluster_secret() is None:
        raise Fail("--join needs the cluster secret in the config ([cluster] secret_file)")
    return address


@node.command("status")
@node_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_status(config_file, data_dir, as_json) -> None:
    """Show this node's status."""
    emit(admin(config_file, data_dir, "node.status"), as_json, render_status)


@node.command("stop")
@node_options
def node_stop(config_file, data_dir) -> None:
    """Stop a running node gracefully (clients get a system-shutdown stream error)."""
    admin(config_file, data_dir, "node.stop")
    click.echo("stopping")


# -- users -------------------------------------------------------------------------------------


def read_password(password_file: Path | None, confirm: bool = True, what: str = "password",
                  option: str = "--password-file") -> str:
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise Fail(f"cannot read {password_file}: {exc.strerror}") from None
        if not lines or not lines[0]:
            raise Fail(f"{password_file} holds no {what} on its first line")
        return lines[0]
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise Fail(f"no {what} given (use {option} or a terminal prompt)")
        return line
    return click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm)


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@click.argument("jid")
@click.option("--password-file", type=click.Path(path_type=Path),
              help="Read the password from the first line of this file (else prompt, or stdin).")
@node_options
def user_add(jid, password_file, config_file, data_dir) -> None:
    """Create the account JID (user@domain)."""
    password = read_password(password_file)
    click.echo(f"created {admin(config_file, data_dir, 'user.add', jid=jid, password=password)}")


@user.command("passwd")
@click.argument("jid")
@click.option("--password-file", type=click.Path(path_type=Path),
              help="Read the new password from the first line of this file.")
@node_options
def user_passwd(jid, password_file, config_file, data_dir) -> None:
    """Change the password of JID."""
    password = read_password(password_file)
    result = admin(config_file, data_dir, "user.passwd", jid=jid, password=password)
    click.echo(f"password changed for {result}")


@user.command("remove")
@click.argument("jid")
@node_options
def user_remove(jid, config_file, data_dir) -> None:
    """Remove the account JID with its roster, offline messages and stored data."""
    click.echo(f"removed {admin(config_file, data_dir, 'user.remove', jid=jid)}")


@user.command("archive-purge")
@click.argument("jid")
@click.option("--before", metavar="DATE",
              help="Only messages older than this (2026-01-31 or 2026-01-31T12:00:00Z, UTC "
                   "unless a zone is given); else every archived message of JID.")
@node_options
def user_archive_purge(jid, before, config_file, data_dir) -> None:
    """Delete archived messages (XEP-0313) of the account JID on every node."""
    removed = admin(config_file, data_dir, "archive.purge", jid=jid, before=before)
    click.echo(f"deleted {removed} archived messages of {jid}")


@user.command("list")
@click.option("--host", help="Only accounts of this domain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def user_list(host, as_json, config_file, data_dir) -> None:
    """List accounts (as committed cluster-wide: read through the Raft log)."""
    accounts = admin(config_file, data_dir, "user.list", host=host, current=True)
    emit(accounts, as_json, lambda r: [click.echo(j) for j in r])


@user.command("sessions")
@click.argument("jid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def user_sessions(jid, as_json, config_file, data_dir) -> None:
    """List the sessions of the account JID: full JID, priority, availability, node, and
    stream management (resumable, or detached: waiting for its client to resume it)."""
    sessions = admin(config_file, data_dir, "user.sessions", jid=jid)
    emit(sessions, as_json, lambda rows: render_table(
        rows, [("FULL JID", "full_jid"), ("PRIORITY", "priority"),
               ("AVAILABILITY", "availability"), ("NODE", "node"), ("STREAM", "stream")],
        empty=f"{jid} has no session"))


@user.command("kick")
@click.argument("jid")
@node_options
def user_kick(jid, config_file, data_dir) -> None:
    """End every session of the account JID, or the one session of a full JID.

    Each client gets the stream error <policy-violation/> "kicked by an administrator".
    The account stays: a client may log in again (change the password or remove the
    account to keep it out).
    """
    kicked = admin(config_file, data_dir, "user.kick", jid=jid)
    if not kicked:
        click.echo(f"{jid} has no session")
    for full_jid in kicked:
        click.echo(f"kicked {full_jid}")


def render_table(rows: list[dict], columns: list[tuple[str, str]], empty: str) -> None:
    """Left-aligned columns as wide as their widest cell, for people to read."""
    if not rows:
        click.echo(empty)
        return
    cells = [[str(row.get(key, "")) for _, key in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in enumerate(columns)]
    for line in [[title for title, _ in columns], *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                   .rstrip())


# -- cluster -----------------------------------------------------------------------------------


@main.group()
def cluster() -> None:
    """Inspect and change the cluster."""


@cluster.command("add-peer")
@click.argument("address")
@node_options
def cluster_add_peer(address, config_file, data_dir) -> None:
    """Add the node whose Raft address is ADDRESS (HOST:PORT), before starting it.

    Run against any member. Then start the new node with the current members as its
    peers (or start it with `node start --join` instead, which does both).
    """
    click.echo(f"added {admin(config_file, data_dir, 'cluster.change', action='add', address=address)}")


@cluster.command("remove-peer")
@click.argument("address")
@node_options
def cluster_remove_peer(address, config_file, data_dir) -> None:
    """Remove the member whose Raft address is ADDRESS, live or dead."""
    result = admin(config_file, data_dir, "cluster.change", action="remove", address=address)
    click.echo(f"removed {result}")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def cluster_status(as_json, config_file, data_dir) -> None:
    """Members, leader, term, commit and applied index, reachability."""
    emit(admin(config_file, data_dir, "cluster.status"), as_json, render_status)


def render_status(status: dict) -> None:
    raft = status.get("raft", {})
    click.echo(f"node {status['node']}  hosts {', '.join(status['hosts'])}  "
               f"sessions {status['sessions']}"
               + ("  REMOVED FROM THE CLUSTER" if status.get("removed") else ""))
    click.echo(f"raft {raft.get('self')}  role {raft.get('role')}  term {raft.get('term')}  "
               f"leader {raft.get('leader') or '-'}  quorum {'yes' if raft.get('has_quorum') else 'no'}")
    click.echo(f"commit index {raft.get('commit_index')}  applied index {raft.get('applied_index')}"
               f"  lag {raft.get('lag', '-')}")
    click.echo("")
    names = status.get("member_names", {})
    sessions = status.get("sessions_by_node", {})
    lags = raft.get("member_lag", {})
    click.echo(f"{'MEMBER':<22} {'NAME':<10} {'ROLE':<9} {'REACHABLE':<9} {'LAG':>6} {'SESSIONS':>8}")
    for member, reachable in sorted(raft.get("members", {}).items()):
        name = names.get(member, "?")
        role = "leader" if member == raft.get("leader") else "follower"
        mark = "self" if member == raft.get("self") else ("yes" if reachable else "no")
        lag = lags.get(member, "-")
        click.echo(f"{member:<22} {name:<10} {role:<9} {mark:<9} {lag!s:>6} "
                   f"{sessions.get(name, 0):>8}")


# -- components ----------------------------------------------------------------------------------

BALANCING_POLICIES = ("random", "source", "destination", "bare_source", "bare_destination")


@main.group()
def component() -> None:
    """Register external components (XEP-0114) cluster-wide."""


@component.command("add")
@click.argument("domain")
@click.option("--secret-file", type=click.Path(path_type=Path),
              help="Read the shared secret from the first line of this file (else prompt, or stdin).")
@click.option("--balancing", type=click.Choice(BALANCING_POLICIES), default="random",
              show_default=True, help="How traffic is spread over several live instances.")
@click.option("--buckets", type=click.IntRange(0, 65536), default=0, show_default=True,
              help="Fixed bucket count that keeps the mapping stable when an instance dies (0: none).")
@node_options
def component_add(domain, secret_file, balancing, buckets, config_file, data_dir) -> None:
    """Register the component DOMAIN, or update its secret and balancing.

    The secret is stored sealed with the cluster secret, never in the clear: after a
    change of the cluster secret, add every component again.
    """
    secret = read_password(secret_file, what="secret", option="--secret-file")
    result = admin(config_file, data_dir, "component.add", domain=domain, secret=secret,
                   balancing=balancing, buckets=buckets)
    click.echo(f"{'registered' if result['created'] else 'updated'} {result['domain']} "
               f"(balancing {result['balancing']}, buckets {result['buckets']})")


@component.command("remove")
@click.argument("domain")
@node_options
def component_remove(domain, config_file, data_dir) -> None:
    """Unregister the component DOMAIN; its instances are refused from then on."""
    click.echo(f"removed {admin(config_file, data_dir, 'component.remove', domain=domain)}")


@component.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def component_list(as_json, config_file, data_dir) -> None:
    """List registered components (as committed cluster-wide), without their secrets,
    and their live instances per node."""
    components = admin(config_file, data_dir, "component.list")
    emit(components, as_json, _render_components)


def _render_components(rows: list[dict]) -> None:
    """One line per component; live instances per node once any is connected."""
    columns = [("DOMAIN", "domain"), ("BALANCING", "balancing"), ("BUCKETS", "buckets")]
    if any(row.get("instances") for row in rows):
        columns.append(("INSTANCES", "per_node"))
        rows = [{**row, "per_node": _instances_per_node(row.get("instances", []))} for row in rows]
    render_table(rows, columns, empty="no component registered")


def _instances_per_node(instances: list[dict]) -> str:
    """"node1: node1#0, node1#1; node2: node2#0", or "-" when none is connected."""
    by_node: dict[str, list[str]] = {}
    for instance in instances:
        by_node.setdefault(instance["node"], []).append(instance["id"])
    return "; ".join(f"{node}: {', '.join(ids)}" for node, ids in sorted(by_node.items())) or "-"


# -- online users, announcements, message of the day ---------------------------------------------
# The same operations (raftxmpp.admin.accounts) as the XEP-0133 commands admins run from a client.


def _text_argument(text: str) -> str:
    """TEXT, or the whole of stdin for "-"."""
    return sys.stdin.read() if text == "-" else text


@user.command("online")
@click.option("--host", help="Only accounts of this domain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def user_online(host, as_json, config_file, data_dir) -> None:
    """List accounts with at least one session, on any node."""
    online = admin(config_file, data_dir, "user.online", host=host)
    emit(online, as_json, _render_online)


def _render_online(accounts: list[str]) -> None:
    if not accounts:
        click.echo("nobody is online")
    for jid in accounts:
        click.echo(jid)


@main.command("announce")
@click.argument("text")
@click.option("--host", help="Only to the users of this domain (default: every served domain).")
@node_options
def announce(text, host, config_file, data_dir) -> None:
    """Send TEXT ("-": read stdin) as a headline to every online user's sessions."""
    sent = admin(config_file, data_dir, "server.announce", text=_text_argument(text), host=host)
    click.echo(f"sent to {sent} session(s)")


@main.group()
def motd() -> None:
    """The message of the day, shown once to each user at login."""


@motd.command("set")
@click.argument("text")
@click.option("--edit", is_flag=True,
              help="Correct the current message: users who saw it are not shown it again, "
                   "and online users are not sent it now.")
@node_options
def motd_set(text, edit, config_file, data_dir) -> None:
    """Set the message of the day to TEXT ("-": read stdin); a new one goes to online users now."""
    sent = admin(config_file, data_dir, "motd.set", text=_text_argument(text), edit=edit)
    click.echo("message of the day edited" if edit else
               f"message of the day set; sent to {sent} online session(s)")


@motd.command("show")
@node_options
def motd_show(config_file, data_dir) -> None:
    """Print the message of the day."""
    text = admin(config_file, data_dir, "motd.show")
    click.echo(text if text is not None else "no message of the day")


@motd.command("delete")
@node_options
def motd_delete(config_file, data_dir) -> None:
    """Delete the message of the day."""
    deleted = admin(config_file, data_dir, "motd.delete")
    click.echo("message of the day deleted" if deleted else "no message of the day")


# -- s2s (federation) ----------------------------------------------------------------------------


@main.group()
def s2s() -> None:
    """Inspect and close server-to-server (federation) streams, cluster-wide."""


@s2s.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def s2s_list(as_json, config_file, data_dir) -> None:
    """List the cluster's s2s streams: outgoing ones (one per local/remote domain pair,
    held by one node) and incoming ones (on any node), with how each authenticated."""
    rows = admin(config_file, data_dir, "s2s.list")
    emit(rows, as_json, _render_s2s)


def _render_s2s(rows: list[dict]) -> None:
    columns = [("DIRECTION", "direction"), ("LOCAL", "local"), ("REMOTE", "remote"),
               ("NODE", "node"), ("STATE", "state"), ("AUTH", "auth"), ("PEER", "peer")]
    render_table(rows, columns, empty="no s2s stream")


@s2s.command("close")
@click.argument("domain")
@node_options
def s2s_close(domain, config_file, data_dir) -> None:
    """Close every stream with the remote DOMAIN, on every node (they reopen on demand;
    use [s2s] deny to keep a domain out)."""
    result = admin(config_file, data_dir, "s2s.close", domain=domain)
    click.echo(f"closing streams with {result['domain']}: {result['closed_here']} on this node, "
               f"asked {result['asked']} other node(s)")


# -- publish-subscribe -----------------------------------------------------------------------------


@main.group()
def pubsub() -> None:
    """Inspect and delete pubsub nodes: an account's PEP nodes, or a pubsub service's."""


@pubsub.command("list")
@click.argument("owner", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def pubsub_list(owner, as_json, config_file, data_dir) -> None:
    """List the owners that have nodes, or the nodes of OWNER: an account
    (user@domain, its PEP nodes) or a pubsub service domain (pubsub.domain)."""
    rows = admin(config_file, data_dir, "pubsub.list", owner=owner)
    if owner:
        emit(rows, as_json, lambda r: render_table(
            r, [("NODE", "node"), ("ACCESS", "access_model"), ("ITEMS", "items"),
                ("BYTES", "bytes"), ("SUBSCRIBERS", "subscribers"), ("TITLE", "title")],
            empty=f"{owner} has no node"))
    else:
        emit(rows, as_json, lambda r: render_table(
            r, [("OWNER", "owner"), ("NODES", "nodes")], empty="no pubsub node anywhere"))


@pubsub.command("delete")
@click.argument("owner")
@click.argument("node_name", metavar="NODE")
@node_options
def pubsub_delete(owner, node_name, config_file, data_dir) -> None:
    """Delete the node NODE of OWNER with its items; subscribers are notified."""
    result = admin(config_file, data_dir, "pubsub.delete", owner=owner, node=node_name)
    click.echo(f"deleted {result['node']} of {result['owner']}")


# -- multi-user chat -----------------------------------------------------------------------------


@main.group()
def muc() -> None:
    """Inspect and destroy chat rooms (XEP-0045) of the cluster's conference services."""


@muc.command("list")
@click.argument("service", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def muc_list(service, as_json, config_file, data_dir) -> None:
    """List the rooms (of SERVICE, e.g. conference.example.com, or of every service)."""
    rows = admin(config_file, data_dir, "muc.list", domain=service)
    emit(rows, as_json, lambda r: render_table(
        r, [("ROOM", "room"), ("OCCUPANTS", "occupants"), ("PERSISTENT", "persistent"),
            ("LOCKED", "locked"), ("NAME", "name")], empty="no room"))


@muc.command("info")
@click.argument("room")
@node_options
def muc_info(room, config_file, data_dir) -> None:
    """A room's configuration, affiliations, subject, ordering node and occupants."""
    click.echo(json.dumps(admin(config_file, data_dir, "muc.info", room=room), indent=2,
                          sort_keys=True))


@muc.command("destroy")
@click.argument("room")
@click.option("--reason", default="", help="Told to the occupants.")
@click.option("--alternate", default=None, help="A room to go to instead (its JID).")
@node_options
def muc_destroy(room, reason, alternate, config_file, data_dir) -> None:
    """Destroy ROOM: every occupant is told, on every node (XEP-0045 §10.9)."""
    destroyed = admin(config_file, data_dir, "muc.destroy", room=room, reason=reason,
                      alternate=alternate)
    click.echo(f"destroyed {destroyed}")


# -- config ------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--skip-files", is_flag=True,
              help="Do not read the files FILE names (secret_file): for checking a config "
                   "away from the host it is meant for.")
def config_check(file, skip_files) -> None:
    """Validate FILE without starting a node.

    Certificate and key files are not opened here: `node start` loads them and says
    which one fails.
    """
    try:
        cfg = config_mod.load(file, read_files=not skip_files)
    except ConfigError as exc:
        raise Fail(str(exc)) from None
    if not skip_files:
        warn_example_secret(cfg)
    click.echo(f"{file}: ok (node {cfg.node.name}, hosts {', '.join(cfg.node.hosts)}, "
               f"{len(cfg.cluster.peers) + 1} raft member(s))")


if __name__ == "__main__":
    main()
