"""The one settings class. Every value can be set from the environment as BIOFLEET_<NAME>."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.messages import MAX_IMAGES

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BIOFLEET_", extra="ignore")

    # External services. Unset means: the embedded ones started by `biofleet up` (their URLs are
    # then read from the stack file in state_dir).
    redis_url: str | None = None
    database_url: str | None = None
    blob_url: str | None = None  # file:///abs/path or s3://bucket/prefix

    state_dir: Path = ROOT / ".biofleet"
    faces_dir: Path = ROOT.parent / "shared" / "data" / "faces"
    model_cache_dir: Path = Path.home() / ".cache" / "biofleet"
    log_level: str = "INFO"
    log_json: bool = True

    # Face model.
    model_version: str = "dlib-resnet-v1"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "cnn" (dlib's CNN detector ported to PyTorch) on every device: on LFW View 1 it misses no face
    # where HOG misses 14 of 1,549, at equal or better pair accuracy; on 2 CPU cores it takes ~11 ms
    # per 250x250 photo against HOG's 22 ms (upsample 1), and on a GPU it runs batched there.
    # "hog" needs dlib, which the worker image does not install.
    detector: Literal["hog", "cnn", "cropped"] = "cnn"
    detector_upsample: int = Field(1, ge=0, le=2)  # for "hog"
    detector_cnn_upsample: int = Field(0, ge=0, le=2)  # for "cnn" (its window finds faces from ~80 px)
    multiple_faces: Literal["reject", "largest"] = "largest"
    max_image_pixels: int = 25_000_000
    # Phone photos: the detector sees a working copy whose longest side is at most detect_max_side
    # (JPEG decoded at a reduced DCT scale); the chip comes from pixels of the face's own
    # resolution. The smallest face found is then about 80 x longest side / detect_max_side
    # original pixels (never below 80): 323 px in a 4032x3024 photo, 154 px in 1920x1080.
    detect_max_side: int = Field(1000, ge=256, le=8192)
    match_threshold: float = 0.6  # used until a model version carries a calibrated one
    decode_threads: int = 2

    # 1:N search (shared/gallery_index.py, worker/nearest.py). A gallery (one tenant, one model
    # version) with at least ann_min_templates templates gets a partial HNSW index and is searched
    # through it; smaller ones are scanned exactly. Each probe takes max(ann_candidates, 3 x top_k)
    # templates from the index (hnsw.ef_search at least that), re-ranked exactly, one per subject.
    ann_min_templates: int = Field(10_000, ge=1)
    ann_candidates: int = Field(100, ge=1, le=1000)
    ann_ef_search: int = Field(200, ge=1, le=1000)
    ann_m: int = Field(16, ge=2, le=100)  # HNSW graph degree (index build)
    ann_ef_construction: int = Field(64, ge=4, le=1000)
    ann_build_memory: str = "1GB"  # maintenance_work_mem of an index build (the graph must fit)
    ann_build_workers: int = Field(1, ge=0, le=16)  # max_parallel_maintenance_workers of a build
    ann_interval_s: int = 300  # how often a worker builds missing indexes and drops stale ones; 0: off

    # API limits.
    max_body_bytes: int = 20 * 1024 * 1024
    # Images by reference (s3://, file://) are read by the worker: an object larger than this fails
    # its image with image_too_large (uploads are bounded by max_body_bytes).
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_images_per_enrollment: int = MAX_IMAGES
    max_top_k: int = 100
    max_batch_jobs: int = Field(1000, ge=1)  # items of one POST /v1/batches
    # How long the API trusts a looked-up API key: a revoked key works at most this long after.
    key_cache_s: float = Field(5.0, ge=0)
    # API processes of `python -m api` (uvicorn workers); 0: one per CPU core.
    api_workers: int = Field(0, ge=0)
    # Postgres connections per API process (the async pool; overflow the same again).
    api_db_pool: int = Field(16, ge=1)
    max_faces: int = Field(100, ge=1, le=1000)  # max_faces of a request, at most; a detect job's default
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Prometheus endpoints on their own ports, never behind the ingress: the API's (`python -m api`)
    # on metrics_port and the queue depth exporter's (`python -m shared.exporter`) on exporter_port,
    # both on metrics_host; 0 turns one off. metrics_route also serves GET /metrics on api_port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101
    exporter_port: int = 9110
    metrics_route: bool = False

    # Batching worker.
    batch_size: int = Field(32, ge=1)  # celery-batches flush_every
    flush_interval_ms: int = Field(20, ge=1)  # celery-batches flush_interval
    prefetch_batches: int = 2  # messages prefetched = prefetch_batches x batch_size, so the next batch fills
    worker_concurrency: int = 1
    visibility_timeout_s: int = 900
    db_retry_s: float = 60.0  # how long a batch waits for Postgres before handing its jobs back
    max_job_attempts: int = Field(5, ge=1)  # deliveries of one job before it fails (worker crashes)
    # A job whose process died this many times while it ran alone fails with worker_crash.
    max_crashes_alone: int = Field(2, ge=1)
    # Decoded pixels one pipeline pass holds (each image counted from its header: its working copy,
    # at most detect_max_side on the longest side, and its face's chip-scale pixels,
    # FacePipeline.decoded_pixels): a batch over it runs in parts, a job's images never split.
    batch_pixel_budget: int = Field(32_000_000, ge=1)
    fetch_threads: int = Field(8, ge=1)  # parallel blob reads per batch
    # Tests only, empty (off) in service: a pool process SIGKILLs itself, as an OOM kill would, on
    # an image whose bytes contain this marker.
    crash_marker: str = ""

    # Retention and callbacks.
    probe_retention_s: int = 0  # verify/identify images are deleted once their job is final
    enrollment_retention_days: int = 365  # kept for re-enrollment on a model change
    # Callbacks: sent from the outbox by the callback dispatcher (`python -m worker --callbacks`),
    # signed with each tenant's own secret (Standard Webhooks).
    callback_max_attempts: int = Field(6, ge=1)
    callback_deadline_s: float = Field(10.0, gt=0)  # the whole request: connect, TLS, send, receive
    callback_max_response_bytes: int = Field(4096, ge=1)  # of a receiver's answer, read at most
    callback_concurrency: int = Field(32, ge=1)  # posts in flight per dispatcher process
    callback_tenant_concurrency: int = Field(4, ge=1)  # posts in flight per tenant, across dispatchers
    callback_poll_interval_s: float = Field(0.5, gt=0)  # how often the dispatcher looks for due rows
    callback_secret_grace_s: int = Field(86400, ge=0)  # a rotated-out secret keeps signing this long
    # Callback hosts resolving to addresses that are not globally routable are refused unless
    # inside one of these comma-separated networks (e.g. "127.0.0.0/8,10.1.0.0/16").
    callback_allowed_networks: str = ""
    retention_interval_s: int = 3600  # how often a worker runs retention; 0 turns it off

    # Sweeper: queued jobs older than sweep_after_s (a row written, its message lost) are published
    # again, at most once per sweep_after_s each; one worker of the fleet sweeps at a time.
    sweep_after_s: int = Field(600, ge=1)
    sweep_interval_s: int = 30  # 0 turns the sweeper off
    sweep_limit: int = Field(500, ge=1)  # jobs re-published per sweep, at most

    # Per-API-key rate limit: at most rate_limit_requests per rate_limit_window_s; 0 turns it off.
    rate_limit_requests: int = Field(1000, ge=0)
    rate_limit_window_s: int = Field(10, ge=1)
    # Per client address: after auth_failure_limit requests with a missing, unknown or revoked key in
    # auth_failure_window_s, 429 before any key lookup until the window ends; 0 turns it off.
    auth_failure_limit: int = Field(30, ge=0)
    auth_failure_window_s: int = Field(60, ge=1)
    # Addresses whose X-Forwarded-For is trusted for the client address (uvicorn's
    # forwarded_allow_ips): the load balancer's, or "*" when only it can reach the API.
    forwarded_allow_ips: str = "127.0.0.1"

    # Flower.
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: str = "biofleet"

    # Prometheus endpoint of the worker: pool process i serves worker_metrics_port + i; 0 turns it off.
    worker_metrics_port: int = 9102
    callbacks_metrics_port: int = 9120  # the callback dispatcher's; 0 turns it off


@lru_cache
def get_settings() -> Settings:
    return Settings()
