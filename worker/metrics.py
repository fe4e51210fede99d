"""Prometheus metrics of the batching worker.

start_metrics_server(port) -> bool: serve /metrics on port (0 = off); False when it cannot bind.
observe_batch(size), stage(name) (a context manager timing one stage), job_finished(kind, status,
latency_s, code), busy(seconds) (time spent running batches: utilisation is its rate),
set_worker_info(model_version, device) (biofleet_worker_info, 1 per ready pool process).
Stages: fetch, detect (decode + detect + align), embed, compare, commit.
Each pool process serves its own registry on worker_metrics_port + its pool index (worker.app).
TimedEmbedder(embedder) wraps an embedder and keeps the seconds of its last embed call.
take_stage_totals() -> {stage: seconds} observed in this process since the last call (the "batch
finished" log line carries them, with search: identify's nearest-neighbour step within compare).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

STAGES = ("fetch", "detect", "embed", "compare", "commit")

BATCH_SIZE = Histogram(
    "biofleet_batch_size",
    "Jobs per batch handed to the worker by celery-batches.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STAGE_SECONDS = Histogram(
    "biofleet_batch_stage_seconds",
    "Seconds one batch spent in a stage (fetch, detect = decode+detect+align, embed, compare, commit).",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_FINISHED = Counter(
    "biofleet_jobs_finished_total",
    "Jobs made final by this worker, by kind, status and error code (none when succeeded).",
    ["kind", "status", "code"],
)
JOB_LATENCY = Histogram(
    "biofleet_job_latency_seconds",
    "Seconds from submission to the final status, per job.",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BUSY_SECONDS = Counter(
    "biofleet_worker_busy_seconds",
    "Seconds this pool process spent running batches (its rate is the process's utilisation).",
)
WORKER_INFO = Gauge(
    "biofleet_worker_info",
    "1 for a pool process whose model is loaded, labelled with its model version and device.",
    ["model_version", "device"],
)


def start_metrics_server(port: int) -> bool:
    """Serve the metrics on 0.0.0.0:port in a background thread; port 0 turns it off."""
    if not port:
        return False
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics port unavailable", extra={"port": port, "error": str(exc)})
        return False
    log.info("metrics served", extra={"port": port})
    return True


def set_worker_info(model_version: str, device: str) -> None:
    WORKER_INFO.clear()
    WORKER_INFO.labels(model_version=model_version, device=device).set(1)


def busy(seconds: float) -> None:
    if seconds > 0:
        BUSY_SECONDS.inc(seconds)


def observe_batch(size: int) -> None:
    BATCH_SIZE.observe(size)


_totals: dict[str, float] = {}


def observe_stage(name: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage=name).observe(seconds)
    add_stage_time(name, seconds)


def add_stage_time(name: str, seconds: float) -> None:
    """Count seconds towards this process's stage totals only (no histogram)."""
    _totals[name] = _totals.get(name, 0.0) + seconds


def take_stage_totals() -> dict[str, float]:
    """The stage totals since the last call, rounded to the millisecond; resets them."""
    totals = {name: round(seconds, 3) for name, seconds in _totals.items()}
    _totals.clear()
    return totals


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as one observation of stage `name` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(name, time.perf_counter() - start)


def job_finished(kind: str, status: str, latency_s: float | None = None, code: str | None = None) -> None:
    JOBS_FINISHED.labels(kind=kind, status=status, code=code or "none").inc()
    if latency_s is not None and latency_s >= 0:
        JOB_LATENCY.labels(kind=kind).observe(latency_s)


class TimedEmbedder:
    """An embedder that adds the seconds of each embed() call to last_s (the caller zeroes it);
    other attributes (weights_sha256, device, ...) are the wrapped embedder's."""

    def __init__(self, inner):
        self.inner = inner
        self.last_s = 0.0

    def embed(self, chips):
        start = time.perf_counter()
        try:
            return self.inner.embed(chips)
        finally:
            self.last_s += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.inner, name)
