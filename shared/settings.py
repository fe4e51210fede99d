"""The one settings class. Every value can be set from the environment as BIOFLEET_<NAME>."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    detector: Literal["hog", "cropped"] = "hog"
    detector_upsample: int = Field(1, ge=0, le=2)
    multiple_faces: Literal["reject", "largest"] = "largest"
    max_image_pixels: int = 25_000_000
    match_threshold: float = 0.6  # used until a model version carries a calibrated one
    decode_threads: int = 2

    # API limits.
    max_body_bytes: int = 20 * 1024 * 1024
    max_images_per_enrollment: int = 10
    max_top_k: int = 100
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # Batching worker.
    batch_size: int = Field(32, ge=1)  # celery-batches flush_every
    flush_interval_ms: int = Field(20, ge=1)  # celery-batches flush_interval
    prefetch_batches: int = 2  # messages prefetched = prefetch_batches x batch_size, so the next batch fills
    worker_concurrency: int = 1
    visibility_timeout_s: int = 900
    db_retry_s: float = 60.0  # how long a batch waits for Postgres before handing its jobs back
    max_job_attempts: int = Field(5, ge=1)  # deliveries of one job before it fails (worker crashes)
    fetch_threads: int = Field(8, ge=1)  # parallel blob reads per batch

    # Retention and callbacks.
    probe_retention_s: int = 0  # verify/identify images are deleted once their job is final
    enrollment_retention_days: int = 365  # kept for re-enrollment on a model change
    callback_secret: str = "change-me"
    callback_max_attempts: int = 6
    callback_timeout_s: float = 5.0

    # Flower.
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: str = "biofleet"

    worker_metrics_port: int = 9102  # Prometheus endpoint of the worker; 0 turns it off


@lru_cache
def get_settings() -> Settings:
    return Settings()
