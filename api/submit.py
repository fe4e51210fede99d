"""What the three submit routes share: reading a JSON or multipart body, and answering 202.

read_submission(request, model, image_field) -> (model instance, [image bytes or ImageRef]).
decode_base64(text, index) -> bytes, or 422 "bad_base64".
image_of(value, index) -> bytes for a base64 string, ImageRef for {"uri"}, or 422 "uri_not_allowed"
    for a malformed uri or another scheme (prefixes are checked by shared.jobs.check_references).
SubmitContext (a dependency): blobs, publisher, database URL, settings, metrics.
accept(context, tenant_id, job_request, idempotency_key) -> 202 OrjsonResponse with Location.
request_body_json(model) -> openapi_extra for a route that takes model as JSON only.
"""

import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from api.deps import backends_of, get_blobs, get_database_url, get_publisher
from api.errors import ApiError
from api.responses import OrjsonResponse
from api.schemas import ImageUri
from shared.image_refs import BadUri, ImageRef, parse_uri
from shared.jobs import JobRequest, job_json, submit_job
from shared.settings import Settings

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_JSON_ITEMS = 100  # fields of a body, items of a list in it: far more than any request has


@dataclass
class SubmitContext:
    blobs: Any
    publisher: Any
    database_url: str
    settings: Settings
    metrics: Any
    group: Any  # shared.group_submit.GroupSubmitter


async def submit_context(
    request: Request,
    blobs: Annotated[Any, Depends(get_blobs)],
    publisher: Annotated[Any, Depends(get_publisher)],
    database_url: Annotated[str, Depends(get_database_url)],
) -> SubmitContext:
    backends = backends_of(request)
    group = backends.submitter(blobs, publisher, database_url)
    return SubmitContext(blobs, publisher, database_url, backends.settings, request.app.state.metrics, group)


Context = Annotated[SubmitContext, Depends(submit_context)]


def request_body_json(model: type[BaseModel], example: dict) -> dict:
    """openapi_extra for a route that takes model as its JSON body (read by the route itself)."""
    content = {"application/json": {"schema": model.model_json_schema(), "example": example}}
    return {"requestBody": {"required": True, "content": content}}


def decode_base64(text: str, index: int) -> bytes:
    """Standard base64 (line breaks and a data: URL prefix allowed) -> bytes."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    try:  # line breaks or spaces: the slow way
        return binascii.a2b_base64("".join(text.split()), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", f"image {index} is not valid base64") from None


def image_of(value: str | ImageUri, index: int) -> bytes | ImageRef:
    """A JSON image field: base64 text, or {"uri": ...}."""
    if isinstance(value, ImageUri):
        try:
            return parse_uri(value.uri)
        except BadUri as exc:
            raise ApiError(422, "uri_not_allowed", f"image {index}: {exc}") from None
    return decode_base64(value, index)


def _invalid(exc: ValidationError) -> RequestValidationError:
    errors = [{**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_input=False)]
    return RequestValidationError(errors)


def _check_size(data: Any) -> None:
    """422 for a body with more fields, or a list with more items, than MAX_JSON_ITEMS: validating
    millions of them would take the API's time and memory."""
    if isinstance(data, (list, dict)) and len(data) > MAX_JSON_ITEMS:
        message = f"the body has {len(data)} items; a request has at most {MAX_JSON_ITEMS}"
        raise ApiError(422, "validation_error", message)
    for name, value in data.items() if isinstance(data, dict) else ():
        if isinstance(value, (list, dict)) and len(value) > MAX_JSON_ITEMS:
            message = f"{name[:64]}: {len(value)} items; a request has at most {MAX_JSON_ITEMS}"
            raise ApiError(422, "validation_error", message)


async def _read_json(request: Request, model: type[BaseModel], image_field: str):
    raw = await request.body()
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(422, "validation_error", "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "validation_error", "the body is not valid JSON") from None
    _check_size(data)
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    value = getattr(body, image_field)
    texts = value if isinstance(value, list) else ([] if value is None else [value])
    return body, [image_of(text, i) for i, text in enumerate(texts)]


async def _read_form(request: Request, model: type[BaseModel], image_field: str):
    form = await request.form()
    try:
        images, fields = [], {}
        for name, value in form.multi_items():
            if name == image_field:
                if not isinstance(value, UploadFile):
                    raise ApiError(422, "validation_error", f"{image_field} must be file parts")
                images.append(await value.read())
            elif isinstance(value, UploadFile):
                raise ApiError(422, "validation_error", f"unexpected file field {name!r}")
            elif value != "":
                fields[name] = value
        try:
            body = model.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return body, images
    finally:
        await form.close()


async def read_submission(request: Request, model: type[BaseModel], image_field: str):
    """The body as `model` and the decoded images, from JSON or multipart/form-data."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return await _read_json(request, model, image_field)
    if content_type == "multipart/form-data":
        return await _read_form(request, model, image_field)
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


async def accept(
    context: SubmitContext, tenant_id: uuid.UUID, job_request: JobRequest, idempotency_key: str | None
) -> OrjsonResponse:
    """Submit the job; 202 with the job JSON and Location (the earlier job on an idempotent replay).
    Without an Idempotency-Key the job is written with the others arriving meanwhile."""
    if idempotency_key is None:
        body = await context.group.submit(tenant_id, job_request, context.settings)
        context.metrics.submitted(job_request.kind)
        return OrjsonResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{body['id']}"})
    submitted = await run_in_threadpool(
        submit_job,
        tenant_id,
        job_request,
        blobs=context.blobs,
        celery=context.publisher,
        database_url=context.database_url,
        settings=context.settings,
        idempotency_key=idempotency_key,
    )
    job = submitted.job
    if submitted.created:
        context.metrics.submitted(job.kind)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not submitted.created:
        headers[REPLAY_HEADER] = "true"
    return OrjsonResponse(job_json(job), status_code=202, headers=headers)
