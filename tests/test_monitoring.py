"""What operators watch the cluster with: config/prometheus (alert rules) and
config/grafana (the dashboard).

- promtool, from Debian's prometheus package (installed here when missing, its service
  never started), checks the rules and runs their unit tests, which feed every alert
  series that must fire it and series that must not;
- every dashboard query parses as PromQL (promtool checks it as a recording rule);
- a real 3-node cluster is scraped, and every metric a rule or a panel names must be
  exported by every node, with the label values the query matches on: a renamed
  metric or a misspelt label value fails here, not silently on an operator's screen.
"""

from __future__ import annotations

import base64
import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import browser_setup
from tests.harness import Cluster, wait_for
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
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "raftxmpp", "$instance": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    if shutil.which("promtool") is None:
        browser_setup._apt_install("prometheus")  # policy-rc.d keeps its service stopped
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


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel, with the template variables expanded."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


# -- alert rules -----------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool):
    out = run_promtool(promtool, "check", "rules", RULES.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_every_alert_fires_and_stays_quiet_in_its_unit_tests(promtool):
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    untested = {rule["alert"] for rule in alert_rules()} - tested
    assert not untested, f"alerts without a promtool test: {sorted(untested)}"
    run_promtool(promtool, "test", "rules", RULE_TESTS.name)


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
    assert {"Stream management", "Federation (s2s)", "Storage"} <= set(rows)
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
