"""GET /v1/jobs/{job_id}: the job JSON; another tenant's job is 404, like an unknown one."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.auth import Tenant
from api.deps import get_database_url
from api.errors import ApiError
from api.examples import JOB_EXAMPLES, json_examples
from api.schemas import Job, errors
from shared.db.session import session_scope
from shared.jobs import find_job, job_json

router = APIRouter(prefix="/v1", tags=["jobs"])


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
    return JSONResponse(job_json(job))
