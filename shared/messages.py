"""The message contract between the API and the workers: small JSON, never image bytes."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobKind = Literal["enroll", "verify", "identify", "reenroll", "detect"]
MAX_IMAGES = 10  # images of one job; settings.max_images_per_enrollment may lower it, never raise it


class JobMessage(BaseModel):
    """Celery task kwargs for RUN_JOBS_TASK. Everything else is read from the jobs row."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    job_id: str
    tenant_id: str
    kind: JobKind
    blob_keys: list[str] = Field(min_length=1, max_length=MAX_IMAGES)
    subject_id: str | None = None  # enroll, verify, reenroll
    top_k: int | None = None  # identify
    cropped: bool = False  # the images are already face crops: skip detection
    model_version: str | None = None  # reenroll: the version whose templates the job writes
    submitted_at: float  # unix seconds, for end-to-end latency
    # The request's face options (max_faces, min_face_size, min_detector_confidence, quality_filter,
    # multiple_faces); None: the defaults.
    options: dict[str, Any] | None = None
