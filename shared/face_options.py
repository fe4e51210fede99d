"""The per-request face options every submit takes, and their bounds.

max_faces: faces used per image, largest first (identify: each face searched with its own
candidates; detect: default settings.max_faces); 1 for enroll and verify. min_face_size: the face
box's smaller side, in original pixels. min_detector_confidence: the detector's score (the CNN
detector's is about 0.5 to 1.5 on clear faces; faces under the value are refused).
quality_filter: none, low, medium or high (worker.face.quality.FILTERS). multiple_faces: the
policy when an image shows several faces and max_faces is 1: largest or reject.
"""

from typing import Any

OPTION_NAMES = ("max_faces", "min_face_size", "min_detector_confidence", "quality_filter", "multiple_faces")
QUALITY_FILTERS = ("none", "low", "medium", "high")
MULTIPLE_FACES = ("largest", "reject")
MAX_FACE_SIZE = 10_000
CONFIDENCE_BOUND = 10.0
MULTI_FACE_KINDS = ("identify", "detect")


def options_of(values: dict[str, Any]) -> dict[str, Any] | None:
    """The options set among values (None when none is)."""
    found = {name: values[name] for name in OPTION_NAMES if values.get(name) is not None}
    return found or None


def option_error(kind: str, options: dict[str, Any] | None, max_faces: int) -> tuple[str, str] | None:
    """(code, message) for the first option out of bounds; None when all are acceptable."""
    options = options or {}
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        return "bad_option", f"unknown face option {unknown[0][:64]!r}"
    count = options.get("max_faces")
    if count is not None:
        most = max_faces if kind in MULTI_FACE_KINDS else 1
        if not _integer(count) or not 1 <= count <= most:
            return "bad_max_faces", f"max_faces must be an integer from 1 to {most} for {kind} jobs"
    size = options.get("min_face_size")
    if size is not None and (not _integer(size) or not 0 <= size <= MAX_FACE_SIZE):
        return "bad_min_face_size", f"min_face_size must be an integer from 0 to {MAX_FACE_SIZE} (pixels)"
    confidence = options.get("min_detector_confidence")
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not -CONFIDENCE_BOUND <= confidence <= CONFIDENCE_BOUND
    ):
        return (
            "bad_min_detector_confidence",
            f"min_detector_confidence must be a number from -{CONFIDENCE_BOUND:g} to {CONFIDENCE_BOUND:g}",
        )
    level = options.get("quality_filter")
    if level is not None and level not in QUALITY_FILTERS:
        return "bad_quality_filter", f"quality_filter must be one of {', '.join(QUALITY_FILTERS)}"
    policy = options.get("multiple_faces")
    if policy is not None and policy not in MULTIPLE_FACES:
        return "bad_multiple_faces", f"multiple_faces must be one of {', '.join(MULTIPLE_FACES)}"
    return None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
