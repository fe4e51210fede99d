"""A batch of image byte strings -> one FaceResult per image.

decode runs per image on a thread pool; detection runs on the whole batch at once when the
detector can (CnnDetector.detect_many: one forward pass), else per image on the pool; the 5-point
landmarks of all faces come from one vectorised pass; alignment runs on the pool; then the chips
of the whole batch go through the network in one embed call. An image that fails gets an error
code; it never fails the others.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.face.align import face_chip
from worker.face.decode import decode_working, image_pixels
from worker.face.detect import CnnDetector, CroppedDetector, Detector, HogDetector, out_of_memory
from worker.face.errors import BAD_IMAGE, MULTIPLE_FACES, NO_FACE, FaceError
from worker.face.landmarks import Landmarker
from worker.face.types import Box, FaceResult

log = logging.getLogger(__name__)

POLICIES = ("largest", "reject")
DETECTORS = ("hog", "cnn", "cropped")


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


def _failure(detector: str, error: Exception, data_size: int) -> FaceResult:
    """The FaceResult of an image that failed: its FaceError, or bad_image for anything else."""
    if isinstance(error, FaceError):
        return FaceResult(detector=detector, error_code=error.code, error_message=error.message)
    log.error("image failed unexpectedly", exc_info=error, extra={"image_size_bytes": data_size})
    return FaceResult(detector=detector, error_code=BAD_IMAGE, error_message="the image could not be processed")


class FacePipeline:
    """Images to descriptors with a given embedder, detector and landmarker.

    max_pixels: larger images fail with image_too_large before they are decoded.
    working_pixels: larger images are decoded shrunk to this many pixels, and detected and aligned
    there (None: full size); boxes and landmarks are returned in the full image's coordinates.
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
        working_pixels: int | None = None,
    ):
        if multiple_faces not in POLICIES:
            raise ValueError(f"multiple_faces must be one of {POLICIES}, not {multiple_faces!r}")
        self.embedder = embedder
        self.detector = detector
        self.landmarker = landmarker
        self.max_pixels = max_pixels
        self.working_pixels = working_pixels
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
        names = [self.cropped_detector.name if flag else self.detector.name for flag in flags]
        decoded_at = list(self._pool.map(self._decode, images))
        decoded = [d[0] if isinstance(d, tuple) else d for d in decoded_at]
        scales = [d[1] if isinstance(d, tuple) else 1.0 for d in decoded_at]
        del decoded_at
        found = self._detect(decoded, flags)

        # Per image: its face box or its FaceResult with the error; then all landmarks at once.
        stage: list[Box | FaceResult | _Face] = []
        for name, image, boxes, data in zip(names, decoded, found, images):
            try:
                stage.append(self._pick(image, boxes))
            except Exception as error:
                stage.append(_failure(name, error, len(data)))
        waiting = [i for i, item in enumerate(stage) if isinstance(item, Box)]
        points = self._landmarks([decoded[i] for i in waiting], [stage[i] for i in waiting])

        def align(i: int, landmarks) -> _Face | FaceResult:
            if isinstance(landmarks, Exception):
                return _failure(names[i], landmarks, len(images[i]))
            try:
                chip = face_chip(decoded[i], landmarks)
            except Exception as error:
                return _failure(names[i], error, len(images[i]))
            return _Face(chip=chip, box=stage[i], landmarks=landmarks, detector=names[i])

        for i, face in zip(waiting, self._pool.map(align, waiting, points)):
            stage[i] = face
        decoded.clear()  # free the frames before the network runs

        faces = [p for p in stage if isinstance(p, _Face)]
        if faces:
            descriptors = np.asarray(self.embedder.embed(np.stack([f.chip for f in faces])), dtype=np.float32)
        found_at = iter(range(len(faces)))
        results = []
        for p, scale in zip(stage, scales):
            if isinstance(p, _Face):
                descriptor = descriptors[next(found_at)]
                box, landmarks = _full_size(p.box, p.landmarks, scale)
                results.append(FaceResult(descriptor=descriptor, box=box, landmarks=landmarks, detector=p.detector))
            else:
                results.append(p)
        return results

    def decoded_pixels(self, data: bytes) -> int:
        """The pixels this pipeline holds decoded for these image bytes, read from the header."""
        pixels = image_pixels(data)
        return min(pixels, self.working_pixels) if self.working_pixels else pixels

    def _pick(self, image: np.ndarray | Exception, boxes: list[Box] | Exception) -> Box:
        """The face box to use, by the multiple-faces policy; raises what the image failed with."""
        for failed in (image, boxes):
            if isinstance(failed, Exception):
                raise failed
        if not boxes:
            raise FaceError(NO_FACE, "no face was found in the image")
        if len(boxes) > 1 and self.multiple_faces == "reject":
            raise FaceError(MULTIPLE_FACES, f"{len(boxes)} faces were found; the image must show one")
        return max(boxes, key=lambda b: b.area)  # ties keep the better-scored box

    def _decode(self, data: bytes) -> tuple[np.ndarray, float] | Exception:
        try:
            return decode_working(data, self.max_pixels, self.working_pixels)
        except Exception as error:
            return error

    def _detect(self, decoded: list, flags: list[bool]) -> list:
        """Per image: its boxes, or the exception detection raised (None for images that failed
        to decode). The detector's detect_many takes all images at once when it has one; a CUDA
        out-of-memory error splits the batch in halves; should it fail otherwise, each image is
        tried alone so that one bad image fails alone."""
        found: list = [None] * len(decoded)
        batch = []
        for i, (image, flag) in enumerate(zip(decoded, flags)):
            if isinstance(image, Exception):
                continue
            if flag:
                found[i] = self.cropped_detector.detect(image)
            else:
                batch.append(i)
        detect_many = getattr(self.detector, "detect_many", None)
        if detect_many is not None and len(batch) > 1:
            try:
                for i, boxes in zip(batch, self._detect_halving(detect_many, decoded, batch)):
                    found[i] = boxes
                return found
            except Exception:
                log.exception("batch detection failed; detecting one image at a time", extra={"images": len(batch)})

        def one(i: int) -> list[Box] | Exception:
            try:
                return self.detector.detect(decoded[i])
            except Exception as error:
                return error

        for i, boxes in zip(batch, self._pool.map(one, batch)):
            found[i] = boxes
        return found

    def _detect_halving(self, detect_many, decoded: list, batch: list[int]) -> list:
        """detect_many on the batch; on CUDA out of memory, on each half in turn (an image that
        does not fit alone gets the error)."""
        try:
            return detect_many([decoded[i] for i in batch])
        except Exception as error:
            if not out_of_memory(error):
                raise
            log.warning("CUDA out of memory in batched detection; splitting the batch in halves",
                        extra={"images": len(batch)})
            if len(batch) == 1:
                return [error]
            half = len(batch) // 2
            return (self._detect_halving(detect_many, decoded, batch[:half])
                    + self._detect_halving(detect_many, decoded, batch[half:]))

    def _landmarks(self, images: list[np.ndarray], boxes: list[Box]) -> list:
        """Per face: its (5, 2) landmarks, or the exception the shape predictor raised. All in one
        pass; should it fail, each face is tried alone."""
        if not boxes:
            return []
        try:
            return list(self.landmarker.landmarks_many(images, boxes))
        except Exception:
            log.exception("batch landmarks failed; one face at a time", extra={"faces": len(boxes)})
        found = []
        for image, box in zip(images, boxes):
            try:
                found.append(self.landmarker.landmarks(image, box))
            except Exception as error:
                found.append(error)
        return found

    def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "FacePipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _full_size(box: Box, landmarks: np.ndarray, scale: float) -> tuple[Box, np.ndarray]:
    """A box and landmarks found in an image shrunk by scale, in the full image's coordinates."""
    if scale == 1.0:
        return box, landmarks
    corners = [round(v * scale) for v in (box.left, box.top, box.right, box.bottom)]
    return Box(*corners), np.asarray(landmarks, dtype=np.float64) * scale


def load_pipeline(
    *,
    device: str = "auto",
    detector: str = "cnn",
    upsample: int = 1,
    cnn_upsample: int = 0,
    max_pixels: int = 25_000_000,
    multiple_faces: str = "largest",
    threads: int = 2,
    cache_dir: Path | None = None,
    working_pixels: int | None = None,
) -> FacePipeline:
    """The pipeline with the real network (worker.face.embed.Embedder on device), a detector
    ("hog": dlib's HOG detector with `upsample`; "cnn": the ported CNN detector on the same device,
    with `cnn_upsample`; "cropped": every image is a face crop) and the 5-point landmarker."""
    from worker.face.embed import Embedder

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, not {detector!r}")
    if detector == "hog":
        chosen: Detector = HogDetector(upsample)
    elif detector == "cnn":
        chosen = CnnDetector(device=device, upsample=cnn_upsample)
    else:
        chosen = CroppedDetector()
    return FacePipeline(
        Embedder.load(device=device, cache_dir=cache_dir),
        chosen,
        Landmarker(cache_dir=cache_dir),
        max_pixels=max_pixels,
        multiple_faces=multiple_faces,
        threads=threads,
        working_pixels=working_pixels,
    )
