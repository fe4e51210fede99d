"""5-point face landmarks with dlib's shape predictor (shape_predictor_5_face_landmarks.dat),
ported to numpy (worker.face.shape_predictor): the same points as dlib.shape_predictor.

Landmarker().landmarks(image, box) -> (5, 2) float array of (x, y), in dlib's order: the outer
and inner corner of the eye on the image's right, the outer and inner corner of the eye on the
image's left, the base of the nose. worker.face.align expects this order. landmarks_many does
many faces in one vectorised pass.
"""

import logging
from pathlib import Path

import numpy as np

from worker.face.shape_predictor import ShapePredictor
from worker.face.types import Box

log = logging.getLogger(__name__)


class Landmarker:
    """The 5-point shape predictor, read once (safe to share between threads).

    path: the .dat (default: the 5-point model of face-recognition-models); cache_dir: where
    its arrays are cached (reading the .dat takes seconds); None reads the .dat every time."""

    def __init__(self, path: Path | None = None, cache_dir: Path | None = None):
        self.predictor = ShapePredictor.load(path, cache_dir)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB (or (H, W) grey); box: the face. Returns (5, 2) float64 (x, y)."""
        return self.landmarks_many([image], [box])[0]

    def landmarks_many(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        """images[i] and boxes[i]: face i's image (shared arrays are read once) and box.
        Returns (F, 5, 2) float64 (x, y)."""
        return self.predictor.predict(images, boxes)


def landmarks_or_errors(landmarker: Landmarker, images: list[np.ndarray], boxes: list[Box]) -> list:
    """Per face: its (5, 2) landmarks, or the exception the shape predictor raised. All in one
    pass; should it fail, each face is tried alone."""
    if not boxes:
        return []
    try:
        return list(landmarker.landmarks_many(images, boxes))
    except Exception:
        log.exception("batch landmarks failed; one face at a time", extra={"faces": len(boxes)})
    found: list = []
    for image, box in zip(images, boxes):
        try:
            found.append(landmarker.landmarks(image, box))
        except Exception as error:
            found.append(error)
    return found
