"""The face a job used, as its result reports it: box (original upright pixels, inclusive),
landmarks (dlib's 5 points: the outer and inner corner of the eye on the image's right, the
outer and inner corner of the eye on the image's left, the base of the nose; (x, y) pixels),
detector_confidence (None for detectors without a score), faces_detected, quality
(worker.face.quality), detector and model_version; and the faces refused, with their reasons."""

from typing import Any

from worker.face.choose import box_json
from worker.face.types import FaceResult


def face_json(face: FaceResult, model_version: str) -> dict[str, Any] | None:
    """A face's public JSON; None for a result without a face."""
    if face.box is None:
        return None
    landmarks = face.landmarks.tolist() if face.landmarks is not None else []
    return {
        "box": box_json(face.box),
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in landmarks],
        "detector_confidence": None if face.box.score is None else round(float(face.box.score), 4),
        "faces_detected": face.faces_detected,
        "quality": face.quality.as_json() if face.quality is not None else None,
        "detector": face.detector,
        "model_version": model_version,
    }


def all_faces(face: FaceResult) -> list[FaceResult]:
    """An image's faces used, largest first (the first, then the others)."""
    return [face, *face.others] if face.box is not None else []


def refused_json(face: FaceResult) -> list[dict[str, Any]]:
    return [refusal.as_json() for refusal in face.refused]
