"""Face quality measured on the aligned chip and the 5 landmarks, and the quality filter levels.

measure(chip, landmarks, box) -> Quality:
- face_size_px: the smaller side of the face box, in original pixels (the CNN detector finds
  faces from about 80 px at its working resolution).
- sharpness: v / (v + SHARPNESS_HALF), v the variance of the Laplacian (4-neighbour) of the grey
  chip's centre (the inner 100 x 100 of 150, values 0-255); 0 (flat) to 1 (sharp), 0.5 at
  v == SHARPNESS_HALF.
- yaw, pitch, roll: degrees, rough estimates from dlib's 5 points (eye corners, nose base): roll
  is the eye line's angle (positive: clockwise in the image), yaw from the nose base's offset
  from the eyes' midpoint along the eye line, atan(offset / NOSE_DEPTH) (positive: the nose
  towards the image's right), pitch from its drop below the eye line against a frontal face's,
  atan((NOSE_DROP - drop) / NOSE_DEPTH) (positive: chin up); offsets in inter-eye distances.
  Both are -90 to 90, most telling under 45.
- brightness: mean grey of the chip's centre / 255, 0 to 1. contrast: its standard deviation /
  127.5, 0 to 1.

FILTERS: the thresholds of quality_filter low / medium / high (none refuses nothing), calibrated
on ../shared/data/faces (bench/quality.py prints the distributions and the refusal rates).
"""

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from worker.face.types import Box

SHARPNESS_HALF = 100.0  # Laplacian variance that scores 0.5
NOSE_DEPTH = 0.35  # nose base in front of the eye corners, in inter-eye distances
NOSE_DROP = 0.77  # nose base below the eye line of a frontal face, in inter-eye distances (View 1's median)
QUALITY_FILTERS = ("none", "low", "medium", "high")


@dataclass(frozen=True)
class Quality:
    face_size_px: int
    sharpness: float
    yaw: float
    pitch: float
    roll: float
    brightness: float
    contrast: float

    def as_json(self) -> dict[str, Any]:
        return {name: round(value, 3) if isinstance(value, float) else value for name, value in asdict(self).items()}


@dataclass(frozen=True)
class Limits:
    """What a quality filter level accepts."""

    min_face_size_px: int
    min_sharpness: float
    max_yaw: float
    max_pitch: float
    min_brightness: float
    max_brightness: float
    min_contrast: float


# Calibrated on ../shared/data/faces with bench/quality.py (percentiles of each measure on
# lfw_view1, lfw_colour and orl): low refuses only what lies far outside all three, medium about
# the worst 1-2 % of View 1 on each measure, high about the worst 5-10 %. Face size is set from
# the chip (150 px): View 1's faces are all 80 px or more.
FILTERS: dict[str, Limits] = {
    "low": Limits(40, 0.05, 60.0, 60.0, 0.10, 0.95, 0.05),
    "medium": Limits(60, 0.10, 45.0, 40.0, 0.20, 0.90, 0.10),
    "high": Limits(80, 0.16, 30.0, 30.0, 0.30, 0.80, 0.15),
}


def measure(chip: np.ndarray, landmarks: np.ndarray, box: Box) -> Quality:
    """chip: (150, 150, 3) uint8 RGB aligned face; landmarks: (5, 2) dlib order; box: original pixels."""
    grey = chip[25:125, 25:125].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    variance = float(laplacian.var())
    yaw, pitch, roll = pose(landmarks)
    return Quality(
        face_size_px=int(min(box.right - box.left + 1, box.bottom - box.top + 1)),
        sharpness=variance / (variance + SHARPNESS_HALF),
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        brightness=float(grey.mean()) / 255.0,
        contrast=min(1.0, float(grey.std()) / 127.5),
    )


def pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from dlib's 5 points; see the module docstring."""
    points = np.asarray(landmarks, dtype=np.float64)
    right_of_image = points[0:2].mean(axis=0)  # the eye on the image's right
    left_of_image = points[2:4].mean(axis=0)
    axis = right_of_image - left_of_image
    distance = float(np.hypot(*axis))
    if distance < 1e-6:
        return 0.0, 0.0, 0.0
    roll = math.degrees(math.atan2(axis[1], axis[0]))
    across = axis / distance
    down = np.array([-across[1], across[0]])
    offset = points[4] - (right_of_image + left_of_image) / 2
    x, y = float(offset @ across) / distance, float(offset @ down) / distance
    yaw = math.degrees(math.atan(x / NOSE_DEPTH))
    pitch = math.degrees(math.atan((NOSE_DROP - y) / NOSE_DEPTH))
    return yaw, pitch, roll


def failures(quality: Quality, level: str) -> list[str]:
    """The measures of quality below the level's limits (empty: accepted); "none" accepts all."""
    limits = FILTERS.get(level)
    if limits is None:
        return []
    failed = []
    if quality.face_size_px < limits.min_face_size_px:
        failed.append("face_size_px")
    if quality.sharpness < limits.min_sharpness:
        failed.append("sharpness")
    if abs(quality.yaw) > limits.max_yaw:
        failed.append("yaw")
    if abs(quality.pitch) > limits.max_pitch:
        failed.append("pitch")
    if not limits.min_brightness <= quality.brightness <= limits.max_brightness:
        failed.append("brightness")
    if quality.contrast < limits.min_contrast:
        failed.append("contrast")
    return failed
