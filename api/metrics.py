"""Prometheus metrics of one API process: what it did, never what is in the database or the queues
(job volumes per kind and queue depth come from the workers and from shared.exporter).

ApiMetrics(): a registry with
  biofleet_api_submits_total{kind}         jobs created by this process (counter)
  biofleet_api_auth_rejected_total{code}   requests refused as unauthorized or rate_limited (counter)
ApiMetrics.submitted(kind), ApiMetrics.rejected(code); ApiMetrics.render() -> (body bytes, content type).
start_metrics_server(metrics, port, host) -> bool: serve them on host:port (port 0 = off).
"""

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest, start_http_server

log = logging.getLogger(__name__)


class ApiMetrics:
    def __init__(self):
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

    def submitted(self, kind: str) -> None:
        self.submits.labels(kind=kind).inc()

    def rejected(self, code: str) -> None:
        self.rejections.labels(code=code).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
