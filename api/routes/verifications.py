"""POST /v1/verifications: a verify job (one probe image against one enrolled subject)."""

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api import examples
from api.auth import Tenant
from api.schemas import VERIFICATION_FORM, Job, VerificationRequest, accepted, request_body
from api.submit import IDEMPOTENCY_HEADER, Context, accept, read_submission
from shared.jobs import JobRequest

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/verifications",
    status_code=202,
    operation_id="create_verification",
    response_model=Job,
    responses=accepted(401, 409, 413, 415, 422, 503),
    openapi_extra=request_body(VerificationRequest, VERIFICATION_FORM, examples.VERIFICATION),
    summary="Verify a face against an enrolled subject",
)
async def create_verification(
    request: Request,
    tenant_id: Tenant,
    context: Context,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
):
    """Queue a verify job: JSON {"subject_id", "image": base64} or multipart (`subject_id`, `image` file)."""
    body, images = await read_submission(request, VerificationRequest, "image")
    job_request = JobRequest(
        kind="verify",
        images=tuple(images),
        subject_id=body.subject_id or "",
        cropped=body.cropped,
        callback_url=body.callback_url,
        options=body.face_options(),
    )
    return await accept(context, tenant_id, job_request, idempotency_key)
