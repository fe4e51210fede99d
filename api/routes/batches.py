"""POST /v1/batches: up to max_batch_jobs jobs of any kinds in one JSON body; each item is
accepted or refused on its own (the single routes' error codes). GET /v1/batches/{batch_id}:
the batch's jobs counted per status, and its jobs a page at a time."""

import hashlib
import json
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select

from api import cursor
from api.auth import Tenant
from api.deps import get_database_url
from api.errors import ApiError
from api.examples import BATCH
from api.responses import OrjsonResponse
from api.schemas import BATCH_ITEM_MODELS, Batch, BatchAccepted, BatchRequest, errors
from api.submit import IDEMPOTENCY_HEADER, REPLAY_HEADER, Context, image_of, request_body_json
from shared.batches import BatchItem, batch_counts, submit_batch
from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobs import MAX_IDEMPOTENCY_KEY, JobRequest, SubmitError, job_json

router = APIRouter(prefix="/v1", tags=["batches"])
MAX_PAGE = 1000
IMAGE_FIELDS = {"enroll": "images", "verify": "image", "identify": "image", "detect": "image"}


def _bad_request(message: str) -> ApiError:
    return ApiError(422, "bad_request", message)


def _items(raw: bytes, most: int) -> list[Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad_request("the body is not valid JSON") from None
    if not isinstance(data, dict) or set(data) != {"jobs"} or not isinstance(data["jobs"], list):
        raise _bad_request('the body must be {"jobs": [item, ...]}')
    jobs = data["jobs"]
    if not jobs:
        raise _bad_request("a batch has at least one job")
    if len(jobs) > most:
        raise ApiError(422, "too_many_jobs", f"the batch has {len(jobs)} jobs; a batch has at most {most}")
    return jobs


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p)[:64] for p in err['loc']) or 'item'}: {err['msg']}" for err in exc.errors()[:5]]
    return "; ".join(parts)


def _read_item(index: int, data: Any) -> BatchItem:
    """One item -> a BatchItem with its JobRequest, or with the error the single route would give."""
    ref = data.get("ref") if isinstance(data, dict) else None
    ref = ref if isinstance(ref, str) and len(ref) <= 128 else None
    try:
        if not isinstance(data, dict):
            raise SubmitError("validation_error", "an item is a JSON object")
        model = BATCH_ITEM_MODELS.get(data.get("kind"))  # type: ignore[arg-type]
        if model is None:
            raise SubmitError("bad_kind", "kind must be enroll, verify, identify or detect")
        try:
            body: Any = model.model_validate(data)
        except ValidationError as exc:
            raise SubmitError("validation_error", _validation_message(exc)) from None
        value = getattr(body, IMAGE_FIELDS[body.kind])
        texts = value if isinstance(value, list) else ([] if value is None else [value])
        try:
            images = tuple(image_of(text, i) for i, text in enumerate(texts))
        except ApiError as exc:
            raise SubmitError(exc.code, exc.message) from None
        request = JobRequest(
            kind=body.kind,
            images=images,
            subject_id=getattr(body, "subject_id", None) or ("" if body.kind == "verify" else None),
            top_k=getattr(body, "top_k", None),
            cropped=body.cropped,
            callback_url=body.callback_url,
            options=body.face_options(),
        )
    except SubmitError as exc:
        return BatchItem(index, ref, error=exc)
    return BatchItem(index, ref, request=request)


def _digest(items: list[BatchItem]) -> str:
    """sha256 of the batch as asked for (images by their sha256), for Idempotency-Key replays."""
    canonical = [
        [item.ref, item.request.request_hash() if item.request else None, item.error.code if item.error else None]
        for item in items
    ]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


@router.post(
    "/batches",
    operation_id="create_batch",
    status_code=202,
    response_model=BatchAccepted,
    responses={
        202: {"description": "Queued", "headers": {"Location": {"schema": {"type": "string"}}}},
        **errors(401, 409, 413, 415, 422, 503),
    },
    openapi_extra=request_body_json(BatchRequest, BATCH),
    summary="Submit many jobs at once",
)
async def create_batch(
    request: Request,
    tenant_id: Tenant,
    context: Context,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> OrjsonResponse:
    """Queue every valid item as a job; answers 202 with one entry per item, in order: its job id,
    or the error the single route would give. Poll Location (GET /v1/batches/{id}) for progress."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send application/json")
    if idempotency_key is not None and not (
        1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        raise ApiError(
            422, "bad_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
        )
    raw = await request.body()
    items = [_read_item(i, data) for i, data in enumerate(_items(raw, context.settings.max_batch_jobs))]
    submitted = await run_in_threadpool(
        submit_batch,
        tenant_id,
        items,
        blobs=context.blobs,
        celery=context.publisher,
        database_url=context.database_url,
        settings=context.settings,
        idempotency_key=idempotency_key,
        digest=_digest(items) if idempotency_key is not None else None,
    )
    answer = submitted.answer
    headers = {"Location": f"/v1/batches/{answer['id']}"}
    if submitted.created:
        for item in items:
            if item.request is not None and item.error is None:
                context.metrics.submitted(item.request.kind)
    else:
        headers[REPLAY_HEADER] = "true"
    return OrjsonResponse(answer, status_code=202, headers=headers)


def _batch_page(
    database_url: str, tenant_id: uuid.UUID, batch_id: str, limit: int, after: tuple | None
) -> dict[str, Any] | None:
    with session_scope(database_url) as session:
        found = batch_counts(session, tenant_id, batch_id)
        if found is None:
            return None
        batch, counts = found
        query = select(Job).where(Job.submit_batch_id == batch.id, Job.tenant_id == tenant_id)
        query = cursor.newest_first(query, Job.submitted_at, Job.id, after, limit)
        jobs, next_cursor = cursor.split_page(
            session.scalars(query).all(), limit, lambda job: (job.submitted_at, job.id)
        )
    return {
        "id": str(batch.id),
        "created_at": batch.created_at.isoformat(),
        "counts": counts,
        "jobs": [job_json(job) for job in jobs],
        "next_cursor": next_cursor,
    }


@router.get(
    "/batches/{batch_id}",
    operation_id="get_batch",
    response_model=Batch,
    responses=errors(401, 404, 422),
    summary="A batch: its jobs counted per status, and the jobs",
)
async def get_batch(
    batch_id: str,
    tenant_id: Tenant,
    database_url: Annotated[str, Depends(get_database_url)],
    limit: Annotated[int, Query(description=f"Jobs per page, 1 to {MAX_PAGE}.")] = 100,
    cursor_: Annotated[str | None, Query(alias="cursor", description="next_cursor of the previous page.")] = None,
) -> OrjsonResponse:
    """The batch's counts per status and a page of its jobs (another tenant's batch is 404)."""
    limit = cursor.page_limit(limit, MAX_PAGE)
    after = cursor.decode(cursor_, (datetime, uuid.UUID)) if cursor_ else None
    page = await run_in_threadpool(_batch_page, database_url, tenant_id, batch_id, limit, after)
    if page is None:
        raise ApiError(404, "batch_not_found", f"no batch {batch_id[:64]}")
    return OrjsonResponse(page)
