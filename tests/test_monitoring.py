"""What operators watch the cluster with: config/prometheus (alert rules) and
config/grafana (the dashboard).

- promtool, from Debian's prometheus package (installed here when missing, its service
  never started), checks the rules and runs their unit tests, which feed every alert
  series that must fire it and series that must not;
- every dashboard query parses as PromQL (promtool checks it as a recording rule);
- a real 3-node cluster is scraped, and every metric a rule or a panel names must be
  exported by every node, with the label values the query matches on: a renamed
  metric or a misspelt label value fails here, not silently on an operator's screen;
- a real Prometheus server scrapes that cluster with the rules: every panel's query
  returns data, and killing a node raises the alerts that page for it.
"""

from __future__ import annotations

import base64
import json
import re
import runpy
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import debian
from tests.harness import Cluster, free_ports, wait_for
from tests.test_cli import ROOT
from tests.test_ops import HEADER, PASSWORD, PLAINTEXT, Metrics, XMPPClient, scrape

PROMETHEUS = ROOT / "config" / "prometheus"
RULES = PROMETHEUS / "raftxmpp.rules.yml"
RULE_TESTS = PROMETHEUS / "raftxmpp.rules.test.yml"
GRAFANA = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA / "raftxmpp.json"

# A metric name, then optionally its matchers: `raftxmpp_x{a="b", c=~"d|e"}`.
SELECTOR = re.compile(r"\b(raftxmpp_[a-z0-9_]+)\b(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
# The dashboard's template variables, as Grafana expands them for one cluster.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$job": "raftxmpp", "$instance": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    if shutil.which("promtool") is None:
        debian.apt_install("prometheus")  # policy-rc.d keeps its service stopped
    path = shutil.which("promtool")
    assert path, "promtool is missing after installing Debian's prometheus package"
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_rows() -> dict[str, list[tuple[str, str]]]:
    """{row title: [(panel title, PromQL)]}, with the template variables expanded."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            row = rows.setdefault(panel["title"], [])
            continue
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            row.append((panel["title"], expr))
    return rows


def dashboard_queries() -> list[tuple[str, str]]:
    return [query for row in dashboard_rows().values() for query in row]


# -- alert rules -----------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool):
    out = run_promtool(promtool, "check", "rules", RULES.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def _sources(labels: str | dict) -> set[tuple[str, str]]:
    """(job, instance) of a series selector string or of an alert's expected labels."""
    if isinstance(labels, dict):
        return {(labels.get("job", ""), labels.get("instance", ""))}
    found = dict(re.findall(r'(job|instance)="([^"]*)"', labels))
    return {(found.get("job", ""), found.get("instance", ""))}


def test_every_alert_fires_and_stays_quiet_in_its_unit_tests(promtool):
    """Each alert has a case where it fires, and beside it series that must not fire it
    (another instance or job in the same input), or a time when it must not yet."""
    fires, quiet = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        sources = set().union(*(_sources(s["series"]) for s in test["input_series"]))
        for case in test["alert_rule_test"]:
            fired = set().union(set(), *(_sources(a["exp_labels"]) for a in case["exp_alerts"]))
            if fired:
                fires.add(case["alertname"])
            if not fired or sources - fired:
                quiet.add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts <= fires, f"alerts never seen firing: {sorted(alerts - fires)}"
    assert alerts <= quiet, f"alerts never seen quiet: {sorted(alerts - quiet)}"
    run_promtool(promtool, "test", "rules", RULE_TESTS.name)


def test_the_shipped_prometheus_config_loads_the_rules(promtool):
    out = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out


def test_every_alert_pages_or_warns_with_a_summary():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# -- dashboard -------------------------------------------------------------------------------------


def test_dashboard_json_is_the_output_of_its_build_script():
    render = runpy.run_path(str(GRAFANA / "build.py"))["render"]
    assert DASHBOARD.read_text() == render(), "run: python config/grafana/build.py"


def test_dashboard_has_one_row_per_plane_with_unique_panel_ids():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows[:3] == ["Raft", "Gossip and node links", "Client traffic"]
    assert {"Stream management", "Group chat (MUC)", "Message archive (MAM)",
            "Federation (s2s)", "Storage"} <= set(rows)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert all(p.get("targets") for p in panels if p["type"] != "row")


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """promtool has no query checker, but it parses every recording rule's expression."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)


# -- against a running cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    """A 3-node cluster whose node links and gossip are up."""
    cluster = Cluster(tmp_path_factory.mktemp("monitoring"), 3, PLAINTEXT)
    try:
        cluster.start()
        cluster.leader(timeout=60)

        def meshed() -> bool:
            return all(s("raftxmpp_gossip_nodes_alive") == 3
                       and sum(v for (name, _), v in s.items()
                               if name == "raftxmpp_node_link_up") == 2
                       for s in map(scrape, cluster.nodes))

        wait_for(meshed, 60, "node links and gossip between the three nodes")
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def scraped(cluster) -> list[Metrics]:
    return [scrape(node) for node in cluster.nodes]


def unexported(text: str, samples: Metrics) -> list[str]:
    """Selectors in `text` whose metric, or matched label value, `samples` lacks."""
    missing = []
    for name, matchers in SELECTOR.findall(text):
        series = [dict(labels) for (sample, labels) in samples if sample == name]
        if not series:
            missing.append(name)
            continue
        for label, op, value in MATCHER.findall(matchers or ""):
            if label in ("job", "instance") or op.startswith("!"):
                continue
            wanted = value.split("|") if op == "=~" else [value]
            missing += [f'{name}{{{label}="{v}"}}' for v in wanted
                        if not any(s.get(label) == v for s in series)]
    return missing


def test_every_alert_rule_names_metrics_every_node_exports(scraped):
    for rule in alert_rules():
        for index, samples in enumerate(scraped):
            missing = unexported(rule["expr"], samples)
            assert not missing, f"{rule['alert']}: node{index + 1} exports no {missing}"


def test_every_dashboard_panel_names_metrics_every_node_exports(scraped):
    queries = dashboard_queries()
    assert len(queries) > 30
    for title, expr in queries:
        assert SELECTOR.search(expr), f"panel {title!r} names no raftxmpp metric: {expr}"
        for index, samples in enumerate(scraped):
            missing = unexported(expr, samples)
            assert not missing, f"panel {title!r}: node{index + 1} exports no {missing}"


def test_logins_are_counted_by_outcome(cluster):
    cluster.leader().admin("user.add", jid="watched@localhost", password=PASSWORD)
    node = cluster.nodes[1]
    before = scrape(node)
    guess = XMPPClient(node.c2s_port)
    try:
        guess.send(HEADER)
        guess.until(b"</stream:features>")
        token = base64.b64encode(b"\0watched\0wrong-password").decode()
        guess.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        assert b"not-authorized" in guess.until(b"</failure>")
    finally:
        guess.close()
    XMPPClient(node.c2s_port).login("watched", "phone").close()
    after = scrape(node)
    for outcome, grew in (("failure", 1), ("success", 1), ("refused", 0)):
        assert (after("raftxmpp_c2s_logins_total", outcome=outcome)
                - before("raftxmpp_c2s_logins_total", outcome=outcome)) == grew, outcome


def test_every_node_times_its_raft_fsyncs(cluster):
    """A durable write is synced on the leader and on each follower before it is acked."""
    before = [scrape(node)("raftxmpp_raft_fsync_seconds_count") for node in cluster.nodes]
    cluster.leader().admin("user.add", jid="synced@localhost", password=PASSWORD)

    def synced() -> bool:
        after = [scrape(node)("raftxmpp_raft_fsync_seconds_count") for node in cluster.nodes]
        return all(a > b for a, b in zip(after, before, strict=True))

    wait_for(synced, 30, "an fsync timed on every node")


# -- a real Prometheus server scraping the cluster ------------------------------------------------


class Prometheus:
    """Debian's prometheus (the package that brings promtool) scraping `targets` every
    second and evaluating our rules every second, in its own data directory."""

    def __init__(self, base: Path, targets: list[str]) -> None:
        self.port = free_ports(1)[0]
        config = base / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "raftxmpp",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = open(base / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={base / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def ready(self) -> bool:
        try:
            # Three scrapes of each node at least: rate() needs two samples in its window.
            return len(self.query('count_over_time(up{job="raftxmpp"}[1m]) >= 3 '
                                  'and up{job="raftxmpp"} == 1')) == 3
        except (OSError, urllib.error.URLError):
            assert self.process.poll() is None, "prometheus exited"
            return False

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(promtool, cluster, tmp_path_factory):
    server = Prometheus(tmp_path_factory.mktemp("prometheus"),
                        [f"127.0.0.1:{node.ports['http']}" for node in cluster.nodes])
    try:
        wait_for(server.ready, 60, "prometheus to scrape the three nodes")
        yield server
    finally:
        server.stop()


# Panels with nothing to show on an idle test cluster, and why.
IDLE_PANELS = {"s2s streams": "no server-to-server stream is open"}


def test_prometheus_answers_every_dashboard_panel_with_data(prometheus, cluster):
    cluster.leader().admin("user.add", jid="graphed@localhost", password=PASSWORD)
    for row, queries in dashboard_rows().items():
        for title, expr in queries:
            result = prometheus.query(expr)
            assert result or title in IDLE_PANELS, f"{row} / {title!r} shows nothing: {expr}"


def test_a_killed_node_raises_the_alerts_that_page_for_it(prometheus, cluster):
    """Real scrapes of real nodes through our rules: kill -9 one node, and Prometheus
    has NodeDown pending for it and a link down pending on each survivor.
    (Last in this file: the module's cluster has two nodes after it.)"""
    victim = cluster.nodes[2]
    victim.kill()

    def pending() -> set[tuple[str, str]]:
        return {(a["metric"]["alertname"], a["metric"].get("instance", "") + "/"
                 + a["metric"].get("peer", ""))
                for a in prometheus.query("ALERTS")}

    down = f"127.0.0.1:{victim.ports['http']}/"
    survivors = {f"127.0.0.1:{node.ports['http']}/node3" for node in cluster.nodes[:2]}
    wait_for(lambda: ("RaftxmppNodeDown", down) in pending()
             and survivors <= {i for name, i in pending() if name == "RaftxmppNodeLinkDown"},
             60, "NodeDown and NodeLinkDown to be pending")
