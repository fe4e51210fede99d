"""Prometheus metrics of one API process: what it did, never what is in the database or the queues
(job volumes per kind and queue depth come from the workers and from shared.exporter).

ApiMetrics(): a registry with
  biofleet_api_submits_total{kind}              jobs created by this process (counter)
  biofleet_api_auth_rejected_total{code}        requests refused as unauthorized or rate_limited (counter)
  biofleet_api_requests_total{code}             answered requests by HTTP status code (counter)
  biofleet_api_submit_duration_seconds{kind}    seconds to answer a job submission, any status (histogram)
ApiMetrics.submitted(kind), ApiMetrics.rejected(code), ApiMetrics.answered(method, path, status, seconds);
ApiMetrics.render() -> (body bytes, content type).
start_metrics_server(metrics, port, host) -> bool: serve them on host:port (port 0 = off).
start_multiprocess_metrics_server(folder, port, host) -> bool: the same for the sum of several
processes writing to folder (PROMETHEUS_MULTIPROC_DIR, `python -m api --workers N`); render() then
answers the sum too.
"""

import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)

log = logging.getLogger(__name__)


SUBMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def submit_kind(method: str, path: str) -> str | None:
    """The job kind a request submits (enroll, verify, identify), or None for other requests."""
    if method != "POST":
        return None
    if path == "/v1/verifications":
        return "verify"
    if path == "/v1/identifications":
        return "identify"
    if path == "/v1/detections":
        return "detect"
    if path.startswith("/v1/subjects/") and path.endswith("/enrollments"):
        return "enroll"
    return None


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.submits = Counter(
            "biofleet_api_submits", "Jobs created by this API process.", ["kind"], registry=self.registry
        )
        self.rejections = Counter(
            "biofleet_api_auth_rejected",
            "Requests this API process refused as unauthorized or rate_limited.",
            ["code"],
            registry=self.registry,
        )
        self.requests = Counter(
            "biofleet_api_requests",
            "Requests answered by this API process, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.submit_seconds = Histogram(
            "biofleet_api_submit_duration_seconds",
            "Seconds this API process took to answer a job submission (any status).",
            ["kind"],
            buckets=SUBMIT_BUCKETS,
            registry=self.registry,
        )

    def answered(self, method: str, path: str, status: int, seconds: float) -> None:
        self.requests.labels(code=str(status)).inc()
        kind = submit_kind(method, path)
        if kind is not None:
            self.submit_seconds.labels(kind=kind).observe(seconds)

    def submitted(self, kind: str) -> None:
        self.submits.labels(kind=kind).inc()

    def rejected(self, code: str) -> None:
        self.rejections.labels(code=code).inc()

    def render(self) -> tuple[bytes, str]:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return generate_latest(_summed(folder) if folder else self.registry), CONTENT_TYPE_LATEST


def _summed(folder: str) -> CollectorRegistry:
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return registry


def start_multiprocess_metrics_server(folder: str, port: int, host: str) -> bool:
    """Serve the metrics every process writes to folder on host:port; False when off or taken."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host, registry=_summed(folder))
    except OSError as exc:
        log.warning("metrics port unavailable", extra={"port": port, "error": str(exc)})
        return False
    log.info("metrics served", extra={"port": port, "processes": "all"})
    return True


def start_metrics_server(metrics: ApiMetrics, port: int, host: str) -> bool:
    """Serve metrics on host:port in a background thread; False when off or the port is taken."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning("metrics port unavailable", extra={"port": port, "error": str(exc)})
        return False
    log.info("metrics served", extra={"port": port})
    return True
