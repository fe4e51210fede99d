"""GET /v1/subjects: the tenant's subjects ordered by subject_id, a page at a time (api/cursor.py).
GET /v1/subjects/{subject_id}: the subject and its templates per model version.
DELETE /v1/subjects/{subject_id}: erase its templates, the subject, its stored images and the
images of its past jobs, with an audit record.

subject_summary(session, tenant_id, subject_id) -> dict | None.
erase_subject(session, tenant_id, subject_id, key_prefix=None) -> blob keys to delete, or None when
    nothing was there; writes an AuditRecord (who, when, counts).
"""

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import delete, func, select, update

from api import cursor
from api.auth import Tenant, bearer
from api.deps import get_blobs, get_database_url
from api.errors import ApiError
from api.examples import SUBJECT
from api.responses import OrjsonResponse
from api.schemas import Subject as SubjectOut
from api.schemas import SubjectList, errors
from shared import outbox
from shared.blob import BlobStore
from shared.db.models import FINAL_STATUSES, AuditRecord, Job, Subject, Template
from shared.db.session import session_scope
from shared.image_refs import is_reference
from shared.jobs import is_subject_id
from shared.keys import SHOWN_CHARS

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["subjects"])

SUBJECT_KINDS = ("enroll", "reenroll", "verify")  # jobs that name a subject
SUBJECT_DELETED = "subject_deleted"
SUBJECT_ERASED = "subject_erased"  # AuditRecord.action
MAX_PAGE = 1000


def _check(subject_id: str) -> None:
    if not is_subject_id(subject_id):
        raise ApiError(422, "bad_subject_id", "subject_id must match ^[A-Za-z0-9._:-]{1,128}$")


def _not_found(subject_id: str) -> ApiError:
    return ApiError(404, "subject_not_found", f"no subject {subject_id}")


def subject_summary(session, tenant_id: uuid.UUID, subject_id: str) -> dict | None:
    subject = session.scalars(
        select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject_id)
    ).first()
    if subject is None:
        return None
    counts = session.execute(
        select(Template.model_version, func.count())
        .where(Template.subject_id == subject.id)
        .group_by(Template.model_version)
        .order_by(Template.model_version)
    ).all()
    return {
        "subject_id": subject.external_id,
        "created_at": subject.created_at.isoformat(),
        "templates": [{"model_version": name, "count": count} for name, count in counts],
    }


def erase_subject(session, tenant_id: uuid.UUID, subject_id: str, key_prefix: str | None = None) -> list[str] | None:
    """Fail the subject's pending jobs (so no worker re-creates it; their callbacks go to the
    outbox), delete its templates and row,
    clear the image keys of all its jobs (enrollments and verifications), and write an audit
    record (shared.db.models.AuditRecord: counts only). Returns the keys to delete, or None when
    there was nothing to erase."""
    of_subject = (Job.tenant_id == tenant_id, Job.subject_external_id == subject_id, Job.kind.in_(SUBJECT_KINDS))
    # First: this waits for a worker writing one of these jobs, so what it commits is seen below.
    cancelled = session.execute(
        update(Job)
        .where(*of_subject, Job.status.not_in(FINAL_STATUSES))
        .values(
            status="failed", error_code=SUBJECT_DELETED, error_message="the subject was deleted", finished_at=func.now()
        )
        .returning(Job.id)
    ).all()
    outbox.add(session, [job_id for (job_id,) in cancelled])  # their callbacks, in this transaction
    jobs = session.execute(
        select(Job.id, Job.blob_keys).where(*of_subject, func.jsonb_array_length(Job.blob_keys) > 0)
    ).all()
    keys = {key for _, job_keys in jobs for key in job_keys}
    subject = session.scalars(
        select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject_id)
    ).first()
    templates = 0
    if subject is not None:
        keys.update(
            session.scalars(
                select(Template.image_key).where(Template.subject_id == subject.id, Template.image_key.is_not(None))
            )
        )
        templates = session.execute(delete(Template).where(Template.subject_id == subject.id)).rowcount
        session.execute(delete(Subject).where(Subject.id == subject.id))
    if jobs:
        session.execute(update(Job).where(Job.id.in_([job_id for job_id, _ in jobs])).values(blob_keys=[]))
    if subject is None and not jobs and not cancelled:
        return None
    details = {"templates": templates, "images": len(keys), "jobs_cleared": len(jobs), "jobs_cancelled": len(cancelled)}
    session.add(
        AuditRecord(
            tenant_id=tenant_id, key_prefix=key_prefix, action=SUBJECT_ERASED, subject_id=subject_id, details=details
        )
    )
    return sorted(keys)


def subjects_page(database_url: str, tenant_id: uuid.UUID, limit: int, after: str | None) -> dict:
    """limit subjects after the subject_id `after`, with their template counts; next_cursor."""
    query = select(Subject).where(Subject.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Subject.external_id > after)
    with session_scope(database_url) as session:
        rows = session.scalars(query.order_by(Subject.external_id).limit(limit + 1)).all()
        subjects, next_cursor = cursor.split_page(rows, limit, lambda subject: (subject.external_id,))
        counts: dict[uuid.UUID, list[dict]] = {subject.id: [] for subject in subjects}
        templates = session.execute(
            select(Template.subject_id, Template.model_version, func.count())
            .where(Template.subject_id.in_(list(counts)))
            .group_by(Template.subject_id, Template.model_version)
            .order_by(Template.model_version)
        ).all()
    for subject_uuid, version, count in templates:
        counts[subject_uuid].append({"model_version": version, "count": count})
    return {
        "subjects": [
            {"subject_id": s.external_id, "created_at": s.created_at.isoformat(), "templates": counts[s.id]}
            for s in subjects
        ],
        "next_cursor": next_cursor,
    }


@router.get(
    "/subjects",
    operation_id="list_subjects",
    response_model=SubjectList,
    responses=errors(401, 422),
    summary="The tenant's subjects, ordered by subject_id",
)
async def list_subjects(
    tenant_id: Tenant,
    database_url: Annotated[str, Depends(get_database_url)],
    limit: Annotated[int, Query(description=f"Subjects per page, 1 to {MAX_PAGE}.")] = 100,
    cursor_: Annotated[str | None, Query(alias="cursor", description="next_cursor of the previous page.")] = None,
) -> OrjsonResponse:
    """A page of the tenant's subjects; next_cursor is null on the last page."""
    limit = cursor.page_limit(limit, MAX_PAGE)
    after = cursor.decode(cursor_, (str,))[0] if cursor_ else None
    return OrjsonResponse(await run_in_threadpool(subjects_page, database_url, tenant_id, limit, after))


@router.get(
    "/subjects/{subject_id}",
    operation_id="get_subject",
    response_model=SubjectOut,
    responses={200: {"content": {"application/json": {"example": SUBJECT}}}, **errors(401, 404, 422)},
    summary="A subject and its templates",
)
def get_subject(subject_id: str, tenant_id: Tenant, database_url: Annotated[str, Depends(get_database_url)]):
    _check(subject_id)
    with session_scope(database_url) as session:
        summary = subject_summary(session, tenant_id, subject_id)
    if summary is None:
        raise _not_found(subject_id)
    return summary


@router.delete(
    "/subjects/{subject_id}",
    operation_id="delete_subject",
    status_code=204,
    responses=errors(401, 404, 422),
    summary="Erase a subject, its templates and its images",
)
def delete_subject(
    subject_id: str,
    tenant_id: Tenant,
    database_url: Annotated[str, Depends(get_database_url)],
    blobs: Annotated[BlobStore, Depends(get_blobs)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
):
    """204 once erased; 404 when there is nothing (left) to erase."""
    _check(subject_id)
    prefix = credentials.credentials[:SHOWN_CHARS] if credentials else None
    with session_scope(database_url) as session:
        keys = erase_subject(session, tenant_id, subject_id, key_prefix=prefix)
    if keys is None:
        raise _not_found(subject_id)
    failed = 0
    for key in keys:
        if is_reference(key):  # the customer's own object: forgotten, never deleted
            continue
        try:
            blobs.delete(key)
        except Exception as exc:
            failed += 1
            log.warning("blob delete failed", extra={"blob_key": key, "error": type(exc).__name__})
    log.info("subject erased", extra={"tenant_id": str(tenant_id), "images": len(keys), "delete_failures": failed})
    return Response(status_code=204)
