"""Operating a node: CLI commands, /metrics, /health and /ready, JSON logs, backups.

Everything runs against real node processes (tests.harness) and is observed from
outside, as an operator or a monitoring system would: the CLI, plain HTTP, a raw
XMPP client over a loopback socket, and the node's log file.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftxmpp import config as config_mod
from raftxmpp.cluster.secrets import (
    SealedSecretError,
    open_component_secret,
    seal_component_secret,
)
from raftxmpp.web import health as http
from tests.harness import NodeProcess, free_ports, wait_for
from tests.test_cli import ROOT, assert_one_line_error, raftxmpp

PASSWORD = "ops-password-not-in-logs"
HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
PLAINTEXT = "plaintext_auth_on_loopback = true\n"


# -- helpers -------------------------------------------------------------------------------------


def node_ports() -> dict[str, int]:
    return dict(zip(("raft", "link", "c2s", "c2s_tls", "http"), free_ports(5), strict=True))


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers.get("Content-Type"), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read().decode()


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


class Metrics(dict):
    def __call__(self, name: str, **labels: str) -> float:
        return self.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(node: NodeProcess) -> Metrics:
    status, content_type, body = http_get(node.ports["http"], "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    samples = Metrics()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def ready(node: NodeProcess) -> tuple[int, str]:
    status, _, body = http_get(node.ports["http"], "/ready")
    return status, body.strip()


class XMPPClient:
    """A raw client stream over loopback (PLAIN without TLS, allowed by the test config)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream closed before {marker!r}: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def until_closed(self) -> bytes:
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        return self.buffer

    def login(self, user: str, resource: str, password: str = PASSWORD,
              priority: int | None = 0) -> XMPPClient:
        self.send(HEADER)
        self.until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        self.until(b"<success")
        self.send(HEADER)
        self.until(b"</stream:features>")
        self.send(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        self.until(b"</iq>")
        if priority is not None:
            self.send(f"<presence><priority>{priority}</priority><show>away</show></presence>")
        return self

    def close(self) -> None:
        self.sock.close()


def cli(node: NodeProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return raftxmpp(*args, "--config", str(node.config_path), stdin=stdin)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def sessions_of(node: NodeProcess, jid: str) -> list[dict]:
    return json.loads(ok(cli(node, "user", "sessions", jid, "--json")))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(tmp_path_factory.mktemp("ops"), "ops", node_ports(), [], PLAINTEXT)
    process.start()
    wait_for(lambda: process.status()["leader"], 10, "the node to lead")
    for user in ("alice", "bob", "carol"):
        process.admin("user.add", jid=f"{user}@localhost", password=PASSWORD)
    yield process
    process.kill()


# -- the command line ------------------------------------------------------------------------------


def test_every_operator_command_has_help():
    for command in (["user", "sessions"], ["user", "kick"], ["component", "add"],
                    ["component", "remove"], ["component", "list"], ["node", "stop"],
                    ["node", "status"], ["cluster", "status"], ["config", "check"]):
        result = raftxmpp(*command, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout, command


def test_user_sessions_lists_full_jid_priority_availability_and_node(node):
    desk = XMPPClient(node.c2s_port).login("carol", "desk", priority=5)
    phone = XMPPClient(node.c2s_port).login("carol", "phone", priority=None)
    try:
        expected = [
            {"full_jid": "carol@localhost/desk", "priority": 5, "availability": "away",
             "node": "ops", "stream": ""},
            {"full_jid": "carol@localhost/phone", "priority": 0, "availability": "unavailable",
             "node": "ops", "stream": ""},
        ]
        assert wait_for(lambda: sessions_of(node, "carol@localhost") == expected, 10,
                        "both sessions with desk's presence")
        table = ok(cli(node, "user", "sessions", "carol@localhost")).splitlines()
        assert table[0].split() == ["FULL", "JID", "PRIORITY", "AVAILABILITY", "NODE",
                                     "STREAM"]
        assert table[1].split() == ["carol@localhost/desk", "5", "away", "ops"]
        assert table[2].split() == ["carol@localhost/phone", "0", "unavailable", "ops"]
    finally:
        desk.close()
        phone.close()
    wait_for(lambda: sessions_of(node, "carol@localhost") == [], 10, "the sessions to end")
    assert "carol@localhost has no session" in ok(cli(node, "user", "sessions", "carol@localhost"))
    assert_one_line_error(cli(node, "user", "sessions", "nobody@localhost"), "no account")
    assert_one_line_error(cli(node, "user", "sessions", "carol@localhost/desk"), "full JID")
    assert_one_line_error(cli(node, "user", "sessions", "carol@elsewhere.org"), "not served")


def test_user_kick_ends_one_session_or_all_with_policy_violation(node):
    desk = XMPPClient(node.c2s_port).login("bob", "desk")
    phone = XMPPClient(node.c2s_port).login("bob", "phone")
    laptop = XMPPClient(node.c2s_port).login("bob", "laptop")
    wait_for(lambda: len(sessions_of(node, "bob@localhost")) == 3, 10, "three sessions")

    assert ok(cli(node, "user", "kick", "bob@localhost/desk")).split() == [
        "kicked", "bob@localhost/desk"]
    tail = desk.until_closed()
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in tail, tail
    assert b"kicked by an administrator" in tail and tail.endswith(b"</stream:stream>")
    wait_for(lambda: len(sessions_of(node, "bob@localhost")) == 2, 10, "desk to be gone")

    kicked = ok(cli(node, "user", "kick", "bob@localhost")).splitlines()
    assert kicked == ["kicked bob@localhost/laptop", "kicked bob@localhost/phone"]
    for client in (phone, laptop):
        assert b"kicked by an administrator" in client.until_closed()
    wait_for(lambda: sessions_of(node, "bob@localhost") == [], 10, "every session to be gone")
    assert "has no session" in ok(cli(node, "user", "kick", "bob@localhost"))
    assert_one_line_error(cli(node, "user", "kick", "bob@localhost/desk"), "no session")
    assert_one_line_error(cli(node, "user", "kick", "not a jid@@"), "not a valid JID")


def test_component_add_list_update_remove(node, tmp_path):
    secret = "component-secret-never-stored-in-clear"
    secret_file = tmp_path / "muc.secret"
    secret_file.write_text(secret + "\n")
    added = ok(cli(node, "component", "add", "muc.localhost", "--secret-file", str(secret_file)))
    assert added.strip() == "registered muc.localhost (balancing random, buckets 0)"
    updated = ok(cli(node, "component", "add", "muc.localhost", "--secret-file", str(secret_file),
                     "--balancing", "bare_source", "--buckets", "64"))
    assert updated.startswith("updated muc.localhost")
    ok(cli(node, "component", "add", "pubsub.localhost", stdin="another-secret\n"))

    listed = json.loads(ok(cli(node, "component", "list", "--json")))
    assert listed == [
        {"domain": "muc.localhost", "balancing": "bare_source", "buckets": 64},
        {"domain": "pubsub.localhost", "balancing": "random", "buckets": 0},
    ]
    table = ok(cli(node, "component", "list")).splitlines()
    assert table[0].split() == ["DOMAIN", "BALANCING", "BUCKETS"]
    assert table[1].split() == ["muc.localhost", "bare_source", "64"]
    # The Raft log holds the secret sealed, never in the clear.
    journal = b"".join(p.read_bytes() for p in node.data_dir.glob("raft.*"))
    assert secret.encode() not in journal and b"another-secret" not in journal

    assert ok(cli(node, "component", "remove", "pubsub.localhost")).strip() == \
        "removed pubsub.localhost"
    assert [c["domain"] for c in json.loads(ok(cli(node, "component", "list", "--json")))] == [
        "muc.localhost"]
    assert_one_line_error(cli(node, "component", "remove", "pubsub.localhost"), "no component")
    assert_one_line_error(cli(node, "component", "add", "localhost", stdin="s3cret\n"),
                          "served host")
    assert_one_line_error(cli(node, "component", "add", "user@muc.localhost", stdin="s\n"),
                          "not a bare domain")
    empty = tmp_path / "empty"
    empty.write_text("")
    assert_one_line_error(cli(node, "component", "add", "x.localhost", "--secret-file", str(empty)),
                          "holds no secret")


def test_node_status_json(node):
    status = json.loads(ok(cli(node, "node", "status", "--json")))
    assert status["node"] == "ops" and status["raft"]["role"] == "leader"
    assert PASSWORD not in json.dumps(status)


# -- component secrets -------------------------------------------------------------------------------


def test_a_sealed_component_secret_opens_only_with_the_cluster_secret():
    cluster_secret = "cluster-secret-0123456789abcdef"
    sealed = seal_component_secret(cluster_secret, "s3cret")
    assert isinstance(sealed, bytes) and len(sealed) >= 16 and b"s3cret" not in sealed
    assert open_component_secret(cluster_secret, sealed) == "s3cret"
    assert seal_component_secret(cluster_secret, "s3cret") != sealed  # a fresh IV each time
    with pytest.raises(SealedSecretError):
        open_component_secret("another-cluster-secret-0123456789", sealed)
    tampered = sealed[:-5] + bytes([sealed[-5] ^ 1]) + sealed[-4:]
    with pytest.raises(SealedSecretError):
        open_component_secret(cluster_secret, tampered)
    with pytest.raises(ValueError):
        seal_component_secret(cluster_secret, "")


# -- HTTP: metrics, health, readiness ------------------------------------------------------------------


def test_health_ready_and_metrics_answer_plain_http(node):
    port = node.ports["http"]
    assert http_get(port, "/health") == (200, "text/plain; charset=utf-8", "ok\n")
    assert http_get(port, "/ready")[::2] == (200, "ready\n")
    status, content_type, body = http_get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert "raftxmpp_raft_role" in body
    assert http_get(port, "/nothing-here")[0] == 404
    assert http_get(port, "/health", method="POST")[0] == 405
    assert http_get(port, "/health", method="HEAD")[::2] == (200, "")
    assert raw_http(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n") \
        .startswith(b"HTTP/1.1 431 ")
    reply = raw_http(port, b"GET /health?probe=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Connection: close\r\n" in reply and reply.endswith(b"\r\n\r\nok\n")


def test_metrics_move_with_real_xmpp_traffic(node):
    before = scrape(node)
    alice = XMPPClient(node.c2s_port).login("alice", "a")
    bob = XMPPClient(node.c2s_port).login("bob", "b")
    try:
        wait_for(lambda: scrape(node)("raftxmpp_sessions") == 2, 10, "two sessions")
        during = scrape(node)
        assert during("raftxmpp_connections", type="c2s") == 2
        alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
        assert b"<body>hi</body>" in bob.until(b"</message>")
        alice.send("<iq type='get' id='ping1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b"ping1" in alice.until(b"ping1")
        alice.send("<message to='nobody@localhost' type='chat' id='m2'><body>?</body></message>")
        assert b"service-unavailable" in alice.until(b"</message>")
        after = scrape(node)
    finally:
        alice.close()
        bob.close()

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return after(name, **labels) - before(name, **labels) >= by

    assert grew("raftxmpp_stanzas_in_total", 2, kind="message")
    assert grew("raftxmpp_stanzas_in_total", 2, kind="presence")
    assert grew("raftxmpp_stanzas_in_total", 1, kind="iq")  # binds happen before routing
    assert grew("raftxmpp_stanzas_out_total", 2, kind="message")  # to bob, the error to alice
    assert grew("raftxmpp_stanzas_out_total", 1, kind="iq")
    assert grew("raftxmpp_routed_total", 1, outcome="error")
    wait_for(lambda: scrape(node)("raftxmpp_sessions") == 0, 10, "the sessions to end")
    assert scrape(node)("raftxmpp_connections", type="c2s") == 0

    commits = scrape(node)("raftxmpp_raft_commit_seconds_count")
    node.admin("user.add", jid="metered@localhost", password=PASSWORD)
    assert scrape(node)("raftxmpp_raft_commit_seconds_count") > commits
    final = scrape(node)
    assert final("raftxmpp_raft_role", role="leader") == 1
    assert final("raftxmpp_raft_applied_index") >= final("raftxmpp_raft_commit_index") - 1 > 0
    assert final("raftxmpp_build_info", node="ops", version="0.1.0") == 1


@pytest.mark.parametrize("status, reason", [
    (None, "raft is not running"),
    ({"has_quorum": False, "leader": "a:1", "ready": True}, "majority"),
    ({"has_quorum": True, "leader": None, "ready": True}, "no leader"),
    ({"has_quorum": True, "leader": "a:1", "ready": False}, "catching up"),
    ({"has_quorum": True, "leader": "a:1", "ready": True, "applied_index": 10,
      "leader_commit_index": 5000}, "4990 log entries behind"),
])
def test_ready_says_why_not(status, reason):
    is_ready, text = http.readiness(status)
    assert not is_ready and reason in text


def test_a_busy_http_port_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {**node_ports(), "http": busy.getsockname()[1]}
        process = NodeProcess(tmp_path, "busy", ports, [])
        result = raftxmpp("node", "start", "--config", str(process.config_path))
    assert_one_line_error(result, f"cannot listen for http on 127.0.0.1:{ports['http']}: port in use")


def test_http_is_switched_off_with_an_empty_listen(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[http]\nlisten = ""\n')
    assert config_mod.load(path).http.listen is None
    assert config_mod.embedded_default().http.listen == config_mod.Address("127.0.0.1", 5280)


def test_ready_flips_when_a_node_loses_the_majority_and_back(make_cluster):
    cluster = make_cluster(3).start()
    cluster.leader()
    survivor, *others = cluster.nodes
    for member in cluster.nodes:
        wait_for(lambda m=member: ready(m)[0] == 200, 20, f"{member.name} to be ready")
    status = json.loads(ok(cli(survivor, "cluster", "status", "--json")))
    assert len(status["raft"]["members"]) == 3

    for other in others:
        other.kill()
    wait_for(lambda: ready(survivor)[0] == 503, 20, "the survivor to report not ready")
    assert "majority" in ready(survivor)[1]
    assert http_get(survivor.ports["http"], "/health")[0] == 200  # alive, just not ready
    assert scrape(survivor)("raftxmpp_raft_has_quorum") == 0

    for other in others:
        other.start()
    for member in cluster.nodes:
        wait_for(lambda m=member: ready(m) == (200, "ready"), 30, f"{member.name} ready again")


def test_node_stop_ends_the_process(tmp_path):
    process = NodeProcess(tmp_path, "stoppable", node_ports(), [])
    process.start()
    assert ok(cli(process, "node", "stop")).strip() == "stopping"
    wait_for(lambda: process.process.poll() is not None, 15, "the node to exit")
    assert process.process.returncode == 0
    assert_one_line_error(cli(process, "node", "status"), "no running node")


# -- logs ------------------------------------------------------------------------------------------


def test_json_logs_have_node_level_msg_on_every_line_and_no_password(tmp_path):
    process = NodeProcess(tmp_path, "jsonlog", node_ports(), [], PLAINTEXT)
    process.start("--log-format", "json")
    try:
        wait_for(lambda: process.status()["leader"], 10, "the node to lead")
        ok(cli(process, "user", "add", "dave@localhost", stdin=PASSWORD + "\n"))
        client = XMPPClient(process.c2s_port).login("dave", "r1")
        wrong = XMPPClient(process.c2s_port)
        wrong.send(HEADER)
        wrong.until(b"</stream:features>")
        token = base64.b64encode(f"\0dave\0{PASSWORD}-wrong".encode()).decode()
        wrong.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        wrong.until(b"</failure>")
        ok(cli(process, "user", "kick", "dave@localhost"))
        client.until_closed()
        ok(cli(process, "user", "passwd", "dave@localhost", stdin=PASSWORD + "-2\n"))
    finally:
        assert process.stop() == 0
    lines = process.log().splitlines()
    assert len(lines) >= 5
    for line in lines:
        entry = json.loads(line)
        assert entry["node"] == "jsonlog" and entry["level"] in ("debug", "info", "warning", "error")
        assert isinstance(entry["msg"], str) and entry["msg"]
    text = process.log()
    assert PASSWORD not in text and base64.b64encode(PASSWORD.encode()).decode() not in text
    messages = [json.loads(line)["msg"] for line in lines]
    assert any("dave@localhost/r1" in m and "kicked" in m for m in messages)


# -- example configs ---------------------------------------------------------------------------------


def test_production_config_checks_away_from_its_host():
    path = ROOT / "config" / "production.toml"
    result = raftxmpp("config", "check", "--skip-files", str(path))
    assert result.returncode == 0, result.stderr
    cfg = config_mod.load(path, read_files=False)
    assert cfg.c2s.require_tls and not cfg.c2s.registration and not cfg.c2s.plaintext_auth_on_loopback
    assert cfg.tls.certificate is not None and cfg.log.format == "json"
    assert len(cfg.cluster.peers) == 2 and cfg.cluster.secret_file is not None
    if not cfg.cluster.secret_file.exists():
        # On its own host the secret file must exist; here it does not, and check says so.
        assert_one_line_error(raftxmpp("config", "check", str(path)), "secret_file")


def test_cluster_example_nodes_have_their_own_http_ports():
    nodes = [config_mod.load(p) for p in sorted((ROOT / "config" / "cluster-3").glob("node*.toml"))]
    assert len({n.http.listen for n in nodes}) == 3


def test_systemd_unit_runs_the_node_hardened():
    unit = (ROOT / "config" / "raftxmpp.service").read_text()
    for directive in ("Type=simple", "User=raftxmpp",
                      "ExecStart=/usr/local/bin/raftxmpp node start --config /etc/raftxmpp/node.toml",
                      "Restart=on-failure", "LimitNOFILE=65536", "NoNewPrivileges=true",
                      "ProtectSystem=strict", "ReadWritePaths=/var/lib/raftxmpp", "PrivateTmp=true"):
        assert f"\n{directive}\n" in unit, directive


# -- backup and restore (README, "Operating") ------------------------------------------------------------


def test_backup_of_a_stopped_follower_restores_a_whole_cluster(make_cluster, tmp_path):
    cluster = make_cluster(3).start()
    cluster.leader()
    first = cluster.nodes[0]
    for i in range(3):
        first.admin("user.add", jid=f"kept{i}@localhost", password=PASSWORD)
    follower = next(n for n in cluster.nodes if n.status()["role"] == "follower")
    wait_for(lambda: len(follower.admin("user.list")) == 3, 10, "the follower to catch up")

    ok(cli(follower, "node", "stop"))
    wait_for(lambda: follower.process.poll() is not None, 15, "the follower to exit")
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("raft.dump", "raft.journal", "raft.journal.meta", "raft.secret"):  # README
        if (follower.data_dir / name).exists():
            shutil.copy2(follower.data_dir / name, backup / name)
    assert (backup / "raft.journal").exists()
    follower.start()
    first.admin("user.add", jid="after-backup@localhost", password=PASSWORD)

    # Disaster: every data dir is lost. Restore the one backup into all of them.
    cluster.kill_all()
    for member in cluster.nodes:
        shutil.rmtree(member.data_dir)
        member.data_dir.mkdir(mode=0o700)
        for path in backup.iterdir():
            shutil.copy2(path, member.data_dir / path.name)
    cluster.start()
    cluster.leader()
    kept = [f"kept{i}@localhost" for i in range(3)]
    for member in cluster.nodes:
        wait_for(lambda m=member: m.admin("user.list", current=True) == kept, 20,
                 f"{member.name} to hold exactly the backed-up accounts")
    cluster.nodes[2].admin("user.add", jid="restored-cluster-writes@localhost", password=PASSWORD)
