"""Request and response models: what /docs and /openapi.json describe.

Submit bodies come as JSON (these models) or as multipart forms (the *_FORM schemas below);
images in JSON are standard base64, or {"uri": ...} naming an object the worker reads (ImageUri).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from api.examples import QUEUED_JOB
from api.face_schemas import Face, RefusedFace
from shared.face_options import MULTIPLE_FACES, OPTION_NAMES, QUALITY_FILTERS, options_of
from shared.jobs import SUBJECT_ID_PATTERN

JobStatus = Literal["queued", "running", "succeeded", "failed"]
JobKind = Literal["enroll", "verify", "identify", "reenroll", "detect"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cropped: bool = Field(False, description="The images are already aligned face crops: skip detection.")
    callback_url: str | None = Field(
        None, description="http(s) URL that gets a signed POST of the job JSON when final."
    )
    max_faces: int | None = Field(
        None, description="Faces used per image, largest first (identify, detect: up to max_faces; else 1)."
    )
    min_face_size: int | None = Field(
        None, description="Refuse faces whose box's smaller side is under this, in original pixels (0-10000)."
    )
    min_detector_confidence: float | None = Field(
        None, description="Refuse faces the detector scored under this (-10 to 10; the CNN's is about 0.5-1.5)."
    )
    quality_filter: str | None = Field(
        None,
        description="Refuse faces below a quality level (see README: Face quality); default none.",
        json_schema_extra={"enum": list(QUALITY_FILTERS)},
    )
    multiple_faces: str | None = Field(
        None,
        description="With several faces and max_faces 1: use the largest, or fail with multiple_faces.",
        json_schema_extra={"enum": list(MULTIPLE_FACES)},
    )

    def face_options(self) -> dict[str, Any] | None:
        """The face options set (None: the defaults)."""
        return options_of(self.model_dump(include=set(OPTION_NAMES)))


class ImageUri(BaseModel):
    """An image by reference, read by the worker; allowed only under the tenant's image_uri_prefixes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"uri": "s3://bucket/faces/ana/1.jpg"}]})

    uri: str = Field(description="s3://bucket/key, or file:///path for a local blob folder.")


def _image_kind(value: Any) -> str:
    return "uri" if isinstance(value, (dict, ImageUri)) else "base64"


# One member validates each value, so a wrong item gives one error, not one per member.
Image = Annotated[
    Annotated[str, Tag("base64")] | Annotated[ImageUri, Tag("uri")],
    Discriminator(_image_kind),
]


class EnrollmentRequest(_Request):
    images: list[Image] = Field(
        default_factory=list, description="1 to max_images_per_enrollment images: base64, or {uri}."
    )


class VerificationRequest(_Request):
    subject_id: str | None = Field(None, description="The enrolled subject to compare with.")
    image: Image | None = Field(None, description="The probe image: base64, or {uri}.")


class IdentificationRequest(_Request):
    image: Image | None = Field(None, description="The probe image: base64, or {uri}.")
    top_k: int = Field(5, description="How many candidates to return, 1 to max_top_k.")


class DetectionRequest(_Request):
    image: Image | None = Field(None, description="The image: base64, or {uri}.")


def _form(properties: dict, required: list[str]) -> dict:
    common = {
        "cropped": {"type": "boolean", "default": False},
        "callback_url": {"type": "string", "format": "uri"},
        "max_faces": {"type": "integer"},
        "min_face_size": {"type": "integer"},
        "min_detector_confidence": {"type": "number"},
        "quality_filter": {"type": "string", "enum": list(QUALITY_FILTERS)},
        "multiple_faces": {"type": "string", "enum": list(MULTIPLE_FACES)},
    }
    return {"type": "object", "properties": {**properties, **common}, "required": required}


_FILE = {"type": "string", "format": "binary"}
ENROLLMENT_FORM = _form({"images": {"type": "array", "items": _FILE}}, ["images"])
VERIFICATION_FORM = _form(
    {"subject_id": {"type": "string", "pattern": SUBJECT_ID_PATTERN}, "image": _FILE}, ["subject_id", "image"]
)
IDENTIFICATION_FORM = _form({"image": _FILE, "top_k": {"type": "integer", "default": 5}}, ["image"])
DETECTION_FORM = _form({"image": _FILE}, ["image"])


def request_body(model: type[BaseModel], form: dict, example: dict) -> dict:
    """openapi_extra for a route that takes model as JSON (example shown) or form as multipart."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema(), "example": example},
                "multipart/form-data": {"schema": form},
            },
        }
    }


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine code, e.g. unauthorized, job_not_found, no_face.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Candidate(BaseModel):
    subject_id: str
    distance: float


class IdentifiedFace(Face):
    candidates: list[Candidate] = Field(description="This face's nearest subjects, nearest first.")


class VerifyResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    distance: float
    threshold: float
    match: bool
    model_version: str
    templates_compared: int
    face: Face | None = None
    refused: list[RefusedFace] = Field(default_factory=list, description="Faces of the image not used, and why.")


class IdentifyResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    candidates: list[Candidate] = Field(description="Nearest first, one per subject, at most top_k (the first face's).")
    threshold: float
    model_version: str
    face: Face | None = None
    faces: list[IdentifiedFace] = Field(
        default_factory=list, description="Each face searched (max_faces), largest first."
    )
    refused: list[RefusedFace] = Field(default_factory=list, description="Faces of the image not used, and why.")


class EnrolledImage(BaseModel):
    index: int
    status: Literal["enrolled", "failed"] = Field(description="enrolled: it became a template; failed: see error.")
    error: ErrorDetail | None = Field(description="Why it did not become a template (no_face, low_quality, ...).")
    face: Face | None = None
    refused: list[RefusedFace] = Field(default_factory=list)


class EnrollResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    subject_id: str
    templates_created: int
    model_version: str
    images: list[EnrolledImage]
    also_written: dict[str, int] | None = Field(
        None, description="Templates written for other model versions (a candidate version), per version."
    )


class DetectResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    faces: list[Face] = Field(description="Every face kept (up to max_faces), largest first; no descriptor is stored.")
    faces_detected: int
    refused: list[RefusedFace]
    model_version: str


class _Job(BaseModel):
    id: str
    status: JobStatus
    subject_id: str | None
    error: ErrorDetail | None = Field(
        description="Set when failed: bad_image, image_too_large, image_not_found, no_face, "
        "multiple_faces, subject_not_found, internal_error."
    )
    model_version: str | None
    batch_id: str | None = Field(description="The worker batch that ran the job (one forward pass).")
    submit_batch_id: str | None = Field(
        None, description="The POST /v1/batches request that submitted the job; null for a single submit."
    )
    attempts: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EnrollJob(_Job):
    kind: Literal["enroll"]
    result: EnrollResult | None


class ReenrollJob(_Job):
    kind: Literal["reenroll"]
    result: EnrollResult | None


class VerifyJob(_Job):
    kind: Literal["verify"]
    result: VerifyResult | None


class IdentifyJob(_Job):
    kind: Literal["identify"]
    result: IdentifyResult | None


class DetectJob(_Job):
    kind: Literal["detect"]
    result: DetectResult | None


# A job; its result's shape follows its kind. Clients ignore fields they do not know.
Job = Annotated[EnrollJob | ReenrollJob | VerifyJob | IdentifyJob | DetectJob, Field(discriminator="kind")]
JOB_MODELS: dict[str, type[_Job]] = {
    "enroll": EnrollJob,
    "reenroll": ReenrollJob,
    "verify": VerifyJob,
    "identify": IdentifyJob,
    "detect": DetectJob,
}


BatchKind = Literal["enroll", "verify", "identify", "detect"]
REF_FIELD = Field(None, max_length=128, description="Any string of the client's, echoed in the answer.")


class BatchEnrollment(EnrollmentRequest):
    kind: Literal["enroll"]
    ref: str | None = REF_FIELD
    subject_id: str = Field(description="The subject to enroll the images for.")


class BatchVerification(VerificationRequest):
    kind: Literal["verify"]
    ref: str | None = REF_FIELD


class BatchIdentification(IdentificationRequest):
    kind: Literal["identify"]
    ref: str | None = REF_FIELD


class BatchDetection(DetectionRequest):
    kind: Literal["detect"]
    ref: str | None = REF_FIELD


BATCH_ITEM_MODELS: dict[str, type[_Request]] = {
    "enroll": BatchEnrollment,
    "verify": BatchVerification,
    "identify": BatchIdentification,
    "detect": BatchDetection,
}


class BatchRequest(BaseModel):
    jobs: list[BatchEnrollment | BatchVerification | BatchIdentification | BatchDetection] = Field(
        description="1 to max_batch_jobs items, each a single-job body plus its kind (and an optional ref)."
    )


class BatchItemAnswer(BaseModel):
    index: int
    ref: str | None
    job_id: str | None = Field(description="The job's id; null when the item was refused.")
    error: ErrorDetail | None = Field(description="Why the item was refused (the single routes' codes).")


class BatchAccepted(BaseModel):
    id: str
    accepted: int
    rejected: int
    items: list[BatchItemAnswer] = Field(description="One per item, in request order.")


class StatusCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int


class Batch(BaseModel):
    id: str
    created_at: datetime
    counts: StatusCounts
    jobs: list[Job]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


class JobList(BaseModel):
    jobs: list[Job] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


class TemplateCount(BaseModel):
    model_version: str
    count: int


class Subject(BaseModel):
    subject_id: str
    created_at: datetime
    templates: list[TemplateCount] = Field(description="Templates per model version.")


class SubjectList(BaseModel):
    subjects: list[Subject] = Field(description="Ordered by subject_id.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


def errors(*statuses: int) -> dict:
    """`responses=` for routes: each status documented with the error shape (with 401, also 429:
    an authenticated route can answer rate_limited)."""
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    return {status: {"model": ErrorResponse} for status in statuses}


def accepted(*statuses: int) -> dict:
    """`responses=` for submit routes: 202 with Location, then the errors."""
    location = {"description": "/v1/jobs/{id}: poll it for the result", "schema": {"type": "string"}}
    replayed = {"description": "true when an Idempotency-Key returned an earlier job", "schema": {"type": "string"}}
    queued = {
        "description": "Queued",
        "headers": {"Location": location, "Idempotent-Replayed": replayed},
        "content": {"application/json": {"example": QUEUED_JOB}},
    }
    if 400 not in statuses:  # a multipart body that cannot be parsed: 400 bad_request
        statuses = (400, *statuses)
    return {202: queued, **errors(*statuses)}
