"""Face detectors: image -> face boxes.

Every detector has a `name` (reported with each result) and `detect(image) -> list[Box]`, best
first. Boxes use dlib's convention (right and bottom inclusive) and are clipped to the image.
A detector that works on many images at once also has `detect_many(images)`.

- HogDetector ("hog"): dlib's HOG detector; needs the dlib-bin package (a test requirement, not
  installed in the worker image).
- CnnDetector ("cnn"): dlib's CNN (MMOD) detector ported to PyTorch (worker.face.mmod), batched,
  on CUDA when there is one.
- CroppedDetector ("cropped"): the whole image is the face.
"""

import sys
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.face.types import Box


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, 3) uint8 RGB. Returns the face boxes found, best first."""
        ...


def clip_box(left: int, top: int, right: int, bottom: int, width: int, height: int, score: float | None = None) -> Box:
    """A box clipped to an image of width x height (inclusive corners), with its detection score."""
    return Box(
        left=min(max(left, 0), width - 1),
        top=min(max(top, 0), height - 1),
        right=min(max(right, 0), width - 1),
        bottom=min(max(bottom, 0), height - 1),
        score=score,
    )


def out_of_memory(error: BaseException) -> bool:
    """Whether error is PyTorch's CUDA out-of-memory error; if so, the allocator's cached blocks
    are released for the retry."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def import_dlib():
    """The dlib module, or a RuntimeError saying how to do without it."""
    try:
        import dlib
    except ImportError:
        raise RuntimeError(
            "the 'hog' detector needs dlib, which is not installed (pip package dlib-bin, listed in"
            " requirements/dev.txt); use the 'cnn' detector, which does not"
        ) from None
    return dlib


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
        import_dlib()  # fail now, not on the first image
        self.upsample = upsample
        self._local = threading.local()

    def _detector(self):
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = import_dlib().get_frontal_face_detector()
        return detector

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, 3) uint8 RGB. Returns boxes sorted by detection score, highest first."""
        rects, scores, _ = self._detector().run(np.ascontiguousarray(image), self.upsample, 0.0)
        height, width = image.shape[:2]
        ranked = sorted(zip(scores, rects), key=lambda pair: -pair[0])
        return [clip_box(r.left(), r.top(), r.right(), r.bottom(), width, height, float(s)) for s, r in ranked]


class CroppedDetector:
    """For images that are already a face crop: the whole image is the one face box."""

    name = "cropped"

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, ...) array. Returns [Box(0, 0, W-1, H-1)]."""
        height, width = image.shape[:2]
        return [Box(0, 0, width - 1, height - 1)]


class CnnDetector:
    """dlib's CNN face detector (mmod_human_face_detector.dat) ported to PyTorch.

    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N". upsample: how many times the
    image is doubled before detection (the window is 80x80, so faces down to about 80 / 2**upsample
    pixels wide are found, at about 4x the cost per step). threshold: the lowest detection score
    kept (dlib's default 0). detect_many takes images of any sizes together, in as few forward
    passes as the detector's pixel budget allows (worker.face.mmod.MAX_BATCH_PIXELS).
    """

    name = "cnn"

    def __init__(self, device: str = "auto", upsample: int = 0, threshold: float = 0.0, path: Path | None = None):
        from worker.face.mmod import MmodDetector

        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        self.upsample = upsample
        self.threshold = threshold
        self.model = MmodDetector.load(device=device, path=path)

    def detect(self, image: np.ndarray) -> list[Box]:
        """image: (H, W, 3) uint8 RGB. Returns boxes sorted by detection score, highest first."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[Box]]:
        """(H, W, 3) uint8 RGB images of any sizes -> per image, its boxes, best first."""
        found = self.model.detect_many(images, threshold=self.threshold, upsample=self.upsample)
        boxes = []
        for image, detections in zip(images, found):
            height, width = image.shape[:2]
            boxes.append([clip_box(d.left, d.top, d.right, d.bottom, width, height, d.confidence) for d in detections])
        return boxes
