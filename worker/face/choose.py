"""Which detected faces an image gives, by the request's face options.

FaceOptions: max_faces (faces kept, largest first), min_face_size (original pixels, the box's
smaller side), min_detector_confidence, quality_filter (worker.face.quality.FILTERS) and
multiple_faces (None: the pipeline's policy). choose() applies the box rules before alignment;
the quality filter runs once the chips exist (FacePipeline). A refused face is a Refusal with a
stable reason: small_face, low_confidence, low_quality or exceeds_max_faces.
"""

from dataclasses import dataclass, field
from typing import Any

from worker.face.errors import EXCEEDS_MAX_FACES, LOW_CONFIDENCE, MULTIPLE_FACES, SMALL_FACE, FaceError
from worker.face.quality import Quality
from worker.face.types import Box

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
    that picks the subject's face (worker.face.pipeline.largest). Raises FaceError when every face
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
