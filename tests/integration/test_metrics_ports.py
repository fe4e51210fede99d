"""Metrics off the public port: the API serves its own counters on metrics_port (never job volumes
from Postgres), GET /metrics on the API port is off by default, and the queue depth comes from
`python -m shared.exporter`, which reads Redis only."""

import sys
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import stack
from tests.integration.polling import wait_final

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


def wait_until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def two_free_ports() -> int:
    """A port p with p + 1 free too (pool processes 0 and 1 serve on p and p + 1)."""
    for _ in range(50):
        port = stack.free_port()
        if port < 65535 and stack.port_is_free(port + 1):
            return port
    pytest.skip("no two consecutive free ports")


def test_every_pool_process_serves_its_own_metrics(start_worker, api_client, make_key):
    """Prefork with two pool processes: each serves its registry on worker_metrics_port + its
    index, with its model version and device, and the jobs it finished; together they count
    every job once."""
    import base64
    import io

    from PIL import Image

    port = two_free_ports()
    start_worker(worker_concurrency=2, worker_metrics_port=port, batch_size=1, flush_interval_ms=5)
    urls = [f"http://127.0.0.1:{port + index}/metrics" for index in (0, 1)]
    for url in urls:
        stack.wait_http(url, 120)
    key = make_key(f"pool-{uuid.uuid4().hex[:8]}")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    headers = {"Authorization": f"Bearer {key}"}
    post = lambda: api_client.post("/v1/identifications", json={"image": image}, headers=headers)  # noqa: E731
    jobs = [post().json()["id"] for _ in range(6)]

    def finished() -> float:
        total = 0.0
        for url in urls:
            found = families(httpx.get(url).text)
            total += sum(s.value for s in found.get("biofleet_jobs_finished", []) if s.name.endswith("_total"))
        return total

    wait_final(api_client, key, jobs)
    wait_until(lambda: finished() >= len(jobs), "the pool processes to count the jobs")
    assert finished() == len(jobs)
    for url in urls:
        found = families(httpx.get(url).text)
        (info,) = found["biofleet_worker_info"]
        assert info.value == 1 and info.labels["device"] == "cpu" and info.labels["model_version"]
        assert "biofleet_worker_busy_seconds" in found
    statuses = {api_client.get(f"/v1/jobs/{j}", headers=headers).json()["status"] for j in jobs}
    assert statuses == {"failed"}  # blank images: no_face


def test_callback_dispatcher_serves_its_metrics(start_dispatcher):
    port = stack.free_port()
    start_dispatcher(callbacks_metrics_port=port)
    url = f"http://127.0.0.1:{port}/metrics"
    stack.wait_http(url, 60)

    def pending_counted() -> bool:
        found = families(httpx.get(url).text)
        return "biofleet_callbacks_pending" in found

    wait_until(pending_counted, "the pending rows to be counted")
    found = families(httpx.get(url).text)
    outcomes = {s.labels["outcome"] for s in found["biofleet_callback_attempts"] if s.name.endswith("_total")}
    assert outcomes == {"delivered", "retry", "failed"}
    assert found["biofleet_callbacks_pending"][0].value >= 0
