"""Request and response models of the API. Responses ignore fields they do not know, so a newer
server does not break an older client.

AnyJob: a job, its `result` typed by its `kind` (EnrollJob, ReenrollJob, VerifyJob, IdentifyJob,
DetectJob; OtherJob for a kind this client does not know). parse_job(data) -> AnyJob.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

FINAL_STATUSES = ("succeeded", "failed")
JOB_KINDS = ("enroll", "reenroll", "verify", "identify", "detect")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ------------------------------------------------------------------------------------


class UriImage(_Request):
    """An image by reference, e.g. s3://bucket/key, read by the worker."""

    uri: str


ImageValue = str | UriImage  # base64 text or a reference


class _Submit(_Request):
    """What every submit body takes: the crops flag, a callback URL and the per-request face options."""

    cropped: bool | None = None
    callback_url: str | None = None
    max_faces: int | None = None
    min_face_size: int | None = None
    min_detector_confidence: float | None = None
    quality_filter: Literal["none", "low", "medium", "high"] | None = None
    multiple_faces: str | None = None


class EnrollmentRequest(_Submit):
    images: list[ImageValue]


class VerificationRequest(_Submit):
    subject_id: str
    image: ImageValue


class IdentificationRequest(_Submit):
    image: ImageValue
    top_k: int | None = None


class DetectionRequest(_Submit):
    image: ImageValue


class BatchItem(_Submit):
    """One job of a batch: its kind, an optional client ref and that kind's body fields."""

    kind: Literal["enroll", "verify", "identify", "detect"]
    ref: str | None = Field(None, max_length=128)
    images: list[ImageValue] | None = None
    subject_id: str | None = None
    image: ImageValue | None = None
    top_k: int | None = None


class BatchRequest(_Request):
    jobs: list[BatchItem]


# --- jobs ----------------------------------------------------------------------------------------


class ErrorDetail(_Response):
    code: str
    message: str


class Candidate(_Response):
    subject_id: str
    distance: float


class FaceBox(_Response):
    left: int
    top: int
    right: int
    bottom: int


class FaceQuality(_Response):
    face_size_px: int
    sharpness: float
    yaw: float
    pitch: float
    roll: float
    brightness: float
    contrast: float


class Face(_Response):
    """The face used: box and 5 landmarks in the original image's upright pixels."""

    box: FaceBox
    landmarks: list[list[float]]
    detector_confidence: float | None = None
    faces_detected: int
    quality: FaceQuality | None = None
    detector: str | None = None
    model_version: str


class RefusedFace(_Response):
    box: FaceBox
    detector_confidence: float | None = None
    reason: str  # small_face, low_confidence, low_quality, exceeds_max_faces
    quality: FaceQuality | None = None
    failed: list[str] | None = None


class IdentifiedFace(Face):
    candidates: list[Candidate]


class EnrolledImage(_Response):
    index: int
    status: str
    error: ErrorDetail | None = None
    face: Face | None = None
    refused: list[RefusedFace] = []


class EnrollResult(_Response):
    subject_id: str
    templates_created: int
    model_version: str
    images: list[EnrolledImage]
    also_written: dict[str, int] | None = None


class VerifyResult(_Response):
    distance: float
    threshold: float
    match: bool
    model_version: str
    templates_compared: int
    face: Face | None = None
    refused: list[RefusedFace] = []


class IdentifyResult(_Response):
    candidates: list[Candidate]
    threshold: float
    model_version: str
    face: Face | None = None
    faces: list[IdentifiedFace] = []
    refused: list[RefusedFace] = []


class DetectResult(_Response):
    faces: list[Face]
    faces_detected: int
    refused: list[RefusedFace]
    model_version: str


class _Job(_Response):
    id: str
    status: str
    subject_id: str | None = None
    error: ErrorDetail | None = None
    model_version: str | None = None
    batch_id: str | None = None
    submit_batch_id: str | None = None
    attempts: int = 0
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class EnrollJob(_Job):
    kind: Literal["enroll"]
    result: EnrollResult | None = None


class ReenrollJob(_Job):
    kind: Literal["reenroll"]
    result: EnrollResult | None = None


class VerifyJob(_Job):
    kind: Literal["verify"]
    result: VerifyResult | None = None


class IdentifyJob(_Job):
    kind: Literal["identify"]
    result: IdentifyResult | None = None


class DetectJob(_Job):
    kind: Literal["detect"]
    result: DetectResult | None = None


class OtherJob(_Job):
    """A job of a kind this client does not know: its result as plain JSON."""

    kind: str
    result: Any = None


def _job_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in JOB_KINDS else "other"


AnyJob = Annotated[
    Annotated[EnrollJob, Tag("enroll")]
    | Annotated[ReenrollJob, Tag("reenroll")]
    | Annotated[VerifyJob, Tag("verify")]
    | Annotated[IdentifyJob, Tag("identify")]
    | Annotated[DetectJob, Tag("detect")]
    | Annotated[OtherJob, Tag("other")],
    Discriminator(_job_kind),
]
JOB_MODELS: dict[str, type[_Job]] = {
    "enroll": EnrollJob,
    "reenroll": ReenrollJob,
    "verify": VerifyJob,
    "identify": IdentifyJob,
    "detect": DetectJob,
}
_JOB = TypeAdapter(AnyJob)


def parse_job(data: Any) -> AnyJob:
    return _JOB.validate_python(data)


class JobPage(_Response):
    jobs: list[AnyJob]
    next_cursor: str | None = None


# --- subjects, batches, health --------------------------------------------------------------------


class TemplateCount(_Response):
    model_version: str
    count: int


class Subject(_Response):
    subject_id: str
    created_at: datetime
    templates: list[TemplateCount]


class SubjectPage(_Response):
    subjects: list[Subject]
    next_cursor: str | None = None


class BatchItemResult(_Response):
    index: int
    ref: str | None = None
    job_id: str | None = None
    error: ErrorDetail | None = None


class BatchAccepted(_Response):
    id: str
    accepted: int
    rejected: int
    items: list[BatchItemResult]


class BatchCounts(_Response):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class Batch(_Response):
    id: str
    created_at: datetime
    counts: BatchCounts
    jobs: list[AnyJob]
    next_cursor: str | None = None


class Health(_Response):
    status: str


class Readiness(_Response):
    status: str
    checks: dict[str, str]
