"""What the sync and async clients share: the operations table, building a call, reading an
answer, encoding images and the polling backoff.

OPERATIONS: operationId -> Operation(method, path, request model, response type).
"""

from __future__ import annotations

import base64
import email.utils
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from biofleet_client.errors import BiofleetError, make_error
from biofleet_client.models import (
    AnyJob,
    Batch,
    BatchAccepted,
    BatchItem,
    BatchRequest,
    DetectionRequest,
    EnrollmentRequest,
    Health,
    IdentificationRequest,
    JobPage,
    Readiness,
    Subject,
    SubjectPage,
    UriImage,
    VerificationRequest,
)

Image = bytes | str | os.PathLike[str] | Mapping[str, str] | UriImage
"""Image bytes, a path to an image file, or {"uri": "s3://bucket/key"}."""
RETRY_STATUSES = (429, 503)  # what wait() retries after Retry-After
# Codes of errors answered without the JSON error shape.
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "body_too_large", 429: "rate_limited"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    request: type[BaseModel] | None
    response: Any  # a model, AnyJob, or None (no body)


OPERATIONS: dict[str, Operation] = {
    "create_enrollment": Operation("POST", "/v1/subjects/{subject_id}/enrollments", EnrollmentRequest, AnyJob),
    "create_verification": Operation("POST", "/v1/verifications", VerificationRequest, AnyJob),
    "create_identification": Operation("POST", "/v1/identifications", IdentificationRequest, AnyJob),
    "create_detection": Operation("POST", "/v1/detections", DetectionRequest, AnyJob),
    "get_job": Operation("GET", "/v1/jobs/{job_id}", None, AnyJob),
    "list_jobs": Operation("GET", "/v1/jobs", None, JobPage),
    "get_subject": Operation("GET", "/v1/subjects/{subject_id}", None, Subject),
    "delete_subject": Operation("DELETE", "/v1/subjects/{subject_id}", None, None),
    "list_subjects": Operation("GET", "/v1/subjects", None, SubjectPage),
    "create_batch": Operation("POST", "/v1/batches", BatchRequest, BatchAccepted),
    "get_batch": Operation("GET", "/v1/batches/{batch_id}", None, Batch),
    "healthz": Operation("GET", "/healthz", None, Health),
    "readyz": Operation("GET", "/readyz", None, Readiness),
}
_ADAPTERS = {name: TypeAdapter(op.response) for name, op in OPERATIONS.items() if op.response is not None}


class SubmitOptions(TypedDict, total=False):
    """Options every submit route takes."""

    cropped: bool
    callback_url: str
    max_faces: int
    min_face_size: int
    min_detector_confidence: float
    quality_filter: Literal["none", "low", "medium", "high"]
    multiple_faces: str


@dataclass
class Call:
    operation: str
    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def build(
    operation: str,
    path_params: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    body: BaseModel | None = None,
    idempotency_key: str | None = None,
) -> Call:
    op = OPERATIONS[operation]
    url = op.path.format(**{name: _segment(value) for name, value in (path_params or {}).items()})
    query = {name: _query_value(value) for name, value in (params or {}).items() if value is not None}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    json_body = body.model_dump(mode="json", exclude_none=True) if body is not None else None
    return Call(operation, op.method, url, query, json_body, headers)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from(response: httpx.Response) -> BiofleetError:
    """The exception for an error answer: its class by the error code of the body."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    fallback = HTTP_CODES.get(response.status_code, "internal_error" if response.status_code >= 500 else "http_error")
    code = str(error.get("code") or fallback)
    message = str(error.get("message") or response.reason_phrase or f"HTTP {response.status_code}")
    return make_error(code, message, status=response.status_code, retry_after=retry_after_s(response), body=body)


def parse(call: Call, response: httpx.Response) -> Any:
    """The typed answer of a call, or raise its BiofleetError."""
    if response.status_code >= 400:
        raise error_from(response)
    adapter = _ADAPTERS.get(call.operation)
    if adapter is None:
        return None
    return adapter.validate_python(response.json())


def encode_image(image: Image) -> str | UriImage:
    """bytes -> base64; a str or path -> that file's bytes as base64; {"uri": ...} -> a reference."""
    if isinstance(image, UriImage):
        return image
    if isinstance(image, Mapping):
        return UriImage(uri=image["uri"])
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        data = Path(image).read_bytes()
    return base64.b64encode(data).decode()


def submit_body(model: type[BaseModel], fields: dict[str, Any], options: Mapping[str, Any]) -> BaseModel:
    return model.model_validate({**fields, **options})


def batch_item(item: BatchItem | Mapping[str, Any]) -> BatchItem:
    """A batch item with its images encoded (bytes, paths and {"uri"} accepted as in single submits)."""
    if isinstance(item, BatchItem):
        return item
    data = dict(item)
    if data.get("image") is not None:
        data["image"] = encode_image(data["image"])
    if data.get("images") is not None:
        data["images"] = [encode_image(image) for image in data["images"]]
    return BatchItem.model_validate(data)


def chunks(items: Sequence[BatchItem], size: int) -> list[Sequence[BatchItem]]:
    if not 1 <= size <= 1000:
        raise ValueError("chunk_size must be between 1 and 1000")
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass(frozen=True)
class Submitted:
    """One item of submit_many(): its index in the items given, its job id or its error."""

    index: int
    ref: str | None
    job_id: str | None
    error: BiofleetError | None
    batch_id: str


def submitted(accepted: BatchAccepted, offset: int) -> list[Submitted]:
    out = []
    for item in accepted.items:
        error = make_error(item.error.code, item.error.message) if item.error is not None else None
        out.append(Submitted(offset + item.index, item.ref, item.job_id, error, accepted.id))
    return out


class Backoff:
    """Poll intervals: first_s, growing by factor up to most_s; a Retry-After overrides one wait."""

    def __init__(self, timeout_s: float, first_s: float = 0.2, most_s: float = 5.0, factor: float = 1.5) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.next_s = first_s
        self.most_s = most_s
        self.factor = factor

    def delay(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next poll (never past the deadline)."""
        wait = retry_after if retry_after is not None else self.next_s
        self.next_s = min(self.most_s, self.next_s * self.factor)
        return max(0.0, min(wait, self.deadline - time.monotonic()))

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


def retryable(error: BiofleetError) -> bool:
    return error.status in RETRY_STATUSES or error.code == "idempotency_in_progress"


def checked(job: AnyJob, raise_on_failure: bool) -> AnyJob:
    """The job; or, when it failed and raise_on_failure, raise its error class with .job set."""
    if raise_on_failure and job.status == "failed":
        error = job.error
        raise make_error(error.code if error else "internal_error", error.message if error else "failed", job=job)
    return job
