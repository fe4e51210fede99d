"""Jobs of a batch whose pool process died (an OOM kill, a segfault): suspects, kept in Redis.

The worker's main process marks every job of such a batch (mark); the next batches that hold a
suspect run it alone, after the others, each alone committed before the next (worker.batch). A
solo run counts itself before it starts (start_alone) and uncounts itself when it returns
(returned), so crashes() is the number of times the job's process died while it ran alone: from
settings.max_crashes_alone on, the job fails with worker_crash, without being run again.

Keys expire after TTL_S. Redis errors are logged, never raised: without the marks, batches run as
before and settings.max_job_attempts still bounds the redeliveries.
"""

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

SUSPECT_PREFIX = "biofleet:suspect:"
ALONE_PREFIX = "biofleet:alone:"
TTL_S = 24 * 3600


class Suspects:
    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self._client: Any = None

    @property
    def client(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        return self._client

    def mark(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.set(SUSPECT_PREFIX + job_id, 1, ex=TTL_S)
                pipe.execute()
        except Exception as exc:
            log.warning("suspects not marked", extra={"jobs": len(ids), "error": type(exc).__name__})

    def among(self, job_ids: list[str]) -> set[str]:
        """The suspects among job_ids (none when Redis does not answer)."""
        if not job_ids:
            return set()
        try:
            found = self.client.mget([SUSPECT_PREFIX + job_id for job_id in job_ids])
        except Exception as exc:
            log.warning("suspects not read", extra={"jobs": len(job_ids), "error": type(exc).__name__})
            return set()
        return {job_id for job_id, value in zip(job_ids, found) if value is not None}

    def crashes(self, job_id: str) -> int:
        try:
            return int(self.client.get(ALONE_PREFIX + job_id) or 0)
        except Exception as exc:
            log.warning("solo runs not read", extra={"job_id": job_id, "error": type(exc).__name__})
            return 0

    def start_alone(self, job_id: str) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(ALONE_PREFIX + job_id)
                pipe.expire(ALONE_PREFIX + job_id, TTL_S)
                pipe.execute()
        except Exception as exc:
            log.warning("solo run not counted", extra={"job_id": job_id, "error": type(exc).__name__})

    def returned(self, job_id: str, done: bool) -> None:
        """A solo run returned: done (the job is final or unknown) forgets the job; else (handed
        back, Postgres away) it stays a suspect, this run uncounted."""
        try:
            if done:
                self.client.delete(SUSPECT_PREFIX + job_id, ALONE_PREFIX + job_id)
            else:
                self.client.decr(ALONE_PREFIX + job_id)
        except Exception as exc:
            log.warning("suspect not updated", extra={"job_id": job_id, "error": type(exc).__name__})
