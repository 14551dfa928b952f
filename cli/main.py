"""`raftxmpp`: start a node, manage accounts, inspect the cluster.

Every failure is one line on stderr and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import json
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
def node_start(config_file, data_dir, log_format, log_level) -> None:
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
    logs.setup(cfg.node.name, log_level or cfg.log.level, log_format or cfg.log.format)
    try:
        trio.run(Node(cfg).run)
    except (NodeStartError, ConfigError) as exc:
        raise Fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


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


def read_password(password_file: Path | None, confirm: bool = True) -> str:
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise Fail(f"cannot read {password_file}: {exc.strerror}") from None
        if not lines or not lines[0]:
            raise Fail(f"{password_file} holds no password on its first line")
        return lines[0]
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise Fail("no password given (use --password-file or a terminal prompt)")
        return line
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


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


@user.command("list")
@click.option("--host", help="Only accounts of this domain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def user_list(host, as_json, config_file, data_dir) -> None:
    """List accounts (as committed cluster-wide: read through the Raft log)."""
    accounts = admin(config_file, data_dir, "user.list", host=host, current=True)
    emit(accounts, as_json, lambda r: [click.echo(j) for j in r])


# -- cluster -----------------------------------------------------------------------------------


@main.group()
def cluster() -> None:
    """Inspect and change the cluster."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@node_options
def cluster_status(as_json, config_file, data_dir) -> None:
    """Members, leader, term, commit and applied index, reachability."""
    emit(admin(config_file, data_dir, "cluster.status"), as_json, render_status)


def render_status(status: dict) -> None:
    raft = status.get("raft", {})
    click.echo(f"node {status['node']}  hosts {', '.join(status['hosts'])}  "
               f"sessions {status['sessions']}")
    click.echo(f"raft {raft.get('self')}  role {raft.get('role')}  term {raft.get('term')}  "
               f"leader {raft.get('leader') or '-'}  quorum {'yes' if raft.get('has_quorum') else 'no'}")
    click.echo(f"commit index {raft.get('commit_index')}  applied index {raft.get('applied_index')}")
    click.echo("")
    click.echo(f"{'MEMBER':<24} {'ROLE':<10} {'REACHABLE':<9}")
    for member, reachable in sorted(raft.get("members", {}).items()):
        role = "leader" if member == raft.get("leader") else "follower"
        mark = "self" if member == raft.get("self") else ("yes" if reachable else "no")
        click.echo(f"{member:<24} {role:<10} {mark:<9}")


# -- config ------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def config_check(file) -> None:
    """Validate FILE without starting a node."""
    cfg = load_config(file, None)
    click.echo(f"{file}: ok (node {cfg.node.name}, hosts {', '.join(cfg.node.hosts)}, "
               f"{len(cfg.cluster.peers) + 1} raft member(s))")


if __name__ == "__main__":
    main()
