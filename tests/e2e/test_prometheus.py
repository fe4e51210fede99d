"""A real Prometheus on loopback scrapes a `biofleet up` stack (API, worker, callback dispatcher,
depth exporter, Flower) while a small workload runs: every dashboard panel's query returns data,
no alert fires on the healthy stack, BiofleetWorkersAbsentWithBacklog fires once the worker is
stopped with jobs queued, and BiofleetScalingMetricAbsent once the exporter is stopped (the rules
loaded with their `for` shortened to 2 s)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from shared.settings import get_settings
from shared.stack import free_port, stop_process, wait_http

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring"
BIOFLEET = [str(Path(sys.executable).parent / "biofleet")]
SERVICE_ENV = ("BIOFLEET_REDIS_URL", "BIOFLEET_DATABASE_URL", "BIOFLEET_BLOB_URL", "BIOFLEET_STATE_DIR")
RATE_WINDOW = "30s"  # $__rate_interval, for 1 s scrapes
WAIT_S = 90


def face_images(count: int) -> list[bytes]:
    faces = get_settings().faces_dir / "lfw_colour"
    if not faces.is_dir():
        pytest.skip(f"no face images in {faces}")
    for identity in sorted(faces.iterdir()):
        images = sorted(identity.glob("*.jpg"))
        if len(images) >= count:
            return [path.read_bytes() for path in images[:count]]
    pytest.skip(f"no identity with {count} images in {faces}")


@pytest.fixture
def stack(tmp_path):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus not installed (Debian package prometheus; `make tools` installs it where apt works)")
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    ports = {
        name: free_port() for name in ("API", "FLOWER", "WORKER_METRICS", "METRICS", "EXPORTER", "CALLBACKS_METRICS")
    }
    env.update(
        {f"BIOFLEET_{name}_PORT": str(port) for name, port in ports.items()},
        BIOFLEET_STATE_DIR=str(tmp_path / "state"),
        BIOFLEET_CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    try:
        up = subprocess.run([*BIOFLEET, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((tmp_path / "state" / "stack.json").read_text())
        yield env, ports, info
    finally:
        subprocess.run([*BIOFLEET, "down"], env=env, capture_output=True, timeout=300)


@pytest.fixture
def prometheus(stack, tmp_path):
    env, ports, _ = stack
    settings = get_settings()
    target = lambda port: {"targets": [f"127.0.0.1:{port}"]}  # noqa: E731
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(quick_rules(tmp_path))],
        "scrape_configs": [
            {"job_name": "api", "static_configs": [target(ports["METRICS"])]},
            {"job_name": "worker", "static_configs": [target(ports["WORKER_METRICS"])]},
            {"job_name": "callbacks", "static_configs": [target(ports["CALLBACKS_METRICS"])]},
            {"job_name": "exporter", "static_configs": [target(ports["EXPORTER"])]},
            {
                "job_name": "flower",
                "static_configs": [target(ports["FLOWER"])],
                "basic_auth": {"username": settings.flower_user, "password": settings.flower_password},
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/-/ready", 60)
        yield url
    finally:
        stop_process(proc, timeout=10)


def query(url: str, expr: str) -> list:
    answer = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def wait_for(check, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [
        (f"{panel['title']} / {t['refId']}", t["expr"].replace("$__rate_interval", RATE_WINDOW))
        for panel in dashboard["panels"]
        for t in panel["targets"]
    ]


def quick_rules(tmp_path: Path) -> Path:
    """alerts.yaml with every `for` at 2 s: the expressions are what this test checks against live
    data (promtool's unit tests in test_monitoring.py check the durations)."""
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(groups))
    return path


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def submit(api: httpx.Client, key: str, subject: str, images: list[bytes]) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    b64 = [base64.b64encode(image).decode() for image in images]
    callback = {"callback_url": "http://127.0.0.1:9/never"}  # refused connection: attempts to count
    jobs = [api.post(f"/v1/subjects/{subject}/enrollments", json={"images": b64[:2]}, headers=headers)]
    jobs += [
        api.post("/v1/verifications", json={"subject_id": subject, "image": b64[2], **callback}, headers=headers)
        for _ in range(3)
    ]
    jobs += [api.post("/v1/identifications", json={"image": b64[2]}, headers=headers) for _ in range(2)]
    not_an_image = base64.b64encode(b"not an image").decode()  # a job that fails: bad_image
    jobs += [api.post("/v1/verifications", json={"subject_id": subject, "image": not_an_image}, headers=headers)]
    assert [r.status_code for r in jobs] == [202] * len(jobs), [r.text for r in jobs]
    assert api.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": "Bearer bf_wrong"}).status_code == 401
    return [r.json()["id"] for r in jobs]


def test_dashboard_and_alerts_against_a_live_stack(stack, prometheus):
    env, ports, info = stack
    key = (Path(env["BIOFLEET_STATE_DIR"]) / "api_key").read_text().strip()
    api = httpx.Client(base_url=info["api_url"], timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    job_ids = submit(api, key, f"e2e-{uuid.uuid4().hex[:8]}", face_images(3))
    wait_for(
        lambda: all(
            api.get(f"/v1/jobs/{j}", headers=headers).json()["status"] in ("succeeded", "failed") for j in job_ids
        ),
        "the jobs to finish",
    )
    wait_for(
        lambda: (
            query(prometheus, "sum(biofleet_jobs_finished_total)")
            and query(prometheus, "sum(biofleet_jobs_finished_total)")[0]["value"][1] == str(len(job_ids))
        ),
        "Prometheus to scrape the finished jobs",
    )
    wait_for(
        lambda: query(prometheus, 'sum(biofleet_callback_attempts_total{outcome="retry"}) > 0'), "a callback attempt"
    )
    time.sleep(3)  # a few more scrapes for the rates

    empty = [name for name, expr in panel_queries() if not query(prometheus, expr)]
    assert not empty, f"panels without data: {empty}"

    # `biofleet status --watch` reads the same endpoints.
    from cli.watch import rates, render, sample, stack_metric_urls

    snap = sample(stack_metric_urls(info, 1))
    assert not snap.down and snap.workers and sum(snap.finished.values()) == len(job_ids)
    assert rates(snap, snap).depth == {"verify": 0, "enroll": 0, "identify": 0, "reenroll": 0}
    render(rates(snap, snap))

    rules = alert_rules()
    quiet = {
        "BiofleetBacklogGrowing",
        "BiofleetLatencyOverSLO",
        "BiofleetWorkersAbsentWithBacklog",
        "BiofleetJobsInternalError",
        "BiofleetScalingMetricAbsent",
        "BiofleetApiErrors",
    }
    firing = [name for name in quiet if query(prometheus, rules[name])]
    assert not firing, f"alerts firing on a healthy stack: {firing}"
    # Three refused callbacks retried: the callbacks alert's expression holds (it waits 5 minutes to fire).
    assert query(prometheus, rules["BiofleetCallbacksFailing"])

    # The worker stops with jobs queued: the alert fires.
    stop_process(info["pids"]["worker"], timeout=60)
    submit(api, key, f"e2e-{uuid.uuid4().hex[:8]}", face_images(3))

    # The expression's value is the depth; a scrape taken while the jobs were posted sees fewer.
    def backlog() -> list:
        answer = query(prometheus, rules["BiofleetWorkersAbsentWithBacklog"])
        return [r for r in answer if float(r["value"][1]) >= 7]

    wait_for(backlog, "workers absent with the 7 jobs queued")

    def alert_state(name: str) -> str | None:
        alerts = httpx.get(prometheus + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return next((a["state"] for a in alerts if a["labels"]["alertname"] == name), None)

    wait_for(lambda: alert_state("BiofleetWorkersAbsentWithBacklog") == "firing", "workers absent firing")
    assert alert_state("BiofleetScalingMetricAbsent") is None

    # The exporter stops: the scaling metric is gone and its alert fires.
    stop_process(info["pids"]["exporter"], timeout=30)
    wait_for(lambda: query(prometheus, rules["BiofleetScalingMetricAbsent"]), "scaling metric absent")
    wait_for(lambda: alert_state("BiofleetScalingMetricAbsent") == "firing", "scaling metric absent firing")
    api.close()
