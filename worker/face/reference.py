"""dlib's own face pipeline, the reference biofleet's port is measured against.

DlibReference.load(upsample=1, multiple_faces="largest", max_pixels=25_000_000)
  .process(images: list[bytes], cropped=False) -> list[FaceResult]

Stages: decode (the same decode_image as biofleet, so the same bytes give the same pixels and
the same bad_image / image_too_large codes) -> dlib HOG detector (upsample 1) -> the 5-point
shape predictor -> dlib.get_face_chip(150, 0.25) -> compute_face_descriptor on the chip.
No face gives no_face; several faces give the largest (or multiple_faces under "reject"),
the same policy as biofleet's pipeline, so both fail to acquire on the same terms.
"""

from pathlib import Path

import numpy as np

from worker.face.decode import decode_image
from worker.face.detect import clip_box
from worker.face.errors import BAD_IMAGE, MULTIPLE_FACES, NO_FACE, FaceError
from worker.face.types import FaceResult
from worker.face.weights import RECOGNITION_MODEL, SHAPE_PREDICTOR_5, model_path

CHIP_SIZE = 150
CHIP_PADDING = 0.25


class DlibReference:
    """dlib's detector, shape predictor and recognition network, loaded once."""

    def __init__(self, detector, predictor, recognizer, upsample: int, multiple_faces: str, max_pixels: int):
        self.detector = detector
        self.predictor = predictor
        self.recognizer = recognizer
        self.upsample = upsample
        self.multiple_faces = multiple_faces
        self.max_pixels = max_pixels

    @classmethod
    def load(
        cls,
        upsample: int = 1,
        multiple_faces: str = "largest",
        max_pixels: int = 25_000_000,
        models_dir: Path | None = None,
    ) -> "DlibReference":
        """Load dlib's models from face-recognition-models (or models_dir).
        multiple_faces: "largest" or "reject"."""
        import dlib

        if multiple_faces not in ("largest", "reject"):
            raise ValueError(f"multiple_faces must be 'largest' or 'reject', not {multiple_faces!r}")

        def path(name: str) -> str:
            return str(Path(models_dir) / name if models_dir else model_path(name))

        return cls(
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(path(SHAPE_PREDICTOR_5)),
            dlib.face_recognition_model_v1(path(RECOGNITION_MODEL)),
            upsample,
            multiple_faces,
            max_pixels,
        )

    # The stages, one image at a time (the benchmark times each).

    def decode(self, data: bytes) -> np.ndarray:
        """Image bytes -> (H, W, 3) uint8 RGB; FaceError(bad_image / image_too_large)."""
        return decode_image(data, self.max_pixels)

    def detect(self, image: np.ndarray):
        """RGB image -> the one dlib.rectangle to use (the largest, unclipped as dlib gives it);
        FaceError(no_face / multiple_faces)."""
        faces = list(self.detector(image, self.upsample))
        if not faces:
            raise FaceError(NO_FACE, "no face was found in the image")
        if len(faces) > 1 and self.multiple_faces == "reject":
            raise FaceError(MULTIPLE_FACES, f"{len(faces)} faces were found in the image; expected one")
        return max(faces, key=lambda rect: rect.area())

    def whole_image(self, image: np.ndarray):
        """The rectangle covering the whole image, for already-cropped faces."""
        import dlib

        return dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)

    def landmarks(self, image: np.ndarray, rect):
        """RGB image and face rectangle -> dlib.full_object_detection with 5 points."""
        return self.predictor(image, rect)

    def chip(self, image: np.ndarray, shape) -> np.ndarray:
        """RGB image and 5 landmarks -> (150, 150, 3) uint8 aligned chip (dlib.get_face_chip)."""
        import dlib

        return dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        """(150, 150, 3) uint8 chip -> (128,) float32 descriptor."""
        return np.asarray(self.recognizer.compute_face_descriptor(chip), dtype=np.float32)

    def process_one(self, data: bytes, cropped: bool = False) -> FaceResult:
        """Image bytes -> FaceResult with descriptor, box (inclusive corners, clipped to the image)
        and landmarks, or an error code."""
        try:
            image = self.decode(data)
            rect = self.whole_image(image) if cropped else self.detect(image)
            shape = self.landmarks(image, rect)
            descriptor = self.descriptor(self.chip(image, shape))
        except FaceError as error:
            return FaceResult(error_code=error.code, error_message=error.message)
        except Exception:  # as the pipeline does: one odd image never stops the others
            return FaceResult(error_code=BAD_IMAGE, error_message="the image could not be processed")
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        height, width = image.shape[:2]
        box = clip_box(rect.left(), rect.top(), rect.right(), rect.bottom(), width, height)
        return FaceResult(
            descriptor=descriptor,
            box=box,
            landmarks=points,
            detector="cropped" if cropped else "dlib-hog",
        )

    def process(self, images: list[bytes], cropped: bool | list[bool] = False) -> list[FaceResult]:
        """Each image's FaceResult, in order. cropped: one flag for all or one per image."""
        flags = cropped if isinstance(cropped, list) else [cropped] * len(images)
        if len(flags) != len(images):
            raise ValueError("cropped must be one flag or one flag per image")
        return [self.process_one(data, flag) for data, flag in zip(images, flags)]
