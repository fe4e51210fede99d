"""The sweeper against real Postgres and Valkey: a stranded row that no message can carry does
not keep the others from being published again."""

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete


def _stranded(session, tenant_id, blob_keys: list[str]) -> uuid.UUID:
    from shared.db.models import Job

    job_id = uuid.uuid4()
    session.add(
        Job(
            id=job_id,
            tenant_id=tenant_id,
            kind="enroll",
            status="queued",
            subject_external_id="sweep-me",
            blob_keys=blob_keys,
            attempts=0,
            published=True,
            # older than any other test's row: with sweep_limit 2 the sweep takes these two alone
            submitted_at=datetime(2000, 1, 1, tzinfo=UTC),
        )
    )
    return job_id


def test_an_unpublishable_row_does_not_stop_the_sweep(services, redis_client, make_key):
    from shared.celery_app import get_celery
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.settings import get_settings
    from worker.sweeper import SWEPT_PREFIX, sweep

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, make_key(f"sweep-{uuid.uuid4().hex[:8]}"))
        broken = _stranded(session, tenant_id, [])  # no image: a message needs one
        good = _stranded(session, tenant_id, [f"{tenant_id}/x/0"])
    settings = get_settings().model_copy(update={"sweep_after_s": 5, "sweep_limit": 2})
    try:
        sent = sweep(services.database_url, redis_client, get_celery(), settings)
        assert sent == [str(good)]
        queued = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("enroll", 0, -1)]
        assert str(good) in queued and str(broken) not in queued
    finally:
        for raw in redis_client.lrange("enroll", 0, -1):
            if json.loads(raw)["headers"]["id"] == str(good):
                redis_client.lrem("enroll", 1, raw)
        redis_client.delete(SWEPT_PREFIX + str(good))
        with session_scope(services.database_url) as session:
            session.execute(delete(Job).where(Job.id.in_([broken, good])))
