"""The embedding step: fetch the images of a batch, then one pipeline pass per set of versions.

fetch(items, runtime): every image of the undecided items from the blob store, or from its uri
  for an image by reference (worker/batch/fetch_uri.py), in a thread pool.
embed(items, runtime, batch_id, preprocessing): item.faces, one FaceResult per image, each with
  its descriptor per version (FaceResult.descriptors). Images go through the pipeline in parts of
  at most settings.batch_pixel_budget decoded pixels (pixel_parts), a job's images never split;
  when a pass fails unexpectedly, each job's images run alone, so only the job that breaks it fails.
"""

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.blob import BlobNotFound, BlobStore
from shared.image_refs import is_reference
from shared.settings import Settings
from worker import metrics
from worker.batch.fetch_uri import read_reference
from worker.batch.model import INTERNAL_ERROR, Runtime, WorkItem
from worker.face.choose import FaceOptions
from worker.face.decode import image_pixels
from worker.face.types import FaceResult

log = logging.getLogger(__name__)

Slot = tuple[WorkItem, int]  # (item, image index)
Variants = Mapping[str, Mapping[str, Any]]  # version -> preprocessing


def fetch(items: list[WorkItem], runtime: Runtime) -> None:
    """Read every image of the undecided items (blob store or uri), in a thread pool."""
    wanted = [(item, key) for item in items if item.outcome is None for key in item.blob_keys]
    if not wanted:
        return
    threads = min(len(wanted), runtime.settings.fetch_threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        blobs = list(pool.map(lambda pair: read_image(runtime, pair[1]), wanted))
    for (item, _), blob in zip(wanted, blobs):
        item.images.append(blob)


def read_image(runtime: Runtime, key: str) -> bytes | FaceResult:
    """One image: by reference when key is a uri, else from the blob store."""
    if is_reference(key):
        return read_reference(key, runtime.settings.max_image_bytes)
    return read_blob(runtime.blobs, key)


def read_blob(blobs: BlobStore, key: str) -> bytes | FaceResult:
    """The image bytes, or a FaceResult error when the blob is missing or unreadable (one retry)."""
    for attempt in range(2):
        try:
            return blobs.get(key)
        except BlobNotFound:
            return FaceResult(error_code=INTERNAL_ERROR, error_message="image not found in the blob store")
        except Exception as exc:
            if attempt == 1:
                log.warning("blob read failed", extra={"blob_key": key, "error": type(exc).__name__})
    return FaceResult(error_code=INTERNAL_ERROR, error_message="image could not be read from the blob store")


def embed(items: list[WorkItem], runtime: Runtime, batch_id: str, preprocessing: Variants) -> None:
    """One pipeline pass per set of versions for every fetched image of the undecided items
    (usually one set)."""
    groups: dict[tuple[str, ...], list[WorkItem]] = {}
    for item in items:
        if item.outcome is None:
            groups.setdefault(item.versions or (runtime.model_version,), []).append(item)
    for versions, pending in groups.items():
        variants = {name: dict(preprocessing.get(name, {})) for name in versions}
        _embed_group(pending, variants, runtime, batch_id)


def _embed_group(pending: list[WorkItem], variants: Variants, runtime: Runtime, batch_id: str) -> None:
    images: list[bytes] = []
    cropped: list[bool] = []
    options: list[FaceOptions | None] = []
    slots: list[Slot] = []
    waiting: dict[int, list[FaceResult | None]] = {}
    for item in pending:
        faces: list[FaceResult | None] = [None] * len(item.images)
        waiting[id(item)] = faces
        for index, data in enumerate(item.images):
            if isinstance(data, FaceResult):
                faces[index] = data
            else:
                images.append(data)
                cropped.append(item.cropped)
                options.append(face_options(item, runtime.settings))
                slots.append((item, index))

    def run(part: slice) -> list[FaceResult]:
        _crash_hook(runtime.settings, images[part])
        return process_images(runtime.pipeline, images[part], cropped[part], variants, options[part])

    for start, end in pixel_parts(runtime, images, slots):
        part_slots = slots[start:end]
        try:
            results = run(slice(start, end))
        except Exception:
            log.exception("batch forward pass failed; retrying job by job", extra={"batch_id": batch_id})
            results = _process_one_by_one(run, start, part_slots, batch_id)
        for (item, index), result in zip(part_slots, results):
            waiting[id(item)][index] = result
    for item in pending:
        item.faces = [
            face or FaceResult(error_code=INTERNAL_ERROR, error_message="no result") for face in waiting[id(item)]
        ]


def face_options(item: WorkItem, settings: Settings) -> FaceOptions | None:
    """The face options of an item's images: None for the defaults (one face, the worker's
    policy); a detect job keeps up to settings.max_faces faces unless it asks for fewer."""
    if item.kind == "detect":
        return FaceOptions.from_json(item.options, max_faces=settings.max_faces)
    return FaceOptions.from_json(item.options) if item.options else None


def pixel_parts(runtime: Runtime, images: list[bytes], slots: list[Any]) -> list[tuple[int, int]]:
    """(start, end) ranges of images, in order, each within settings.batch_pixel_budget decoded
    pixels (counted from the headers), a job's images never split: a job over the budget is a
    part of its own."""
    budget = runtime.settings.batch_pixel_budget
    count = getattr(runtime.pipeline, "decoded_pixels", None) or image_pixels
    pixels = [count(data) for data in images]
    parts: list[tuple[int, int]] = []
    start = used = 0
    index = 0
    while index < len(slots):
        end = index
        while end < len(slots) and slots[end][0] is slots[index][0]:
            end += 1
        job_pixels = sum(pixels[index:end])
        if index > start and used + job_pixels > budget:
            parts.append((start, index))
            start, used = index, 0
        used += job_pixels
        index = end
    if start < len(slots):
        parts.append((start, len(slots)))
    return parts


def _crash_hook(settings: Settings, images: list[bytes]) -> None:
    """Tests only (settings.crash_marker): die like an OOM-killed process on a marked image."""
    marker = settings.crash_marker.encode()
    if marker and any(marker in data for data in images):
        os.kill(os.getpid(), signal.SIGKILL)


def process_images(
    pipeline: Any,
    images: list[bytes],
    cropped: list[bool],
    variants: Variants,
    options: list[FaceOptions | None] | None = None,
) -> list[FaceResult]:
    """pipeline.process, timed as the detect and embed stages (split when the pipeline's embedder
    is a metrics.TimedEmbedder, else all counted as detect); options passed only when one is set."""
    timed = pipeline.embedder if isinstance(getattr(pipeline, "embedder", None), metrics.TimedEmbedder) else None
    if timed is not None:
        timed.last_s = 0.0
    start = time.perf_counter()
    extra = {"options": options} if options and any(o is not None for o in options) else {}
    results: list[FaceResult] = pipeline.process(images, cropped, variants=variants, **extra)
    elapsed = time.perf_counter() - start
    if len(results) != len(images):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(images)} images")
    missing = [name for r in results if r.ok for name in variants if name not in r.descriptors]
    if missing:
        raise RuntimeError(f"pipeline returned no descriptors of {sorted(set(missing))}")
    if timed is not None:
        metrics.observe_stage("embed", timed.last_s)
        metrics.observe_stage("detect", max(0.0, elapsed - timed.last_s))
    else:
        metrics.observe_stage("detect", elapsed)
    return results


def _process_one_by_one(
    run: Callable[[slice], list[FaceResult]], offset: int, slots: list[Slot], batch_id: str
) -> list[FaceResult]:
    """run(part) on each item's images alone (slots start at image offset); an item whose call
    fails gets errors."""
    results: list[FaceResult] = []
    start = 0
    while start < len(slots):
        item = slots[start][0]
        end = start
        while end < len(slots) and slots[end][0] is item:
            end += 1
        try:
            results.extend(run(slice(offset + start, offset + end)))
        except Exception:
            log.exception("forward pass failed for a job", extra={"job_id": str(item.job_id), "batch_id": batch_id})
            error = FaceResult(error_code=INTERNAL_ERROR, error_message="internal error while processing the image")
            results.extend([error] * (end - start))
        start = end
    return results
