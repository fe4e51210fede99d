"""A batch of image byte strings -> one FaceResult per image.

Images are phone photos, not crops: each is decoded (on a thread pool) to a working copy whose
longest side is at most detect_max_side (JPEG at a reduced DCT scale: a 12 MP photo decodes at 1/4);
detection runs on the working copies, of the whole batch at once when the detector can
(CnnDetector.detect_many: one forward pass), else per image on the pool; the 5-point landmarks of
all faces come from one vectorised pass on the working copies. Alignment runs on the pool: where
the working copy holds fewer pixels across the chip than the chip itself (chip_detail x 150), the
face's region is decoded again at the scale that has them (never enlarged from the small copy when
the original has the detail), and the landmarks are taken there again; a face wider than the chip
is then reduced (bicubic, antialiased) to the chip's scale; frames are dropped once the chips
exist. Then the chips of the whole batch go through the network in one embed call. Boxes and
landmarks are reported in the original (upright) image's pixels. An image that fails gets an
error code; it never fails the others.

The smallest face found: the CNN detector's window is 80 px, so faces from about
80 x longest side / detect_max_side original pixels (smallest_face_px).

Memory: FacePipeline.decoded_pixels(data) is what a pass holds decoded for an image, read from its
header (the working copy and what its face keeps), for worker.batch's per-batch pixel budget.
"""

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worker.face.align import chip_rect, face_chip
from worker.face.choose import Choice, FaceOptions, Kept, choose, failure, keep_passing
from worker.face.decode import Region, Working, decode_region, decode_working, working_pixels
from worker.face.detect import CnnDetector, CroppedDetector, Detector, HogDetector, out_of_memory
from worker.face.errors import NO_FACE, FaceError
from worker.face.landmarks import Landmarker, landmarks_or_errors
from worker.face.quality import Quality
from worker.face.regions import CHIP_SIZE, original_box, scale_box, shrink_to_chip
from worker.face.subject import frame_of, largest
from worker.face.types import Box, FaceResult
from worker.face.variants import embed_variant

log = logging.getLogger(__name__)

POLICIES = ("largest", "reject")
DETECTORS = ("hog", "cnn", "cropped")
ALIGNERS = ("auto", "numpy", "torch")
DETECT_MAX_SIDE = 1000  # the largest side of the working copy the detector sees
CHIP_DETAIL = 1.0  # source pixels across the chip's rectangle, in chip sizes, before a re-decode
DETECTOR_WINDOW_PX = 80  # the CNN detector's window: the smallest face at the working resolution
# What one face keeps from alignment to the network, in pixels, at most: its chip and, for the
# torch aligner, its source pixels at the chip's scale (a region under 260 px square; measured up
# to 249), or else the working copy itself, counted already.
FACE_PIXELS = (2 * CHIP_SIZE) ** 2


def smallest_face_px(width: int, height: int, detect_max_side: int = DETECT_MAX_SIDE) -> int:
    """The smallest face width (original pixels) the CNN detector finds in a width x height photo."""
    return math.ceil(DETECTOR_WINDOW_PX * max(1.0, max(width, height) / detect_max_side))


class ChipEmbedder(Protocol):
    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float32 descriptors."""
        ...


@dataclass
class _Face:
    """One image's aligned face, waiting for its descriptor."""

    chip: np.ndarray | None
    box: Box
    landmarks: np.ndarray
    detector: str
    source: Region | None = None  # until the chip exists (batched torch alignment)
    points: np.ndarray | None = None  # the landmarks in source's pixels
    quality: Quality | None = None


class FacePipeline:
    """Images to descriptors with a given embedder, detector and landmarker.

    max_pixels: larger images fail with image_too_large before they are decoded.
    detect_max_side: the working copy's largest side (detection runs there; see the module).
    chip_detail: how many chip sizes of source pixels the chip's rectangle needs before the face
    is decoded again at a higher resolution.
    aligner: "numpy" (worker.face.align, exact, per face on the pool), "torch"
    (worker.face.align_torch, batched, on the embedder's device) or "auto" (torch on CUDA, numpy
    on the CPU, where the two measured alike).
    multiple_faces: "largest" keeps the largest confidently scored box (largest()); "reject" fails
    the image with multiple_faces.
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
        detect_max_side: int = DETECT_MAX_SIDE,
        chip_detail: float = CHIP_DETAIL,
        aligner: str = "auto",
    ):
        if multiple_faces not in POLICIES:
            raise ValueError(f"multiple_faces must be one of {POLICIES}, not {multiple_faces!r}")
        if detect_max_side < DETECTOR_WINDOW_PX or chip_detail <= 0:
            raise ValueError(f"detect_max_side must be >= {DETECTOR_WINDOW_PX} and chip_detail > 0")
        if aligner not in ALIGNERS:
            raise ValueError(f"aligner must be one of {ALIGNERS}, not {aligner!r}")
        if aligner == "auto":
            device = getattr(embedder, "device", None)
            aligner = "torch" if getattr(device, "type", "cpu") == "cuda" else "numpy"
        self.aligner = aligner
        self.detect_max_side = detect_max_side
        self.chip_detail = chip_detail
        self.embedder = embedder
        self.detector = detector
        self.landmarker = landmarker
        self.max_pixels = max_pixels
        self.multiple_faces = multiple_faces
        self.cropped_detector = CroppedDetector()
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="face")

    def process(
        self,
        images: list[bytes],
        cropped: bool | list[bool] = False,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
        options: Sequence[FaceOptions | None] | None = None,
    ) -> list[FaceResult]:
        """images: encoded image bytes; cropped: per image (or for all) whether it is already a
        face crop (no detection: the whole image is the face); variants: model version ->
        preprocessing (worker.face.variants), each face's descriptor per version in
        FaceResult.descriptors, the first also its descriptor (None: the plain descriptor only);
        options: per image, the request's face options (None: one face, by the pipeline's policy).
        Returns one FaceResult per image, in order: its first face (with max_faces > 1 the next
        ones in `others`, largest first), each with its quality, and the faces refused."""
        flags = [cropped] * len(images) if isinstance(cropped, bool) else list(cropped)
        if len(flags) != len(images):
            raise ValueError(f"{len(images)} images but {len(flags)} cropped flags")
        wanted = [o or FaceOptions() for o in (options or [None] * len(images))]
        names = [self.cropped_detector.name if flag else self.detector.name for flag in flags]
        decoded = list(self._pool.map(self._decode, images))
        found = self._detect([d.pixels if isinstance(d, Working) else d for d in decoded], flags)

        # Per image: its chosen face boxes (working copy) or its FaceResult with the error; then
        # the landmarks of every chosen face at once, on the working copies.
        stage: list[Choice | FaceResult] = []
        for name, image, boxes, data, option in zip(names, decoded, found, images, wanted):
            try:
                stage.append(self._pick(image, boxes, option))
            except Exception as error:
                stage.append(failure(name, error, len(data)))
        slots = [(i, k) for i, c in enumerate(stage) if isinstance(c, Choice) for k in range(len(c.boxes))]
        boxes_of = [stage[i].boxes[k] for i, k in slots]  # type: ignore[union-attr]
        points = landmarks_or_errors(self.landmarker, [decoded[i].pixels for i, _ in slots], boxes_of)

        def align(slot: tuple[int, int], box: Box, landmarks: Any) -> _Face | FaceResult:
            i = slot[0]
            if isinstance(landmarks, Exception):
                return failure(names[i], landmarks, len(images[i]))
            try:
                return self._align(images[i], decoded[i], box, landmarks, names[i])
            except Exception as error:
                return failure(names[i], error, len(images[i]))

        aligned = list(self._pool.map(align, slots, boxes_of, points))
        del decoded  # the working copies
        self._batch_chips([p for p in aligned if isinstance(p, _Face) and p.chip is None])
        per_image: dict[int, list[_Face | FaceResult]] = {}
        for (i, _), face in zip(slots, aligned):
            per_image.setdefault(i, []).append(face)
        for i, faces in per_image.items():
            stage[i] = keep_passing(stage[i], faces, wanted[i].quality_filter, names[i])  # type: ignore[arg-type]

        kept = [f for item in stage if isinstance(item, Kept) for f in item.faces]
        by_version: dict[str, np.ndarray] = {}
        if kept:
            chips = np.stack([f.chip for f in kept])
            by_version = {name: embed_variant(self.embedder, chips, pre) for name, pre in (variants or {}).items()}
            first = next(iter(by_version.values()), None)
            descriptors = first if first is not None else np.asarray(self.embedder.embed(chips), dtype=np.float32)
        found_at = iter(range(len(kept)))
        results = []
        for item in stage:
            if not isinstance(item, Kept):
                results.append(item)
                continue
            faces = []
            for f in item.faces:
                k = next(found_at)
                faces.append(
                    FaceResult(
                        descriptor=descriptors[k],
                        box=f.box,
                        landmarks=f.landmarks,
                        detector=f.detector,
                        descriptors={name: rows[k] for name, rows in by_version.items()},
                        quality=f.quality,
                        faces_detected=item.detected,
                        refused=item.refused,
                    )
                )
            faces[0].others = faces[1:]
            results.append(faces[0])
        return results

    def decoded_pixels(self, data: bytes) -> int:
        """The decoded pixels a pass holds for these image bytes, read from the header (0 for bytes
        that are not a readable image): the working copy (longest side at most detect_max_side),
        then FACE_PIXELS for what its face keeps once aligned. Not counted, as they are transient
        and one per pool thread at a time: the full frame a non-JPEG image is decoded to before it
        is reduced, and the frame the chip-detail re-decode reads its region from (a JPEG at the
        DCT scale the chip needs, other formats whole); each at most max_pixels."""
        pixels = working_pixels(data, self.detect_max_side)
        return pixels + FACE_PIXELS if pixels else 0

    def _pick(self, image: Any, boxes: list[Box] | Exception, options: FaceOptions) -> Choice:
        """The face boxes to use, by the request's options and the multiple-faces policy; raises
        what the image failed with."""
        for failed in (image, boxes):
            if isinstance(failed, Exception):
                raise failed
        if not boxes:
            raise FaceError(NO_FACE, "no face was found in the image")
        originals = [replace(original_box(b, image), score=b.score) for b in boxes]  # type: ignore[arg-type]
        return choose(
            boxes,
            originals,
            options,
            options.multiple_faces or self.multiple_faces,
            partial(largest, frame=frame_of(image)),
        )  # type: ignore[arg-type]

    def _decode(self, data: bytes) -> Working | Exception:
        try:
            return decode_working(data, self.max_pixels, self.detect_max_side)
        except Exception as error:
            return error

    def _align(self, data: bytes, work: Working, box: Box, landmarks: np.ndarray, name: str) -> _Face:
        """The chip from pixels with enough detail, and the box and landmarks in original pixels."""
        source = Region(work.pixels, 0.5 * work.scale_x - 0.5, 0.5 * work.scale_y - 0.5, work.scale_x, work.scale_y)
        rect, angle = chip_rect(landmarks, CHIP_SIZE, 0.25)
        side = rect.r - rect.l + 1  # working pixels across the chip
        need = self.chip_detail * CHIP_SIZE
        if work.reduced and side < need:
            # Decode the chip's area again at the resolution it needs (at most the original's).
            corners = source.to_original(rect.rotated_corners(angle))
            scale = max(work.scale_x, work.scale_y)
            margin = 0.1 * side * scale + 4
            region = (
                corners[:, 0].min() - margin,
                corners[:, 1].min() - margin,
                corners[:, 0].max() + margin,
                corners[:, 1].max() + margin,
            )
            source = decode_region(data, self.max_pixels, region, min(1.0, need / (side * scale)))
            landmarks = self.landmarker.landmarks(source.pixels, scale_box(box, work, source))
        face = _Face(
            chip=None,
            box=replace(original_box(box, work), score=box.score),
            landmarks=source.to_original(landmarks),
            detector=name,
        )
        if work.reduced:
            source, landmarks = shrink_to_chip(source, landmarks)
        if self.aligner == "numpy":
            face.chip = face_chip(source.pixels, landmarks)
        else:
            face.source, face.points = source, landmarks
        return face

    def _batch_chips(self, faces: list[_Face]) -> None:
        """The chips of faces aligned in torch, all in one grid_sample; their sources dropped."""
        if not faces:
            return
        from worker.face.align_torch import face_chips

        device = getattr(self.embedder, "device", "cpu")
        try:
            chips = face_chips([f.source.pixels for f in faces], [f.points for f in faces], device=device)
        except Exception:
            log.exception("torch alignment failed; aligning with numpy", extra={"faces": len(faces)})
            chips = [face_chip(f.source.pixels, f.points) for f in faces]
        for face, chip in zip(faces, chips):
            face.chip, face.source, face.points = chip, None, None

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
            log.warning(
                "CUDA out of memory in batched detection; splitting the batch in halves", extra={"images": len(batch)}
            )
            if len(batch) == 1:
                return [error]
            half = len(batch) // 2
            return self._detect_halving(detect_many, decoded, batch[:half]) + self._detect_halving(
                detect_many, decoded, batch[half:]
            )

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
    detector: str = "cnn",
    upsample: int = 1,
    cnn_upsample: int = 0,
    max_pixels: int = 25_000_000,
    multiple_faces: str = "largest",
    threads: int = 2,
    cache_dir: Path | None = None,
    detect_max_side: int = DETECT_MAX_SIDE,
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
        detect_max_side=detect_max_side,
    )
