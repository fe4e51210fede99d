"""The worker's Celery app: get_celery() with the tasks registered.

Each pool process, when it starts (worker_process_init), loads the face pipeline once, warms it
up with one forward pass, makes sure its model version row exists, and serves its metrics; only
then does it take batches. The main process runs worker.sweeper's Housekeeper (stranded jobs
published again, retention). get_runtime() -> the process's batch.Runtime (loaded on first use in
processes that skip the signal, such as a solo pool).
"""

import io
import logging

from celery import signals
from sqlalchemy.dialects.postgresql import insert

from shared.celery_app import get_celery
from shared.db.models import ModelVersion
from shared.logs import configure_logging
from shared.settings import Settings, get_settings
from worker import tasks
from worker.batch import Runtime, with_db_retry

log = logging.getLogger(__name__)
app = get_celery()

ARCHITECTURE = "dlib-resnet-29"
PREPROCESSING = {"chip_size": 150, "chip_padding": 0.25, "landmarks": 5, "descriptor": 128}

_runtime: Runtime | None = None
_housekeeper = None  # worker.sweeper.Housekeeper of the main process


@signals.setup_logging.connect
def _setup_logging(**_) -> None:
    """Structured logs instead of Celery's own format, in the main and the pool processes."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)


@signals.worker_process_init.connect
def _init_pool_process(**_) -> None:
    from celery.utils.log import current_process_index

    from shared.db.session import dispose_engines
    from worker.metrics import start_metrics_server

    dispose_engines()  # never share the parent's database connections
    get_runtime()
    settings = get_settings()
    if settings.worker_metrics_port:
        start_metrics_server(settings.worker_metrics_port + (current_process_index(base=0) or 0))


@signals.worker_ready.connect
def _start_housekeeping(**_) -> None:
    """The sweeper and retention thread, in the main process (worker.sweeper)."""
    global _housekeeper
    from worker.sweeper import Housekeeper

    _housekeeper = Housekeeper(get_settings())
    _housekeeper.start()


@signals.worker_shutting_down.connect
def _stop_housekeeping(**_) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


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
    from worker.metrics import TimedEmbedder

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
    from worker.suspects import Suspects
    from worker.variants import MultiEmbedder, VersionBook

    pipeline.embedder = TimedEmbedder(MultiEmbedder(pipeline.embedder))  # every version of this network
    warm_up(pipeline)
    sha = pipeline.embedder.weights_sha256
    with_db_retry(lambda: ensure_model_version(urls.database_url, settings, sha), settings.db_retry_s)
    from worker.metrics import set_worker_info

    set_worker_info(settings.model_version, str(pipeline.embedder.device))
    log.info(
        "face pipeline ready",
        extra={"model_version": settings.model_version, "device": str(pipeline.embedder.device),
               "weights_sha256": sha},
    )  # fmt: skip
    return Runtime(
        pipeline=pipeline,
        blobs=open_blob_store(urls.blob_url),
        database_url=urls.database_url,
        model_version=settings.model_version,
        settings=settings,
        republish=tasks.republish,
        versions=VersionBook(ARCHITECTURE, sha, settings.model_version, settings.match_threshold),
        suspects=Suspects(urls.redis_url),
    )


def warm_up(pipeline) -> None:
    """One pass through decode, detection and the network on two blank images."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (150, 150), (128, 128, 128)).save(buffer, format="PNG")
    blank = buffer.getvalue()
    results = pipeline.process([blank, blank], [True, False])
    if not results[0].ok:
        raise RuntimeError(f"warm-up forward pass failed: {results[0].error_code}")


def ensure_model_version(database_url: str, settings: Settings, weights_sha256: str) -> None:
    """Insert this worker's model version (do nothing if it exists): active when no version of this
    network is active yet, else a candidate. Refuse to run when the existing row names other
    weights, since templates would then mix two networks."""
    from sqlalchemy import select

    from shared.db.session import session_scope
    from worker.variants import PRESETS

    with session_scope(database_url) as session:
        has_active = session.execute(
            select(ModelVersion.name).where(ModelVersion.architecture == ARCHITECTURE, ModelVersion.status == "active")
        ).first()
        session.execute(
            insert(ModelVersion)
            .values(
                name=settings.model_version,
                architecture=ARCHITECTURE,
                weights_sha256=weights_sha256,
                preprocessing=PRESETS.get(settings.model_version, PREPROCESSING),
                threshold=settings.match_threshold,
                status="candidate" if has_active else "active",
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = session.get(ModelVersion, settings.model_version)
        if stored.weights_sha256 != weights_sha256:
            raise RuntimeError(
                f"model version {settings.model_version!r} is registered with weights {stored.weights_sha256}, "
                f"but this worker loaded {weights_sha256}: set BIOFLEET_MODEL_VERSION to a new name"
            )
