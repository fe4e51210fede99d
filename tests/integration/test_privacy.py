"""Security and privacy duties: per-key rate limit, key revocation, callback URLs into private
networks, erasure with an audit record, retention, tenant isolation on every route, and logs that
hold no image bytes, base64, descriptors or API keys."""

import base64
import io
import json
import logging
import re
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.integration.polling import wait_final

pytestmark = [pytest.mark.stack]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def tenant_of(services, key: str) -> uuid.UUID:
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        return tenant_for_key(session, key)


def app_client(**overrides):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import get_settings

    return TestClient(create_app(get_settings().model_copy(update=overrides)))


def add_job(services, tenant_id, kind, status, subject=None, images=1, age=timedelta(0), template=False):
    """A job row with stored images (and a template of its first image); returns (job id, keys)."""
    from shared.blob import open_blob_store
    from shared.db.models import Job, ModelVersion, Subject, Template
    from shared.db.session import session_scope

    job_id = uuid.uuid4()
    keys = [f"{tenant_id}/{job_id}/{i}" for i in range(images)]
    blobs = open_blob_store(services.blob_url)
    for key in keys:
        blobs.put(key, b"stored image bytes")
    submitted = datetime.now(UTC) - age
    with session_scope(services.database_url) as session:
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant_id,
                kind=kind,
                status=status,
                subject_external_id=subject,
                blob_keys=keys,
                attempts=1,
                submitted_at=submitted,
                result={"templates_created": 1} if template else None,
            )
        )
        if template:
            if session.get(ModelVersion, "privacy-test-model") is None:
                session.add(
                    ModelVersion(name="privacy-test-model", architecture="x", weights_sha256="0" * 64, threshold=0.6)
                )
                session.flush()
            row = session.query(Subject).filter_by(tenant_id=tenant_id, external_id=subject).first()
            if row is None:
                row = Subject(tenant_id=tenant_id, external_id=subject)
                session.add(row)
                session.flush()
            session.add(
                Template(
                    tenant_id=tenant_id,
                    subject_id=row.id,
                    model_version="privacy-test-model",
                    embedding=[0.5] * 128,
                    source_job_id=job_id,
                    image_index=0,
                    image_key=keys[0],
                )
            )
    return str(job_id), keys


def blob_exists(services, key: str) -> bool:
    from shared.blob import BlobNotFound, open_blob_store

    try:
        open_blob_store(services.blob_url).get(key)
        return True
    except BlobNotFound:
        return False


# --- keys and rate limit -------------------------------------------------------------------------


def test_rate_limit_per_key_with_retry_after(services, make_key):
    first, second = make_key(f"rate-{uuid.uuid4().hex[:8]}"), make_key(f"rate-{uuid.uuid4().hex[:8]}")
    with app_client(rate_limit_requests=3, rate_limit_window_s=60) as client:
        statuses = [client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(first)).status_code for _ in range(3)]
        assert statuses == [404] * 3
        limited = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(first))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(second)).status_code == 404  # per key


def test_keys_revoke_command(services, make_key):
    from cli.main import cli

    key = make_key(f"revoke-{uuid.uuid4().hex[:8]}")
    with app_client(key_cache_s=0) as api_client:  # no key cache: the revocation counts at once
        assert api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code == 404
        result = CliRunner().invoke(cli, ["keys", "revoke", "-"], input=key + "\n")
        assert result.exit_code == 0, result.output
        assert key not in result.output and key[:12] in result.output
        assert api_client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code == 401
    again = CliRunner().invoke(cli, ["keys", "revoke", key])
    assert again.exit_code != 0


# --- callbacks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.1/hook", "http://[::1]/x"]
)
def test_callback_urls_into_private_networks_are_refused(api_client, make_key, redis_client, url):
    key = make_key(f"cb-{uuid.uuid4().hex[:8]}")
    response = api_client.post(
        "/v1/identifications", json={"image": b64(png(1)), "callback_url": url}, headers=auth(key)
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "callback_url_not_allowed"


def test_allowed_network_is_accepted_and_the_dispatcher_checks_again(services, make_key, redis_client):
    from sqlalchemy import select

    from shared import outbox
    from shared.db.models import CallbackDelivery, Job
    from shared.db.session import session_scope
    from shared.settings import get_settings
    from worker.dispatcher import Dispatcher

    key = make_key(f"cb-{uuid.uuid4().hex[:8]}")
    with app_client(callback_allowed_networks="127.0.0.0/8") as client:
        response = client.post(
            "/v1/identifications",
            json={"image": b64(png(2)), "callback_url": "http://127.0.0.1:9/h"},
            headers=auth(key),
        )
    assert response.status_code == 202
    job_id = uuid.UUID(response.json()["id"])
    redis_client.delete("identify")  # no worker here

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    with session_scope(services.database_url) as session:
        job = session.get(Job, job_id)
        job.status, job.callback_url = "succeeded", f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        session.flush()
        outbox.add(session, [job_id])
    with session_scope(services.database_url) as session:
        row = session.scalars(select(CallbackDelivery).where(CallbackDelivery.job_id == job_id)).one()
    dispatcher = Dispatcher(get_settings().model_copy(update={"callback_allowed_networks": ""}), services.database_url)
    assert dispatcher.attempt(row) == "failed"
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing connected
    listener.close()


# --- erasure and retention -----------------------------------------------------------------------


def test_delete_subject_writes_an_audit_record_and_erases_past_job_images(api_client, services, make_key):
    from sqlalchemy import select

    from shared.db.models import AuditRecord, Job, Template
    from shared.db.session import session_scope

    key = make_key(f"erase-{uuid.uuid4().hex[:8]}")
    tenant_id = tenant_of(services, key)
    enrolled, enroll_keys = add_job(services, tenant_id, "enroll", "succeeded", subject="erin", template=True)
    verified, verify_keys = add_job(services, tenant_id, "verify", "succeeded", subject="erin")
    other, other_keys = add_job(services, tenant_id, "verify", "succeeded", subject="someone-else")

    response = api_client.delete("/v1/subjects/erin", headers=auth(key))
    assert response.status_code == 204
    assert not any(blob_exists(services, k) for k in enroll_keys + verify_keys)
    assert all(blob_exists(services, k) for k in other_keys)
    with session_scope(services.database_url) as session:
        assert session.get(Job, uuid.UUID(verified)).blob_keys == []
        assert session.get(Job, uuid.UUID(other)).blob_keys == other_keys
        assert session.scalars(select(Template).where(Template.source_job_id == uuid.UUID(enrolled))).all() == []
        records = session.scalars(select(AuditRecord).where(AuditRecord.tenant_id == tenant_id)).all()
        assert len(records) == 1
        record = records[0]
        assert (record.action, record.subject_id, record.key_prefix) == ("subject_erased", "erin", key[:12])
        assert record.details == {"templates": 1, "images": 2, "jobs_cleared": 2, "jobs_cancelled": 0}
        assert record.created_at is not None
        assert key not in json.dumps(record.details)


def test_retention_run_deletes_old_images_only(services, make_key):
    from sqlalchemy import select

    from cli.main import cli
    from shared.db.models import Job, Template
    from shared.db.session import session_scope

    tenant_id = tenant_of(services, make_key(f"ret-{uuid.uuid4().hex[:8]}"))
    old, old_keys = add_job(
        services, tenant_id, "enroll", "succeeded", subject="old", age=timedelta(days=400), template=True
    )
    recent, recent_keys = add_job(services, tenant_id, "enroll", "succeeded", subject="new", template=True)
    probe, probe_keys = add_job(services, tenant_id, "verify", "failed", subject="new")
    waiting, waiting_keys = add_job(services, tenant_id, "enroll", "queued", subject="w", age=timedelta(days=400))

    result = CliRunner().invoke(cli, ["retention", "run"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["images"] >= 2 and report["delete_failures"] == 0
    assert not any(blob_exists(services, k) for k in old_keys + probe_keys)
    assert all(blob_exists(services, k) for k in recent_keys + waiting_keys)
    with session_scope(services.database_url) as session:
        assert session.get(Job, uuid.UUID(old)).blob_keys == []
        assert session.get(Job, uuid.UUID(old)).result == {"templates_created": 1}
        template = session.scalars(select(Template).where(Template.source_job_id == uuid.UUID(old))).one()
        assert template.image_key is None  # the template stays, its image is gone
        assert session.get(Job, uuid.UUID(recent)).blob_keys == recent_keys


# --- a full run: tenants apart, clean logs -------------------------------------------------------


def test_every_v1_route_is_covered_by_the_isolation_test(api_client):
    paths = api_client.app.openapi()["paths"]
    routes = {(method.upper(), path) for path, item in paths.items() if path.startswith("/v1") for method in item}
    assert routes == ISOLATED_ROUTES


ISOLATED_ROUTES = {
    ("POST", "/v1/subjects/{subject_id}/enrollments"),
    ("POST", "/v1/verifications"),
    ("POST", "/v1/identifications"),
    ("POST", "/v1/detections"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/subjects/{subject_id}"),
    ("DELETE", "/v1/subjects/{subject_id}"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/subjects"),
}

DESCRIPTOR_RUN = re.compile(r"(-?\d+\.\d{3,}\s*,\s*){12,}")  # a long list of floats
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")


@pytest.mark.faces
def test_a_full_run_keeps_tenants_apart_and_its_logs_clean(
    api_client, services, make_key, start_worker, faces_dir, caplog
):
    """Two tenants use the same subject id: each route sees only its own tenant's data; the
    worker log and the API's logs hold no key, no image bytes or base64 and no descriptor."""
    from sqlalchemy import select

    from shared.db.models import Template
    from shared.db.session import session_scope

    caplog.set_level(logging.DEBUG)
    worker = start_worker(batch_size=8)
    key_a, key_b = make_key(f"iso-a-{uuid.uuid4().hex[:8]}"), make_key(f"iso-b-{uuid.uuid4().hex[:8]}")
    people = faces_dir / "lfw_colour"
    face = lambda person, n: (people / person / f"{person}_{n:04d}.jpg").read_bytes()  # noqa: E731
    sent = [face("Tony_Blair", 1), face("Tony_Blair", 2), face("Colin_Powell", 1)]

    def submit(key, path, body):
        response = api_client.post(path, json=body, headers=auth(key))
        assert response.status_code == 202, response.text
        return response.json()["id"]

    enroll_a = submit(key_a, "/v1/subjects/same-name/enrollments", {"images": [b64(sent[0])]})
    wait_final(api_client, key_a, [enroll_a])
    verify_b = submit(key_b, "/v1/verifications", {"subject_id": "same-name", "image": b64(sent[1])})
    identify_b = submit(key_b, "/v1/identifications", {"image": b64(sent[1]), "top_k": 5})
    detect_b = submit(key_b, "/v1/detections", {"image": b64(sent[1])})
    verify_a = submit(key_a, "/v1/verifications", {"subject_id": "same-name", "image": b64(sent[2])})
    jobs = wait_final(api_client, key_b, [verify_b, identify_b, detect_b]) | wait_final(api_client, key_a, [verify_a])

    assert jobs[verify_b]["status"] == "failed" and jobs[verify_b]["error"]["code"] == "subject_not_found"
    assert jobs[identify_b]["status"] == "succeeded" and jobs[identify_b]["result"]["candidates"] == []
    assert jobs[verify_a]["status"] == "succeeded"
    for job_id in (enroll_a, verify_a):
        assert api_client.get(f"/v1/jobs/{job_id}", headers=auth(key_b)).status_code == 404
    assert jobs[detect_b]["status"] == "succeeded" and len(jobs[detect_b]["result"]["faces"]) >= 1
    for job_id in (verify_b, identify_b, detect_b):
        assert api_client.get(f"/v1/jobs/{job_id}", headers=auth(key_a)).status_code == 404
    assert api_client.get("/v1/subjects/same-name", headers=auth(key_b)).status_code == 404
    # B's DELETE erases only B's own data under that name (its verification's image keys).
    assert api_client.delete("/v1/subjects/same-name", headers=auth(key_b)).status_code == 204
    mine = api_client.get("/v1/subjects/same-name", headers=auth(key_a))
    assert mine.status_code == 200 and sum(t["count"] for t in mine.json()["templates"]) == 1
    # The list and batch routes: each tenant sees only its own rows.
    listed = {job["id"] for job in api_client.get("/v1/jobs", headers=auth(key_b)).json()["jobs"]}
    assert listed == {verify_b, identify_b, detect_b}
    polled = api_client.get("/v1/jobs", params={"ids": f"{enroll_a},{verify_a},{verify_b}"}, headers=auth(key_b))
    assert [job["id"] for job in polled.json()["jobs"]] == [verify_b]
    assert api_client.get("/v1/subjects", headers=auth(key_b)).json()["subjects"] == []
    assert [s["subject_id"] for s in api_client.get("/v1/subjects", headers=auth(key_a)).json()["subjects"]] == [
        "same-name"
    ]
    batch = api_client.post(
        "/v1/batches", json={"jobs": [{"kind": "identify", "image": b64(sent[2])}]}, headers=auth(key_a)
    )
    assert batch.status_code == 202, batch.text
    batch_job = batch.json()["items"][0]["job_id"]
    jobs[batch_job] = wait_final(api_client, key_a, [batch_job])[batch_job]
    assert api_client.get(batch.headers["Location"], headers=auth(key_b)).status_code == 404
    assert api_client.get(batch.headers["Location"], headers=auth(key_a)).json()["counts"]["succeeded"] == 1
    assert api_client.get(f"/v1/jobs/{batch_job}", headers=auth(key_b)).status_code == 404
    for job in jobs.values():  # results hold no image data
        assert not BASE64_RUN.search(json.dumps(job))
    metrics = api_client.app.state.metrics.render()[0].decode()  # counts only: no tenants, subjects or keys
    for private in ("same-name", str(tenant_of(services, key_a)), key_a):
        assert private not in metrics

    with session_scope(services.database_url) as session:
        descriptor = session.scalars(
            select(Template.embedding).where(Template.source_job_id == uuid.UUID(enroll_a))
        ).first()
    time.sleep(1)  # the last worker lines
    from shared.logs import JsonFormatter

    api_logs = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    logs = {"worker": worker.log_path.read_text(errors="replace"), "api": api_logs}
    secrets = [key_a, key_b, key_a[3:20], key_b[3:20]]
    fragments = [b64(image)[400:440] for image in sent] + [repr(float(v)) for v in descriptor[:3]]
    for name, text in logs.items():
        assert text.strip(), name
        for secret in secrets:
            assert secret not in text, f"an API key in the {name} log"
        for fragment in fragments:
            assert fragment not in text, f"image base64 or a descriptor value in the {name} log"
        assert not BASE64_RUN.search(text), f"a base64 run in the {name} log"
        assert not DESCRIPTOR_RUN.search(text), f"a list of floats in the {name} log"
        assert "JFIF" not in text and "\\xff\\xd8" not in text and "PNG\\r\\n" not in text, name


def test_a_failed_statement_logs_no_parameters(services, make_key, caplog):
    """A statement that fails with a descriptor, an image key and image bytes as parameters: neither
    SQLAlchemy's own log nor the logged exception shows them."""
    import random

    from sqlalchemy.exc import DBAPIError

    from shared.db.models import Template
    from shared.db.session import session_scope
    from shared.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    caplog.set_level(logging.DEBUG)
    tenant_id = tenant_of(services, make_key(f"fail-{uuid.uuid4().hex[:8]}"))
    descriptor = [random.uniform(-0.3, 0.3) for _ in range(128)]
    image_key = f"{tenant_id}/{uuid.uuid4()}/0"
    image = b64(png(7))
    log = logging.getLogger("tests.privacy")
    with pytest.raises(DBAPIError):
        with session_scope(services.database_url) as session:  # no such subject or model version
            session.add(
                Template(
                    tenant_id=tenant_id,
                    subject_id=uuid.uuid4(),
                    model_version=image,
                    embedding=descriptor,
                    source_job_id=uuid.uuid4(),
                    image_index=0,
                    image_key=image_key,
                )
            )
            try:
                session.flush()
            except DBAPIError:
                log.exception("insert failed")
                raise
    text = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "insert failed" in text and "INSERT INTO templates" in text
    for secret in [image_key, image[:60], *(repr(v) for v in descriptor[:3]), f"{descriptor[0]:.6f}"[:8]]:
        assert secret not in text, "a statement parameter in the log"
    assert not DESCRIPTOR_RUN.search(text)


def test_unknown_keys_are_rate_limited_per_address_before_the_lookup(services, make_key):
    """Guessing keys: past auth_failure_limit failures in a window, an address gets 429 rate_limited
    before its key is looked up (here Postgres is unreachable: a lookup would answer 503)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared import stack
    from shared.settings import get_settings

    good = make_key(f"guess-{uuid.uuid4().hex[:8]}")
    overrides = {"auth_failure_limit": 3, "auth_failure_window_s": 60}
    settings = get_settings().model_copy(update=overrides)
    with TestClient(create_app(settings), client=("198.51.100.1", 50000)) as client:
        statuses = [client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(f"bf_guess{i}")).status_code for i in range(3)]
        assert statuses == [401] * 3
        limited = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth("bf_guess4"))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 429  # no key at all: the same
    closed = f"postgresql+psycopg://biofleet:x@127.0.0.1:{stack.free_port()}/biofleet"
    settings = settings.model_copy(update={"database_url": closed})
    with TestClient(create_app(settings), client=("198.51.100.1", 50001)) as client:  # the same address
        response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(good))
        assert response.status_code == 429, "the key was looked up although the address is limited"
    with TestClient(create_app(settings), client=("198.51.100.2", 50000)) as other:  # another address
        assert other.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth("bf_guess5")).status_code == 503
