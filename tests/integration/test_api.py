"""The HTTP API against real Valkey, Postgres and a file blob store; no worker runs.

Every message a test publishes is taken off its queue again, so no worker started later sees it.
"""

import base64
import io
import json
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

pytestmark = pytest.mark.stack

JOB_QUEUES = ("verify", "enroll", "identify", "reenroll")


# --- helpers ---------------------------------------------------------------------------------


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (shade, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(key: str, **headers) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


def error_code(response) -> str:
    body = response.json()
    assert set(body["error"]) >= {"code", "message"}, body
    return body["error"]["code"]


def take_message(redis_client, queue: str, job_id: str) -> dict:
    """Remove the job's message from the Redis list of queue; return its task kwargs."""
    for raw in redis_client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        if envelope["headers"]["id"] == job_id:
            redis_client.lrem(queue, 1, raw)
            assert envelope["headers"]["task"] == "biofleet.run_jobs"
            assert envelope["content-type"] == "application/json"
            _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            return kwargs
    raise AssertionError(f"no message for job {job_id} on queue {queue}")


def blob_dir(services) -> Path:
    return Path(urlparse(services.blob_url).path)


def job_row(services, job_id: str):
    from shared.db.models import Job
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return session.get(Job, uuid.UUID(job_id))


@pytest.fixture(scope="module")
def tenants(make_key):
    """Two tenants with one key each: {"a": key, "b": key}."""
    suffix = uuid.uuid4().hex[:8]
    return {"a": make_key(f"api-a-{suffix}"), "b": make_key(f"api-b-{suffix}")}


@pytest.fixture(scope="module", autouse=True)
def drain_own_messages(services, redis_client, tenants):
    """After the module: remove any message of this module's tenants still on a job queue."""
    yield
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        ours = {str(tenant_for_key(session, key)) for key in tenants.values()}
    for queue in JOB_QUEUES:
        for raw in redis_client.lrange(queue, 0, -1):
            _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            if kwargs.get("tenant_id") in ours:
                redis_client.lrem(queue, 1, raw)


@pytest.fixture(scope="module")
def small_client(services):
    """A client of an app with small limits: 2 KiB bodies, 2 images per enrollment, top_k <= 3."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import Settings

    settings = Settings(max_body_bytes=2048, max_images_per_enrollment=2, max_top_k=3)
    with TestClient(create_app(settings)) as client:
        yield client


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs/" + str(uuid.uuid4()), "/v1/subjects/someone", "/v1/identifications"])
def test_no_key_is_401(api_client, path):
    method = api_client.post if path == "/v1/identifications" else api_client.get
    response = method(path)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_or_malformed_key_is_401(api_client, tenants):
    for header in ("Bearer bf_not-a-real-key", "Basic dXNlcjpwYXNz", tenants["a"]):
        response = api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert error_code(response) == "unauthorized"


def test_revoked_key_is_401(services, make_key):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.db.session import session_scope
    from shared.keys import revoke_api_key
    from shared.settings import get_settings

    key = make_key(f"api-revoked-{uuid.uuid4().hex[:8]}")
    # No key cache here: with one, a revocation counts within key_cache_s (tests/integration/test_listing.py).
    with TestClient(create_app(get_settings().model_copy(update={"key_cache_s": 0}))) as api_client:
        assert api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code == 404
        with session_scope(services.database_url) as session:
            assert revoke_api_key(session, key)
        assert api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code == 401


# --- submitting ------------------------------------------------------------------------------


def check_queued(api_client, services, redis_client, tenants, response, kind: str, images: list[bytes]) -> str:
    """202, Location, a queued row, blobs holding the images, one valid message on kind's queue."""
    from shared.messages import JobMessage

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == kind and job["status"] == "queued"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    row = job_row(services, job["id"])
    assert row.status == "queued" and row.kind == kind and len(row.blob_keys) == len(images)
    for key, image in zip(row.blob_keys, images, strict=True):
        assert (blob_dir(services) / key).read_bytes() == image
    message = JobMessage.model_validate(take_message(redis_client, kind, job["id"]))
    assert message.job_id == job["id"] and message.kind == kind
    assert message.tenant_id == str(row.tenant_id) and message.blob_keys == row.blob_keys
    fetched = api_client.get(response.headers["Location"], headers=auth(tenants["a"]))
    assert fetched.status_code == 200 and fetched.json()["id"] == job["id"]
    return job["id"]


def test_enroll_json(api_client, services, redis_client, tenants):
    images = [png(1), png(2), png(3)]
    response = api_client.post(
        "/v1/subjects/alice.01/enrollments",
        json={"images": [b64(i) for i in images], "cropped": True, "callback_url": "https://example.com/hook"},
        headers=auth(tenants["a"]),
    )
    job_id = check_queued(api_client, services, redis_client, tenants, response, "enroll", images)
    row = job_row(services, job_id)
    assert row.subject_external_id == "alice.01" and row.cropped is True
    assert row.callback_url == "https://example.com/hook"
    assert response.json()["subject_id"] == "alice.01"


def test_enroll_multipart(api_client, services, redis_client, tenants):
    images = [png(4), png(5)]
    files = [("images", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    response = api_client.post(
        "/v1/subjects/alice.02/enrollments", files=files, data={"cropped": "false"}, headers=auth(tenants["a"])
    )
    check_queued(api_client, services, redis_client, tenants, response, "enroll", images)


def test_verify_json_and_multipart(api_client, services, redis_client, tenants):
    image = png(6)
    response = api_client.post(
        "/v1/verifications", json={"subject_id": "alice.01", "image": b64(image)}, headers=auth(tenants["a"])
    )
    job_id = check_queued(api_client, services, redis_client, tenants, response, "verify", [image])
    assert job_row(services, job_id).subject_external_id == "alice.01"

    response = api_client.post(
        "/v1/verifications",
        files={"image": ("p.png", image, "image/png")},
        data={"subject_id": "alice.01"},
        headers=auth(tenants["a"]),
    )
    check_queued(api_client, services, redis_client, tenants, response, "verify", [image])


def test_identify_json_and_multipart(api_client, services, redis_client, tenants):
    image = png(7)
    response = api_client.post("/v1/identifications", json={"image": b64(image)}, headers=auth(tenants["a"]))
    job_id = check_queued(api_client, services, redis_client, tenants, response, "identify", [image])
    assert job_row(services, job_id).top_k == 5  # the default

    response = api_client.post(
        "/v1/identifications",
        files={"image": ("p.png", image, "image/png")},
        data={"top_k": "3"},
        headers=auth(tenants["a"]),
    )
    job_id = check_queued(api_client, services, redis_client, tenants, response, "identify", [image])
    assert job_row(services, job_id).top_k == 3


# --- idempotency -----------------------------------------------------------------------------


def test_idempotency_key(api_client, services, redis_client, tenants):
    image = png(8)
    headers = auth(tenants["a"], **{"Idempotency-Key": f"idem-{uuid.uuid4()}"})
    body = {"subject_id": "alice.01", "image": b64(image)}
    first = api_client.post("/v1/verifications", json=body, headers=headers)
    assert first.status_code == 202
    job_id = first.json()["id"]
    take_message(redis_client, "verify", job_id)

    again = api_client.post("/v1/verifications", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == job_id
    assert again.headers["Idempotent-Replayed"] == "true"
    # The same request as multipart is the same canonical request.
    as_form = api_client.post(
        "/v1/verifications", files={"image": ("p.png", image)}, data={"subject_id": "alice.01"}, headers=headers
    )
    assert as_form.status_code == 202 and as_form.json()["id"] == job_id
    assert not any(json.loads(raw)["headers"]["id"] == job_id for raw in redis_client.lrange("verify", 0, -1))

    other = api_client.post("/v1/verifications", json={**body, "subject_id": "bob"}, headers=headers)
    assert other.status_code == 409
    assert error_code(other) == "idempotency_conflict"
    # Another tenant using the same key gets its own job.
    theirs = api_client.post("/v1/verifications", json=body, headers={**headers, **auth(tenants["b"])})
    assert theirs.status_code == 202 and theirs.json()["id"] != job_id
    take_message(redis_client, "verify", theirs.json()["id"])


def test_idempotency_key_is_race_safe(services, redis_client, tenants):
    """Threads submitting the same key at once end with one job, one message, one set of blobs."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.db.session import session_scope
    from shared.jobs import JobRequest, submit_job
    from shared.keys import tenant_for_key
    from shared.settings import get_settings

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, tenants["a"])
    request = JobRequest(kind="identify", images=(png(9),), top_k=2)
    key = f"race-{uuid.uuid4()}"
    blobs = open_blob_store(services.blob_url)
    tenant_dir = blob_dir(services) / str(tenant_id)
    before = {p.name for p in tenant_dir.iterdir()} if tenant_dir.exists() else set()

    def submit(_):
        return submit_job(tenant_id, request, blobs, get_celery(), services.database_url, get_settings(), key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(submit, range(8)))
    ids = {str(r.job.id) for r in results}
    assert len(ids) == 1
    assert sum(r.created for r in results) == 1
    job_id = ids.pop()
    take_message(redis_client, "identify", job_id)
    assert not any(json.loads(raw)["headers"]["id"] == job_id for raw in redis_client.lrange("identify", 0, -1))
    assert {p.name for p in tenant_dir.iterdir()} - before == {job_id}  # the losers' images are gone
    assert [p.name for p in (tenant_dir / job_id).iterdir()] == ["0"]


# --- tenants ---------------------------------------------------------------------------------


def add_subject(services, key: str, subject_id: str, templates: int = 0) -> None:
    """A subject row (and templates of a test model version) as a worker would have written them."""
    from sqlalchemy.dialects.postgresql import insert

    from shared.db.models import ModelVersion, Subject, Template
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, key)
        session.execute(
            insert(ModelVersion)
            .values(
                name="api-test-model",
                architecture="test",
                weights_sha256="0" * 64,
                preprocessing={},
                threshold=0.6,
                status="active",
            )
            .on_conflict_do_nothing()
        )
        subject = Subject(tenant_id=tenant_id, external_id=subject_id)
        session.add(subject)
        session.flush()
        for index in range(templates):
            session.add(
                Template(
                    tenant_id=tenant_id,
                    subject_id=subject.id,
                    model_version="api-test-model",
                    embedding=[0.01 * index] * 128,
                    source_job_id=uuid.uuid4(),
                    image_index=index,
                    image_key=f"{tenant_id}/{uuid.uuid4()}/0",
                )
            )


def test_tenants_are_isolated(api_client, services, redis_client, tenants):
    response = api_client.post("/v1/identifications", json={"image": b64(png(10))}, headers=auth(tenants["a"]))
    job_id = response.json()["id"]
    take_message(redis_client, "identify", job_id)
    add_subject(services, tenants["a"], "carol", templates=2)

    assert api_client.get(f"/v1/jobs/{job_id}", headers=auth(tenants["a"])).status_code == 200
    theirs = api_client.get(f"/v1/jobs/{job_id}", headers=auth(tenants["b"]))
    assert theirs.status_code == 404 and error_code(theirs) == "job_not_found"
    unknown = api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(tenants["a"]))
    assert unknown.status_code == 404 and error_code(unknown) == "job_not_found"
    assert api_client.get("/v1/jobs/not-a-uuid", headers=auth(tenants["a"])).status_code == 404

    mine = api_client.get("/v1/subjects/carol", headers=auth(tenants["a"]))
    assert mine.status_code == 200
    assert mine.json()["subject_id"] == "carol"
    assert mine.json()["templates"] == [{"model_version": "api-test-model", "count": 2}]
    for method in (api_client.get, api_client.delete):
        response = method("/v1/subjects/carol", headers=auth(tenants["b"]))
        assert response.status_code == 404 and error_code(response) == "subject_not_found"
    assert api_client.get("/v1/subjects/carol", headers=auth(tenants["a"])).status_code == 200


def test_delete_subject_erases_templates_and_images(api_client, services, redis_client, tenants):
    from sqlalchemy import func, select

    from shared.db.models import Subject, Template
    from shared.db.session import session_scope

    key = tenants["a"]
    add_subject(services, key, "dave", templates=1)
    with session_scope(services.database_url) as session:
        template_key = session.scalars(
            select(Template.image_key).join(Subject).where(Subject.external_id == "dave")
        ).one()
    (blob_dir(services) / template_key).parent.mkdir(parents=True)
    (blob_dir(services) / template_key).write_bytes(b"kept enrollment image")
    pending = api_client.post(
        "/v1/subjects/dave/enrollments", json={"images": [b64(png(11))]}, headers=auth(key)
    ).json()["id"]
    take_message(redis_client, "enroll", pending)
    pending_keys = job_row(services, pending).blob_keys

    response = api_client.delete("/v1/subjects/dave", headers=auth(key))
    assert response.status_code == 204
    assert not (blob_dir(services) / template_key).exists()
    assert not any((blob_dir(services) / k).exists() for k in pending_keys)
    with session_scope(services.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Subject).where(Subject.external_id == "dave")) == 0
    job = api_client.get(f"/v1/jobs/{pending}", headers=auth(key)).json()
    assert job["status"] == "failed" and job["error"]["code"] == "subject_deleted"
    assert api_client.get("/v1/subjects/dave", headers=auth(key)).status_code == 404
    again = api_client.delete("/v1/subjects/dave", headers=auth(key))
    assert again.status_code == 404 and error_code(again) == "subject_not_found"


# --- limits and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/subjects/eve/enrollments", {"images": []}, "no_images"),
        ("/v1/subjects/eve/enrollments", {}, "no_images"),
        ("/v1/subjects/eve/enrollments", {"images": ["%%%not base64%%%"]}, "bad_base64"),
        ("/v1/subjects/eve/enrollments", {"images": [b64(b"x")] * 11}, "too_many_images"),
        ("/v1/subjects/eve/enrollments", {"images": [""]}, "empty_image"),
        ("/v1/subjects/bad%20id/enrollments", {"images": [b64(b"x")]}, "bad_subject_id"),
        ("/v1/subjects/" + "x" * 129 + "/enrollments", {"images": [b64(b"x")]}, "bad_subject_id"),
        ("/v1/subjects/eve/enrollments", {"images": [b64(b"x")], "callback_url": "ftp://h/x"}, "bad_callback_url"),
        ("/v1/subjects/eve/enrollments", {"images": [b64(b"x")], "callback_url": "not a url"}, "bad_callback_url"),
        ("/v1/subjects/eve/enrollments", {"images": [b64(b"x")], "cropped": "maybe"}, "validation_error"),
        ("/v1/subjects/eve/enrollments", {"images": [b64(b"x")], "colour": "red"}, "validation_error"),
        ("/v1/verifications", {"image": b64(b"x")}, "bad_subject_id"),
        ("/v1/verifications", {"subject_id": "a/b", "image": b64(b"x")}, "bad_subject_id"),
        ("/v1/verifications", {"subject_id": "eve"}, "no_images"),
        ("/v1/verifications", {"subject_id": "eve", "image": "@@"}, "bad_base64"),
        ("/v1/identifications", {"image": b64(b"x"), "top_k": 0}, "bad_top_k"),
        ("/v1/identifications", {"image": b64(b"x"), "top_k": 101}, "bad_top_k"),
        ("/v1/identifications", {"image": b64(b"x"), "top_k": "five"}, "validation_error"),
    ],
)
def test_limits_have_their_codes(api_client, tenants, path, body, code):
    response = api_client.post(path, json=body, headers=auth(tenants["a"]))
    assert response.status_code == 422, response.text
    assert error_code(response) == code
    assert "x" * 40 not in response.text  # inputs are not echoed


def test_validation_error_does_not_echo_images(api_client, tenants):
    secret = b64(b"secret image bytes" * 10)
    response = api_client.post(
        "/v1/verifications", json={"subject_id": "eve", "image": secret, "extra": secret}, headers=auth(tenants["a"])
    )
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert secret not in response.text


def test_body_limit_from_content_length_and_stream(small_client, tenants):
    big = {"images": [b64(b"y" * 3000)]}
    response = small_client.post("/v1/subjects/eve/enrollments", json=big, headers=auth(tenants["a"]))
    assert response.status_code == 413 and error_code(response) == "body_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"images": ["'
        for _ in range(10):
            yield b"QUFB" * 100
        yield b'"]}'

    response = small_client.post(
        "/v1/subjects/eve/enrollments",
        content=chunks(),
        headers=auth(tenants["a"], **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 413 and error_code(response) == "body_too_large"


def test_settings_limits(small_client, tenants):
    three = {"images": [b64(b"x"), b64(b"y"), b64(b"z")]}
    response = small_client.post("/v1/subjects/eve/enrollments", json=three, headers=auth(tenants["a"]))
    assert response.status_code == 422 and error_code(response) == "too_many_images"
    response = small_client.post(
        "/v1/identifications", json={"image": b64(b"x"), "top_k": 4}, headers=auth(tenants["a"])
    )
    assert response.status_code == 422 and error_code(response) == "bad_top_k"


def test_multipart_limits(api_client, tenants):
    files = [("images", (f"{i}.png", b"x", "image/png")) for i in range(11)]
    response = api_client.post("/v1/subjects/eve/enrollments", files=files, headers=auth(tenants["a"]))
    assert response.status_code == 422 and error_code(response) == "too_many_images"
    response = api_client.post(
        "/v1/verifications", data={"subject_id": "eve"}, files={"other": ("p.png", b"x")}, headers=auth(tenants["a"])
    )
    assert response.status_code == 422 and error_code(response) == "validation_error"


def test_other_errors_have_the_shape(api_client, tenants):
    response = api_client.post(
        "/v1/identifications", content=b"image", headers=auth(tenants["a"], **{"Content-Type": "image/png"})
    )
    assert response.status_code == 415 and error_code(response) == "unsupported_media_type"
    response = api_client.post(
        "/v1/identifications", content=b"{not json", headers=auth(tenants["a"], **{"Content-Type": "application/json"})
    )
    assert response.status_code == 422 and error_code(response) == "validation_error"
    response = api_client.get("/v1/nothing-here", headers=auth(tenants["a"]))
    assert response.status_code == 404 and error_code(response) == "not_found"
    response = api_client.put("/v1/verifications", headers=auth(tenants["a"]))
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"


def test_queue_down_gives_503_and_leaves_nothing(services, tenants):
    """A broker that does not answer: 503 queue_unavailable, no job row, no stored image."""
    from celery import Celery
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from api.app import create_app
    from api.deps import get_publisher
    from celeryconfig import celery_config
    from shared import stack
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.settings import get_settings

    dead = Celery("dead-broker")
    dead.conf.update(celery_config(get_settings()))
    dead.conf.broker_url = f"redis://127.0.0.1:{stack.free_port()}/0"
    app = create_app()
    app.dependency_overrides[get_publisher] = lambda: dead
    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, tenants["b"])
        jobs_before = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))
    tenant_blobs = blob_dir(services) / str(tenant_id)
    blobs_before = sorted(tenant_blobs.rglob("*")) if tenant_blobs.exists() else []

    with TestClient(app) as client:
        response = client.post(
            "/v1/subjects/frank/enrollments", json={"images": [b64(png(12)), b64(png(13))]}, headers=auth(tenants["b"])
        )
    assert response.status_code == 503, response.text
    assert error_code(response) == "queue_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    with session_scope(services.database_url) as session:
        jobs_after = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))
    assert jobs_after == jobs_before
    assert (sorted(tenant_blobs.rglob("*")) if tenant_blobs.exists() else []) == blobs_before


# --- operations ------------------------------------------------------------------------------


def test_health_and_readiness(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok"}
    response = api_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}}


def test_readiness_names_what_failed(services):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared import stack
    from shared.settings import Settings

    settings = Settings(redis_url=f"redis://127.0.0.1:{stack.free_port()}/0")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert error_code(response) == "not_ready"
    assert response.json()["checks"]["postgres"] == "ok"
    assert response.json()["checks"]["redis"].startswith("unavailable")


def test_metrics(services, redis_client, tenants):
    """The API's own counters (on its metrics port; here through the opt-in /metrics route)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import get_settings

    with TestClient(create_app(get_settings().model_copy(update={"metrics_route": True}))) as client:
        job_id = client.post("/v1/identifications", json={"image": b64(png(14))}, headers=auth(tenants["a"])).json()[
            "id"
        ]
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth("bf_not-a-key"))
        text = client.get("/metrics").text
    take_message(redis_client, "identify", job_id)

    def value(series: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(series + " ")]
        assert len(lines) == 1, series
        return float(lines[0].rsplit(" ", 1)[1])

    assert value('biofleet_api_submits_total{kind="identify"}') == 1
    assert value('biofleet_api_auth_rejected_total{code="unauthorized"}') == 1


def test_openapi_describes_both_body_forms(api_client):
    spec = api_client.get("/openapi.json").json()
    body = spec["paths"]["/v1/verifications"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"EnrollJob", "ReenrollJob", "VerifyJob", "IdentifyJob"} <= set(
        spec["components"]["schemas"]
    )  # one per kind
    assert api_client.get("/docs").status_code == 200


def test_a_replay_never_returns_a_job_whose_publish_can_still_fail(services, redis_client, tenants, monkeypatch):
    """B replays A's key while A is still publishing; A's publish then fails and A's row goes.
    B must not have been given A's job id (it would answer 404 forever): it is told to retry
    (409 idempotency_in_progress), and its retry creates the job."""
    import threading

    from shared import jobs
    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.settings import get_settings

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, tenants["a"])
    request = jobs.JobRequest(kind="identify", images=(png(15),), top_k=2)
    key = f"publishing-{uuid.uuid4()}"
    blobs = open_blob_store(services.blob_url)
    a_publishing, b_answered = threading.Event(), threading.Event()
    real_publish = jobs.publish
    calls = []

    def failing_publish(celery, message):  # A's broker goes away once B has its answer
        calls.append(message.job_id)
        if len(calls) > 1:
            return real_publish(celery, message)
        a_publishing.set()
        b_answered.wait(60)
        raise ConnectionError("broker went away")

    monkeypatch.setattr(jobs, "publish", failing_publish)

    def submit():
        return jobs.submit_job(tenant_id, request, blobs, get_celery(), services.database_url, get_settings(), key)

    outcome = {}

    def request_a():
        try:
            outcome["a"] = submit()
        except jobs.SubmitError as exc:
            outcome["a"] = exc.code

    thread = threading.Thread(target=request_a)
    thread.start()
    assert a_publishing.wait(60)
    try:
        outcome["b"] = submit()
    except jobs.SubmitError as exc:
        outcome["b"] = exc.code
    finally:
        b_answered.set()
        thread.join(60)

    assert outcome["a"] == "queue_unavailable"
    if isinstance(outcome["b"], jobs.Submitted):
        given = str(outcome["b"].job.id)
        assert job_row(services, given) is not None, f"B was answered with job {given}, which no longer exists"
    assert outcome["b"] == "idempotency_in_progress"
    retried = submit()  # B retries after Retry-After: A's row is gone, so B's request makes the job
    assert retried.created and job_row(services, str(retried.job.id)) is not None
    take_message(redis_client, "identify", str(retried.job.id))


def test_a_replay_waits_for_the_publish_in_progress(services, redis_client, tenants, monkeypatch):
    """B replays A's key while A publishes successfully: B gets A's job, once it is on the queue."""
    import threading

    from shared import jobs
    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.settings import get_settings

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, tenants["a"])
    request = jobs.JobRequest(kind="identify", images=(png(16),), top_k=2)
    key = f"publishing-{uuid.uuid4()}"
    blobs = open_blob_store(services.blob_url)
    a_publishing, b_waiting = threading.Event(), threading.Event()
    real_publish, real_find = jobs.publish, jobs._by_idempotency_key

    def slow_publish(celery, message):
        a_publishing.set()
        b_waiting.wait(60)  # B has seen the row and is waiting for the publish
        return real_publish(celery, message)

    def watched_find(session, tenant, idem_key):
        row = real_find(session, tenant, idem_key)
        if row is not None and a_publishing.is_set():
            b_waiting.set()
        return row

    monkeypatch.setattr(jobs, "publish", slow_publish)
    monkeypatch.setattr(jobs, "_by_idempotency_key", watched_find)
    monkeypatch.setattr(jobs, "REPLAY_WAIT_S", 60.0)  # a bound, never reached here

    def submit():
        return jobs.submit_job(tenant_id, request, blobs, get_celery(), services.database_url, get_settings(), key)

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("a", submit()))
    thread.start()
    assert a_publishing.wait(60)
    replay = submit()
    thread.join(60)
    assert outcome["a"].created and not replay.created
    assert replay.job.id == outcome["a"].job.id
    take_message(redis_client, "identify", str(replay.job.id))


def test_a_publish_that_reports_failure_after_a_worker_took_the_job_keeps_it(
    services, redis_client, tenants, monkeypatch
):
    """The broker took the message but its answer was lost, and a worker already runs the job: the
    job is kept and accepted, not removed under the worker."""
    from sqlalchemy import update

    from shared import jobs
    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.settings import get_settings

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, tenants["a"])
    real_publish = jobs.publish

    def publish_then_lose_the_answer(celery, message):
        real_publish(celery, message)
        with session_scope(services.database_url) as session:  # as a worker starting it
            session.execute(update(Job).where(Job.id == uuid.UUID(message.job_id)).values(status="running"))
        raise ConnectionError("connection reset")

    monkeypatch.setattr(jobs, "publish", publish_then_lose_the_answer)
    request = jobs.JobRequest(kind="identify", images=(png(17),), top_k=2)
    submitted = jobs.submit_job(
        tenant_id,
        request,
        open_blob_store(services.blob_url),
        get_celery(),
        services.database_url,
        get_settings(),
        f"lost-answer-{uuid.uuid4()}",
    )
    job_id = str(submitted.job.id)
    take_message(redis_client, "identify", job_id)
    row = job_row(services, job_id)
    assert submitted.created and row is not None and row.published
    assert (blob_dir(services) / row.blob_keys[0]).exists()
