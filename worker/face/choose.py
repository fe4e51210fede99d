"""Which detected faces an image gives, by the request's face options.

FaceOptions: max_faces (faces kept, largest first), min_face_size (original pixels, the box's
smaller side), min_detector_confidence, quality_filter (worker.face.quality.FILTERS) and
multiple_faces (None: the pipeline's policy). choose() applies the box rules before alignment;
the quality filter runs once the chips exist (FacePipeline). A refused face is a Refusal with a
stable reason: small_face, low_confidence, low_quality or exceeds_max_faces.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

from worker.face.errors import (
    BAD_IMAGE,
    EXCEEDS_MAX_FACES,
    LOW_CONFIDENCE,
    LOW_QUALITY,
    MULTIPLE_FACES,
    SMALL_FACE,
    FaceError,
)
from worker.face.quality import Quality, failures, measure
from worker.face.types import Box, FaceResult

log = logging.getLogger(__name__)

REASON_MESSAGES = {
    SMALL_FACE: "the face is smaller than min_face_size",
    LOW_CONFIDENCE: "the detector's confidence is below min_detector_confidence",
    "low_quality": "the face is below the quality_filter's limits",
    EXCEEDS_MAX_FACES: "more faces than max_faces",
}


@dataclass(frozen=True)
class FaceOptions:
    max_faces: int = 1
    min_face_size: int = 0
    min_detector_confidence: float | None = None
    quality_filter: str = "none"
    multiple_faces: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, **defaults: Any) -> "FaceOptions":
        """From a job's options (None values are left at their defaults)."""
        values = {**defaults, **{k: v for k, v in (data or {}).items() if v is not None}}
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class Refusal:
    box: Box  # original pixels
    reason: str
    quality: Quality | None = None
    failed: list[str] = field(default_factory=list)  # the quality measures below the limits

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"box": box_json(self.box), "detector_confidence": self.box.score}
        found["reason"] = self.reason
        if self.quality is not None:
            found["quality"] = self.quality.as_json()
            found["failed"] = self.failed
        return found


@dataclass
class Choice:
    """An image's faces to align (working-copy boxes, largest first) and those refused."""

    boxes: list[Box]
    originals: list[Box]  # the same faces in original pixels
    refused: list[Refusal]
    detected: int


def box_json(box: Box) -> dict[str, int]:
    return {"left": box.left, "top": box.top, "right": box.right, "bottom": box.bottom}


def face_size(box: Box) -> int:
    """The smaller side of a box (inclusive pixel coordinates)."""
    return min(box.right - box.left + 1, box.bottom - box.top + 1)


def choose(boxes: list[Box], originals: list[Box], options: FaceOptions, policy: str, largest: Any) -> Choice:
    """boxes: detected (working copy), originals: the same in original pixels; largest: the rule
    that picks the subject's face (worker.face.subject.largest). Raises FaceError when every face
    is refused (with the first refusal's reason) or when policy "reject" meets several faces and
    max_faces is 1."""
    kept: list[tuple[Box, Box]] = []
    refused: list[Refusal] = []
    for box, original in zip(boxes, originals, strict=True):
        if options.min_face_size and face_size(original) < options.min_face_size:
            refused.append(Refusal(original, SMALL_FACE))
        elif (
            options.min_detector_confidence is not None
            and box.score is not None
            and box.score < options.min_detector_confidence
        ):
            refused.append(Refusal(original, LOW_CONFIDENCE))
        else:
            kept.append((box, original))
    if not kept:
        first = max(refused, key=lambda r: r.box.area)
        raise FaceError(first.reason, f"{len(refused)} face(s) found, none kept: {REASON_MESSAGES[first.reason]}")
    if len(kept) > 1 and policy == "reject" and options.max_faces == 1:
        raise FaceError(MULTIPLE_FACES, f"{len(kept)} faces were found; the image must show one")
    best = largest([box for box, _ in kept])
    ordered = sorted(kept, key=lambda pair: (pair[0] is not best, -pair[1].area))
    chosen = ordered[: options.max_faces]
    refused += [Refusal(original, EXCEEDS_MAX_FACES) for _, original in ordered[options.max_faces :]]
    return Choice([b for b, _ in chosen], [o for _, o in chosen], refused, len(boxes))


@dataclass
class Kept:
    """One image's aligned faces that passed every filter, and those refused."""

    faces: list[Any]  # the pipeline's aligned faces: chip, landmarks, box, quality
    refused: list[Refusal]
    detected: int


def keep_passing(choice: Choice, faces: list[Any], level: str, name: str) -> Kept | FaceResult:
    """The aligned faces of one image (or the FaceResult errors of their alignment) that pass the
    quality filter, each given its quality; the image's error when none does (an alignment error
    first, else low_quality)."""
    kept = Kept([], list(choice.refused), choice.detected)
    errors = []
    for face in faces:
        if isinstance(face, FaceResult):
            errors.append(face)
            continue
        face.quality = measure(face.chip, face.landmarks, face.box)
        failed = failures(face.quality, level)
        if failed:
            kept.refused.append(Refusal(face.box, LOW_QUALITY, face.quality, failed))
        else:
            kept.faces.append(face)
    if kept.faces:
        return kept
    if errors:
        return errors[0]
    worst = next(r for r in kept.refused if r.reason == LOW_QUALITY)
    message = f"the face is below the {level!r} quality filter: {', '.join(worst.failed)}"
    return FaceResult(
        detector=name,
        error_code=LOW_QUALITY,
        error_message=message,
        faces_detected=choice.detected,
        refused=kept.refused,
    )


def failure(detector: str, error: Exception, data_size: int) -> FaceResult:
    """The FaceResult of an image that failed: its FaceError, or bad_image for anything else."""
    if isinstance(error, FaceError):
        return FaceResult(detector=detector, error_code=error.code, error_message=error.message)
    log.error("image failed unexpectedly", exc_info=error, extra={"image_size_bytes": data_size})
    return FaceResult(detector=detector, error_code=BAD_IMAGE, error_message="the image could not be processed")
