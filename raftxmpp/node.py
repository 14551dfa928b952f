"""Composition root: builds one node from its config and runs it in one nursery.

Start-up order matters for clear errors: the data dir is checked and locked, every
listening port is bound, and only then does pysyncobj start (it would otherwise
retry a busy port forever). Every failure before the node is up is a
`NodeStartError` with a one-line message; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from raftxmpp import __version__, tls
from raftxmpp.admin import server as admin_server
from raftxmpp.c2s import listener as c2s_listener
from raftxmpp.cluster import membership
from raftxmpp.cluster.journal import DataDirError
from raftxmpp.cluster.quotas import Quotas
from raftxmpp.cluster.raft import RaftNode, RaftUnavailable, load_or_create_local_secret
from raftxmpp.cluster.store import Store
from raftxmpp.component import listener as component_listener
from raftxmpp.config import Address, Config, ConfigError
from raftxmpp.routing.router import Router
from raftxmpp.s2s import edge as s2s_edge
from raftxmpp.web.server import WebServer

log = logging.getLogger("raftxmpp.node")


class NodeStartError(Exception):
    """The node cannot start; the message says why on one line."""


class Node:
    def __init__(self, config: Config, join: Address | None = None) -> None:
        self.config = config
        self.join = join  # a member's link address to ask for admission (`--join`)
        self.cluster: membership.ClusterMembership | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._served_hosts: frozenset[str] | None = None
        self.raft: RaftNode | None = None
        self.store: Store | None = None
        self.router: Router | None = None
        self.web: WebServer | None = None
        self._stop = trio.Event()
        self._lock_fd: int | None = None
        self.ssl_context = None
        self.certificate_der = b""
        self.certificate_files: tuple[Path, Path] | None = None

    # -- queries used by the admin API and the XMPP layer ------------------------------------

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Runs a background task in the node's nursery; False before the node runs."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    def served_hosts(self) -> frozenset[str]:
        """Configured hosts and replicated ones; recomputed only when a host op applies,
        since the router asks for every stanza."""
        if self._served_hosts is None:
            hosts = set(self.config.node.hosts)
            if self.store is not None:
                hosts |= self.store.hosts()
            self._served_hosts = frozenset(hosts)
        return self._served_hosts

    def status(self) -> dict[str, Any]:
        raft = self.raft.status() if self.raft else {}
        return {
            "node": self.config.node.name,
            "version": __version__,
            "hosts": sorted(self.served_hosts()),
            "data_dir": str(self.config.node.data_dir),
            "sessions": self.router.sessions.local_count() if self.router else 0,
            "sessions_by_node": self.router.sessions.count_by_node() if self.router else {},
            "gossip": self.cluster.gossip.nodes() if self.cluster else {},
            "removed": bool(self.cluster and self.cluster.removed),
            "member_names": self._member_names(),
            "raft": raft,
        }

    def _member_names(self) -> dict[str, str]:
        if self.raft is None:
            return {}
        members = self.raft.read(lambda s: dict(s.members))
        return {m["raft"]: name for name, m in members.items()}

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- running ------------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        data_dir = self._prepare_data_dir(cfg.node.data_dir)
        try:
            membership.refuse_if_removed(data_dir)
        except membership.MembershipError as exc:
            raise NodeStartError(str(exc)) from None
        self._setup_tls(data_dir)
        listeners = await self._open_listeners()
        web_listeners = await self._open_web_listeners()
        component_socket = (await _listen(cfg.components.listen, "components")
                            if cfg.components.listen else None)
        link_listener = await _listen(cfg.cluster.link, "node links")
        s2s_listeners = await s2s_edge.open_listeners(cfg.s2s, _listen)
        secret = cfg.cluster_secret() or load_or_create_local_secret(data_dir)
        self._token = trio.lowlevel.current_trio_token()
        self.raft = RaftNode(cfg.cluster, data_dir, secret, on_applied=self._on_applied)
        self.store = Store(self.raft, cfg.c2s.scram_iterations,
                           refuse_writes=lambda: bool(self.cluster and self.cluster.removed))
        self.store.quotas = Quotas.from_limits(cfg.limits)
        self.router = Router(self)
        self.cluster = membership.ClusterMembership(self, secret)
        self.web = WebServer(self)
        peers = await self._initial_peers(data_dir)
        try:
            self.raft.start(peers)
        except OSError as exc:
            raise NodeStartError(f"cannot listen on raft address {cfg.cluster.raft}: "
                                 f"{exc.strerror}") from None
        except DataDirError as exc:
            raise NodeStartError(str(exc)) from None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(admin_server.serve, self)
                await nursery.start(self.cluster.run, link_listener)
                for listener, direct_tls in listeners:
                    nursery.start_soon(c2s_listener.serve, self, listener, direct_tls)
                await nursery.start(self.web.run, web_listeners)
                if component_socket is not None:
                    nursery.start_soon(component_listener.serve, self, component_socket)
                nursery.start_soon(self._register_hosts)
                for task in self.router.background:
                    nursery.start_soon(task)
                nursery.start_soon(self.raft.run_clock)  # the clock that expires commands
                if cfg.s2s.enabled:
                    edge = s2s_edge.build(self.router.s2s, cfg, secret, self.certificate_files)
                    await nursery.start(edge.run, s2s_listeners)
                if threading.current_thread() is threading.main_thread():
                    nursery.start_soon(self._stop_on_signals)
                log.info("node %s up (raftxmpp %s): hosts %s, data dir %s, raft %s, peers %s",
                         cfg.node.name, __version__, ", ".join(cfg.node.hosts), data_dir,
                         cfg.cluster.raft, ", ".join(map(str, cfg.cluster.peers)) or "none")
                task_status.started(self)
                await self._stop.wait()
                log.info("node %s stopping", cfg.node.name)
                await self.router.sessions.shutdown()
                await self.router.components.shutdown()
                await self.router.s2s.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(self.raft.stop)
            if self._lock_fd is not None:  # the data dir is free for the next node
                os.close(self._lock_fd)
                self._lock_fd = None
            log.info("node %s stopped", cfg.node.name)

    async def _initial_peers(self, data_dir: Path) -> list[str] | None:
        """Raft peers: the config's, else those a `--join` got now or on an earlier start."""
        if self.join is not None:
            request = {"name": self.config.node.name, "raft": str(self.config.cluster.raft),
                       "link": str(self.config.cluster.link)}
            try:
                peers = await membership.join(self.cluster.links, self.join, request, data_dir)
            except (OSError, membership.MembershipError, trio.TooSlowError,
                    membership.LinkError, ValueError, KeyError) as exc:
                raise NodeStartError(f"cannot join through {self.join}: {exc}") from None
            log.info("joined the cluster through %s: peers %s", self.join, ", ".join(peers))
            return peers
        if not self.config.cluster.peers:
            return membership.remembered_peers(data_dir)
        return None

    def _on_applied(self, command: dict, result: tuple) -> None:
        """Raft thread: after an offline message commits, a session here may want it now.

        This settles the race of RFC 6121 offline storage against a login on another
        node: whichever comes second, the queue is taken (once, through Raft) by the
        node holding an available session.
        """
        op = command.get("op")
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            if op in ("host_add", "host_remove"):
                self._token.run_sync_soon(self._forget_served_hosts)
            elif op == "offline_store" and result[0] == "ok":
                self._token.run_sync_soon(self._offline_stored, command["jid"])
            elif op == "component_remove" and result == ("ok", True):
                # Its connected instances are closed at once, on every node.
                self._token.run_sync_soon(self.router.components.unregistered, command["domain"])
            elif op == "upload_delete" and result == ("ok", True) and self.web is not None \
                    and self.web.upload is not None:
                # The file's bytes go from every node's disk once the log says so.
                self._token.run_sync_soon(self.web.upload.deleted, command["slot"])

    def _forget_served_hosts(self) -> None:
        self._served_hosts = None  # on the trio thread, after the apply: recomputed fresh

    def _offline_stored(self, jid: str) -> None:
        # Not to a detached stream-management session: what is stored for it waits
        # there until it is resumed (raftxmpp.modules.stream_management).
        targets = [s for s in self.router.sessions.available_local(jid)
                   if s.priority >= 0 and not s.detached]
        if targets and self._nursery is not None:
            offline = self.router.modules["offline"]
            self._nursery.start_soon(offline.deliver_queue, self.router, targets[0])

    def _prepare_data_dir(self, data_dir: Path) -> Path:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(data_dir)
            probe = data_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
            self._lock_fd = os.open(data_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise NodeStartError(f"data dir {data_dir} is not writable: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeStartError(f"another node is running with data dir {data_dir}") from None
        return data_dir

    def _setup_tls(self, data_dir: Path) -> None:
        cert, key = self.config.tls.certificate, self.config.tls.key
        if cert is None or key is None:
            cert, key = tls.ensure_certificate(data_dir, self.config.node.hosts)
            log.info("using the self-signed certificate in %s", cert.parent)
        self.certificate_files = (cert, key)
        try:
            self.ssl_context = tls.server_context(cert, key)
            self.certificate_der = tls.certificate_der(cert)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[tls] cannot load {cert} / {key}: {exc}") from None

    async def _open_listeners(self) -> list[tuple[trio.SocketListener, bool]]:
        c2s = self.config.c2s
        wanted = [(c2s.listen, False), (c2s.tls_listen, True)]
        listeners = []
        for address, direct_tls in wanted:
            if address is not None:
                listeners.append((await _listen(address, "c2s"), direct_tls))
        return listeners

    async def _open_web_listeners(self) -> list[tuple[trio.SocketListener, bool]]:
        http = self.config.http
        wanted = [(http.listen, False, "http"), (http.tls_listen, True, "https")]
        return [(await _listen(address, what), tls) for address, tls, what in wanted
                if address is not None]

    async def _register_hosts(self) -> None:
        """Puts this node's configured hosts into the replicated set of served hosts."""
        missing = set(self.config.node.hosts) - self.store.hosts()
        for host in sorted(missing):
            while True:
                try:
                    await self.store.host_add(host)
                    break
                except RaftUnavailable:
                    await trio.sleep(1)

    async def _stop_on_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.request_stop()
                return


def _make_private(data_dir: Path) -> None:
    """The data dir holds SCRAM keys, TLS keys and secrets: mode 0700, whatever it had.
    (Files in it are created 0600; `raftxmpp node start` also sets umask 077, which
    covers the files pysyncobj creates.)"""
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(data_dir, 0o700)
        except OSError as exc:  # not ours to change: say so, and go on
            log.warning("data dir %s is mode %04o and cannot be made 0700 (%s): others may "
                        "read its keys and secrets", data_dir, mode, exc.strerror)
            return
        log.warning("data dir %s was mode %04o; made it 0700 (it holds keys and secrets)",
                    data_dir, mode)


async def _listen(address: Address, what: str) -> trio.SocketListener:
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        reason = "port in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise NodeStartError(f"cannot listen for {what} on {address}: {reason}") from None
    return listeners[0]
