"""Stable error codes for images that do not give a descriptor."""

BAD_IMAGE = "bad_image"
IMAGE_TOO_LARGE = "image_too_large"
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
# Faces refused by the request's options (worker.face.choose).
SMALL_FACE = "small_face"
LOW_CONFIDENCE = "low_confidence"
LOW_QUALITY = "low_quality"
EXCEEDS_MAX_FACES = "exceeds_max_faces"


class FaceError(Exception):
    """An image that cannot give a descriptor; code is one of the constants above."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class WeightsFormatError(ValueError):
    """A weights file that is truncated, corrupt or not what the reader expects."""

    def __init__(self, offset: int, message: str):
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset
