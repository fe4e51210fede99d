"""The Python client (biofleet_client) against the live stack: the API served by uvicorn on a
loopback port, real Valkey, Postgres, a batching worker and the callback dispatcher."""

import asyncio
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import TypeAdapter

from biofleet_client import (
    AsyncClient,
    BadTopK,
    Client,
    EnrollJob,
    IdentifyJob,
    JobNotFound,
    NoFace,
    RateLimited,
    SubjectNotFound,
    Unauthorized,
    VerifyJob,
    WebhookVerificationError,
    verify_webhook,
)
from tests.integration.test_job_path import blank_png, face

pytestmark = [pytest.mark.stack]

LOOPBACK = "127.0.0.1/32"
BOUND_S = 300.0  # a bound on waiting, not a timing assertion


class LiveApi:
    """create_app(settings with overrides) under uvicorn on a free loopback port, in a thread."""

    def __init__(self, **overrides):
        import uvicorn

        from api.app import create_app
        from shared import stack
        from shared.settings import get_settings

        app = create_app(get_settings().model_copy(update=overrides))
        port = stack.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_api(services):
    api = LiveApi(callback_allowed_networks=LOOPBACK)
    yield api.url
    api.close()


class Hooks:
    """A loopback receiver that keeps each POST's raw body and headers, and answers 204."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((body, dict(self.headers)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def webhook_secret(services, key: str) -> str:
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.webhooks import ensure_secret

    with session_scope(services.database_url) as session:
        return ensure_secret(session, tenant_for_key(session, key))


def check_sync(client: Client, faces_dir, tmp_path, subject: str, hooks: Hooks) -> str:
    """Enroll (a path and bytes), verify, identify and wait; the errors of real failures. Returns
    the id of a job whose callback goes to hooks."""
    path = tmp_path / "enroll.jpg"
    path.write_bytes(face(faces_dir, "Tony_Blair", 1))
    enrolled = client.wait(client.create_enrollment(subject, [path, face(faces_dir, "Tony_Blair", 2)]).id, BOUND_S)
    assert isinstance(enrolled, EnrollJob) and enrolled.result is not None
    assert enrolled.result.templates_created == 2 and enrolled.result.subject_id == subject

    same = client.create_verification(subject, face(faces_dir, "Tony_Blair", 3))
    other = client.create_verification(subject, face(faces_dir, "Colin_Powell", 1))
    found = client.create_identification(face(faces_dir, "Tony_Blair", 4), top_k=3)
    jobs = client.wait_all([same.id, other.id, found.id], BOUND_S)
    assert isinstance(jobs[same.id], VerifyJob) and jobs[same.id].result.match  # type: ignore[union-attr]
    assert not jobs[other.id].result.match  # type: ignore[union-attr]
    assert isinstance(jobs[found.id], IdentifyJob)
    assert jobs[found.id].result.candidates[0].subject_id == subject  # type: ignore[union-attr]
    assert client.get_subject(subject).templates[0].count == 2

    blank = client.create_verification(subject, blank_png(), callback_url=hooks.url)
    with pytest.raises(NoFace) as no_face:
        client.wait(blank.id, BOUND_S)
    assert no_face.value.job is not None and no_face.value.job.id == blank.id
    assert client.wait(blank.id, raise_on_failure=False).error.code == "no_face"  # type: ignore[union-attr]
    with pytest.raises(SubjectNotFound):
        client.wait(client.create_verification("nobody-" + subject, face(faces_dir, "Tony_Blair", 5)).id, BOUND_S)
    with pytest.raises(JobNotFound) as unknown:
        client.get_job(str(uuid.uuid4()))
    assert unknown.value.status == 404
    with pytest.raises(BadTopK):
        client.create_identification(face(faces_dir, "Tony_Blair", 4), top_k=0)
    return blank.id


async def check_async(url: str, key: str, faces_dir, subject: str) -> None:
    async with AsyncClient(url, api_key=key) as client:
        assert (await client.healthz()).status == "ok"
        assert (await client.readyz()).checks == {"redis": "ok", "postgres": "ok"}
        probe = await client.create_verification(subject, face(faces_dir, "Tony_Blair", 6))
        found = await client.create_identification(face(faces_dir, "Tony_Blair", 7), top_k=1)
        jobs = await client.wait_all([probe.id, found.id], BOUND_S)
        assert jobs[probe.id].result.match  # type: ignore[union-attr]
        assert jobs[found.id].result.candidates[0].subject_id == subject  # type: ignore[union-attr]
        await client.delete_subject(subject)
        with pytest.raises(SubjectNotFound) as gone:
            await client.get_subject(subject)
        assert gone.value.status == 404
    async with AsyncClient(url, api_key="bf_not_a_key") as stranger:
        with pytest.raises(Unauthorized):
            await stranger.get_job(probe.id)


def check_demo(url: str, key: str, faces_dir, tmp_path) -> None:
    """`biofleet demo`'s workload, on two identities, through the client."""
    from cli.workload import Client as Workload
    from cli.workload import run_workload

    samples = tmp_path / "samples"
    for person in ("Tony_Blair", "Colin_Powell"):
        (samples / person).mkdir(parents=True)
        for number in range(1, 6):
            (samples / person / f"{person}_{number:04d}.jpg").write_bytes(face(faces_dir, person, number))
    summary = run_workload(Workload(url, key), samples, BOUND_S)
    assert summary["jobs"] > 0 and summary["unfinished"] == 0, summary
    assert summary["succeeded"] >= summary["jobs"] - 1 and summary["latency_p50_s"] is not None, summary


@pytest.mark.faces
def test_the_client_against_the_stack(
    services, live_api, make_key, start_worker, start_dispatcher, faces_dir, tmp_path
):
    """Sync and async clients on real jobs, the error classes of real errors, and a real signed
    callback verified with verify_webhook(); every job JSON also validates as the API's Job."""
    from api.schemas import Job

    start_worker()
    key = make_key(f"client-{uuid.uuid4().hex[:8]}")
    subject = f"client-{uuid.uuid4().hex[:6]}"
    hooks = Hooks()
    try:
        with Client(live_api, api_key=key) as client:
            hooked = check_sync(client, faces_dir, tmp_path, subject, hooks)
            raw = httpx.get(f"{live_api}/v1/jobs/{hooked}", headers={"Authorization": f"Bearer {key}"}).json()
            TypeAdapter(Job).validate_python(raw)
        asyncio.run(check_async(live_api, key, faces_dir, subject))
        check_demo(live_api, key, faces_dir, tmp_path)

        start_dispatcher(callback_allowed_networks=LOOPBACK)
        deadline = time.monotonic() + BOUND_S
        while not hooks.received:
            assert time.monotonic() < deadline, "no callback"
            time.sleep(0.2)
        body, headers = hooks.received[0]
        job = verify_webhook(body, headers, webhook_secret(services, key))
        assert (job.id, job.status, job.error and job.error.code) == (hooked, "failed", "no_face")
        with pytest.raises(WebhookVerificationError):
            verify_webhook(body.replace(b"no_face", b"matched"), headers, webhook_secret(services, key))
    finally:
        hooks.close()


def test_wait_honours_retry_after_when_rate_limited(services, make_key):
    """With one request per window allowed, wait() answered 429 sleeps the Retry-After and then
    gets the job, instead of polling into the window again."""
    from tests.integration.test_privacy import add_job

    key = make_key(f"client-rate-{uuid.uuid4().hex[:8]}")
    tenant_id = uuid.UUID(str(_tenant(services, key)))
    job_id, _ = add_job(services, tenant_id, "verify", "succeeded", subject="s")
    api = LiveApi(rate_limit_requests=1, rate_limit_window_s=3)
    statuses: list[int] = []
    http = httpx.Client(
        base_url=api.url, timeout=30, event_hooks={"response": [lambda r: statuses.append(r.status_code)]}
    )
    try:
        client = Client(api_key=key, http=http)
        with pytest.raises(RateLimited) as limited:
            for _ in range(3):
                client.get_job(job_id)
        assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 3
        statuses.clear()
        job = client.wait(job_id, timeout=BOUND_S)
        assert job.id == job_id and job.status == "succeeded"
        assert statuses == [429, 200]
    finally:
        http.close()
        api.close()


def _tenant(services, key: str):
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        return tenant_for_key(session, key)


def test_submit_many_and_the_paginators_against_the_stack(services, live_api, make_key, faces_dir):
    """submit_many() over two chunks (a refused item keeps its place), iter_batch_jobs(),
    iter_jobs(ids=...) and iter_subjects() page through what the API holds."""
    key = make_key(f"client-many-{uuid.uuid4().hex[:8]}")
    image = face(faces_dir, "Tony_Blair", 1)
    items: list[dict] = [
        {"kind": "enroll", "ref": f"e{i}", "subject_id": f"many-{i:02d}", "images": [image]} for i in range(5)
    ]
    items.insert(2, {"kind": "identify", "ref": "bad", "image": image, "top_k": 0})
    with Client(live_api, api_key=key) as client:
        submitted = client.submit_many(items, chunk_size=4)
        assert [s.index for s in submitted] == list(range(6))
        assert [s.ref for s in submitted] == [item["ref"] for item in items]
        assert isinstance(submitted[2].error, BadTopK) and submitted[2].job_id is None
        ids = [s.job_id for s in submitted if s.job_id]
        assert len(ids) == 5 and len({s.batch_id for s in submitted}) == 2
        first_batch = submitted[0].batch_id
        assert {job.id for job in client.iter_batch_jobs(first_batch, limit=1)} == set(ids[:3])
        assert {job.id for job in client.iter_jobs(ids=",".join(ids), limit=2)} == set(ids)
        assert [job.status for job in client.iter_jobs(ids=",".join(ids))] == ["queued"] * 5
        # the enrollments have not run (no worker here): no subject yet
        assert list(client.iter_subjects(limit=2)) == []
