"""Writes raftxmpp.json, the Grafana dashboard of a raftxmpp cluster, beside this file.

    python config/grafana/build.py
    python config/grafana/build.py --missing http://127.0.0.1:5280/metrics

The JSON is what operators import (Dashboards → Import, or provisioning); this script
is its source, so a panel is one line here rather than forty of JSON. One row per
plane: Raft, gossip and node links, client traffic, then each feature's own row.
tests/test_monitoring.py checks that the committed JSON is this script's output and
that every query names metrics (and label values) a running cluster exports.

Queries use two template variables: $job (the Prometheus job scraping the nodes)
and $instance (any subset of its nodes).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("raftxmpp.json")
SEL = 'job="$job", instance=~"$instance"'
RATE = "$__rate_interval"


def q(expr: str, legend: str = "{{instance}}") -> dict:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str) -> list[dict]:
    """p50 and p99 of a histogram, per node."""
    return [q(f"histogram_quantile({p}, sum by (instance, le) "
              f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))", f"p{round(p * 100)} {{{{instance}}}}")
            for p in (0.5, 0.99)]


def per_node(metric: str) -> list[dict]:
    return [q(f"{metric}{{{SEL}}}")]


def rate_by(metric: str, label: str) -> list[dict]:
    """Per-second rate summed over the selected nodes, one series per label value."""
    return [q(f"sum by ({label}) (rate({metric}{{{SEL}}}[{RATE}]))", f"{{{{{label}}}}}")]


# (row title, [(panel title, unit, queries, description)])
ROWS: list[tuple[str, list[tuple[str, str, list[dict], str]]]] = [
    ("Raft", [
        ("Nodes per Raft role", "short",
         [q(f"sum by (role) (raftxmpp_raft_role{{{SEL}}})", "{{role}}")],
         "Exactly one leader is healthy; zero means no durable write succeeds."),
        ("Quorum, leader known, caught up", "short",
         [q(f"min by (instance) (raftxmpp_raft_has_quorum{{{SEL}}})", "quorum {{instance}}"),
          q(f"min by (instance) (raftxmpp_raft_has_leader{{{SEL}}})", "leader {{instance}}"),
          q(f"min by (instance) (raftxmpp_raft_ready{{{SEL}}})", "ready {{instance}}")],
         "1 = yes. /ready answers 503 unless all three are 1."),
        ("Term", "short", per_node("raftxmpp_raft_term"),
         "Moves only with elections: steps are leader changes."),
        ("Commit and apply index", "short",
         [q(f"raftxmpp_raft_commit_index{{{SEL}}}", "commit {{instance}}"),
          q(f"raftxmpp_raft_applied_index{{{SEL}}}", "applied {{instance}}")],
         "Should rise together on every node."),
        ("Entries behind the leader", "short",
         [q(f"raftxmpp_raft_leader_commit_index{{{SEL}}} - raftxmpp_raft_applied_index{{{SEL}}}")],
         "The leader's commit index less this node's applied index."),
        ("Commits per second", "ops",
         [q(f"rate(raftxmpp_raft_commit_seconds_count{{{SEL}}}[{RATE}])")],
         "Commands submitted on each node and committed."),
        ("Writes not committed in time", "ops",
         rate_by("raftxmpp_raft_write_failures_total", "outcome"),
         "unavailable: surely never applied; unknown: may still apply (the client was told "
         "it failed)."),
        ("Commit latency", "s", quantiles("raftxmpp_raft_commit_seconds"),
         "From submitting a command on a node to its apply there, retries included."),
        ("fsync latency", "s", quantiles("raftxmpp_raft_fsync_seconds"),
         "Each sync of the journal, metadata or snapshot."),
        ("Snapshot size", "bytes",
         [q(f"raftxmpp_raft_snapshot_bytes{{{SEL}}}", "snapshot {{instance}}")],
         "Bytes of the last snapshot each node wrote."),
        ("Log entries since the snapshot", "short", per_node("raftxmpp_raft_log_entries"),
         "Grows until the next snapshot compacts the log."),
        ("Raft members reachable", "short",
         [q(f"sum by (instance) (raftxmpp_raft_member_reachable{{{SEL}}})"),
          q(f"max(raftxmpp_raft_members{{{SEL}}})", "members")],
         "Members each node is connected to (itself included), against the member count."),
    ]),
    ("Gossip and node links", [
        ("Nodes heard by gossip", "short",
         [q(f"raftxmpp_gossip_nodes_alive{{{SEL}}}"),
          q(f"max(raftxmpp_raft_members{{{SEL}}})", "members")],
         "Below the member count, sessions and presence of the missing nodes are invisible."),
        ("Links up", "short",
         [q(f"raftxmpp_node_link_up{{{SEL}}}", "{{instance}} → {{peer}}")],
         "1 while the link to the peer node is connected."),
        ("Link queue fill", "percentunit",
         [q(f"raftxmpp_node_link_queue_bytes{{{SEL}}} / on (job, instance) group_left "
            f"raftxmpp_node_link_queue_limit_bytes{{{SEL}}}", "{{instance}} → {{peer}}")],
         "At 100 % frames to that peer are dropped."),
        ("Frames dropped on full links", "ops",
         [q(f"rate(raftxmpp_node_link_dropped_frames_total{{{SEL}}}[{RATE}])",
            "{{instance}} → {{peer}}")], "Anything above zero is lost stanzas or presence."),
    ]),
    ("Client traffic", [
        ("Connections", "short",
         [q(f"sum by (type) (raftxmpp_connections{{{SEL}}})", "{{type}}"),
          q(f"sum(raftxmpp_sessions{{{SEL}}})", "bound sessions")],
         "Open client and component connections; sessions are bound resources."),
        ("Sessions per node", "short", per_node("raftxmpp_sessions"),
         "Balanced nodes carry similar numbers."),
        ("Stanzas in", "ops", rate_by("raftxmpp_stanzas_in_total", "kind"),
         "From bound clients, per second."),
        ("Stanzas out", "ops", rate_by("raftxmpp_stanzas_out_total", "kind"),
         "Written to clients, per second."),
        ("Routing outcomes", "ops", rate_by("raftxmpp_routed_total", "outcome"),
         "Stanzas to local accounts: delivered here, on another node, stored offline, "
         "or bounced."),
        ("Offline messages delivered twice", "ops",
         [q(f"rate(raftxmpp_offline_redelivered_total{{{SEL}}}[{RATE}])")],
         "A claiming session ended before removing them: duplicates, never losses."),
        ("Clients gone silent", "ops",
         [q(f"sum(rate(raftxmpp_c2s_ping_timeouts_total{{{SEL}}}[{RATE}]))", "ping timeouts")],
         "Connections closed because the client did not answer the server's ping "
         "(XEP-0199): mobile clients losing their network."),
        ("Logins", "ops", rate_by("raftxmpp_c2s_logins_total", "outcome"),
         "SASL outcomes; refused = throttled or credentials not confirmable."),
    ]),
    ("Stream management", [
        ("Stream resumptions", "ops", rate_by("raftxmpp_sm_resumptions_total", "outcome"),
         "XEP-0198 <resume/> answered on these nodes."),
        ("Stream-management sessions", "ops", rate_by("raftxmpp_sm_sessions_total", "event"),
         "Enabled, detached (connection lost), resumed here or moved between nodes, expired."),
        ("Detached sessions waiting", "short",
         [q(f"sum by (instance) (raftxmpp_sm_detached_sessions{{{SEL}}})")],
         "Sessions whose connection was lost, held for their client to resume."),
        ("Unacknowledged stanzas at session end", "ops",
         rate_by("raftxmpp_sm_unacked_stanzas_total", "outcome"),
         "Rerouted (another resource or offline), bounced with an error, or dropped."),
    ]),
    ("Group chat (MUC)", [
        ("Rooms and occupants", "short",
         [q(f"max(raftxmpp_muc_rooms{{{SEL}}})", "rooms"),
          q(f'max(raftxmpp_muc_occupants{{{SEL}, where="cluster"}})', "occupants, cluster"),
          q(f'raftxmpp_muc_occupants{{{SEL}, where="local"}}', "occupants on {{instance}}")],
         "Rooms live in the replicated state; occupants are gossiped."),
        ("Room messages", "ops", rate_by("raftxmpp_muc_messages_total", "step"),
         "Ordered by a room's ordering node, delivered (one per recipient), refused."),
    ]),
    ("Message archive (MAM)", [
        ("Archive rows", "ops", rate_by("raftxmpp_archive_rows_total", "outcome"),
         "Queued per archiving account and message, committed in batches; dropped is "
         "history lost."),
        ("Archive queries", "ops", rate_by("raftxmpp_archive_queries_total", "kind"), ""),
    ]),
    ("Publish-subscribe and PEP", [
        ("Pubsub requests", "ops", rate_by("raftxmpp_pubsub_requests_total", "request"), ""),
        ("Event notifications", "ops",
         rate_by("raftxmpp_pubsub_notifications_total", "outcome"), ""),
        ("Entity capabilities", "ops", rate_by("raftxmpp_pubsub_caps_total", "outcome"), ""),
        ("Stored items, nodes, owners", "short",
         [q(f"max(raftxmpp_pubsub_items{{{SEL}}})", "items"),
          q(f"max(raftxmpp_pubsub_nodes{{{SEL}}})", "nodes"),
          q(f"max(raftxmpp_pubsub_owners{{{SEL}}})", "owners")],
         "From the replicated state (the same on every node)."),
        ("Stored item bytes", "bytes", [q(f"max(raftxmpp_pubsub_bytes{{{SEL}}})", "bytes")],
         "Ids and payloads of stored items, in the replicated state (and every snapshot)."),
    ]),
    ("Federation (s2s)", [
        ("s2s streams", "short",
         [q(f"sum by (direction) (raftxmpp_s2s_streams{{{SEL}}})", "{{direction}}")],
         "Authenticated server-to-server streams held by these nodes."),
        ("s2s stanzas", "ops", rate_by("raftxmpp_s2s_stanzas_total", "direction"), ""),
        ("s2s failures and bounces", "ops",
         [q(f"sum(rate(raftxmpp_s2s_stream_failures_total{{{SEL}}}[{RATE}]))",
            "streams not set up"),
          q(f"sum by (condition) (rate(raftxmpp_s2s_bounced_total{{{SEL}}}[{RATE}]))",
            "bounced: {{condition}}"),
          q(f"sum(rate(raftxmpp_s2s_forwarded_total{{{SEL}}}[{RATE}]))",
            "forwarded to the stream's node")], ""),
    ]),
    ("Storage", [
        ("Data directory", "bytes",
         [q(f"raftxmpp_data_dir_bytes{{{SEL}}}", "used {{instance}}"),
          q(f"raftxmpp_data_filesystem_avail_bytes{{{SEL}}}", "free {{instance}}")],
         "Journal, snapshots and archive, against what the file system has left."),
        ("Data file system free", "percentunit",
         [q(f"raftxmpp_data_filesystem_avail_bytes{{{SEL}}} / "
            f"raftxmpp_data_filesystem_size_bytes{{{SEL}}}")], ""),
    ]),
]


def panel(pid: int, title: str, unit: str, targets: list[dict], description: str,
          x: int, y: int) -> dict:
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{**target, "refId": chr(ord("A") + i),
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, target in enumerate(targets)],
    }


def variables() -> list[dict]:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "job", "type": "query", "datasource": ds, "label": "Job",
         "query": {"query": "label_values(raftxmpp_build_info, job)", "refId": "job"},
         "definition": "label_values(raftxmpp_build_info, job)", "refresh": 1},
        {"name": "instance", "type": "query", "datasource": ds, "label": "Node",
         "query": {"query": 'label_values(raftxmpp_build_info{job="$job"}, instance)',
                   "refId": "instance"},
         "definition": 'label_values(raftxmpp_build_info{job="$job"}, instance)',
         "refresh": 1, "multi": True, "includeAll": True, "allValue": ".*"},
    ]


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (name, unit, targets, description) in enumerate(row):
            panels.append(panel(pid, name, unit, targets, description, (i % 3) * 8, y + i // 3 * 8))
            pid += 1
        y += (len(row) + 2) // 3 * 8
    return {
        "title": "raftxmpp cluster", "uid": "raftxmpp-cluster", "editable": True,
        "tags": ["raftxmpp", "xmpp"], "timezone": "utc", "refresh": "30s",
        "schemaVersion": 39, "version": 1, "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables()}, "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def missing(metrics_url: str) -> list[str]:
    """Metric families a node exports that no panel shows (for whoever adds a metric)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    shown = render()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return sorted(f for f in families if f not in shown)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--missing"]:  # --missing http://127.0.0.1:5280/metrics
        print("\n".join(missing(sys.argv[2])) or "every exported family is on the dashboard")
    else:
        OUT.write_text(render())
        print(f"wrote {OUT}")
