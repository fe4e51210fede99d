"""infra/monitoring: the alerting rules pass `promtool check rules` and their unit tests
(`promtool test rules`), every alert names a dashboard panel and a runbook section that exist, and
the dashboard queries only metrics biofleet exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring"
RUNBOOK = ROOT / "docs" / "runbook.md"
SOURCES = [*ROOT.glob("api/*.py"), *ROOT.glob("worker/*.py"), *ROOT.glob("shared/*.py")]
# Series Prometheus or Flower add: target health and Flower's own metrics.
FOREIGN = {"up", "flower_worker_online"}


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (Debian package prometheus; `make tools` installs it where apt works)")
    return found


def alerts() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict:
    return json.loads((MONITORING / "dashboard.json").read_text())


def exported_names() -> set[str]:
    """Metric names defined in biofleet's code, with the suffixes Prometheus adds."""
    names = set()
    for path in SOURCES:
        for name in re.findall(r'"(biofleet_[a-z0-9_]+)"', path.read_text()):
            names |= {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:biofleet|flower)_[a-z0-9_]+|up)\b", expr))


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", str(MONITORING / "alerts.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yaml"], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load((MONITORING / "alerts_test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {rule["alert"] for rule in alerts()} <= fired


def test_every_alert_names_its_panel_and_runbook_section():
    panels = {panel["id"]: panel["title"] for panel in dashboard()["panels"]}
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    runbook = RUNBOOK.read_text()
    for rule in alerts():
        annotations = rule["annotations"]
        title, panel_id = re.fullmatch(r"(.+) \(id (\d+)\)", annotations["panel"]).groups()
        assert panels.get(int(panel_id), "").startswith(title), (rule["alert"], annotations["panel"])
        path, anchor = annotations["runbook_url"].split("#")
        assert path == "docs/runbook.md" and anchor in anchors, (rule["alert"], anchor)
        section = runbook.split(f"### {rule['alert']}", 1)[1].split("\n### ", 1)[0]
        assert f"viewPanel={panel_id}" in section and "First action" in section, rule["alert"]


def test_dashboard_covers_what_ops_watch():
    exprs = " ".join(t["expr"] for panel in dashboard()["panels"] for t in panel["targets"])
    for needle in (
        "biofleet_queue_depth",
        "biofleet_jobs_finished_total",
        "biofleet_job_latency_seconds_bucket",
        "biofleet_batch_size_bucket",
        "biofleet_batch_stage_seconds",
        "biofleet_worker_info",
        "biofleet_worker_busy_seconds_total",
        "biofleet_callbacks_pending",
        "biofleet_callback_attempts_total",
        "biofleet_api_requests_total",
        "biofleet_api_submit_duration_seconds_bucket",
        "flower_worker_online",
    ):
        assert needle in exprs
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(biofleet_job_latency_seconds_bucket" in exprs


def test_queries_use_only_exported_metrics():
    known = exported_names() | FOREIGN
    exprs = [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    exprs += [rule["expr"] for rule in alerts()]
    for expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, (expr, unknown)


def test_one_latency_histogram_and_conventional_names():
    """End-to-end latency has one name; counters end in _total, durations in _seconds."""
    names = exported_names()
    assert not [n for n in names if "latency" in n and not n.startswith("biofleet_job_latency_seconds")]
    assert not [n for n in names if "end_to_end" in n]
    for path in SOURCES:
        for kind, name in re.findall(r'\b(Counter|Histogram|Gauge)\(\s*"(biofleet_[a-z0-9_]+)"', path.read_text()):
            if kind != "Counter":
                assert not name.endswith("_total"), name  # only counters end in _total (the client adds it)
            if any(word in name for word in ("duration", "latency", "busy")):
                assert name.endswith("_seconds"), name
