"""POST /v1/batches and GET /v1/batches/{id} against real Valkey, Postgres, blobs and a worker."""

import json
import uuid

import pytest

from tests.integration.polling import wait_final
from tests.integration.test_api import JOB_QUEUES, auth, b64, error_code, png, take_message

pytestmark = pytest.mark.stack


def app_client(**overrides):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import get_settings

    return TestClient(create_app(get_settings().model_copy(update=overrides)))


@pytest.fixture(scope="module")
def keys(make_key):
    suffix = uuid.uuid4().hex[:8]
    return {"a": make_key(f"batch-a-{suffix}"), "b": make_key(f"batch-b-{suffix}")}


def drain(redis_client, job_ids) -> None:
    """Take the messages of these jobs off their queues (no later worker sees them)."""
    wanted = set(job_ids)
    for queue in JOB_QUEUES:
        for raw in redis_client.lrange(queue, 0, -1):
            if json.loads(raw)["headers"]["id"] in wanted:
                redis_client.lrem(queue, 1, raw)


def job_ids(answer: dict) -> list[str]:
    return [item["job_id"] for item in answer["items"] if item["job_id"]]


def test_a_batch_takes_the_valid_items_in_order_and_refuses_the_others(api_client, keys, redis_client):
    items = [
        {"kind": "verify", "ref": "v1", "subject_id": "alice", "image": b64(png(1))},
        {"kind": "verify", "ref": "bad64", "subject_id": "alice", "image": "not base64!"},
        {"kind": "identify", "ref": "i1", "image": b64(png(2)), "top_k": 3},
        {"kind": "enroll", "ref": "e-many", "subject_id": "bob", "images": [b64(png(3))] * 11},
        {"kind": "fly", "ref": "kind"},
        {"kind": "enroll", "ref": "e1", "subject_id": "bob", "images": [b64(png(4)), b64(png(5))]},
        {"kind": "verify", "ref": "subject", "subject_id": "no spaces", "image": b64(png(6))},
        {"kind": "identify", "ref": "field", "image": b64(png(7)), "colour": "red"},
        {"kind": "identify", "ref": "top", "image": b64(png(8)), "top_k": 0},
        {"kind": "verify", "image": b64(png(9)), "subject_id": "carol"},
    ]
    response = api_client.post("/v1/batches", json={"jobs": items}, headers=auth(keys["a"]))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert response.headers["Location"] == f"/v1/batches/{answer['id']}"
    assert (answer["accepted"], answer["rejected"]) == (4, 6)
    assert [item["index"] for item in answer["items"]] == list(range(len(items)))
    assert [item["ref"] for item in answer["items"]] == [item.get("ref") for item in items]
    codes = [item["error"]["code"] if item["error"] else None for item in answer["items"]]
    assert codes == [
        None,
        "bad_base64",
        None,
        "too_many_images",
        "bad_kind",
        None,
        "bad_subject_id",
        "validation_error",
        "bad_top_k",
        None,
    ]
    assert all((item["job_id"] is None) == (item["error"] is not None) for item in answer["items"])
    for item, asked in zip(answer["items"], items, strict=True):
        if item["job_id"] is None:
            continue
        job = api_client.get(f"/v1/jobs/{item['job_id']}", headers=auth(keys["a"])).json()
        assert (job["kind"], job["status"], job["submit_batch_id"]) == (asked["kind"], "queued", answer["id"])
        assert job["batch_id"] is None  # the worker batch: none yet
        message = take_message(
            redis_client,
            {"enroll": "enroll", "verify": "verify", "identify": "identify"}[asked["kind"]],
            item["job_id"],
        )
        assert message["job_id"] == item["job_id"] and message["kind"] == asked["kind"]
        assert len(message["blob_keys"]) == len(asked.get("images", [None]))


def test_a_replayed_batch_gives_the_same_answer_and_no_new_jobs(api_client, keys, redis_client):
    body = {"jobs": [{"kind": "identify", "image": b64(png(20 + i))} for i in range(3)]}
    headers = auth(keys["a"], **{"Idempotency-Key": f"batch-{uuid.uuid4()}"})
    first = api_client.post("/v1/batches", json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = api_client.post("/v1/batches", json=body, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    page = api_client.get(f"/v1/batches/{first.json()['id']}", headers=auth(keys["a"])).json()
    assert sorted(job["id"] for job in page["jobs"]) == sorted(job_ids(first.json()))
    other = {"jobs": body["jobs"][:2]}
    conflict = api_client.post("/v1/batches", json=other, headers=headers)
    assert conflict.status_code == 409 and error_code(conflict) == "idempotency_conflict"
    assert redis_client.llen("identify") >= 3  # once each, not twice
    drain(redis_client, job_ids(first.json()))
    for queue in JOB_QUEUES:
        assert not any(
            json.loads(raw)["headers"]["id"] in job_ids(first.json()) for raw in redis_client.lrange(queue, 0, -1)
        )


def test_a_malformed_or_too_large_batch_is_refused_whole(services, keys, redis_client):
    with app_client(max_batch_jobs=3) as client:
        four = {"jobs": [{"kind": "identify", "image": b64(png(30))}] * 4}
        response = client.post("/v1/batches", json=four, headers=auth(keys["a"]))
        assert response.status_code == 422 and error_code(response) == "too_many_jobs"
        for body in ({"jobs": []}, {"jobs": {}}, [], {"jobs": [], "extra": 1}):
            response = client.post("/v1/batches", json=body, headers=auth(keys["a"]))
            assert response.status_code == 422 and error_code(response) == "bad_request", body
        response = client.post(
            "/v1/batches", content=b"{not json", headers=auth(keys["a"], **{"Content-Type": "application/json"})
        )
        assert response.status_code == 422 and error_code(response) == "bad_request"
        response = client.post("/v1/batches", data={"jobs": "x"}, headers=auth(keys["a"]))
        assert response.status_code == 415
        assert client.post("/v1/batches", json={"jobs": []}).status_code == 401


def test_a_batch_is_counted_and_paged_and_only_for_its_tenant(api_client, keys, redis_client):
    body = {"jobs": [{"kind": "identify", "image": b64(png(40 + i)), "ref": str(i)} for i in range(5)]}
    answer = api_client.post("/v1/batches", json=body, headers=auth(keys["a"])).json()
    drain(redis_client, job_ids(answer))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api_client.get(f"/v1/batches/{answer['id']}", params=params, headers=auth(keys["a"]))
        assert page.status_code == 200, page.text
        page = page.json()
        assert page["counts"] == {"queued": 5, "running": 0, "succeeded": 0, "failed": 0}
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(job_ids(answer)) and len(seen) == 5
    other = api_client.get(f"/v1/batches/{answer['id']}", headers=auth(keys["b"]))
    assert other.status_code == 404 and error_code(other) == "batch_not_found"
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        response = api_client.get(f"/v1/batches/{unknown}", headers=auth(keys["a"]))
        assert response.status_code == 404 and error_code(response) == "batch_not_found"
    bad = api_client.get(f"/v1/batches/{answer['id']}", params={"cursor": "zz"}, headers=auth(keys["a"]))
    assert bad.status_code == 422 and error_code(bad) == "bad_cursor"


@pytest.mark.faces
def test_the_jobs_of_a_batch_complete(api_client, make_key, start_worker, faces_dir):
    key = make_key(f"batch-run-{uuid.uuid4().hex[:8]}")
    person = faces_dir / "lfw_colour" / "Colin_Powell"
    images = [(person / f"Colin_Powell_{i:04d}.jpg").read_bytes() for i in range(1, 6)]
    enroll = {"jobs": [{"kind": "enroll", "subject_id": "colin", "images": [b64(i) for i in images[:3]]}]}
    probes = {
        "jobs": [
            {"kind": "verify", "subject_id": "colin", "image": b64(images[3]), "ref": "same"},
            {"kind": "identify", "image": b64(images[4]), "top_k": 1, "ref": "who"},
            {"kind": "verify", "subject_id": "nobody", "image": b64(images[4]), "ref": "unknown"},
            {"kind": "verify", "subject_id": "colin", "image": "", "ref": "empty"},
        ]
    }
    start_worker()
    enrolled = api_client.post("/v1/batches", json=enroll, headers=auth(key)).json()
    assert wait_final(api_client, key, job_ids(enrolled))[job_ids(enrolled)[0]]["status"] == "succeeded"
    answer = api_client.post("/v1/batches", json=probes, headers=auth(key)).json()
    assert (answer["accepted"], answer["rejected"]) == (3, 1)
    assert answer["items"][3]["error"]["code"] in ("empty_image", "no_images")
    jobs = wait_final(api_client, key, job_ids(answer))
    by_ref = {item["ref"]: jobs[item["job_id"]] for item in answer["items"] if item["job_id"]}
    assert by_ref["same"]["status"] == "succeeded" and by_ref["same"]["result"]["match"] is True
    assert by_ref["who"]["result"]["candidates"][0]["subject_id"] == "colin"
    assert by_ref["unknown"]["status"] == "failed" and by_ref["unknown"]["error"]["code"] == "subject_not_found"
    counts = api_client.get(f"/v1/batches/{answer['id']}", headers=auth(key)).json()["counts"]
    assert counts == {"queued": 0, "running": 0, "succeeded": 2, "failed": 1}


def test_a_batch_the_queue_cannot_take_is_503_and_leaves_nothing(services, make_key, redis_client):
    """A broker that does not answer: 503 queue_unavailable, no batch, no job row, no stored image;
    the same Idempotency-Key then works once the broker is back."""
    from celery import Celery
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from api.app import create_app
    from api.deps import get_publisher
    from celeryconfig import celery_config
    from shared import stack
    from shared.db.models import Job, SubmitBatch
    from shared.db.session import session_scope
    from shared.settings import get_settings
    from tests.integration.test_api import blob_dir
    from tests.integration.test_listing import tenant_of

    key = make_key(f"batch-dead-{uuid.uuid4().hex[:8]}")
    tenant_id = tenant_of(services, key)
    dead = Celery("dead-broker")
    dead.conf.update(celery_config(get_settings()))
    dead.conf.broker_url = f"redis://127.0.0.1:{stack.free_port()}/0"
    app = create_app()
    app.dependency_overrides[get_publisher] = lambda: dead
    body = {"jobs": [{"kind": "identify", "image": b64(png(50 + i))} for i in range(3)]}
    headers = auth(key, **{"Idempotency-Key": "dead-broker"})
    with TestClient(app) as client:
        response = client.post("/v1/batches", json=body, headers=headers)
    assert response.status_code == 503 and error_code(response) == "queue_unavailable", response.text
    with session_scope(services.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) == 0
        assert (
            session.scalar(select(func.count()).select_from(SubmitBatch).where(SubmitBatch.tenant_id == tenant_id)) == 0
        )
    tenant_blobs = blob_dir(services) / str(tenant_id)
    assert not tenant_blobs.exists() or not [p for p in tenant_blobs.rglob("*") if p.is_file()]
    with app_client() as client:
        retried = client.post("/v1/batches", json=body, headers=headers)
    assert retried.status_code == 202 and retried.json()["accepted"] == 3
    drain(redis_client, job_ids(retried.json()))


def test_batch_items_take_image_references_under_the_tenants_prefixes(api_client, make_key, services, redis_client):
    from shared.db.session import session_scope
    from shared.image_refs import set_tenant_prefixes

    tenant = f"batch-uri-{uuid.uuid4().hex[:8]}"
    key = make_key(tenant)
    with session_scope(services.database_url) as session:
        assert set_tenant_prefixes(session, tenant, ["s3://faces-bucket/probes/"]) is not None
    items = [
        {"kind": "verify", "ref": "in", "subject_id": "alice", "image": {"uri": "s3://faces-bucket/probes/p1.jpg"}},
        {"kind": "identify", "ref": "out", "image": {"uri": "s3://faces-bucket-evil/probes/p1.jpg"}},
        {"kind": "identify", "ref": "up", "image": {"uri": "s3://faces-bucket/probes/../p1.jpg"}},
        {"kind": "identify", "ref": "scheme", "image": {"uri": "http://faces-bucket/probes/p1.jpg"}},
    ]
    response = api_client.post("/v1/batches", json={"jobs": items}, headers=auth(key))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [item["error"]["code"] if item["error"] else None for item in answer["items"]] == [
        None,
        "uri_not_allowed",
        "uri_not_allowed",
        "uri_not_allowed",
    ]
    job = api_client.get(f"/v1/jobs/{answer['items'][0]['job_id']}", headers=auth(key)).json()
    assert job["status"] == "queued"
    drain(redis_client, job_ids(answer))
