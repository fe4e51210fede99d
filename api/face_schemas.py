"""The face a result reports: its box, landmarks, detector score and quality (README: Which face)."""

from typing import Literal

from pydantic import BaseModel, Field


class FaceBox(BaseModel):
    left: int
    top: int
    right: int
    bottom: int


class FaceQuality(BaseModel):
    face_size_px: int = Field(description="The face box's smaller side, original pixels.")
    sharpness: float = Field(description="0 (flat) to 1 (sharp): Laplacian variance v of the chip, v / (v + 100).")
    yaw: float = Field(description="Degrees, rough, from the landmarks; positive: nose towards the image's right.")
    pitch: float = Field(description="Degrees, rough, from the landmarks; positive: chin up.")
    roll: float = Field(description="Degrees: the eye line's angle, positive clockwise in the image.")
    brightness: float = Field(description="0 to 1: the chip centre's mean grey / 255.")
    contrast: float = Field(description="0 to 1: the chip centre's grey standard deviation / 127.5.")


class Face(BaseModel):
    """The face used, in the original image's upright pixels (after EXIF orientation)."""

    box: FaceBox = Field(description="Inclusive pixel coordinates.")
    landmarks: list[list[float]] = Field(
        description="5 (x, y) points, dlib's order: outer and inner corner of the eye on the image's right, "
        "outer and inner corner of the eye on the image's left, base of the nose."
    )
    detector_confidence: float | None = Field(description="The detector's score; null for cropped images.")
    faces_detected: int = Field(description="Faces the detector found in the image.")
    quality: FaceQuality | None
    detector: str | None
    model_version: str


class RefusedFace(BaseModel):
    box: FaceBox
    detector_confidence: float | None
    reason: Literal["small_face", "low_confidence", "low_quality", "exceeds_max_faces"]
    quality: FaceQuality | None = None
    failed: list[str] | None = Field(None, description="low_quality: the measures below the filter's limits.")
