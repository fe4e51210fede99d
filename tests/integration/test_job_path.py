"""The job path: API -> Redis -> a real batching worker -> Postgres, with real face images; and
the batch unit of work (worker/batch/) against real Postgres, without Celery."""

import base64
import io
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from tests.integration.polling import wait_final

pytestmark = [pytest.mark.stack, pytest.mark.faces]

POLL_DEADLINE_S = 300.0  # a bound on waiting, not a timing assertion
PERSON_A = "Tony_Blair"
PERSON_B = "Colin_Powell"
PERSON_C = "George_W_Bush"


# --- helpers ---------------------------------------------------------------------------------


def face(faces_dir, person: str, number: int) -> bytes:
    return (faces_dir / "lfw_colour" / person / f"{person}_{number:04d}.jpg").read_bytes()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png() -> bytes:
    return png(np.full((200, 200, 3), 180, dtype=np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(client, key: str, path: str, body: dict) -> str:
    response = client.post(path, json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def enroll(client, key, subject: str, images: list[bytes], **extra) -> str:
    return submit(client, key, f"/v1/subjects/{subject}/enrollments", {"images": [b64(i) for i in images], **extra})


def verify(client, key, subject: str, image: bytes, **extra) -> str:
    return submit(client, key, "/v1/verifications", {"subject_id": subject, "image": b64(image), **extra})


def identify(client, key, image: bytes, **extra) -> str:
    return submit(client, key, "/v1/identifications", {"image": b64(image), **extra})


class CallbackReceiver:
    """A small HTTP server on 127.0.0.1 that records every POST (headers and body); it answers
    500 to the first fail_first posts, then 204."""

    def __init__(self, fail_first: int = 0):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((dict(self.headers), body))
                self.send_response(500 if len(received) <= fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + POLL_DEADLINE_S
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback_receiver():
    receiver = CallbackReceiver(fail_first=1)
    yield receiver
    receiver.close()


# --- through the API with a real worker -------------------------------------------------------


def test_jobs_through_the_api_and_a_worker(
    api_client, make_key, start_worker, start_dispatcher, faces_dir, callback_receiver, services, monkeypatch
):
    from shared.blob import BlobNotFound, open_blob_store
    from shared.db.models import Job
    from shared.db.session import session_scope

    # The receiver listens on loopback, refused unless allowed, by the API and by the dispatcher.
    backends = api_client.app.state.backends
    monkeypatch.setattr(
        backends, "settings", backends.settings.model_copy(update={"callback_allowed_networks": "127.0.0.1/32"})
    )
    start_worker(batch_size=8)
    start_dispatcher(callback_allowed_networks="127.0.0.1/32")
    key = make_key(f"job-path-{uuid.uuid4().hex[:8]}")

    enroll_a = enroll(
        api_client,
        key,
        "person-a",
        [face(faces_dir, PERSON_A, n) for n in (1, 2, 3)],
        callback_url=callback_receiver.url,
    )
    enroll_b = enroll(api_client, key, "person-b", [face(faces_dir, PERSON_B, n) for n in (1, 2, 3)])
    enrolled = wait_final(api_client, key, [enroll_a, enroll_b])
    job = enrolled[enroll_a]
    assert job["status"] == "succeeded", job
    assert job["result"]["templates_created"] == 3
    assert job["result"]["subject_id"] == "person-a"
    assert [i["status"] for i in job["result"]["images"]] == ["enrolled"] * 3
    assert enrolled[enroll_b]["status"] == "succeeded"

    probes = {
        "same": verify(api_client, key, "person-a", face(faces_dir, PERSON_A, 4)),
        "other": verify(api_client, key, "person-a", face(faces_dir, PERSON_C, 1)),
        "identify": identify(api_client, key, face(faces_dir, PERSON_A, 5), top_k=2),
        "undecodable": verify(api_client, key, "person-a", b"this is not an image at all"),
        "no_face": verify(api_client, key, "person-a", blank_png()),
        "unknown_subject": verify(api_client, key, "nobody-enrolled", face(faces_dir, PERSON_A, 6)),
    }
    final = wait_final(api_client, key, list(probes.values()))
    jobs = {name: final[job_id] for name, job_id in probes.items()}

    same = jobs["same"]
    assert same["status"] == "succeeded", same
    assert same["result"]["match"] is True
    assert same["result"]["templates_compared"] == 3
    assert same["result"]["distance"] <= same["result"]["threshold"]
    other = jobs["other"]
    assert other["status"] == "succeeded", other
    assert other["result"]["match"] is False
    assert other["result"]["distance"] > other["result"]["threshold"]
    found = jobs["identify"]
    assert found["status"] == "succeeded", found
    candidates = found["result"]["candidates"]
    assert [c["subject_id"] for c in candidates] == ["person-a", "person-b"]
    assert candidates[0]["distance"] < candidates[1]["distance"]
    for name, code in (("undecodable", "bad_image"), ("no_face", "no_face"), ("unknown_subject", "subject_not_found")):
        assert jobs[name]["status"] == "failed", jobs[name]
        assert jobs[name]["error"]["code"] == code
        assert jobs[name]["result"] is None
    for job in jobs.values():
        assert job["batch_id"] and job["model_version"] and job["attempts"] == 1

    # Probe images are gone once final; enrollment images are kept.
    blobs = open_blob_store(services.blob_url)
    with session_scope(services.database_url) as session:
        probe_keys = [k for j in probes.values() for k in session.get(Job, uuid.UUID(j)).blob_keys]
        enroll_keys = session.get(Job, uuid.UUID(enroll_a)).blob_keys
    for blob_key in probe_keys:
        with pytest.raises(BlobNotFound):
            blobs.get(blob_key)
    assert all(blobs.get(k) for k in enroll_keys)

    # The callback of the first enrollment: refused once (HTTP 500), then posted again with the
    # same webhook-id; each post signed for the tenant (Standard Webhooks) and carrying the job
    # JSON that GET /v1/jobs/{id} answers.
    from standardwebhooks.webhooks import Webhook

    from shared.db.session import session_scope as scope
    from shared.keys import tenant_for_key
    from shared.webhooks import ensure_secret

    with scope(services.database_url) as session:
        secret = ensure_secret(session, tenant_for_key(session, key))
    callback_receiver.wait_for(2)
    assert len(callback_receiver.received) == 2
    assert len({headers["webhook-id"] for headers, _ in callback_receiver.received}) == 1
    for headers, body in callback_receiver.received:
        assert Webhook(secret).verify(body, headers) == api_client.get(f"/v1/jobs/{enroll_a}", headers=auth(key)).json()


def test_batches_form_from_a_backlog(api_client, make_key, start_worker, faces_dir):
    from shared import stack

    key = make_key(f"backlog-{uuid.uuid4().hex[:8]}")
    first = start_worker()
    enrolled = enroll(api_client, key, "backlog-a", [face(faces_dir, PERSON_A, n) for n in (1, 2)])
    assert wait_final(api_client, key, [enrolled])[enrolled]["status"] == "succeeded"
    stack.stop_process(first, timeout=30)

    probes = [face(faces_dir, PERSON_A, n) for n in range(3, 11)]
    job_ids = [verify(api_client, key, "backlog-a", probes[i % len(probes)]) for i in range(64)]
    start_worker(batch_size=16)
    jobs = wait_final(api_client, key, job_ids)

    assert all(job["status"] == "succeeded" for job in jobs.values()), [
        j for j in jobs.values() if j["status"] != "succeeded"
    ][:2]
    sizes = Counter(job["batch_id"] for job in jobs.values())
    assert max(sizes.values()) > 1, sizes
    assert len(sizes) < 64
    assert max(sizes.values()) <= 16


# --- the batch unit of work against real Postgres ---------------------------------------------


@pytest.fixture(scope="module")
def pipeline():
    from shared.settings import get_settings
    from worker.face.pipeline import load_pipeline

    settings = get_settings()
    loaded = load_pipeline(device="cpu", cache_dir=settings.model_cache_dir, threads=2)
    yield loaded
    loaded.close()


class Recorder:
    """Stands in for the broker side of a Runtime: records what would be sent."""

    def __init__(self):
        self.republished = []


def make_runtime(services, pipeline, recorder: Recorder, **settings):
    from shared.blob import open_blob_store
    from shared.settings import get_settings
    from worker.batch import Runtime
    from worker.versions import ensure_model_version

    current = get_settings().model_copy(update=settings)
    ensure_model_version(services.database_url, current, pipeline.embedder.weights_sha256)
    return Runtime(
        pipeline=pipeline,
        blobs=open_blob_store(services.blob_url),
        database_url=services.database_url,
        model_version=current.model_version,
        settings=current,
        republish=recorder.republished.extend,
    )


def tenant_id(services, make_key) -> uuid.UUID:
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    key = make_key(f"batch-{uuid.uuid4().hex[:8]}")
    with session_scope(services.database_url) as session:
        return tenant_for_key(session, key)


def queue_job(services, tenant: uuid.UUID, kind: str, images: list[bytes], subject=None, **columns):
    """A queued job row with its images in the blob store, and its message, as the API makes them."""
    from shared.blob import open_blob_store
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.messages import JobMessage
    from worker.batch import Delivery

    job_id = uuid.uuid4()
    keys = [f"{tenant}/{job_id}/{i}" for i in range(len(images))]
    blobs = open_blob_store(services.blob_url)
    for blob_key, data in zip(keys, images):
        blobs.put(blob_key, data)
    with session_scope(services.database_url) as session:
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant,
                kind=kind,
                status="queued",
                subject_external_id=subject,
                blob_keys=keys,
                cropped=False,
                attempts=0,
                **columns,
            )
        )
    message = JobMessage(
        job_id=str(job_id),
        tenant_id=str(tenant),
        kind=kind,
        blob_keys=keys,
        subject_id=subject,
        submitted_at=time.time(),
    )
    return str(job_id), Delivery(task_id=str(job_id), kwargs=message.model_dump(mode="json"))


def job_row(services, job_id: str):
    from shared.db.models import Job
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return session.get(Job, uuid.UUID(job_id))


def template_count(services, job_id: str) -> int:
    from sqlalchemy import func, select

    from shared.db.models import Template
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return session.execute(
            select(func.count()).select_from(Template).where(Template.source_job_id == uuid.UUID(job_id))
        ).scalar_one()


def outbox_ids(services, job_id: str) -> list[str]:
    from sqlalchemy import select

    from shared.db.models import CallbackDelivery
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return list(session.scalars(select(CallbackDelivery.id).where(CallbackDelivery.job_id == uuid.UUID(job_id))))


def test_the_same_message_twice_is_applied_once(services, make_key, pipeline, faces_dir):
    from worker.batch import run_batch

    recorder = Recorder()
    runtime = make_runtime(services, pipeline, recorder)
    tenant = tenant_id(services, make_key)
    images = [face(faces_dir, PERSON_B, n) for n in (4, 5)]
    job_id, delivery = queue_job(
        services, tenant, "enroll", images, subject="idem", callback_url="http://127.0.0.1:9/x"
    )

    first = run_batch([delivery, delivery], runtime)  # a duplicate inside one batch, too
    assert first.finished == {job_id: "succeeded"}
    assert (first.skipped, first.dropped) == (1, 0)
    assert template_count(services, job_id) == 2
    done = job_row(services, job_id)
    assert (done.status, done.attempts, done.batch_id) == ("succeeded", 1, first.batch_id)
    assert done.result["templates_created"] == 2
    callbacks = outbox_ids(services, job_id)
    assert len(callbacks) == 1

    second = run_batch([delivery], runtime)
    assert second.finished == {} and second.skipped == 1
    assert template_count(services, job_id) == 2
    again = job_row(services, job_id)
    assert (again.status, again.attempts, again.batch_id, again.finished_at, again.result) == (
        done.status,
        done.attempts,
        done.batch_id,
        done.finished_at,
        done.result,
    )
    assert outbox_ids(services, job_id) == callbacks  # one callback, the same delivery id


def test_a_job_left_running_is_finished_once(services, make_key, pipeline, faces_dir):
    """A redelivered job whose first batch died after marking it running is processed again."""
    from sqlalchemy import update

    from shared.db.models import Job
    from shared.db.session import session_scope
    from worker.batch import run_batch

    runtime = make_runtime(services, pipeline, Recorder())
    tenant = tenant_id(services, make_key)
    job_id, delivery = queue_job(services, tenant, "enroll", [face(faces_dir, PERSON_C, 2)], subject="rerun")
    with session_scope(services.database_url) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status="running", attempts=1))

    report = run_batch([delivery], runtime)
    assert report.finished == {job_id: "succeeded"}
    assert job_row(services, job_id).attempts == 2
    assert template_count(services, job_id) == 1


def test_poison_messages_are_dropped_and_the_rest_decided(services, make_key, pipeline, faces_dir):
    from worker.batch import Delivery, run_batch

    runtime = make_runtime(services, pipeline, Recorder())
    tenant = tenant_id(services, make_key)
    job_id, good = queue_job(services, tenant, "verify", [face(faces_dir, PERSON_A, 7)], subject="never-enrolled")
    _, unknown = queue_job(services, tenant, "verify", [face(faces_dir, PERSON_A, 8)], subject="x")
    unknown = Delivery(task_id="unknown", kwargs={**unknown.kwargs, "job_id": str(uuid.uuid4())})
    deliveries = [
        Delivery(task_id="not-an-object", kwargs="{not json"),
        Delivery(task_id="wrong-schema", kwargs={"job_id": "x", "kind": "dance"}),
        unknown,
        good,
    ]
    report = run_batch(deliveries, runtime)
    assert report.dropped == 3
    assert report.finished == {job_id: "failed"}
    row = job_row(services, job_id)
    assert (row.error_code, row.result) == ("subject_not_found", None)


def test_an_image_error_fails_only_its_job(services, make_key, pipeline, faces_dir):
    from worker.batch import run_batch

    runtime = make_runtime(services, pipeline, Recorder())
    tenant = tenant_id(services, make_key)
    mixed, mixed_delivery = queue_job(
        services, tenant, "enroll", [b"\x89PNG broken", face(faces_dir, PERSON_C, 3)], subject="mixed"
    )
    empty, empty_delivery = queue_job(services, tenant, "enroll", [blank_png()], subject="empty")
    report = run_batch([mixed_delivery, empty_delivery], runtime)
    assert report.finished == {mixed: "succeeded", empty: "failed"}
    images = job_row(services, mixed).result["images"]
    assert [i["status"] for i in images] == ["failed", "enrolled"]
    assert images[0]["error"]["code"] == "bad_image"
    assert job_row(services, empty).error_code == "no_face"
    assert template_count(services, mixed) == 1 and template_count(services, empty) == 0


def test_an_unreachable_database_hands_the_batch_back():
    from shared.settings import get_settings
    from shared.stack import free_port
    from worker.batch import Delivery, Runtime, run_batch

    recorder = Recorder()
    runtime = Runtime(
        pipeline=None,
        blobs=None,
        database_url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=1",
        model_version="dlib-resnet-v1",
        settings=get_settings().model_copy(update={"db_retry_s": 1.0}),
        republish=recorder.republished.extend,
    )
    kwargs = {
        "job_id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "kind": "verify",
        "blob_keys": ["t/j/0"],
        "subject_id": "s",
        "submitted_at": time.time(),
    }
    delivery = Delivery(task_id=kwargs["job_id"], kwargs=kwargs)
    report = run_batch([delivery], runtime)
    assert report.republished == 1
    assert recorder.republished == [delivery]


def test_republish_sends_the_same_message_to_its_queue(services, redis_client):
    from worker.batch import Delivery
    from worker.runtime import republish

    kwargs = {
        "v": 1,
        "job_id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "kind": "identify",
        "blob_keys": ["t/j/0"],
        "subject_id": None,
        "top_k": 3,
        "cropped": False,
        "submitted_at": 1.5,
    }
    redis_client.delete("identify")
    republish([Delivery(task_id=kwargs["job_id"], kwargs=kwargs)])
    raw = redis_client.lpop("identify")
    message = json.loads(raw)
    assert message["headers"]["id"] == kwargs["job_id"]
    assert message["headers"]["task"] == "biofleet.run_jobs"
    args, sent_kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, sent_kwargs) == ([], kwargs)


def test_a_pool_process_killed_mid_batch_hands_its_jobs_back(services, make_key, start_worker, faces_dir):
    """task_reject_on_worker_lost with celery-batches: the killed batch's messages are requeued and
    redone (attempts 2), each job still finished once."""
    import psutil

    from shared.celery_app import get_celery
    from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK

    tenant = tenant_id(services, make_key)
    people = sorted(p.name for p in (faces_dir / "lfw_colour").iterdir() if p.is_dir())
    jobs = [
        queue_job(
            services,
            tenant,
            "enroll",
            [face(faces_dir, people[i % len(people)], 1 + i // len(people))],
            subject=f"killed-{i}",
        )
        for i in range(16)
    ]
    for _, delivery in jobs:
        get_celery().send_task(
            RUN_JOBS_TASK, kwargs=delivery.kwargs, queue=QUEUE_FOR_KIND["enroll"], task_id=delivery.task_id
        )
    worker = start_worker(batch_size=8)

    job_ids = [job_id for job_id, _ in jobs]
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not any(job_row(services, j).status == "running" for j in job_ids):
        assert time.monotonic() < deadline, "no batch started"
        time.sleep(0.02)
    children = psutil.Process(worker.pid).children()
    assert children
    for child in children:
        child.kill()

    while True:
        rows = [job_row(services, j) for j in job_ids]
        if all(r.status in ("succeeded", "failed") for r in rows):
            break
        assert time.monotonic() < deadline, [r.status for r in rows]
        time.sleep(0.5)
    assert [r.status for r in rows] == ["succeeded"] * 16, [(r.status, r.error_code) for r in rows]
    assert max(r.attempts for r in rows) == 2
    assert [template_count(services, j) for j in job_ids] == [1] * 16
