"""Queued job rows written many at a time, for batch and grouped single submits.

new_row(tenant_id, request, job_id, keys, submitted_at, submit_batch_id=None) -> the row's values.
insert_rows(session, rows): one COPY for all of them (no ORM objects, nothing read back).
as_job(row) -> a transient Job with those values, for job_json and message_for.
unpublish(session, job_ids) -> the ids removed: the jobs still queued (a worker may hold the others).
"""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import delete
from sqlalchemy.orm import Session

from shared.db.models import Job
from shared.jobs import JobRequest

JSON_COLUMNS = {"blob_keys", "options"}  # JSONB columns of a new row


def new_row(
    tenant_id: uuid.UUID,
    request: JobRequest,
    job_id: uuid.UUID,
    keys: list[str],
    submitted_at: datetime,
    submit_batch_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "tenant_id": tenant_id,
        "kind": request.kind,
        "status": "queued",
        "subject_external_id": request.subject_id,
        "top_k": request.top_k,
        "cropped": request.cropped,
        "blob_keys": keys,
        "callback_url": request.callback_url,
        "options": request.options,
        "attempts": 0,
        "published": True,
        "submitted_at": submitted_at,
        "submit_batch_id": submit_batch_id,
    }


def insert_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """COPY the rows into the jobs table inside the session's transaction (an INSERT of many rows
    through SQLAlchemy spends most of its time binding parameters)."""
    if not rows:
        return
    columns = list(rows[0])
    driver = session.connection().connection.driver_connection
    assert driver is not None
    statement = f"COPY {Job.__tablename__} ({', '.join(columns)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([_json(row[name]) if name in JSON_COLUMNS else row[name] for name in columns])


def _json(value: Any) -> Any:
    return None if value is None else Jsonb(value)


def as_job(row: dict[str, Any]) -> Job:
    return Job(**row)


def unpublish(session: Session, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    removed = session.execute(
        delete(Job).where(Job.id.in_(list(job_ids)), Job.status == "queued").returning(Job.id)
    ).scalars()
    return set(removed)
