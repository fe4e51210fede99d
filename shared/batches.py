"""Batch submit: many jobs in one request, for the API's POST /v1/batches.

submit_batch(tenant_id, items, blobs, celery, database_url, settings, idempotency_key, digest)
    -> BatchSubmitted(answer, created). items are BatchItem(index, ref, request or error); the
    valid ones are validated again here (shared.jobs.validate), their images written concurrently,
    their rows inserted in one statement with the batch's row, their messages published in one
    Redis pipeline (shared.publish). The answer is {"id", "accepted", "rejected", "items": [...]}
    in request order. With an idempotency key the same key and digest give back the first answer
    (created=False); another digest raises IdempotencyConflict; a replay while the first request
    still publishes waits up to REPLAY_WAIT_S, then raises IdempotencyInProgress. When the broker
    cannot take the messages, the rows and images are removed and QueueUnavailable is raised.
batch_counts(session, tenant_id, batch_id) -> (SubmitBatch, {status: n}) | None.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.blob import BlobStore, delete_all
from shared.db.models import JOB_STATUSES, Job, SubmitBatch
from shared.db.session import session_scope
from shared.image_refs import tenant_prefixes
from shared.job_rows import as_job, insert_rows, new_row
from shared.jobs import (
    REPLAY_POLL_S,
    REPLAY_WAIT_S,
    IdempotencyConflict,
    IdempotencyInProgress,
    JobRequest,
    QueueUnavailable,
    SubmitError,
    check_against,
    has_references,
    image_keys,
    message_for,
    store_all,
    stored_images,
    validate,
)
from shared.publish import publish_all
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch as read: its index, the client's ref, and a request or the error."""

    index: int
    ref: str | None
    request: JobRequest | None = None
    error: SubmitError | None = None


@dataclass
class BatchSubmitted:
    answer: dict[str, Any]
    created: bool  # False for an idempotent replay


def _item(index: int, ref: str | None, job_id: uuid.UUID | None, error: SubmitError | None) -> dict[str, Any]:
    return {
        "index": index,
        "ref": ref,
        "job_id": str(job_id) if job_id else None,
        "error": {"code": error.code, "message": error.message} if error else None,
    }


def _checked(
    items: Sequence[BatchItem], settings: Settings, database_url: str, tenant_id: uuid.UUID
) -> list[BatchItem]:
    """Items validated again; references checked against the tenant's prefixes (read once)."""
    prefixes: list[str] | None = None
    if any(item.request is not None and has_references(item.request) for item in items):
        with session_scope(database_url) as session:
            prefixes = tenant_prefixes(session, tenant_id)
    checked = []
    for item in items:
        if item.request is not None and item.error is None:
            try:
                validate(item.request, settings)
                if prefixes is not None:
                    check_against(item.request, prefixes)
            except SubmitError as exc:
                item = BatchItem(item.index, item.ref, error=exc)
        checked.append(item)
    return checked


def _earlier(database_url: str, tenant_id: uuid.UUID, key: str) -> SubmitBatch | None:
    """The batch with this key, waiting up to REPLAY_WAIT_S while its submitter still publishes."""
    deadline = time.monotonic() + REPLAY_WAIT_S
    while True:
        with session_scope(database_url) as session:
            earlier = session.scalars(
                select(SubmitBatch).where(SubmitBatch.tenant_id == tenant_id, SubmitBatch.idempotency_key == key)
            ).first()
        if earlier is None or earlier.published or time.monotonic() >= deadline:
            return earlier
        time.sleep(REPLAY_POLL_S)


def _replay(earlier: SubmitBatch, digest: str | None) -> BatchSubmitted:
    if earlier.request_hash != digest:
        raise IdempotencyConflict()
    if not earlier.published:
        raise IdempotencyInProgress()
    return BatchSubmitted(answer=earlier.answer, created=False)


def submit_batch(
    tenant_id: uuid.UUID,
    items: Sequence[BatchItem],
    blobs: BlobStore,
    celery: Any,
    database_url: str,
    settings: Settings,
    idempotency_key: str | None,
    digest: str | None,
) -> BatchSubmitted:
    """See the module docstring."""
    if idempotency_key is not None:
        earlier = _earlier(database_url, tenant_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest)
    batch_id = uuid.uuid4()
    items = _checked(items, settings, database_url, tenant_id)
    valid = [(item.request, uuid.uuid4()) for item in items if item.request is not None and item.error is None]
    keys = {job_id: image_keys(tenant_id, job_id, request) for request, job_id in valid}
    job_ids = iter(job_id for _, job_id in valid)
    answer = {
        "id": str(batch_id),
        "accepted": len(valid),
        "rejected": len(items) - len(valid),
        "items": [
            _item(
                item.index,
                item.ref,
                next(job_ids) if item.request is not None and item.error is None else None,
                item.error,
            )
            for item in items
        ],
    }
    stored = [pair for request, job_id in valid for pair in stored_images(keys[job_id], request)]
    all_keys = [key for key, _ in stored]
    store_all(blobs, stored)
    try:
        jobs = _insert(database_url, tenant_id, batch_id, valid, keys, answer, idempotency_key, digest)
    except BaseException:
        delete_all(blobs, all_keys)
        raise
    if jobs is None:  # another request with this key won the race
        delete_all(blobs, all_keys)
        assert idempotency_key is not None
        earlier = _earlier(database_url, tenant_id, idempotency_key)
        if earlier is None:  # the winner's publish failed and its rows were removed
            raise QueueUnavailable()
        return _replay(earlier, digest)
    try:
        publish_all(celery, [message_for(job) for job in jobs])
    except Exception as exc:
        log.warning(
            "batch publish failed; batch removed", extra={"batch_id": str(batch_id), "error": type(exc).__name__}
        )
        _unpublish(database_url, batch_id)
        delete_all(blobs, all_keys)
        raise QueueUnavailable() from exc
    if idempotency_key is not None:
        with session_scope(database_url) as session:
            session.execute(update(SubmitBatch).where(SubmitBatch.id == batch_id).values(published=True))
    log.info(
        "batch queued",
        extra={
            "batch_id": str(batch_id),
            "tenant_id": str(tenant_id),
            "accepted": len(valid),
            "rejected": answer["rejected"],
        },
    )
    return BatchSubmitted(answer=answer, created=True)


def _insert(
    database_url: str,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    valid: list[tuple[JobRequest, uuid.UUID]],
    keys: dict[uuid.UUID, list[str]],
    answer: dict[str, Any],
    idempotency_key: str | None,
    digest: str | None,
) -> list[Job] | None:
    """The batch row and its job rows in one transaction; None when the key was taken meanwhile."""
    with session_scope(database_url) as session:
        created = session.execute(
            insert(SubmitBatch)
            .values(
                id=batch_id,
                tenant_id=tenant_id,
                idempotency_key=idempotency_key,
                request_hash=digest,
                answer=answer,
                published=idempotency_key is None,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
            .returning(SubmitBatch.id)
        ).first()
        if created is None:
            return None
        if not valid:
            return []
        now = datetime.now(UTC)
        rows = [new_row(tenant_id, request, job_id, keys[job_id], now, batch_id) for request, job_id in valid]
        insert_rows(session, rows)
        return [as_job(row) for row in rows]


def _unpublish(database_url: str, batch_id: uuid.UUID) -> None:
    """Remove a batch whose publish failed: its queued jobs and its row."""
    with session_scope(database_url) as session:
        session.execute(delete(Job).where(Job.submit_batch_id == batch_id, Job.status == "queued"))
        session.execute(delete(SubmitBatch).where(SubmitBatch.id == batch_id))


def batch_counts(session: Session, tenant_id: uuid.UUID, batch_id: str) -> tuple[SubmitBatch, dict[str, int]] | None:
    """The tenant's batch and its jobs counted per status; None when unknown or another tenant's."""
    try:
        batch_uuid = uuid.UUID(batch_id)
    except ValueError:
        return None
    batch = session.scalars(
        select(SubmitBatch).where(SubmitBatch.id == batch_uuid, SubmitBatch.tenant_id == tenant_id)
    ).first()
    if batch is None:
        return None
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for status, count in session.execute(
        select(Job.status, func.count())
        .where(Job.submit_batch_id == batch_uuid, Job.tenant_id == tenant_id)
        .group_by(Job.status)
    ):
        counts[status] = count
    return batch, counts
