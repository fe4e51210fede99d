"""5-point face landmarks with dlib's shape predictor (shape_predictor_5_face_landmarks.dat).

Landmarker().landmarks(image, box) -> (5, 2) float array of (x, y), in dlib's order: the outer
and inner corner of the eye on the image's right, the outer and inner corner of the eye on the
image's left, the base of the nose. worker.face.align expects this order.
"""

import threading
from pathlib import Path

import numpy as np

from worker.face.types import Box
from worker.face.weights import SHAPE_PREDICTOR_5, model_path


class Landmarker:
    """dlib.shape_predictor on the 5-point model; each thread gets its own predictor."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else model_path(SHAPE_PREDICTOR_5)
        self._local = threading.local()
        self._predictor()  # fail now, not on the first image, when the file is missing or bad

    def _predictor(self):
        predictor = getattr(self._local, "predictor", None)
        if predictor is None:
            import dlib

            predictor = self._local.predictor = dlib.shape_predictor(str(self.path))
        return predictor

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB (or (H, W) grey); box: the face. Returns (5, 2) float64 (x, y)."""
        import dlib

        rect = dlib.rectangle(int(box.left), int(box.top), int(box.right), int(box.bottom))
        shape = self._predictor()(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
