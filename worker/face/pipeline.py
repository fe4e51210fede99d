"""A batch of image byte strings -> one FaceResult per image.

decode -> detect -> landmarks -> align run per image on a thread pool (Pillow, dlib and numpy
release the GIL for most of it); then the chips of the whole batch go through the network in one
embed call. An image that fails gets an error code; it never fails the others.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.face.align import face_chip
from worker.face.decode import decode_image
from worker.face.detect import CroppedDetector, Detector, HogDetector
from worker.face.errors import BAD_IMAGE, MULTIPLE_FACES, NO_FACE, FaceError
from worker.face.landmarks import Landmarker
from worker.face.types import Box, FaceResult

log = logging.getLogger(__name__)

POLICIES = ("largest", "reject")


class ChipEmbedder(Protocol):
    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float32 descriptors."""
        ...


@dataclass
class _Face:
    """One image's aligned face, waiting for its descriptor."""

    chip: np.ndarray
    box: Box
    landmarks: np.ndarray
    detector: str


class FacePipeline:
    """Images to descriptors with a given embedder, detector and landmarker.

    max_pixels: larger images fail with image_too_large before they are decoded.
    multiple_faces: "largest" keeps the largest box; "reject" fails the image with multiple_faces.
    threads: size of the pool that decodes, detects and aligns. Call close() (or use `with`) to
    stop the pool.
    """

    def __init__(
        self,
        embedder: ChipEmbedder,
        detector: Detector,
        landmarker: Landmarker,
        *,
        max_pixels: int,
        multiple_faces: str = "largest",
        threads: int = 2,
    ):
        if multiple_faces not in POLICIES:
            raise ValueError(f"multiple_faces must be one of {POLICIES}, not {multiple_faces!r}")
        self.embedder = embedder
        self.detector = detector
        self.landmarker = landmarker
        self.max_pixels = max_pixels
        self.multiple_faces = multiple_faces
        self.cropped_detector = CroppedDetector()
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="face")

    def process(self, images: list[bytes], cropped: bool | list[bool] = False) -> list[FaceResult]:
        """images: encoded image bytes; cropped: per image (or for all) whether it is already a
        face crop (no detection: the whole image is the face). Returns one FaceResult per image,
        in order."""
        flags = [cropped] * len(images) if isinstance(cropped, bool) else list(cropped)
        if len(flags) != len(images):
            raise ValueError(f"{len(images)} images but {len(flags)} cropped flags")
        prepared = list(self._pool.map(self._prepare, images, flags))

        faces = [p for p in prepared if isinstance(p, _Face)]
        if faces:
            descriptors = np.asarray(self.embedder.embed(np.stack([f.chip for f in faces])), dtype=np.float32)
        found = iter(range(len(faces)))
        results = []
        for p in prepared:
            if isinstance(p, _Face):
                descriptor = descriptors[next(found)]
                results.append(FaceResult(descriptor=descriptor, box=p.box, landmarks=p.landmarks, detector=p.detector))
            else:
                results.append(p)
        return results

    def _prepare(self, data: bytes, cropped: bool) -> _Face | FaceResult:
        """One image -> its aligned face, or a FaceResult carrying the error."""
        detector = self.cropped_detector if cropped else self.detector
        try:
            image = decode_image(data, self.max_pixels)
            boxes = detector.detect(image)
            if not boxes:
                raise FaceError(NO_FACE, "no face was found in the image")
            if len(boxes) > 1 and self.multiple_faces == "reject":
                raise FaceError(MULTIPLE_FACES, f"{len(boxes)} faces were found; the image must show one")
            box = max(boxes, key=lambda b: b.area)  # ties keep the better-scored box
            landmarks = self.landmarker.landmarks(image, box)
            chip = face_chip(image, landmarks)
            return _Face(chip=chip, box=box, landmarks=landmarks, detector=detector.name)
        except FaceError as error:
            return FaceResult(detector=detector.name, error_code=error.code, error_message=error.message)
        except Exception:
            log.exception("image failed unexpectedly", extra={"image_size_bytes": len(data)})
            message = "the image could not be processed"
            return FaceResult(detector=detector.name, error_code=BAD_IMAGE, error_message=message)

    def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "FacePipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_pipeline(
    *,
    device: str = "auto",
    detector: str = "hog",
    upsample: int = 1,
    max_pixels: int = 25_000_000,
    multiple_faces: str = "largest",
    threads: int = 2,
    cache_dir: Path | None = None,
) -> FacePipeline:
    """The pipeline with the real network (worker.face.embed.Embedder on device), a detector
    ("hog" with upsample, or "cropped": every image is a face crop) and the 5-point landmarker."""
    from worker.face.embed import Embedder

    if detector == "hog":
        chosen: Detector = HogDetector(upsample)
    elif detector == "cropped":
        chosen = CroppedDetector()
    else:
        raise ValueError(f"detector must be 'hog' or 'cropped', not {detector!r}")
    return FacePipeline(
        Embedder.load(device=device, cache_dir=cache_dir),
        chosen,
        Landmarker(),
        max_pixels=max_pixels,
        multiple_faces=multiple_faces,
        threads=threads,
    )
