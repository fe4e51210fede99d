"""Single submits written in groups: one INSERT and one Redis pipeline for the jobs that arrived together.

GroupSubmitter(blobs, celery, database_url).submit(tenant_id, request, settings) -> awaitable of the
job's JSON, or raises what submit_job would (SubmitError, a database error). One thread per
submitter takes every request waiting when it is free: under load the requests that arrived
while it wrote the last group form the next one (group commit); an idle API writes each job
alone, with no added wait. A job without an Idempotency-Key goes this way; keyed ones go through
shared.jobs.submit_job, which settles races on the key.

Per group: validation and the tenant's uri prefixes per request (a bad request fails alone), the
images written, the rows inserted in one statement, the messages published in one pipeline. A
database or storage failure fails the whole group; when the broker does not take the messages, the
jobs still queued are removed with their images (QueueUnavailable), and a job a worker already
took is kept and answered.
"""

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.blob import delete_all
from shared.db.models import Job
from shared.db.session import session_scope
from shared.image_refs import tenant_prefixes
from shared.job_rows import as_job, insert_rows, new_row, unpublish
from shared.jobs import (
    PUBLISH_RETRY,
    JobRequest,
    QueueUnavailable,
    SubmitError,
    check_against,
    has_references,
    image_keys,
    job_json,
    message_for,
    store_all,
    stored_images,
    validate,
)
from shared.publish import publish_all
from shared.settings import Settings

log = logging.getLogger(__name__)
MAX_GROUP = 200  # jobs per group


@dataclass
class _Pending:
    tenant_id: uuid.UUID
    request: JobRequest
    settings: Settings
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        def done() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the caller's event loop is closed: nobody waits for the answer
            log.warning("a submit's caller went away", extra={"tenant_id": str(self.tenant_id)})


class GroupSubmitter:
    def __init__(self, blobs: Any, celery: Any, database_url: str):
        self.blobs, self.celery, self.database_url = blobs, celery, database_url
        self._waiting: list[_Pending] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="group-submit", daemon=True)
        self._thread.start()

    def submit(self, tenant_id: uuid.UUID, request: JobRequest, settings: Settings) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        pending = _Pending(tenant_id, request, settings, loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise RuntimeError("the submitter is closed")
            self._waiting.append(pending)
        self._wake.set()
        return pending.future

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the groups waiting, then stop the thread."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                if not self._waiting and not self._closed:
                    self._wake.clear()
                closing = self._closed and not group
            if closing:
                return
            if group:
                try:
                    self._write(group)
                except BaseException as exc:  # the whole group fails; the thread goes on
                    for pending in group:
                        pending.settle(error=exc)

    def _write(self, group: list[_Pending]) -> None:
        group = self._checked(group)
        if not group:
            return
        now = datetime.now(UTC)
        rows, stored = [], []
        for pending in group:
            job_id = uuid.uuid4()
            keys = image_keys(pending.tenant_id, job_id, pending.request)
            rows.append(new_row(pending.tenant_id, pending.request, job_id, keys, now))
            stored.append(stored_images(keys, pending.request))
        store_all(self.blobs, [pair for pairs in stored for pair in pairs])
        try:
            with session_scope(self.database_url) as session:
                insert_rows(session, rows)
        except BaseException:
            delete_all(self.blobs, [key for pairs in stored for key, _ in pairs])
            raise
        jobs = [as_job(row) for row in rows]
        try:
            publish_all(
                self.celery,
                [message_for(job) for job in jobs],
                retries=int(PUBLISH_RETRY["max_retries"]),
                retry_wait_s=PUBLISH_RETRY["interval_step"],
            )
        except Exception as exc:
            self._unpublish(group, jobs, stored, exc)
            return
        for pending, job in zip(group, jobs, strict=True):
            log.info(
                "job queued",
                extra={
                    "job_id": str(job.id),
                    "tenant_id": str(pending.tenant_id),
                    "kind": job.kind,
                    "images": len(job.blob_keys),
                },
            )
            pending.settle(job_json(job))

    def _checked(self, group: list[_Pending]) -> list[_Pending]:
        """The requests that pass validation; the others are answered with their error."""
        prefixes: dict[uuid.UUID, list[str]] = {}
        kept = []
        for pending in group:
            try:
                validate(pending.request, pending.settings)
                if has_references(pending.request):
                    if pending.tenant_id not in prefixes:
                        with session_scope(self.database_url) as session:
                            prefixes[pending.tenant_id] = tenant_prefixes(session, pending.tenant_id)
                    check_against(pending.request, prefixes[pending.tenant_id])
            except SubmitError as exc:
                pending.settle(error=exc)
                continue
            kept.append(pending)
        return kept

    def _unpublish(
        self, group: list[_Pending], jobs: list[Job], stored: list[list[tuple[str, bytes]]], exc: Exception
    ) -> None:
        with session_scope(self.database_url) as session:
            removed = unpublish(session, [job.id for job in jobs])
        log.warning("publish failed; jobs removed", extra={"jobs": len(removed), "error": type(exc).__name__})
        for pending, job, pairs in zip(group, jobs, stored, strict=True):
            if job.id in removed:
                delete_all(self.blobs, [key for key, _ in pairs])
                pending.settle(error=QueueUnavailable())
            else:  # a worker has it: the message got through although the broker's answer did not
                log.warning("publish reported a failure but the job runs", extra={"job_id": str(job.id)})
                pending.settle(job_json(job))
