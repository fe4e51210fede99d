"""The submit path, for the API and for batch scripts: store the images, insert the job row, publish.

JobRequest(kind, images, subject_id, top_k, cropped, callback_url, options): what a client asks
    for; an image is bytes, or an ImageRef (shared/image_refs.py) the worker reads itself.
validate(request, settings) -> None, or SubmitError with a stable code.
check_references(database_url, tenant_id, request) -> None, or SubmitError "uri_not_allowed" for a
    reference outside the tenant's image_uri_prefixes.
submit_job(tenant_id, request, blobs, celery, database_url, settings, idempotency_key=None)
    -> Submitted(job, created).
    With an idempotency key, the same key and the same request give back the first job
    (created=False) once its message is on the queue: a replay that comes while the first request
    is still publishing waits up to REPLAY_WAIT_S, then raises IdempotencyInProgress (so it never
    returns a job that can still be removed). The same key with another request raises
    IdempotencyConflict. When the broker cannot take the message, the row and the images are
    removed (unless a worker has already taken the job) and QueueUnavailable is raised.
job_json(job) -> dict: the public JSON of a job row (GET /v1/jobs/{id}, callbacks).
find_job(session, tenant_id, job_id) -> Job | None.
"""

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert

from shared.blob import BlobStore, delete_all, put_all
from shared.callback_guard import CallbackRefused, allowed_networks, check_callback_url
from shared.db.models import Job
from shared.db.session import session_scope
from shared.face_options import option_error
from shared.image_refs import ImageRef, allowed, tenant_prefixes
from shared.messages import MAX_IMAGES, JobMessage
from shared.publish import publish_all
from shared.queues import QUEUE_FOR_KIND
from shared.settings import Settings

log = logging.getLogger(__name__)

SUBJECT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_SUBJECT_ID = re.compile(SUBJECT_ID_PATTERN)
MAX_IDEMPOTENCY_KEY = 200  # Job.idempotency_key column width
SUBJECT_KINDS = ("enroll", "verify", "reenroll")
# Short, bounded retries: a client waiting on a 202 should get a 503 quickly when Redis is down.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
REPLAY_WAIT_S = 2.0  # how long a replay waits for the first request's publish
REPLAY_POLL_S = 0.05


class SubmitError(Exception):
    """A request that cannot become a job; code is stable, message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class IdempotencyConflict(SubmitError):
    def __init__(self):
        super().__init__("idempotency_conflict", "this Idempotency-Key was used with a different request")


class IdempotencyInProgress(SubmitError):
    def __init__(self):
        message = "a request with this Idempotency-Key is still being accepted; retry"
        super().__init__("idempotency_in_progress", message)


class QueueUnavailable(SubmitError):
    def __init__(self):
        super().__init__("queue_unavailable", "the job queue is unavailable; retry later")


class StorageUnavailable(SubmitError):
    def __init__(self):
        super().__init__("storage_unavailable", "the image store is unavailable; retry later")


@dataclass(frozen=True)
class JobRequest:
    """One job as asked for: kind, image bytes and the options of that kind."""

    kind: str
    images: tuple[bytes | ImageRef, ...]
    subject_id: str | None = None
    top_k: int | None = None
    cropped: bool = False
    callback_url: str | None = None
    options: dict[str, Any] | None = None  # face options (shared.face_options)

    def request_hash(self) -> str:
        """sha256 hex of the canonical request (images by their sha256), whatever the HTTP form."""
        canonical: dict[str, Any] = {
            "kind": self.kind,
            "subject_id": self.subject_id,
            "top_k": self.top_k,
            "cropped": self.cropped,
            "callback_url": self.callback_url,
            "images": [
                image.uri if isinstance(image, ImageRef) else hashlib.sha256(image).hexdigest() for image in self.images
            ],
        }
        if self.options:
            canonical["options"] = self.options
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass
class Submitted:
    job: Job  # detached row, readable
    created: bool  # False when an idempotent replay returned an earlier job


def is_subject_id(value: str) -> bool:
    return bool(_SUBJECT_ID.fullmatch(value))


def validate(request: JobRequest, settings: Settings) -> None:
    """Raise SubmitError for a request that breaks a limit; None when it is acceptable."""
    if request.kind not in QUEUE_FOR_KIND:
        raise SubmitError("bad_kind", f"unknown job kind {request.kind!r}")
    most = min(settings.max_images_per_enrollment, MAX_IMAGES) if request.kind in ("enroll", "reenroll") else 1
    if not request.images:
        raise SubmitError("no_images", "at least one image is required")
    if len(request.images) > most:
        raise SubmitError("too_many_images", f"at most {most} image(s) per {request.kind} job")
    for index, image in enumerate(request.images):
        if isinstance(image, bytes) and not image:
            raise SubmitError("empty_image", f"image {index} is empty")
    if request.kind in SUBJECT_KINDS:
        if not request.subject_id or not is_subject_id(request.subject_id):
            raise SubmitError("bad_subject_id", "subject_id must match " + SUBJECT_ID_PATTERN)
    elif request.subject_id is not None:
        raise SubmitError("bad_subject_id", f"{request.kind} jobs take no subject_id")
    if request.kind == "identify":
        if request.top_k is None or not 1 <= request.top_k <= settings.max_top_k:
            raise SubmitError("bad_top_k", f"top_k must be between 1 and {settings.max_top_k}")
    problem = option_error(request.kind, request.options, settings.max_faces)
    if problem is not None:
        raise SubmitError(*problem)
    if request.callback_url is not None and not is_callback_url(request.callback_url):
        raise SubmitError("bad_callback_url", "callback_url must be an absolute http(s) URL")
    if request.callback_url is not None:
        try:  # a host that does not resolve now is checked again before each post
            check_callback_url(request.callback_url, allowed_networks(settings.callback_allowed_networks), strict=False)
        except CallbackRefused as exc:
            raise SubmitError("callback_url_not_allowed", str(exc)) from None


def check_references(database_url: str, tenant_id: uuid.UUID, request: JobRequest) -> None:
    """SubmitError uri_not_allowed unless every reference lies under one of the tenant's prefixes."""
    if not has_references(request):
        return
    with session_scope(database_url) as session:
        prefixes = tenant_prefixes(session, tenant_id)
    check_against(request, prefixes)


def has_references(request: JobRequest) -> bool:
    return any(isinstance(image, ImageRef) for image in request.images)


def check_against(request: JobRequest, prefixes: list[str]) -> None:
    """SubmitError uri_not_allowed for the first reference outside prefixes."""
    for index, image in enumerate(request.images):
        if isinstance(image, ImageRef) and not allowed(image, prefixes):
            raise SubmitError(
                "uri_not_allowed", f"image {index}: the uri is not under a prefix allowed for this tenant"
            )


def is_callback_url(url: str) -> bool:
    if not url.isprintable():  # NUL, control characters, lone surrogates: Postgres cannot store some
        return False
    try:
        parsed = urlparse(url)
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname) and len(url) <= 2048


def blob_key(tenant_id: uuid.UUID, job_id: uuid.UUID, index: int) -> str:
    return f"{tenant_id}/{job_id}/{index}"


def image_keys(tenant_id: uuid.UUID, job_id: uuid.UUID, request: JobRequest) -> list[str]:
    """Per image: a stored image's blob key, or a reference's uri (the worker reads it; nothing
    deletes it)."""
    return [
        image.uri if isinstance(image, ImageRef) else blob_key(tenant_id, job_id, i)
        for i, image in enumerate(request.images)
    ]


def stored_images(keys: list[str], request: JobRequest) -> list[tuple[str, bytes]]:
    """(blob key, bytes) of the images the service stores (a reference is read where it lies)."""
    return [(key, image) for key, image in zip(keys, request.images, strict=True) if isinstance(image, bytes)]


def submit_job(
    tenant_id: uuid.UUID,
    request: JobRequest,
    blobs: BlobStore,
    celery,
    database_url: str,
    settings: Settings,
    idempotency_key: str | None = None,
) -> Submitted:
    """Store the images, insert the queued job row, publish its message. See the module docstring."""
    validate(request, settings)
    check_references(database_url, tenant_id, request)
    if idempotency_key is not None and not (
        1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        message = f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
        raise SubmitError("bad_idempotency_key", message)
    digest = request.request_hash()
    if idempotency_key is not None:
        earlier = _settled_by_key(database_url, tenant_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest)

    job_id = uuid.uuid4()
    keys = image_keys(tenant_id, job_id, request)
    stored = stored_images(keys, request)
    store_all(blobs, stored)
    keys_written = [key for key, _ in stored]
    try:
        with session_scope(database_url) as session:
            job = session.scalars(
                insert(Job)
                .values(
                    id=job_id,
                    tenant_id=tenant_id,
                    kind=request.kind,
                    status="queued",
                    subject_external_id=request.subject_id,
                    top_k=request.top_k,
                    cropped=request.cropped,
                    blob_keys=keys,
                    callback_url=request.callback_url,
                    options=request.options,
                    attempts=0,
                    idempotency_key=idempotency_key,
                    request_hash=digest,
                    published=idempotency_key is None,  # a job with a key waits for its publish
                )
                .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
                .returning(Job)
            ).first()
    except BaseException:
        delete_all(blobs, keys_written)
        raise
    if job is None:  # another request with this key won the race
        delete_all(blobs, keys_written)
        assert idempotency_key is not None  # only a keyed insert can lose a race
        earlier = _settled_by_key(database_url, tenant_id, idempotency_key)
        if earlier is None:  # the winner's row was removed again: its publish failed
            raise QueueUnavailable()
        return _replay(earlier, digest)

    try:
        publish(celery, message_for(job))
    except Exception as exc:
        if _unpublish(database_url, job_id):
            log.warning(
                "publish failed; job removed",
                extra={"job_id": str(job_id), "kind": request.kind, "error": type(exc).__name__},
            )
            delete_all(blobs, keys_written)
            raise QueueUnavailable() from exc
        # A worker has the job already: the message got through although the broker's answer did not.
        log.warning("publish reported a failure but the job runs", extra={"job_id": str(job_id)})
    if not job.published:
        _mark_published(database_url, job_id)
        job.published = True
    log.info(
        "job queued",
        extra={"job_id": str(job_id), "tenant_id": str(tenant_id), "kind": request.kind, "images": len(keys)},
    )
    return Submitted(job=job, created=True)


def message_for(job: Job) -> JobMessage:
    """The Celery kwargs of a queued job row."""
    return JobMessage(
        job_id=str(job.id),
        tenant_id=str(job.tenant_id),
        kind=job.kind,
        blob_keys=list(job.blob_keys),
        subject_id=job.subject_external_id,
        top_k=job.top_k,
        cropped=bool(job.cropped),
        model_version=job.model_version if job.kind == "reenroll" else None,  # the version it writes
        submitted_at=job.submitted_at.timestamp(),
        options=job.options,
    )


def publish(celery, message: JobMessage) -> None:
    """Send the job's message to its kind's queue; the task id is the job id (one Redis round
    trip, shared/publish.py; a short retry when it fails)."""
    publish_all(
        celery, [message], retries=int(PUBLISH_RETRY["max_retries"]), retry_wait_s=PUBLISH_RETRY["interval_step"]
    )


def find_job(session, tenant_id: uuid.UUID, job_id: str | uuid.UUID) -> Job | None:
    """The tenant's job with that id; None when unknown, malformed or another tenant's."""
    try:
        job_uuid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None
    return session.scalars(select(Job).where(Job.id == job_uuid, Job.tenant_id == tenant_id)).first()


def job_json(job: Job) -> dict:
    """The public JSON of a job row."""
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "subject_id": job.subject_external_id,
        "error": error,
        "result": job.result,
        "model_version": job.model_version,
        "batch_id": job.batch_id,
        "submit_batch_id": str(job.submit_batch_id) if job.submit_batch_id else None,
        "attempts": job.attempts,
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _by_idempotency_key(session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)).first()


def _settled(job: Job) -> bool:
    """True when the job can no longer be removed by its submitter: published, or taken by a worker."""
    return job.published or job.status != "queued"


def _settled_by_key(database_url: str, tenant_id: uuid.UUID, key: str) -> Job | None:
    """The job with this key, waiting up to REPLAY_WAIT_S while its submitter still publishes it.
    None when there is none (or it was removed while waiting); an unsettled job after the wait."""
    deadline = time.monotonic() + REPLAY_WAIT_S
    while True:
        with session_scope(database_url) as session:
            earlier = _by_idempotency_key(session, tenant_id, key)
        if earlier is None or _settled(earlier) or time.monotonic() >= deadline:
            return earlier
        time.sleep(REPLAY_POLL_S)


def _unpublish(database_url: str, job_id: uuid.UUID) -> bool:
    """Remove a job whose publish failed, unless a worker took it meanwhile; True when removed."""
    with session_scope(database_url) as session:
        removed = session.execute(delete(Job).where(Job.id == job_id, Job.status == "queued").returning(Job.id)).first()
    return removed is not None


def _mark_published(database_url: str, job_id: uuid.UUID) -> None:
    """Let replays return the job. If Postgres fails here the job still runs, and replays see it
    once a worker has taken it."""
    try:
        with session_scope(database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(published=True))
    except Exception as exc:
        log.warning("job not marked published", extra={"job_id": str(job_id), "error": type(exc).__name__})


def _replay(earlier: Job, digest: str) -> Submitted:
    if earlier.request_hash != digest:
        raise IdempotencyConflict()
    if not _settled(earlier):
        raise IdempotencyInProgress()
    return Submitted(job=earlier, created=False)


def store_all(blobs: BlobStore, pairs: Sequence[tuple[str, bytes]]) -> None:
    """Write every (key, bytes); StorageUnavailable when one fails (nothing is left behind)."""
    try:
        put_all(blobs, pairs)
    except Exception as exc:
        raise StorageUnavailable() from exc
