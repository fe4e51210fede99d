"""Queue depth with a real worker holding messages: what the depth exporter and queue_depths()
report equals jobs submitted minus jobs finished, including the ones a worker has reserved but
not acked (invisible to the Redis list length)."""

import base64
import io
import time
import uuid
from datetime import UTC

import pytest
from PIL import Image

from shared.queue_depth import queue_depths, reserved_counts, waiting_counts
from shared.queues import JOB_QUEUES

pytestmark = pytest.mark.stack

BATCH = 5  # the worker flushes at 5 jobs...
HOLD_MS = 600_000  # ...or after 10 minutes: fewer than 5 jobs stay reserved, unprocessed
DEADLINE_S = 180.0  # a bound on waiting, not a timing assertion


def blank_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 120), (180, 180, 180)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def submit_identify(client, key: str, image: str) -> str:
    response = client.post("/v1/identifications", json={"image": image}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def submit_enroll(client, key: str, image: str) -> str:
    subject = f"s-{uuid.uuid4().hex[:10]}"
    response = client.post(
        f"/v1/subjects/{subject}/enrollments", json={"images": [image]}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until(check, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def exported_depths(redis_client) -> dict[str, float]:
    """biofleet_queue_depth as shared.exporter serves it."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from shared.exporter import depth_registry

    text = generate_latest(depth_registry(redis_client)).decode()
    for family in text_string_to_metric_families(text):
        if family.name == "biofleet_queue_depth":
            return {sample.labels["queue"]: sample.value for sample in family.samples}
    raise AssertionError("biofleet_queue_depth is not exported")


def final(client, key: str, job_id: str) -> bool:
    response = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["status"] in ("succeeded", "failed")


def check_autoscale_commands(expected: dict[str, int]) -> None:
    """`biofleet autoscale desired` and `publish --cloudwatch --once` (into moto) on the live depth."""
    import json
    from datetime import datetime, timedelta

    from click.testing import CliRunner

    from cli.autoscale import autoscale

    total = sum(expected.values())
    result = CliRunner().invoke(autoscale, ["desired", "--per-worker", "8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"queues": expected, "backlog": total, "desired": -(-total // 8)}

    moto = pytest.importorskip("moto")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch, moto.mock_aws():
        for name, value in env.items():
            patch.setenv(name, value)
        result = CliRunner().invoke(autoscale, ["publish", "--cloudwatch", "--once"])
        assert result.exit_code == 0, result.output
        import boto3

        client = boto3.client("cloudwatch")
        now = datetime.now(UTC)
        window = dict(StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(minutes=5), Period=60,
                      Statistics=["Maximum"], Namespace="biofleet")  # fmt: skip
        for queue, depth in expected.items():
            points = client.get_metric_statistics(
                MetricName="QueueDepth", Dimensions=[{"Name": "Queue", "Value": queue}], **window
            )["Datapoints"]
            assert [p["Maximum"] for p in points] == [depth]
        points = client.get_metric_statistics(MetricName="BacklogPerWorker", Dimensions=[], **window)["Datapoints"]
        assert [p["Maximum"] for p in points] == [total]  # one worker answers pings (its pool is paused)


def pool_processes(worker) -> list:
    """The prefork pool processes (children) of a running `python -m worker`."""
    import psutil

    return wait_until(lambda: psutil.Process(worker.pid).children(), "the worker's pool process")


def test_depth_counts_waiting_and_reserved_messages(api_client, make_key, start_worker, redis_client):
    redis_client.delete(*JOB_QUEUES, "unacked", "unacked_index")  # no worker runs: leftovers only
    key = make_key(f"depth-{uuid.uuid4().hex[:8]}")
    image = blank_png()
    # No sweeper: the queues were just emptied, so queued jobs of earlier tests (a retention test
    # leaves one, 400 days old) would be published again into these exact counts and batches.
    worker = start_worker(batch_size=BATCH, flush_interval_ms=HOLD_MS, prefetch_batches=2, worker_concurrency=1,
                          sweep_interval_s=0, retention_interval_s=0)  # fmt: skip
    prefetch = 2 * BATCH  # celeryconfig.prefetch_multiplier(5, 2, 1): unacked messages one worker holds at most
    paused = []
    try:
        # A full batch is processed at once (blank images: each job fails with no_face).
        finished = [submit_identify(api_client, key, image) for _ in range(BATCH)]
        wait_until(lambda: all(final(api_client, key, j) for j in finished), "the first batch to finish")
        wait_until(lambda: queue_depths(redis_client)["identify"] == 0, "the first batch to be acked")

        # Fewer than a batch: the worker takes them from the list and holds them, unacked.
        held = [submit_identify(api_client, key, image) for _ in range(BATCH - 2)]
        # (a message leaves the list a moment before it is written to `unacked`: wait for both)
        wait_until(
            lambda: waiting_counts(redis_client)["identify"] == 0 and reserved_counts(redis_client)["identify"] == len(held),
            "the worker to reserve the jobs",
        )  # fmt: skip
        assert not any(final(api_client, key, j) for j in held)
        expected = dict.fromkeys(JOB_QUEUES, 0) | {"identify": len(held)}
        assert queue_depths(redis_client) == expected  # the list alone would say 0
        assert exported_depths(redis_client) == expected

        # Pause the pool process: batches stop finishing while the worker keeps reserving messages
        # up to its prefetch limit; past that, new jobs stay in the lists.
        for process in pool_processes(worker):
            process.suspend()
            paused.append(process)
        more = [submit_identify(api_client, key, image) for _ in range(prefetch + 5 - len(held))]
        wait_until(
            lambda: (
                reserved_counts(redis_client)["identify"] == prefetch
                and waiting_counts(redis_client)["identify"] == len(held) + len(more) - prefetch
            ),
            "the worker to fill its prefetch",
        )
        enrolls = [submit_enroll(api_client, key, image) for _ in range(2)]
        time.sleep(1.0)  # a worker that still took messages would take some of these now
        submitted = {"identify": len(finished) + len(held) + len(more), "enroll": len(enrolls)}
        done = {"identify": sum(final(api_client, key, j) for j in finished + held + more),
                "enroll": sum(final(api_client, key, j) for j in enrolls)}  # fmt: skip
        assert done == {"identify": len(finished), "enroll": 0}
        expected = dict.fromkeys(JOB_QUEUES, 0) | {q: submitted[q] - done[q] for q in submitted}
        assert reserved_counts(redis_client)["identify"] == prefetch
        assert waiting_counts(redis_client) == dict.fromkeys(JOB_QUEUES, 0) | {"identify": 5, "enroll": 2}
        assert queue_depths(redis_client) == expected  # submitted - finished: 15 identify, 2 enroll
        assert exported_depths(redis_client) == expected
        check_autoscale_commands(expected)
    finally:
        for process in paused:
            process.resume()
        from shared import stack

        stack.stop_process(worker, timeout=60)  # warm shutdown hands reserved messages back
        redis_client.delete(*JOB_QUEUES, "unacked", "unacked_index")
