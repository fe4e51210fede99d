"""The records a batch passes between its steps: deliveries, work items, outcomes, the report."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.blob import BlobStore
from shared.messages import JobMessage
from shared.settings import Settings
from worker.face.types import FaceResult

INTERNAL_ERROR = "internal_error"
WORKER_CRASH = "worker_crash"  # the job's process died (OOM kill, segfault) each time it ran alone
SUBJECT_NOT_FOUND = "subject_not_found"
VERSION_UNAVAILABLE = "model_version_unavailable"
ENROLL_KINDS = ("enroll", "reenroll")  # reenroll: stored enrollment images, embedded again by this version
PROBE_KINDS = ("verify", "identify", "detect")
DEFAULT_TOP_K = 5

TemplateRow = tuple[int, np.ndarray, str]  # (image index, descriptor, blob key)


@dataclass
class Probe:
    """One identify probe, as the nearest-subject search takes it."""

    tenant_id: uuid.UUID
    model_version: str
    descriptor: np.ndarray  # (128,)
    top_k: int


@dataclass(frozen=True)
class Delivery:
    """One message of a batch: its Celery task id and kwargs (a JobMessage as JSON)."""

    task_id: str
    kwargs: Any


@dataclass
class Runtime:
    """What a batch needs, loaded once per worker process."""

    # worker.face.pipeline.FacePipeline: process(images, cropped, variants) -> list[FaceResult]
    pipeline: Any
    blobs: BlobStore
    database_url: str
    model_version: str
    settings: Settings
    republish: Callable[[list[Delivery]], None]  # send these messages again, unchanged
    # worker.versions.VersionBook: the active version and the candidates, read per batch. None:
    # every job uses model_version.
    versions: Any = None
    suspects: Any = None  # worker.suspects.Suspects; None: no job is ever run alone


@dataclass
class Outcome:
    """A job's final status, result or error, and the templates it creates."""

    status: str
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    templates: list[TemplateRow] = field(default_factory=list)
    extra_templates: dict[str, list[TemplateRow]] = field(default_factory=dict)  # other version -> rows


def failed(code: str, message: str) -> Outcome:
    return Outcome(status="failed", error_code=code, error_message=message)


@dataclass(frozen=True)
class JobRow:
    """A job's columns as marking it running returned them."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    subject: str | None
    top_k: int | None
    cropped: bool
    blob_keys: list[str]
    callback_url: str | None
    attempts: int


@dataclass
class WorkItem:
    """One job of the batch, as read from its row when it was marked running."""

    delivery: Delivery
    message: JobMessage
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    subject: str | None
    top_k: int | None
    cropped: bool
    blob_keys: list[str]
    callback_url: str | None
    attempts: int
    images: list[bytes | FaceResult] = field(default_factory=list)  # a FaceResult error when the fetch failed
    faces: list[FaceResult] = field(default_factory=list)  # one per image
    outcome: Outcome | None = None
    versions: tuple[str, ...] = ()  # the model versions this job embeds for; the first is its own

    @property
    def model_version(self) -> str | None:
        return self.versions[0] if self.versions else None

    @property
    def options(self) -> dict[str, Any]:
        """The request's face options (shared.messages.JobMessage.options)."""
        return dict(self.message.options or {}) if self.message is not None else {}

    @property
    def submitted_at(self) -> float:
        return self.message.submitted_at if self.message is not None else 0.0

    @classmethod
    def from_row(cls, row: JobRow, delivery: Delivery, message: JobMessage) -> "WorkItem":
        return cls(
            delivery=delivery,
            message=message,
            job_id=row.job_id,
            tenant_id=row.tenant_id,
            kind=row.kind,
            subject=row.subject,
            top_k=row.top_k,
            cropped=row.cropped,
            blob_keys=list(row.blob_keys),
            callback_url=row.callback_url,
            attempts=row.attempts,
        )


@dataclass
class BatchReport:
    """What happened to each message of a batch."""

    batch_id: str
    received: int
    dropped: int = 0  # invalid message, or no such job
    skipped: int = 0  # job already final, or its message twice in the batch
    republished: int = 0  # handed back because Postgres was unreachable
    finished: dict[str, str] = field(default_factory=dict)  # job id -> final status
