"""Client: the synchronous client, one method per API operation, plus wait(), wait_all(),
submit_many() and the paginators iter_jobs(), iter_subjects(), iter_batch_jobs()."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

import httpx

from biofleet_client import _core
from biofleet_client._core import Backoff, Call, Image, SubmitOptions, Submitted
from biofleet_client.errors import BiofleetError, WaitTimeout
from biofleet_client.models import (
    AnyJob,
    Batch,
    BatchAccepted,
    BatchItem,
    BatchRequest,
    DetectionRequest,
    EnrollmentRequest,
    Health,
    IdentificationRequest,
    JobPage,
    Readiness,
    Subject,
    SubjectPage,
    VerificationRequest,
)

DEFAULT_TIMEOUT_S = 30.0


class Client:
    """Client(base_url, api_key, timeout=30.0, http=None): `http` may be any httpx.Client (its
    base_url is then used as is)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        http: httpx.Client | None = None,
    ) -> None:
        self._own = http is None
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _send(self, call: Call) -> Any:
        response = self.http.request(
            call.method, call.url, params=call.params, json=call.json, headers={**self._auth, **call.headers}
        )
        return _core.parse(call, response)

    # --- jobs ----------------------------------------------------------------------------------

    def create_enrollment(
        self,
        subject_id: str,
        images: Sequence[Image],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AnyJob:
        """Queue an enroll job for 1 or more images of subject_id."""
        body = _core.submit_body(EnrollmentRequest, {"images": [_core.encode_image(i) for i in images]}, options)
        return self._send(_core.build("create_enrollment", {"subject_id": subject_id}, None, body, idempotency_key))

    def create_verification(
        self, subject_id: str, image: Image, *, idempotency_key: str | None = None, **options: Unpack[SubmitOptions]
    ) -> AnyJob:
        """Queue a verify job: image against the enrolled subject_id."""
        fields = {"subject_id": subject_id, "image": _core.encode_image(image)}
        body = _core.submit_body(VerificationRequest, fields, options)
        return self._send(_core.build("create_verification", None, None, body, idempotency_key))

    def create_identification(
        self,
        image: Image,
        *,
        top_k: int | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AnyJob:
        """Queue an identify job: the nearest enrolled subjects to the face in image."""
        fields = {"image": _core.encode_image(image), "top_k": top_k}
        body = _core.submit_body(IdentificationRequest, fields, options)
        return self._send(_core.build("create_identification", None, None, body, idempotency_key))

    def create_detection(
        self, image: Image, *, idempotency_key: str | None = None, **options: Unpack[SubmitOptions]
    ) -> AnyJob:
        """Queue a detect job: the faces found in image."""
        body = _core.submit_body(DetectionRequest, {"image": _core.encode_image(image)}, options)
        return self._send(_core.build("create_detection", None, None, body, idempotency_key))

    def get_job(self, job_id: str) -> AnyJob:
        return self._send(_core.build("get_job", {"job_id": job_id}))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        subject_id: str | None = None,
        created_after: datetime | str | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; page.next_cursor asks for the next."""
        params: dict[str, Any] = {"status": status, "kind": kind, "subject_id": subject_id}
        params |= {"created_after": created_after, "ids": ids, "limit": limit, "cursor": cursor}
        return self._send(_core.build("list_jobs", None, params))

    def iter_jobs(self, **filters: Any) -> Iterator[AnyJob]:
        """Every job matching the filters of list_jobs(), page after page."""
        cursor = None
        while True:
            page = self.list_jobs(**filters, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait(self, job_id: str, timeout: float = 300.0, raise_on_failure: bool = True) -> AnyJob:
        """Poll the job until it is final, with backoff; 429 and 503 answers are retried after their
        Retry-After. A failed job raises its error class (e.g. NoFace) unless raise_on_failure is
        False; WaitTimeout when the job is not final within timeout seconds."""
        backoff = Backoff(timeout)
        while True:
            retry_after = None
            try:
                job = self.get_job(job_id)
                if job.final:
                    return _core.checked(job, raise_on_failure)
            except BiofleetError as exc:
                if not _core.retryable(exc):
                    raise
                retry_after = exc.retry_after
            except httpx.TransportError:
                pass  # the API restarting: keep polling until the deadline
            if backoff.expired():
                raise WaitTimeout("wait_timeout", f"job {job_id} not final within {timeout:g} s")
            time.sleep(backoff.delay(retry_after))

    def wait_all(self, job_ids: Iterable[str], timeout: float = 300.0) -> dict[str, AnyJob]:
        """{job_id: final job} for every job (failed ones included), within one timeout."""
        deadline = time.monotonic() + timeout
        return {
            job_id: self.wait(job_id, max(0.0, deadline - time.monotonic()), raise_on_failure=False)
            for job_id in job_ids
        }

    # --- batches -------------------------------------------------------------------------------

    def create_batch(
        self, jobs: Sequence[BatchItem | Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> BatchAccepted:
        """Queue up to 1000 jobs of any kinds in one request; one answer item per job, in order."""
        body = BatchRequest(jobs=[_core.batch_item(item) for item in jobs])
        return self._send(_core.build("create_batch", None, None, body, idempotency_key))

    def submit_many(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        *,
        chunk_size: int = 1000,
        idempotency_key: str | None = None,
    ) -> list[Submitted]:
        """Submit any number of jobs as batches of chunk_size; one Submitted per item, in order.
        With idempotency_key, chunk n is sent with "<key>:<n>" (a retry replays every chunk)."""
        encoded = [_core.batch_item(item) for item in items]
        out: list[Submitted] = []
        for number, chunk in enumerate(_core.chunks(encoded, chunk_size)):
            key = f"{idempotency_key}:{number}" if idempotency_key is not None else None
            out.extend(_core.submitted(self.create_batch(chunk, idempotency_key=key), len(out)))
        return out

    def get_batch(self, batch_id: str, *, limit: int | None = None, cursor: str | None = None) -> Batch:
        return self._send(_core.build("get_batch", {"batch_id": batch_id}, {"limit": limit, "cursor": cursor}))

    def iter_batch_jobs(self, batch_id: str, *, limit: int | None = None) -> Iterator[AnyJob]:
        cursor = None
        while True:
            page = self.get_batch(batch_id, limit=limit, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # --- subjects and operations ---------------------------------------------------------------

    def get_subject(self, subject_id: str) -> Subject:
        return self._send(_core.build("get_subject", {"subject_id": subject_id}))

    def delete_subject(self, subject_id: str) -> None:
        """Erase the subject, its templates and its images."""
        self._send(_core.build("delete_subject", {"subject_id": subject_id}))

    def list_subjects(self, *, limit: int | None = None, cursor: str | None = None) -> SubjectPage:
        return self._send(_core.build("list_subjects", None, {"limit": limit, "cursor": cursor}))

    def iter_subjects(self, *, limit: int | None = None) -> Iterator[Subject]:
        cursor = None
        while True:
            page = self.list_subjects(limit=limit, cursor=cursor)
            yield from page.subjects
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def healthz(self) -> Health:
        return self._send(_core.build("healthz"))

    def readyz(self) -> Readiness:
        return self._send(_core.build("readyz"))
