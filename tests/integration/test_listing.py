"""GET /v1/jobs and GET /v1/subjects: filters, bulk polling, keyset pages that neither skip nor
repeat a row while rows are inserted during the walk, and tenants kept apart. Also the API key
cache: a revoked key is refused once key_cache_s has passed."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_api import auth, error_code

pytestmark = pytest.mark.stack


def app_client(**overrides):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import get_settings

    return TestClient(create_app(get_settings().model_copy(update=overrides)))


def tenant_of(services, key: str) -> uuid.UUID:
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, key)
    assert tenant_id is not None
    return tenant_id


def add_jobs(services, tenant_id, count, kind="verify", status="queued", subject="s", at=None) -> list[str]:
    """count job rows in one transaction (one submitted_at unless `at` is given); their ids."""
    from shared.db.models import Job
    from shared.db.session import session_scope

    ids = [uuid.uuid4() for _ in range(count)]
    with session_scope(services.database_url) as session:
        for job_id in ids:
            session.add(
                Job(
                    id=job_id,
                    tenant_id=tenant_id,
                    kind=kind,
                    status=status,
                    subject_external_id=subject if kind != "identify" else None,
                    blob_keys=[],
                    attempts=0,
                    **({"submitted_at": at} if at is not None else {}),
                )
            )
    return [str(job_id) for job_id in ids]


def add_subjects(services, tenant_id, names) -> None:
    from shared.db.models import Subject
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        session.add_all(Subject(tenant_id=tenant_id, external_id=name) for name in names)


def walk(client, path, key, limit, field, params=None, between=None) -> list[dict]:
    """Every page of a list route; between(page_number) runs after each page."""
    rows, cursor, pages = [], None, 0
    while True:
        query = {"limit": limit, **(params or {}), **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=query, headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body[field]) <= limit
        rows += body[field]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
        if between is not None:
            between(pages)


@pytest.fixture
def two_tenants(make_key, services):
    suffix = uuid.uuid4().hex[:8]
    keys = {"a": make_key(f"list-a-{suffix}"), "b": make_key(f"list-b-{suffix}")}
    return keys, {name: tenant_of(services, key) for name, key in keys.items()}


def test_listing_jobs_filters_and_bulk_polling_see_only_the_tenants_jobs(api_client, services, two_tenants):
    keys, tenants = two_tenants
    old = add_jobs(services, tenants["a"], 2, status="succeeded", at=datetime.now(UTC) - timedelta(days=2))
    verify = add_jobs(services, tenants["a"], 3, kind="verify", status="failed", subject="ann")
    identify = add_jobs(services, tenants["a"], 2, kind="identify", status="queued")
    theirs = add_jobs(services, tenants["b"], 3, kind="verify", status="failed", subject="ann")

    def ids(**params):
        response = api_client.get("/v1/jobs", params=params, headers=auth(keys["a"]))
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["jobs"]}

    assert ids() == set(old + verify + identify)
    assert ids(status="failed") == set(verify)
    assert ids(kind="identify") == set(identify)
    assert ids(subject_id="ann") == set(verify)
    assert ids(created_after=(datetime.now(UTC) - timedelta(days=1)).isoformat()) == set(verify + identify)
    assert ids(ids=",".join([old[0], identify[1], theirs[0], str(uuid.uuid4())])) == {old[0], identify[1]}
    assert ids(ids=",".join(theirs)) == set()
    response = api_client.get("/v1/jobs", headers=auth(keys["b"]))
    assert {job["id"] for job in response.json()["jobs"]} == set(theirs)
    jobs = api_client.get("/v1/jobs", headers=auth(keys["a"])).json()["jobs"]
    stamps = [(job["submitted_at"], job["id"]) for job in jobs]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    for params, code in (
        ({"ids": "x,y"}, "bad_job_id"),
        ({"limit": 0}, "bad_limit"),
        ({"limit": 1001}, "bad_limit"),
        ({"cursor": "bm9wZQ"}, "bad_cursor"),
        ({"status": "done"}, "validation_error"),
    ):
        response = api_client.get("/v1/jobs", params=params, headers=auth(keys["a"]))
        assert response.status_code == 422 and error_code(response) == code, params


def test_job_pages_neither_skip_nor_repeat_while_jobs_are_inserted(api_client, services, two_tenants):
    keys, tenants = two_tenants
    existing = []
    for i in range(4):  # rows of one transaction share submitted_at: the id orders them
        existing += add_jobs(services, tenants["a"], 6, at=datetime.now(UTC) - timedelta(minutes=10 - i))
    existing += add_jobs(services, tenants["a"], 5)
    added = []

    def insert(page: int) -> None:
        added.extend(add_jobs(services, tenants["a"], 3))  # newer than every row walked so far
        add_jobs(services, tenants["b"], 2)

    rows = walk(api_client, "/v1/jobs", keys["a"], 4, "jobs", between=insert)
    walked = [row["id"] for row in rows]
    assert len(walked) == len(set(walked)), "a job was repeated"
    assert set(walked) == set(existing), "a job was skipped, or a later one (or another tenant's) crept in"
    assert len(added) >= 3 * 7
    assert walk(api_client, "/v1/jobs", keys["a"], 1000, "jobs").__len__() == len(existing) + len(added)


def test_subject_pages_in_order_for_the_tenant_only(api_client, services, two_tenants):
    keys, tenants = two_tenants
    names = [f"subject-{i:02d}" for i in range(13)]
    add_subjects(services, tenants["a"], names[::-1])
    add_subjects(services, tenants["b"], ["subject-00", "zed"])

    def insert(page: int) -> None:
        add_subjects(services, tenants["a"], [f"a-new-{page}"])  # sorts before the cursor: not seen

    rows = walk(api_client, "/v1/subjects", keys["a"], 5, "subjects", between=insert)
    assert [row["subject_id"] for row in rows] == names
    assert all(row["templates"] == [] and row["created_at"] for row in rows)
    theirs = walk(api_client, "/v1/subjects", keys["b"], 100, "subjects")
    assert [row["subject_id"] for row in theirs] == ["subject-00", "zed"]
    bad = api_client.get("/v1/subjects", params={"cursor": "%%%"}, headers=auth(keys["a"]))
    assert bad.status_code == 422 and error_code(bad) == "bad_cursor"


def test_a_revoked_key_is_refused_once_the_key_cache_window_has_passed(services, make_key):
    from shared.db.session import session_scope
    from shared.keys import revoke_api_key

    def revoked_key() -> str:
        key = make_key(f"cache-{uuid.uuid4().hex[:8]}")
        return key

    def job(client, key):
        return client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code

    def revoke(key):
        with session_scope(services.database_url) as session:
            assert revoke_api_key(session, key)

    with app_client(key_cache_s=3600) as cached, app_client(key_cache_s=1) as short, app_client(key_cache_s=0) as off:
        key = revoked_key()
        assert (job(cached, key), job(short, key), job(off, key)) == (404, 404, 404)
        revoke(key)
        assert job(off, key) == 401  # no cache: refused at once
        assert job(cached, key) == 404  # within its window the cached key still works
        time.sleep(1.2)
        assert job(short, key) == 401  # past its window: looked up again, refused
        unknown = "bf_" + uuid.uuid4().hex
        assert job(cached, unknown) == 401  # unknown keys are never cached as known
