"""POST /v1/subjects/{subject_id}/enrollments: an enroll job for 1 to max_images_per_enrollment images."""

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api import examples
from api.auth import Tenant
from api.schemas import ENROLLMENT_FORM, EnrollmentRequest, Job, accepted, request_body
from api.submit import IDEMPOTENCY_HEADER, Context, accept, read_submission
from shared.jobs import JobRequest

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/subjects/{subject_id}/enrollments",
    status_code=202,
    operation_id="create_enrollment",
    response_model=Job,
    responses=accepted(401, 409, 413, 415, 422, 503),
    openapi_extra=request_body(EnrollmentRequest, ENROLLMENT_FORM, examples.ENROLLMENT),
    summary="Enroll face images for a subject",
)
async def create_enrollment(
    subject_id: str,
    request: Request,
    tenant_id: Tenant,
    context: Context,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
):
    """Queue an enroll job: JSON {"images": [base64, ...]} or multipart (repeated `images` files).
    Answers 202 with the job; poll Location (GET /v1/jobs/{id}) for the result."""
    body, images = await read_submission(request, EnrollmentRequest, "images")
    job_request = JobRequest(
        kind="enroll",
        images=tuple(images),
        subject_id=subject_id,
        cropped=body.cropped,
        callback_url=body.callback_url,
        options=body.face_options(),
    )
    return await accept(context, tenant_id, job_request, idempotency_key)
