"""GET /v1/jobs/{job_id}: the job JSON; another tenant's job is 404, like an unknown one.
GET /v1/jobs: the tenant's jobs newest first, filtered, a page at a time (keyset on
(submitted_at, id), api/cursor.py); `ids=a,b,c` polls many jobs at once."""

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api import cursor
from api.auth import Tenant
from api.deps import get_database_url
from api.errors import ApiError
from api.examples import JOB_EXAMPLES, json_examples
from api.responses import OrjsonResponse
from api.schemas import Job, JobKind, JobList, JobStatus, errors
from shared.db.models import Job as JobRow
from shared.db.session import session_scope
from shared.jobs import find_job, job_json

router = APIRouter(prefix="/v1", tags=["jobs"])
MAX_PAGE = 1000


def _ids(text: str) -> list[uuid.UUID]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) > MAX_PAGE:
        raise ApiError(422, "too_many_ids", f"ids: at most {MAX_PAGE} job ids")
    try:
        return [uuid.UUID(part) for part in parts]
    except ValueError:
        raise ApiError(422, "bad_job_id", "ids: a comma-separated list of job ids") from None


def _jobs_page(database_url: str, tenant_id: uuid.UUID, filters: list[Any], limit: int, after: tuple | None) -> dict:
    query = select(JobRow).where(JobRow.tenant_id == tenant_id, *filters)
    query = cursor.newest_first(query, JobRow.submitted_at, JobRow.id, after, limit)
    with session_scope(database_url) as session:
        jobs, next_cursor = cursor.split_page(session.scalars(query).all(), limit, _job_key)
    return {"jobs": [job_json(job) for job in jobs], "next_cursor": next_cursor}


def _job_key(job: JobRow) -> tuple:
    return (job.submitted_at, job.id)


@router.get(
    "/jobs",
    operation_id="list_jobs",
    response_model=JobList,
    responses=errors(401, 422),
    summary="The tenant's jobs, newest first",
)
async def list_jobs(
    tenant_id: Tenant,
    database_url: Annotated[str, Depends(get_database_url)],
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    subject_id: Annotated[str | None, Query(max_length=128, description="Only jobs naming this subject.")] = None,
    created_after: Annotated[datetime | None, Query(description="Only jobs submitted after this time.")] = None,
    ids: Annotated[str | None, Query(description=f"Comma-separated job ids (at most {MAX_PAGE}).")] = None,
    limit: Annotated[int, Query(description=f"Jobs per page, 1 to {MAX_PAGE}.")] = 100,
    cursor_: Annotated[str | None, Query(alias="cursor", description="next_cursor of the previous page.")] = None,
) -> OrjsonResponse:
    """A page of the tenant's jobs, newest first; next_cursor is null on the last page. Unknown
    ids and other tenants' jobs are simply absent."""
    limit = cursor.page_limit(limit, MAX_PAGE)
    after = cursor.decode(cursor_, (datetime, uuid.UUID)) if cursor_ else None
    filters: list[Any] = []
    if status is not None:
        filters.append(JobRow.status == status)
    if kind is not None:
        filters.append(JobRow.kind == kind)
    if subject_id is not None:
        filters.append(JobRow.subject_external_id == subject_id)
    if created_after is not None:
        if created_after.tzinfo is None:
            raise ApiError(422, "bad_created_after", "created_after needs a time zone, e.g. 2026-01-01T00:00:00Z")
        filters.append(JobRow.submitted_at > created_after)
    if ids is not None:
        filters.append(JobRow.id.in_(_ids(ids)))
    return OrjsonResponse(await run_in_threadpool(_jobs_page, database_url, tenant_id, filters, limit, after))


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    response_model=Job,
    responses={200: {"content": json_examples(JOB_EXAMPLES)}, **errors(401, 404)},
    summary="A job and its result",
)
def get_job(job_id: str, tenant_id: Tenant, database_url: Annotated[str, Depends(get_database_url)]):
    """The job's status, result or error (see the Job schema)."""
    with session_scope(database_url) as session:
        job = find_job(session, tenant_id, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return OrjsonResponse(job_json(job))
