"""Writes helm/tributary/files/dashboard.json, the Grafana dashboard of a Tributary install
(variables $datasource and $region). The suite checks that the committed file is what this
script writes, and that every query returns data from a real Prometheus scraping a pipeline.

usage: python scripts/gen_dashboard.py [--check]
"""
import json
import os
import sys

OUT = os.path.join(os.path.dirname(__file__), "..", "helm", "tributary", "files", "dashboard.json")
R = 'region=~"$region"'

# (title, unit, [(expr, legend)], thresholds or None, description)
PANELS = [
    ("Throughput per stage (rows written/s)", "rowsps",
     [(f'sum by (stage) (rate(tributary_rows_total{{{R},outcome="written"}}[5m]))', "{{stage}}")], None,
     "Rows committed per second by each layer."),
    ("Freshness per layer (now − newest event time visible)", "s",
     [(f'time() - max by (stage) (tributary_max_event_time_unix_seconds{{{R}}})', "{{stage}}")],
     [60, 300, 900],
     "Targets of the brief: bronze < 60 s, silver < 5 min, gold < 15 min. Event time, so a producer's "
     "own delay counts too (the catch-up measure of seed 002)."),
    ("Backlog per stage", "short",
     [(f'sum by (stage) (tributary_backlog{{{R}}})', "{{stage}}")], None,
     "Work waiting: landing files for bronze, upstream commits not yet read for the others."),
    ("Kafka consumer lag", "short",
     [('sum by (group, topic) (tributary_kafka_consumer_lag)', "{{group}} {{topic}}")], None,
     "Messages behind the partitions' end, per consumer group and topic."),
    ("Commit conflicts/s", "ops",
     [(f'sum by (stage, table) (rate(tributary_commit_conflicts_total{{{R}}}[5m]))', "{{stage}} {{table}}")], None,
     "Commits that lost an optimistic-concurrency race and were retried."),
    ("Failed batches/s", "ops",
     [(f'sum by (stage, table) (rate(tributary_batch_errors_total{{{R}}}[5m]))', "{{stage}} {{table}}")], None,
     "Batches that failed and will be retried."),
    ("Quarantined rows/s", "rowsps",
     [(f'sum by (stage, table) (rate(tributary_rows_total{{{R},outcome="quarantined"}}[5m]))', "{{stage}} {{table}}")], None,
     "Rows set aside with a reason (never dropped silently)."),
    ("Expectation failures (share of rows checked)", "percentunit",
     [(f'sum by (table, expectation) (rate(tributary_expectation_rows_total{{{R},outcome="failed"}}[15m])) '
       f'/ clamp_min(sum by (table, expectation) (rate(tributary_expectation_rows_total{{{R}}}[15m])), 1e-9)',
       "{{table}} {{expectation}}")], None,
     "Data-quality expectations: failed rows over rows checked."),
    ("Source drift findings (last hour)", "short",
     [(f'sum by (table, kind) (increase(tributary_drift_events_total{{{R}}}[1h]))', "{{table}} {{kind}}")], None,
     "New or missing fields, type changes, null and malformed rate jumps."),
    ("Dedup work (duplicates removed/s)", "rowsps",
     [(f'sum by (table) (rate(tributary_rows_total{{stage="silver",{R},outcome="duplicate"}}[5m]))', "{{table}}")], None,
     "Replayed or redelivered events silver removed."),
    ("Billing finality lag", "s",
     [(f'time() - max by (region) (tributary_watermark_unix_seconds{{{R},table=~"gold/billing.*"}})', "{{region}}")], None,
     "How far behind now billing windows are final (watermark = max event time - allowed lateness)."),
    ("Batch duration p99", "s",
     [(f'histogram_quantile(0.99, sum by (le, stage) (rate(tributary_batch_duration_seconds_bucket{{{R}}}[5m])))', "{{stage}}")], None,
     "Read to commit, per batch."),
]


def panel(i, title, unit, targets, thresholds, description):
    steps = [{"color": "green", "value": None}]
    if thresholds:
        steps += [{"color": c, "value": v} for c, v in zip(["yellow", "orange", "red"], thresholds)]
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + j), "expr": e, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for j, (e, legend) in enumerate(targets)
        ],
    }


def dashboard():
    return {
        "uid": "tributary-pipeline",
        "title": "Tributary pipeline",
        "tags": ["tributary"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "region", "type": "query", "label": "Region",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(tributary_rows_total, region)", "refId": "region"},
             "definition": "label_values(tributary_rows_total, region)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def main():
    text = json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if open(OUT, encoding="utf-8").read() != text:
            sys.exit(f"{OUT} is not what scripts/gen_dashboard.py writes: run it")
        return
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
