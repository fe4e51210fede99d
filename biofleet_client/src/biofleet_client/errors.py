"""One exception class per stable error code of the API and of failed jobs.

BiofleetError(code, message, status=None, retry_after=None, job=None) is the base; error_class(code)
gives the class of a code (the base for a code this client does not know yet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from biofleet_client.models import AnyJob


class BiofleetError(Exception):
    """An error answered by the API (status set) or the error of a failed job (job set)."""

    code: str = ""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        job: AnyJob | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.job = job
        self.body = body or {}


# Authentication, limits and availability.
class Unauthorized(BiofleetError):
    code = "unauthorized"


class RateLimited(BiofleetError):
    """Too many requests: retry after `retry_after` seconds."""

    code = "rate_limited"


class DatabaseUnavailable(BiofleetError):
    code = "database_unavailable"


class QueueUnavailable(BiofleetError):
    code = "queue_unavailable"


class StorageUnavailable(BiofleetError):
    code = "storage_unavailable"


class NotReady(BiofleetError):
    code = "not_ready"


class InternalError(BiofleetError):
    code = "internal_error"


# Not found.
class NotFound(BiofleetError):
    code = "not_found"


class JobNotFound(BiofleetError):
    code = "job_not_found"


class SubjectNotFound(BiofleetError):
    code = "subject_not_found"


class BatchNotFound(BiofleetError):
    code = "batch_not_found"


# Requests the API refuses.
class BadRequest(BiofleetError):
    code = "bad_request"


class ValidationError(BiofleetError):
    code = "validation_error"


class MethodNotAllowed(BiofleetError):
    code = "method_not_allowed"


class BodyTooLarge(BiofleetError):
    code = "body_too_large"


class UnsupportedMediaType(BiofleetError):
    code = "unsupported_media_type"


class BadBase64(BiofleetError):
    code = "bad_base64"


class BadKind(BiofleetError):
    code = "bad_kind"


class NoImages(BiofleetError):
    code = "no_images"


class TooManyImages(BiofleetError):
    code = "too_many_images"


class EmptyImage(BiofleetError):
    code = "empty_image"


class BadSubjectId(BiofleetError):
    code = "bad_subject_id"


class BadTopK(BiofleetError):
    code = "bad_top_k"


class BadCallbackUrl(BiofleetError):
    code = "bad_callback_url"


class CallbackUrlNotAllowed(BiofleetError):
    code = "callback_url_not_allowed"


class BadIdempotencyKey(BiofleetError):
    code = "bad_idempotency_key"


class IdempotencyConflict(BiofleetError):
    code = "idempotency_conflict"


class IdempotencyInProgress(BiofleetError):
    code = "idempotency_in_progress"


class TooManyJobs(BiofleetError):
    code = "too_many_jobs"


class UriNotAllowed(BiofleetError):
    code = "uri_not_allowed"


# Errors of failed jobs.
class BadImage(BiofleetError):
    code = "bad_image"


class ImageTooLarge(BiofleetError):
    code = "image_too_large"


class ImageNotFound(BiofleetError):
    code = "image_not_found"


class NoFace(BiofleetError):
    code = "no_face"


class MultipleFaces(BiofleetError):
    code = "multiple_faces"


class SubjectDeleted(BiofleetError):
    code = "subject_deleted"


class ModelVersionUnavailable(BiofleetError):
    code = "model_version_unavailable"


class WorkerCrash(BiofleetError):
    code = "worker_crash"


# Raised by this client itself.
class WaitTimeout(BiofleetError, TimeoutError):
    """wait() gave up before the job was final."""

    code = "wait_timeout"


class WebhookVerificationError(BiofleetError):
    """A callback whose signature or timestamp does not verify."""

    code = "bad_signature"


def _all_classes() -> dict[str, type[BiofleetError]]:
    found: dict[str, type[BiofleetError]] = {}
    pending = list(BiofleetError.__subclasses__())
    while pending:
        cls = pending.pop()
        found[cls.code] = cls
        pending.extend(cls.__subclasses__())
    return found


ERROR_CLASSES: dict[str, type[BiofleetError]] = _all_classes()


def error_class(code: str) -> type[BiofleetError]:
    """The exception class of an error code; BiofleetError for an unknown one."""
    return ERROR_CLASSES.get(code, BiofleetError)


def make_error(
    code: str,
    message: str,
    status: int | None = None,
    retry_after: float | None = None,
    job: AnyJob | None = None,
    body: dict[str, Any] | None = None,
) -> BiofleetError:
    return error_class(code)(code, message, status=status, retry_after=retry_after, job=job, body=body)
