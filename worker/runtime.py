"""The worker process's runtime: the face pipeline loaded and warmed up once, the blob store, the
model versions it serves, and how messages are handed back to the broker.

get_runtime() -> this process's worker.batch.Runtime, loaded on first use (worker.app loads it
when a pool process starts, before it takes batches).
"""

import io
import logging
from typing import Any

from shared.settings import Settings, get_settings
from worker.batch import Delivery, Runtime, with_db_retry

log = logging.getLogger(__name__)

_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's Runtime, loaded once."""
    global _runtime
    if _runtime is None:
        _runtime = load_runtime(get_settings())
    return _runtime


def load_runtime(settings: Settings) -> Runtime:
    """Load and warm up the face pipeline, ensure the model version row, open the blob store."""
    from shared.blob import open_blob_store
    from shared.services import resolve
    from worker.face.pipeline import load_pipeline
    from worker.metrics import TimedEmbedder, set_worker_info
    from worker.suspects import Suspects
    from worker.versions import ARCHITECTURE, VersionBook, ensure_model_version

    urls = resolve(settings)
    pipeline = load_pipeline(
        device=settings.device,
        detector=settings.detector,
        upsample=settings.detector_upsample,
        cnn_upsample=settings.detector_cnn_upsample,
        max_pixels=settings.max_image_pixels,
        multiple_faces=settings.multiple_faces,
        threads=settings.decode_threads,
        cache_dir=settings.model_cache_dir,
        detect_max_side=settings.detect_max_side,
    )
    pipeline.embedder = TimedEmbedder(pipeline.embedder)
    warm_up(pipeline)
    sha = pipeline.embedder.weights_sha256
    with_db_retry(lambda: ensure_model_version(urls.database_url, settings, sha), settings.db_retry_s)
    set_worker_info(settings.model_version, str(pipeline.embedder.device))
    log.info(
        "face pipeline ready",
        extra={"model_version": settings.model_version, "device": str(pipeline.embedder.device), "weights_sha256": sha},
    )
    return Runtime(
        pipeline=pipeline,
        blobs=open_blob_store(urls.blob_url),
        database_url=urls.database_url,
        model_version=settings.model_version,
        settings=settings,
        republish=republish,
        versions=VersionBook(ARCHITECTURE, sha, settings.model_version, settings.match_threshold),
        suspects=Suspects(urls.redis_url),
    )


def warm_up(pipeline: Any) -> None:
    """One pass through decode, detection and the network on two blank images."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (150, 150), (128, 128, 128)).save(buffer, format="PNG")
    blank = buffer.getvalue()
    results = pipeline.process([blank, blank], [True, False])
    if not results[0].ok:
        raise RuntimeError(f"warm-up forward pass failed: {results[0].error_code}")


def republish(deliveries: list[Delivery]) -> None:
    """Send messages again, unchanged: same kwargs, the queue of their kind, the same task id."""
    from shared.celery_app import get_celery
    from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK

    app = get_celery()
    for delivery in deliveries:
        app.send_task(
            RUN_JOBS_TASK,
            kwargs=delivery.kwargs,
            queue=QUEUE_FOR_KIND[delivery.kwargs["kind"]],
            task_id=delivery.task_id,
        )
