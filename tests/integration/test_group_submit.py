"""Single submits written in groups (shared/group_submit.py), against real Valkey and Postgres:
every job of a group is stored, queued once and answered; a bad request fails alone."""

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image

from shared.jobs import JobRequest, SubmitError
from shared.settings import get_settings

JOBS = 40


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (shade, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def submitter(services, make_key):
    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.group_submit import GroupSubmitter

    group = GroupSubmitter(open_blob_store(services.blob_url), get_celery(), services.database_url)
    yield group
    group.close()


@pytest.fixture
def tenant_id(services, make_key):
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    key = make_key(f"group-{uuid.uuid4().hex[:8]}")
    with session_scope(services.database_url) as session:
        return tenant_for_key(session, key)


def _queued(redis_client, queue: str, ids: set[str]) -> list[str]:
    """The ids among `ids` with a message on queue (removing those messages)."""
    found = []
    for raw in redis_client.lrange(queue, 0, -1):
        job_id = json.loads(raw)["headers"]["id"]
        if job_id in ids:
            found.append(job_id)
            redis_client.lrem(queue, 1, raw)
    return found


def test_concurrent_submits_are_written_together(services, redis_client, submitter, tenant_id):
    from sqlalchemy import select

    from shared.db.models import Job
    from shared.db.session import session_scope

    async def submit_all():
        futures = [
            submitter.submit(tenant_id, JobRequest(kind="identify", images=(png(i),), top_k=3), get_settings())
            for i in range(JOBS)
        ]
        return await asyncio.gather(*futures)

    answers = asyncio.run(submit_all())
    ids = {answer["id"] for answer in answers}
    assert len(ids) == JOBS and all(answer["status"] == "queued" for answer in answers)
    with session_scope(services.database_url) as session:
        rows = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids]))).all()
        stamps = {row.submitted_at for row in rows}
        keys = [key for row in rows for key in row.blob_keys]
    assert len(rows) == JOBS
    assert len(stamps) < JOBS  # a group's rows share one insert and its time
    blob_root = Path(services.blob_url.removeprefix("file://"))
    assert all((blob_root / key).is_file() for key in keys)
    assert sorted(_queued(redis_client, "identify", ids)) == sorted(ids)  # each queued once


def test_a_bad_request_fails_alone(services, redis_client, submitter, tenant_id):
    async def submit_mixed():
        good = [
            submitter.submit(tenant_id, JobRequest(kind="identify", images=(png(i),), top_k=2), get_settings())
            for i in range(3)
        ]
        bad = submitter.submit(
            tenant_id, JobRequest(kind="verify", images=(png(9),), subject_id="no spaces allowed"), get_settings()
        )
        return await asyncio.gather(*good, bad, return_exceptions=True)

    *good, bad = asyncio.run(submit_mixed())
    assert isinstance(bad, SubmitError) and bad.code == "bad_subject_id"
    ids = {answer["id"] for answer in good}
    assert len(ids) == 3
    assert sorted(_queued(redis_client, "identify", ids)) == sorted(ids)


def test_close_answers_what_is_waiting(services, redis_client, submitter, tenant_id):
    async def submit_then_close():
        futures = [
            submitter.submit(tenant_id, JobRequest(kind="identify", images=(png(i),), top_k=1), get_settings())
            for i in range(5)
        ]
        await asyncio.get_running_loop().run_in_executor(None, submitter.close)
        return await asyncio.gather(*futures)

    answers = asyncio.run(submit_then_close())
    assert not submitter.running
    ids = {answer["id"] for answer in answers}
    assert len(ids) == 5
    assert sorted(_queued(redis_client, "identify", ids)) == sorted(ids)
    with pytest.raises(RuntimeError):
        asyncio.run(_submit_one(submitter, tenant_id))


async def _submit_one(submitter, tenant_id):
    return await submitter.submit(tenant_id, JobRequest(kind="identify", images=(png(1),), top_k=1), get_settings())


def test_a_caller_gone_does_not_stop_the_others(services, redis_client, submitter, tenant_id):
    """A submit whose event loop has closed before its answer came does not stop the thread."""
    import threading

    from shared.group_submit import _Pending

    gone = asyncio.new_event_loop()
    future = gone.create_future()
    gone.close()
    pending = _Pending(tenant_id, JobRequest(kind="identify", images=(png(3),), top_k=1), get_settings(), future, gone)
    finished = threading.Event()

    def settle_then_mark():
        pending.settle({"id": "x"})
        finished.set()

    threading.Thread(target=settle_then_mark).start()
    assert finished.wait(10)
    answer = asyncio.run(_submit_one(submitter, tenant_id))
    _queued(redis_client, "identify", {answer["id"]})
