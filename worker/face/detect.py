"""Face detectors: image -> face boxes.

Every detector has a `name` (reported with each result) and `detect(image) -> list[Box]`, best
first. Boxes use dlib's convention (right and bottom inclusive) and are clipped to the image.
"""

import threading
from typing import Protocol

import numpy as np

from worker.face.types import Box


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, 3) uint8 RGB. Returns the face boxes found, best first."""
        ...


def clip_box(left: int, top: int, right: int, bottom: int, width: int, height: int) -> Box:
    """A box clipped to an image of width x height (inclusive corners)."""
    return Box(
        left=min(max(left, 0), width - 1),
        top=min(max(top, 0), height - 1),
        right=min(max(right, 0), width - 1),
        bottom=min(max(bottom, 0), height - 1),
    )


class HogDetector:
    """dlib's frontal face detector (HOG features + linear SVM over an image pyramid).

    upsample: how many times the image is doubled before scanning (finds faces down to about
    80 / 2**upsample pixels wide, at about 4x the cost per step). Safe to share between threads:
    each thread gets its own dlib detector.
    """

    name = "hog"

    def __init__(self, upsample: int = 1):
        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        self.upsample = upsample
        self._local = threading.local()

    def _detector(self):
        detector = getattr(self._local, "detector", None)
        if detector is None:
            import dlib

            detector = self._local.detector = dlib.get_frontal_face_detector()
        return detector

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, 3) uint8 RGB. Returns boxes sorted by detection score, highest first."""
        rects, scores, _ = self._detector().run(np.ascontiguousarray(image), self.upsample, 0.0)
        height, width = image.shape[:2]
        ranked = sorted(zip(scores, rects), key=lambda pair: -pair[0])
        return [clip_box(r.left(), r.top(), r.right(), r.bottom(), width, height) for _, r in ranked]


class CroppedDetector:
    """For images that are already a face crop: the whole image is the one face box."""

    name = "cropped"

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, ...) array. Returns [Box(0, 0, W-1, H-1)]."""
        height, width = image.shape[:2]
        return [Box(0, 0, width - 1, height - 1)]
