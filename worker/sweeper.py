"""Housekeeping in the worker's main process: the sweeper and the periodic retention run.

sweep(database_url, redis, celery, settings) -> ids of the jobs published again.
  Jobs still `queued` sweep_after_s after submission (the row was written, its message lost), and
  jobs `running` for longer than visibility_timeout_s + sweep_after_s (their message lost with a
  worker), are published again, each at most once per sweep_after_s (a Redis marker), unless
  their queue holds as many messages as there are unfinished jobs of their kind (a deep backlog,
  nothing lost). A job published twice is still applied once: writes are idempotent by job id.
Housekeeper(settings): a daemon thread; every sweep_interval_s it sweeps, and every
  retention_interval_s it runs shared.retention, each only when it holds that task's Redis lock,
  so one worker of the fleet does it; every ann_interval_s it builds missing gallery indexes
  (shared.gallery_index, under a Postgres advisory lock). start() / stop().
"""

import logging
import threading
import time
import uuid
from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select

from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobs import message_for, publish
from shared.queue_depth import queue_depths
from shared.queues import QUEUE_FOR_KIND
from shared.settings import Settings

log = logging.getLogger(__name__)

SWEEP_LOCK = "biofleet:lock:sweep"
RETENTION_LOCK = "biofleet:lock:retention"
SWEPT_PREFIX = "biofleet:swept:"


def stranded_jobs(session, settings: Settings, limit: int) -> list[Job]:
    """Queued jobs older than sweep_after_s, and running jobs started longer ago than
    visibility_timeout_s + sweep_after_s; oldest first."""
    queued_before = func.now() - timedelta(seconds=settings.sweep_after_s)
    running_before = func.now() - timedelta(seconds=settings.visibility_timeout_s + settings.sweep_after_s)
    return list(
        session.scalars(
            select(Job)
            .where(
                or_(
                    and_(Job.status == "queued", Job.submitted_at < queued_before),
                    and_(Job.status == "running", Job.started_at < running_before),
                )
            )
            .order_by(Job.submitted_at)
            .limit(limit)
        )
    )


def covered_kinds(session, redis) -> set[str]:
    """Kinds whose queue holds (waiting + reserved) at least as many messages as there are
    unfinished jobs of that kind: every such job may still have its message, so none is swept."""
    depths = queue_depths(redis)
    rows = session.execute(
        select(Job.kind, func.count()).where(Job.status.in_(("queued", "running"))).group_by(Job.kind)
    ).all()
    unfinished = {kind: count for kind, count in rows}
    return {kind for kind, queue in QUEUE_FOR_KIND.items() if depths.get(queue, 0) >= unfinished.get(kind, 0)}


def sweep(database_url: str, redis, celery, settings: Settings) -> list[str]:
    """Publish stranded jobs again; see the module docstring."""
    with session_scope(database_url) as session:
        jobs = stranded_jobs(session, settings, settings.sweep_limit)
        if jobs:
            covered = covered_kinds(session, redis)
            jobs = [job for job in jobs if job.kind not in covered]
        messages = []
        for job in jobs:
            try:
                messages.append(message_for(job))
            except ValidationError as exc:  # a row no message can carry: the others still go
                log.error(
                    "stranded job cannot be published",
                    extra={"job_id": str(job.id), "fields": [str(e["loc"][0]) for e in exc.errors() if e["loc"]]},
                )
    sent = []
    for message in messages:
        if not redis.set(SWEPT_PREFIX + message.job_id, 1, nx=True, ex=settings.sweep_after_s):
            continue
        publish(celery, message)
        sent.append(message.job_id)
    if sent:
        log.warning("stranded jobs published again", extra={"jobs": len(sent), "job_ids": sent[:20]})
    return sent


def take_lock(redis, name: str, ttl_s: int) -> bool:
    """True when this process got the lock `name` for ttl_s seconds (it is never released early,
    so the task runs at most once per ttl_s across the fleet)."""
    return bool(redis.set(name, uuid.uuid4().hex, nx=True, ex=max(1, int(ttl_s))))


class Housekeeper:
    """The sweeper and retention thread of one worker main process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)
        self._indexer: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.sweep_interval_s or self.settings.retention_interval_s or self.settings.ann_interval_s:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _indexing(self) -> bool:
        return self._indexer is not None and self._indexer.is_alive()

    def _maintain_indexes(self, database_url: str) -> None:
        from shared.gallery_index import maintain_indexes

        try:
            report = maintain_indexes(database_url, self.settings)
            if report and (report["built"] or report["dropped"]):
                log.info(
                    "gallery indexes maintained",
                    extra={"built": len(report["built"]), "dropped": len(report["dropped"])},
                )
        except Exception as exc:  # Postgres away: try again next time
            log.warning("gallery index maintenance failed", extra={"error": type(exc).__name__})

    def _run(self) -> None:
        import redis as redis_lib

        from shared.blob import open_blob_store
        from shared.celery_app import get_celery
        from shared.retention import run_retention
        from shared.services import resolve

        settings = self.settings
        urls = resolve(settings)
        client = redis_lib.Redis.from_url(urls.redis_url, socket_connect_timeout=5, socket_timeout=5)
        next_sweep = next_retention = next_index = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            try:
                if settings.sweep_interval_s and now >= next_sweep:
                    next_sweep = now + settings.sweep_interval_s
                    if take_lock(client, SWEEP_LOCK, settings.sweep_interval_s):
                        sweep(urls.database_url, client, get_celery(), settings)
                if settings.retention_interval_s and now >= next_retention:
                    next_retention = now + settings.retention_interval_s
                    if take_lock(client, RETENTION_LOCK, settings.retention_interval_s):
                        run_retention(urls.database_url, open_blob_store(urls.blob_url), settings)
                if settings.ann_interval_s and now >= next_index and not self._indexing():
                    next_index = now + settings.ann_interval_s
                    self._indexer = threading.Thread(
                        target=self._maintain_indexes, args=(urls.database_url,), name="gallery-index", daemon=True
                    )
                    self._indexer.start()  # a build may take minutes: sweeps go on meanwhile
            except Exception as exc:  # Redis or Postgres away: try again next time
                log.warning("housekeeping failed", extra={"error": type(exc).__name__})
        client.close()
