"""POST /v1/detections: a detect job (every face of one image: box, landmarks, confidence and
quality; no descriptor is stored)."""

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api.auth import Tenant
from api.examples import DETECTION
from api.schemas import DETECTION_FORM, DetectionRequest, Job, accepted, request_body
from api.submit import IDEMPOTENCY_HEADER, Context, accept, read_submission
from shared.jobs import JobRequest

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/detections",
    status_code=202,
    response_model=Job,
    responses=accepted(401, 409, 413, 415, 422, 503),
    openapi_extra=request_body(DetectionRequest, DETECTION_FORM, DETECTION),
    summary="Find every face of an image",
    operation_id="create_detection",
)
async def create_detection(
    request: Request,
    tenant_id: Tenant,
    context: Context,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> object:
    """Queue a detect job: JSON {"image": base64} or multipart (`image` file), with the face
    options (max_faces, default all up to the server's max_faces; min_face_size, ...)."""
    body, images = await read_submission(request, DetectionRequest, "image")
    job_request = JobRequest(
        kind="detect",
        images=tuple(images),
        cropped=body.cropped,
        callback_url=body.callback_url,
        options=body.face_options(),
    )
    return await accept(context, tenant_id, job_request, idempotency_key)
