"""Prometheus metrics of the API, read at scrape time so that every API process reports the same.

ApiMetrics(backends): a registry with
  biofleet_jobs{kind,status}                 jobs in Postgres (gauge)
  biofleet_job_end_to_end_seconds{kind}      finished_at - submitted_at of final jobs (histogram)
  biofleet_queue_depth{queue}                waiting + reserved messages (shared/queue_depth.py)
  biofleet_metrics_source_up{source}         1 when postgres / redis answered this scrape
  biofleet_api_submits_total{kind}           jobs created by this process (counter)
ApiMetrics.submitted(kind); ApiMetrics.render() -> (body bytes, content type).
"""

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.db.models import FINAL_STATUSES, JOB_STATUSES, Job
from shared.db.session import session_scope
from shared.queue_depth import queue_depths
from shared.queues import JOB_QUEUES, QUEUE_FOR_KIND

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
KINDS = tuple(QUEUE_FOR_KIND)


def job_counts(session) -> dict[tuple[str, str], int]:
    """(kind, status) -> number of jobs."""
    rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
    return {(kind, status): count for kind, status, count in rows}


def latency_histograms(session) -> dict[str, tuple[list[int], int, float]]:
    """kind -> (cumulative counts per LATENCY_BUCKETS, total count, sum of seconds), final jobs only."""
    seconds = func.extract("epoch", Job.finished_at - Job.submitted_at)
    columns = [func.count().filter(seconds <= bound) for bound in LATENCY_BUCKETS]
    rows = session.execute(
        select(Job.kind, func.count(), func.coalesce(func.sum(seconds), 0), *columns)
        .where(Job.status.in_(FINAL_STATUSES), Job.finished_at.is_not(None))
        .group_by(Job.kind)
    )
    return {row[0]: (list(row[3:]), row[1], float(row[2])) for row in rows}


class StoreCollector(Collector):
    """Job counts, latency and queue depth, read from Postgres and Redis on each scrape."""

    def __init__(self, backends):
        self.backends = backends

    def collect(self):
        up = GaugeMetricFamily("biofleet_metrics_source_up", "1 when the source answered this scrape.",
                               labels=["source"])  # fmt: skip
        try:
            yield from self._from_postgres()
            up.add_metric(["postgres"], 1)
        except Exception as exc:
            log.warning("metrics: postgres unavailable", extra={"error": type(exc).__name__})
            up.add_metric(["postgres"], 0)
        try:
            yield self._queue_depth()
            up.add_metric(["redis"], 1)
        except Exception as exc:
            log.warning("metrics: redis unavailable", extra={"error": type(exc).__name__})
            up.add_metric(["redis"], 0)
        yield up

    def _from_postgres(self):
        with session_scope(self.backends.urls.database_url) as session:
            counts = job_counts(session)
            histograms = latency_histograms(session)
        jobs = GaugeMetricFamily("biofleet_jobs", "Jobs by kind and status.", labels=["kind", "status"])
        for kind in sorted(set(KINDS) | {k for k, _ in counts}):
            for status in JOB_STATUSES:
                jobs.add_metric([kind, status], counts.get((kind, status), 0))
        latency = HistogramMetricFamily(
            "biofleet_job_end_to_end_seconds",
            "Seconds from submission to the final status, of every final job.",
            labels=["kind"],
        )
        for kind, (cumulative, total, total_s) in sorted(histograms.items()):
            buckets = [(str(bound), n) for bound, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
            latency.add_metric([kind], buckets + [("+Inf", total)], total_s)
        return [jobs, latency]

    def _queue_depth(self) -> GaugeMetricFamily:
        depths = queue_depths(self.backends.redis, JOB_QUEUES)
        gauge = GaugeMetricFamily("biofleet_queue_depth", "Messages waiting or reserved, per queue.",
                                  labels=["queue"])  # fmt: skip
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        return gauge


class ApiMetrics:
    def __init__(self, backends):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(backends))
        self.submits = Counter(
            "biofleet_api_submits", "Jobs created by this API process.", ["kind"], registry=self.registry
        )

    def submitted(self, kind: str) -> None:
        self.submits.labels(kind=kind).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
