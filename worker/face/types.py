"""What the pipeline returns for one image."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int
    score: float | None = field(default=None, compare=False)  # the detector's confidence, when it gives one

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


@dataclass
class FaceResult:
    """A descriptor with its face box and 5 landmarks, or an error code and message. descriptors:
    one per model version the pipeline was asked for (its first is `descriptor`)."""

    descriptor: np.ndarray | None = None  # (128,) float32
    box: Box | None = None
    landmarks: np.ndarray | None = None  # (5, 2) float, image coordinates (x, y)
    detector: str | None = None  # "hog", "cropped", ...
    error_code: str | None = None
    error_message: str | None = None
    descriptors: dict[str, np.ndarray] = field(default_factory=dict)  # version -> (128,) float32
    quality: Any = None  # worker.face.quality.Quality of the face
    faces_detected: int = 0  # faces the detector found in the image
    refused: list[Any] = field(default_factory=list)  # worker.face.choose.Refusal, faces not used
    others: list["FaceResult"] = field(default_factory=list)  # with max_faces > 1: the next faces, largest first

    @property
    def ok(self) -> bool:
        return self.descriptor is not None
