"""The workload: real XMPP clients on every node, each operation recorded in the history.

Workers (asyncio tasks in the runner's process, each with its own seeded Random):
- accounts: in-band registrations, races for one name from two nodes, password
  changes followed by logins with the old and the new password on every node;
- rosters: a client per owner sets and removes roster items, and moves to another
  node now and then; each login records the roster it fetched as a read;
- offline: senders message accounts that are offline (acknowledged by a ping reply
  that comes after the message on the same stream, with no error before it); a
  drainer logs each inbox in on a random node and records what it got;
- online: pairs of clients on different nodes message each other; each login measures
  how long until every other node's session table shows it (presence convergence);
- components: `component.add` through the admin API of a random node;
- probes: a Raft barrier through every node every 0.2 s (admin `user.list` with
  current=True), for failover time and unavailability windows;
- minority writers: while a partition lasts, durable writes aimed at the nodes on its
  minority side (registrations, and roster sets and offline messages through sessions
  opened there before the cut), so that every partition is tested for a minority that
  acknowledges, and for a refused write that applies after the heal.

Nodes are picked at random among all of them, faulted ones included: operations
through an isolated or dead node are what the minority checker looks at.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from dataclasses import dataclass, field

from chaos import xmpp
from chaos.cluster import C2S_TLS_PORT, DOMAIN, ChaosCluster, ChaosNode
from chaos.history import History, Op
from raftxmpp.admin.client import AdminClientError

# When an inbox may be sent to again after a drain: gossip must have forgotten the
# drain session everywhere, or a node would route to it instead of storing offline.
COOL_DOWN, COOL_DOWN_AFTER_BREAK = 4.0, 15.0


@dataclass
class AccountModel:
    jid: str
    password: str | None  # the one password known to be current, if any
    candidates: set[str] = field(default_factory=set)  # every password it may have


class Workload:
    def __init__(self, cluster: ChaosCluster, history: History, seed: int, tag: str) -> None:
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.tag = tag  # makes names unique per run
        self.tls = xmpp.tls_context(cluster.ca_file)
        self.accounts: dict[str, AccountModel] = {}
        self.races: list[tuple[Op, Op]] = []
        self.roster_owners: list[str] = []
        self.minority_owners: list[str] = []
        self.roster_contacts = [f"contact{i}@{DOMAIN}" for i in range(4)]
        self.senders: list[str] = []
        self.inboxes: list[str] = []
        self.inbox_free_at: dict[str, float] = {}
        self.inbox_busy: set[str] = set()
        self.sent: dict[str, Op] = {}  # offline message body → its send op
        self.received: list[tuple[str, str, float]] = []  # (body, inbox, t)
        self.online_sent: dict[str, float] = {}
        self.online_latency: list[float] = []
        self.online_received: dict[str, int] = {}
        self.online_from: dict[str, str] = {}
        self.online_log: list[tuple[str, str, bool, float]] = []  # body, where, delayed, t
        self.convergence: list[float] = []
        self.convergence_timeouts = 0
        self.components: list[Op] = []
        self.password = "chaos-pw"
        self._stop = asyncio.Event()

    # -- helpers ------------------------------------------------------------------------------

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def node_choice(self, rng: random.Random, exclude: ChaosNode | None = None) -> ChaosNode:
        return rng.choice([n for n in self.cluster.nodes if n is not exclude])

    def connection(self, node: ChaosNode) -> xmpp.Connection:
        return xmpp.Connection(node.address, C2S_TLS_PORT, DOMAIN, self.tls)

    async def record(self, op: Op, coro) -> Op:
        try:
            result = await coro
            self.history.complete(op, "ok", result)
        except xmpp.AuthFailed:
            self.history.complete(op, "fail", "not-authorized")
        except xmpp.Refused as exc:
            self.history.complete(op, "fail", exc.condition)
        except xmpp.Unknown as exc:
            self.history.complete(op, "unknown", str(exc))
        except asyncio.CancelledError:
            self.history.complete(op, "unknown", "cancelled")
            raise
        return op

    async def admin(self, node: ChaosNode, cmd: str, timeout: float = 8.0, **args):
        return await asyncio.to_thread(node.admin, cmd, timeout, **args)

    async def pause(self, rng: random.Random, low: float, high: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), rng.uniform(low, high))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    # -- single XMPP operations, each one recorded ----------------------------------------------

    async def register(self, node: ChaosNode, user: str, password: str) -> Op:
        jid = f"{user}@{DOMAIN}"
        op = self.history.invoke("register", f"account:{jid}", node.name, password=password)

        async def go():
            conn = self.connection(node)
            try:
                await conn.open()
                await conn.register(user, password)
            finally:
                conn.abort()

        return await self.record(op, go())

    async def login_check(self, node: ChaosNode, jid: str, password: str) -> Op:
        """A login as a read of the account's password: ok = it matched, fail = it did not."""
        op = self.history.invoke("login", f"account:{jid}", node.name, password=password)

        async def go():
            conn = self.connection(node)
            try:
                await conn.open()
                await conn.login(jid.split("@")[0], password)
            finally:
                conn.abort()

        return await self.record(op, go())

    async def session(self, node: ChaosNode, jid: str, password: str, resource: str,
                      read_roster: bool = False) -> xmpp.Connection | None:
        """Logs in and binds; with read_roster, records the fetched roster as reads."""
        t0 = self.history.now()
        conn = self.connection(node)
        try:
            await conn.open()
            await conn.login(jid.split("@")[0], password, resource)
            if read_roster:
                roster = await conn.roster()
                self._roster_reads(node, jid, t0, roster)
            return conn
        except (xmpp.Unknown, xmpp.Refused):
            conn.abort()
            return None

    def _roster_reads(self, node: ChaosNode, owner: str, t0: float, roster: dict) -> None:
        for contact in self.roster_contacts:
            op = self.history.invoke("roster_read", f"roster:{owner}:{contact}", node.name)
            op.t0 = t0
            self.history.complete(op, "ok", roster.get(contact))

    # -- setup ------------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Accounts the workers share, made through the admin API before any fault."""
        node = self.cluster.nodes[0]
        for i in range(4):
            self.roster_owners.append(f"owner{i}-{self.tag}@{DOMAIN}")
        for i in range(2):
            self.senders.append(f"sender{i}-{self.tag}@{DOMAIN}")
            # "owner…" keeps them out of the password changes and the final login sample.
            self.minority_owners.append(f"ownerm{i}-{self.tag}@{DOMAIN}")
        for i in range(3):
            self.inboxes.append(f"inbox{i}-{self.tag}@{DOMAIN}")
        self.online_pairs = [(f"talk{2 * i}-{self.tag}@{DOMAIN}", f"talk{2 * i + 1}-{self.tag}@{DOMAIN}")
                             for i in range(2)]
        every = [*self.roster_owners, *self.minority_owners, *self.senders, *self.inboxes,
                 *(j for pair in self.online_pairs for j in pair)]
        for jid in every:
            op = self.history.invoke("register", f"account:{jid}", node.name,
                                     password=self.password, via="admin")
            await self.admin(node, "user.add", jid=jid, password=self.password)
            self.history.complete(op, "ok")
            self.accounts[jid] = AccountModel(jid, self.password, {self.password})
        for inbox in self.inboxes:
            self.inbox_free_at[inbox] = 0.0

    def tasks(self) -> list:
        return [
            self.account_worker(0), self.account_worker(1),
            self.roster_worker(0), self.roster_worker(1),
            self.offline_sender(0), self.offline_sender(1), self.offline_drainer(),
            self.online_worker(0), self.online_worker(1),
            self.component_worker(),
            self.minority_writer(0), self.minority_writer(1),
            *(self.prober(node) for node in self.cluster.nodes),
        ]

    # -- accounts: registration, races, password changes ------------------------------------------

    async def account_worker(self, w: int) -> None:
        rng = self.rng(f"accounts{w}")
        n = 0
        while not self.stopping:
            n += 1
            user = f"u{w}n{n}-{self.tag}"
            choice = rng.random()
            if choice < 0.3:
                password = f"p{w}.{n}.{rng.randrange(10**6)}"
                op = await self.register(self.node_choice(rng), user, password)
                self._account_after_register(f"{user}@{DOMAIN}", [op])
            elif choice < 0.45:
                a = self.node_choice(rng)
                b = self.node_choice(rng, exclude=a)
                pa, pb = f"ra{w}.{n}", f"rb{w}.{n}"
                op_a, op_b = await asyncio.gather(self.register(a, user, pa),
                                                  self.register(b, user, pb))
                self.races.append((op_a, op_b))
                self._account_after_register(f"{user}@{DOMAIN}", [op_a, op_b])
            else:
                await self.password_change(rng, w, n)
            await self.pause(rng, 0.05, 0.3)

    def _account_after_register(self, jid: str, ops: list[Op]) -> None:
        oks = [op for op in ops if op.status == "ok"]
        maybe = [op for op in ops if op.status == "unknown"]
        if len(oks) == 1:
            password = oks[0].args["password"]
            self.accounts[jid] = AccountModel(jid, password, {password})
        elif oks or maybe:
            self.accounts[jid] = AccountModel(
                jid, None, {op.args["password"] for op in [*oks, *maybe]})

    async def password_change(self, rng: random.Random, w: int, n: int) -> None:
        known = [a for a in self.accounts.values() if a.password is not None
                 and not a.jid.startswith(("owner", "sender", "inbox", "talk"))]
        if not known:
            return
        account = rng.choice(known)
        node = self.node_choice(rng)
        user = account.jid.split("@")[0]
        old, new = account.password, f"c{w}.{n}.{rng.randrange(10**6)}"
        login = self.history.invoke("login", f"account:{account.jid}", node.name, password=old)
        conn = self.connection(node)
        try:
            try:
                await conn.open()
                await conn.login(user, old)
                self.history.complete(login, "ok")
            except xmpp.AuthFailed:
                self.history.complete(login, "fail", "not-authorized")
                return
            except xmpp.Unknown as exc:
                self.history.complete(login, "unknown", str(exc))
                return
            op = self.history.invoke("passwd", f"account:{account.jid}", node.name,
                                     password=new, old=old)
            await self.record(op, conn.change_password(user, new))
        finally:
            conn.abort()
        if op.status == "ok":
            account.password = new
            account.candidates = {new}
            # "Then login on every node": the old password must fail everywhere.
            for other in self.cluster.nodes:
                await self.login_check(other, account.jid, old)
                await self.login_check(other, account.jid, new)
        elif op.status == "unknown":
            account.password = None
            account.candidates |= {new}

    # -- rosters ------------------------------------------------------------------------------------

    async def roster_worker(self, w: int) -> None:
        rng = self.rng(f"roster{w}")
        owners = self.roster_owners[w::2]
        sessions: dict[str, xmpp.Connection | None] = dict.fromkeys(owners)
        n = 0
        try:
            while not self.stopping:
                n += 1
                owner = rng.choice(owners)
                conn = sessions[owner]
                if conn is None or conn.closed.is_set() or rng.random() < 0.15:
                    if conn is not None:
                        await conn.close()
                    node = self.node_choice(rng)
                    conn = sessions[owner] = await self.session(
                        node, owner, self.password, f"r{n}", read_roster=True)
                    conn_node = node
                    if conn is None:
                        await self.pause(rng, 0.2, 0.5)
                        continue
                    conn.node_name = conn_node.name
                contact = rng.choice(self.roster_contacts)
                key = f"roster:{owner}:{contact}"
                if rng.random() < 0.3:
                    op = self.history.invoke("roster_remove", key, conn.node_name)
                    await self.record(op, conn.roster_remove(contact))
                else:
                    name = f"n{w}.{n}"
                    op = self.history.invoke("roster_set", key, conn.node_name, name=name)
                    await self.record(op, conn.roster_set(contact, name))
                if op.status != "ok":
                    conn.abort()
                    sessions[owner] = None
                await self.pause(rng, 0.05, 0.25)
        finally:
            for conn in sessions.values():
                if conn is not None:
                    conn.abort()

    # -- offline messages -------------------------------------------------------------------------------

    async def offline_sender(self, w: int) -> None:
        rng = self.rng(f"offline{w}")
        jid = self.senders[w]
        conn: xmpp.Connection | None = None
        n = 0
        try:
            while not self.stopping:
                if conn is None or conn.closed.is_set() or rng.random() < 0.05:
                    if conn is not None:
                        await conn.close()
                    node = self.node_choice(rng)
                    conn = await self.session(node, jid, self.password, f"s{n}")
                    if conn is None:
                        await self.pause(rng, 0.2, 0.5)
                        continue
                    conn.node_name = node.name
                now = self.history.now()
                free = [i for i in self.inboxes
                        if i not in self.inbox_busy and self.inbox_free_at[i] <= now]
                if not free:
                    await self.pause(rng, 0.1, 0.3)
                    continue
                inbox = rng.choice(free)
                n += 1
                body = f"off-{self.tag}-{w}-{n}"
                op = self.history.invoke("offline_send", f"inbox:{inbox}", conn.node_name,
                                         body=body)
                self.sent[body] = op
                await self.record(op, self._send_acknowledged(conn, inbox, body))
                if op.status != "ok":
                    conn.abort()
                    conn = None
                await self.pause(rng, 0.05, 0.3)
        finally:
            if conn is not None:
                conn.abort()

    async def _send_acknowledged(self, conn: xmpp.Connection, to: str, body: str) -> None:
        """The message, then a ping: the node handles a stream's stanzas in order, so a ping
        reply with no error before it means the message was stored (or delivered)."""
        conn.drain_inbox()
        conn.message(to, body, body)
        await conn.ping()
        for stanza in conn.drain_inbox():
            if xmpp.is_error_message(stanza) and stanza.get("id") == body:
                xmpp.raise_stanza_error(stanza)

    async def offline_drainer(self) -> None:
        rng = self.rng("drainer")
        while not self.stopping:
            await self.pause(rng, 1.5, 4.0)
            if self.stopping:
                return
            await self.drain(rng.choice(self.inboxes), self.node_choice(rng))

    async def drain(self, inbox: str, node: ChaosNode, linger: float = 1.0) -> Op:
        """Logs the inbox in, lets the node hand over its offline queue, and records every
        message received (the op's result, also written to the history)."""
        self.inbox_busy.add(inbox)
        op = self.history.invoke("drain", f"inbox:{inbox}", node.name)
        status, why = "ok", None
        conn = self.connection(node)
        try:
            await conn.open()
            await conn.login(inbox.split("@")[0], self.password, "drain")
            conn.presence(priority=1)
            await conn.ping()
            await asyncio.sleep(linger)
            await conn.close()  # reads until the server ends the stream
        except (xmpp.Unknown, xmpp.Refused) as exc:
            status, why = "unknown", str(exc)
        except asyncio.CancelledError:
            status, why = "unknown", "cancelled"
            raise
        finally:
            conn.abort()
            got: list[str] = []
            for stanza in conn.drain_inbox():
                body = xmpp.body_of(stanza)
                if stanza.tag == f"{{{xmpp.CLIENT}}}message" and body and \
                        not xmpp.is_error_message(stanza):
                    got.append(body)
                    self.received.append((body, inbox, self.history.now()))
            self.history.complete(op, status, {"received": got, "error": why})
            self.inbox_busy.discard(inbox)
            cool = COOL_DOWN if status == "ok" else COOL_DOWN_AFTER_BREAK
            self.inbox_free_at[inbox] = self.history.now() + cool
        return op

    # -- online messages and presence convergence ----------------------------------------------------------

    async def online_worker(self, w: int) -> None:
        rng = self.rng(f"online{w}")
        a_jid, b_jid = self.online_pairs[w]
        a = b = None
        n = 0
        try:
            while not self.stopping:
                if a is None or b is None or a.closed.is_set() or b.closed.is_set() \
                        or rng.random() < 0.05:
                    for c in (a, b):
                        if c is not None:
                            await c.close()
                    node_a = self.node_choice(rng)
                    node_b = self.node_choice(rng, exclude=node_a)
                    a = await self.session(node_a, a_jid, self.password, f"a{n}")
                    b = await self.session(node_b, b_jid, self.password, f"b{n}")
                    if a is None or b is None:
                        await self.pause(rng, 0.3, 0.6)
                        continue
                    a.node_name = node_a.name
                    a.presence()
                    b.presence()
                    b.on_stanza = functools.partial(self._online_arrival, f"{node_b.name}:{b.jid}")
                    await self.measure_convergence(b.jid, node_b)
                b.drain_inbox()
                n += 1
                body = f"on-{self.tag}-{w}-{n}"
                try:
                    a.message(b_jid, body, body)
                    self.online_sent[body] = self.history.now()
                    self.online_from[body] = a.node_name
                except xmpp.Unknown:
                    a = None
                await self.pause(rng, 0.2, 0.5)
        finally:
            for c in (a, b):
                if c is not None:
                    c.abort()

    def _online_arrival(self, where: str, stanza) -> None:
        body = xmpp.body_of(stanza)
        if body in self.online_sent:
            self.online_received[body] = self.online_received.get(body, 0) + 1
            delayed = stanza.find("{urn:xmpp:delay}delay") is not None
            self.online_log.append((body, where, delayed, self.history.now()))
            if self.online_received[body] == 1:
                self.online_latency.append(self.history.now() - self.online_sent[body])
            else:
                first = [e for e in self.online_log if e[0] == body]
                self.history.note(f"online message {body} received again: {first}")

    async def measure_convergence(self, full_jid: str, home: ChaosNode, limit: float = 10.0):
        """Seconds until every other running node lists the new session (gossip)."""
        t0 = self.history.now()
        bare = full_jid.split("/")[0]
        pending = [n for n in self.cluster.nodes if n is not home and n.alive() and not n.paused]
        while pending and self.history.now() - t0 < limit:
            still = []
            for node in pending:
                try:
                    sessions = await self.admin(node, "user.sessions", timeout=2, jid=bare)
                    if not any(s["full_jid"] == full_jid for s in sessions):
                        still.append(node)
                except (AdminClientError, OSError):
                    still.append(node)
            pending = still
            if pending:
                await asyncio.sleep(0.05)
        if pending:
            self.convergence_timeouts += 1
        else:
            self.convergence.append(self.history.now() - t0)

    # -- writes through the minority side of every partition -----------------------------------

    async def minority_writer(self, w: int) -> None:
        """While `history.partitioned` names the cut-off side of a partition, writes through
        those nodes; otherwise keeps a session of its account open on every node, so that
        a partition finds one already logged in there (a cut-off node refuses logins)."""
        rng = self.rng(f"minority{w}")
        owner = self.minority_owners[w]
        sessions: dict[str, xmpp.Connection] = {}
        n = 0
        try:
            while not self.stopping:
                cut = self.history.partitioned
                if not cut:
                    await self._hold_sessions(owner, sessions, w)
                    await self.pause(rng, 0.05, 0.15)
                    continue
                node = self.cluster.node(rng.choice(sorted(cut)))
                n += 1
                conn = sessions.get(node.name)
                if conn is not None and conn.closed.is_set():
                    conn = sessions.pop(node.name)
                    conn.abort()
                    conn = None
                if n % 3 == 0 or conn is None:
                    await self.register(node, f"m{w}n{n}-{self.tag}",
                                        f"pm{w}.{n}.{rng.randrange(10**6)}")
                elif n % 3 == 1:
                    contact = rng.choice(self.roster_contacts)
                    op = self.history.invoke("roster_set", f"roster:{owner}:{contact}",
                                             node.name, name=f"m{w}.{n}")
                    await self.record(op, conn.roster_set(contact, f"m{w}.{n}"))
                    if op.status != "ok":
                        sessions.pop(node.name).abort()
                else:
                    await self._minority_offline(rng, node, conn, w, n, sessions)
        finally:
            for conn in sessions.values():
                conn.abort()

    async def _hold_sessions(self, owner: str, sessions: dict[str, xmpp.Connection],
                             w: int) -> None:
        for node in self.cluster.nodes:
            conn = sessions.get(node.name)
            if conn is not None and not conn.closed.is_set():
                continue
            if conn is not None:
                conn.abort()
                del sessions[node.name]
            if node.alive() and not node.paused:
                conn = await self.session(node, owner, self.password, f"m{w}{node.name}")
                if conn is not None:
                    sessions[node.name] = conn
            return  # one (re)connection per round: the partition may start any moment

    async def _minority_offline(self, rng: random.Random, node: ChaosNode,
                                conn: xmpp.Connection, w: int, n: int,
                                sessions: dict[str, xmpp.Connection]) -> None:
        now = self.history.now()
        free = [i for i in self.inboxes if i not in self.inbox_busy and self.inbox_free_at[i] <= now]
        if not free:
            await self.pause(rng, 0.1, 0.2)
            return
        body = f"offm-{self.tag}-{w}-{n}"
        op = self.history.invoke("offline_send", f"inbox:{rng.choice(free)}", node.name, body=body)
        self.sent[body] = op
        await self.record(op, self._send_acknowledged(conn, op.key[6:], body))
        if op.status != "ok":
            sessions.pop(node.name).abort()

    # -- components and probes ---------------------------------------------------------------------------------

    async def component_worker(self) -> None:
        rng = self.rng("components")
        n = 0
        while not self.stopping:
            await self.pause(rng, 2.0, 5.0)
            if self.stopping:
                return
            n += 1
            node = self.node_choice(rng)
            domain = f"c{n}-{self.tag}.chaos.invalid"
            op = self.history.invoke("component_add", f"component:{domain}", node.name)
            self.components.append(op)
            try:
                await self.admin(node, "component.add", domain=domain, secret=f"s{n}")
                self.history.complete(op, "ok")
            except (AdminClientError, OSError) as exc:
                self.history.complete(op, "unknown", str(exc))

    async def prober(self, node: ChaosNode) -> None:
        rng = self.rng(f"probe{node.name}")
        while not self.stopping:
            op = self.history.invoke("probe", "probe", node.name)
            try:
                await self.admin(node, "user.list", timeout=5, host="probe.invalid", current=True)
                self.history.complete(op, "ok")
            except (AdminClientError, OSError) as exc:
                self.history.complete(op, "unknown", str(exc)[:80])
                await self.pause(rng, 0.1, 0.3)
            await self.pause(rng, 0.15, 0.25)
