"""Metrics off the public port: the API serves its own counters on metrics_port (never job volumes
from Postgres), GET /metrics on the API port is off by default, and the queue depth comes from
`python -m shared.exporter`, which reads Redis only."""

import sys
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import stack

pytestmark = pytest.mark.stack


def families(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_route_is_off_on_the_api_port_by_default(services):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import Settings, get_settings

    assert Settings().metrics_route is False
    with TestClient(create_app(get_settings())) as client:
        assert client.get("/metrics").status_code == 404
    with TestClient(create_app(get_settings().model_copy(update={"metrics_route": True}))) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and "biofleet_api_submits" in response.text


def test_api_metrics_read_no_table_and_show_no_job_volumes(services, make_key):
    """Rendering the API's metrics works with Postgres unreachable (it queries nothing there), and
    holds no per-kind job counts or latencies from the jobs table."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import get_settings

    closed = f"postgresql+psycopg://biofleet:x@127.0.0.1:{stack.free_port()}/biofleet"
    settings = get_settings().model_copy(update={"database_url": closed, "metrics_route": True})
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    found = families(response.text)
    assert "biofleet_jobs" not in found and "biofleet_job_end_to_end_seconds" not in found
    assert not any("postgres" in str(sample.labels) for samples in found.values() for sample in samples)


def test_python_m_api_serves_metrics_on_their_own_port(services, worker_env, make_key, tmp_path):
    api_port, metrics_port = stack.free_port(), stack.free_port()
    env = dict(worker_env, BIOFLEET_API_PORT=str(api_port), BIOFLEET_METRICS_PORT=str(metrics_port))
    proc = stack.start_process([sys.executable, "-m", "api"], env, tmp_path / "api.log")
    try:
        stack.wait_http(f"http://127.0.0.1:{api_port}/healthz", 60)
        stack.wait_http(f"http://127.0.0.1:{metrics_port}/metrics", 30)
        key = make_key(f"ports-{uuid.uuid4().hex[:8]}")
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}")
        assert api.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}).status_code == 404
        assert api.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": "Bearer bf_wrong"}).status_code == 401
        assert api.get("/metrics").status_code == 404
        api.close()
        found = families(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        rejected = {s.labels["code"]: s.value for s in found["biofleet_api_auth_rejected"] if s.name.endswith("_total")}
        assert rejected == {"unauthorized": 1.0}
    finally:
        stack.stop_process(proc, timeout=10)


def test_depth_exporter_serves_queue_depth(services, worker_env, redis_client, tmp_path):
    from shared.queue_depth import queue_depths
    from shared.queues import JOB_QUEUES

    port = stack.free_port()
    env = dict(worker_env, BIOFLEET_EXPORTER_PORT=str(port))
    proc = stack.start_process([sys.executable, "-m", "shared.exporter"], env, tmp_path / "exporter.log")
    try:
        stack.wait_http(f"http://127.0.0.1:{port}/metrics", 60)
        found = families(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        expected = queue_depths(redis_client)
    finally:
        stack.stop_process(proc, timeout=10)
    depths = {sample.labels["queue"]: sample.value for sample in found["biofleet_queue_depth"]}
    assert set(depths) == set(JOB_QUEUES)
    assert depths == {queue: float(depth) for queue, depth in expected.items()}
    assert found["biofleet_exporter_redis_up"][0].value == 1
