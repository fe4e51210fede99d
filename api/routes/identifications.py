"""POST /v1/identifications: an identify job (one probe image against the tenant's gallery)."""

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api import examples
from api.auth import Tenant
from api.schemas import IDENTIFICATION_FORM, IdentificationRequest, Job, accepted, request_body
from api.submit import IDEMPOTENCY_HEADER, Context, accept, read_submission
from shared.jobs import JobRequest

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/identifications",
    status_code=202,
    operation_id="create_identification",
    response_model=Job,
    responses=accepted(401, 409, 413, 415, 422, 503),
    openapi_extra=request_body(IdentificationRequest, IDENTIFICATION_FORM, examples.IDENTIFICATION),
    summary="Find the nearest enrolled subjects to a face",
)
async def create_identification(
    request: Request,
    tenant_id: Tenant,
    context: Context,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
):
    """Queue an identify job: JSON {"image": base64, "top_k": 5} or multipart (`image` file, `top_k`)."""
    body, images = await read_submission(request, IdentificationRequest, "image")
    job_request = JobRequest(
        kind="identify",
        images=tuple(images),
        top_k=body.top_k,
        cropped=body.cropped,
        callback_url=body.callback_url,
        options=body.face_options(),
    )
    return await accept(context, tenant_id, job_request, idempotency_key)
