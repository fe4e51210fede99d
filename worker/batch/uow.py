"""The unit of work a batch runs against, and the database retry policy.

BatchUnitOfWork.run(fn) calls fn(repository) in one transaction: committed when fn returns,
rolled back when it raises. An implementation raises TransientDatabaseError (or a SQLAlchemy
connection error) when the database is unreachable; with_db_retry waits for it, up to a budget,
then raises DatabaseUnavailable. worker.batch.sql holds the Postgres implementation;
tests/unit/fake_uow.py one in memory.
"""

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from worker.batch.model import JobRow, Probe, WorkItem

log = logging.getLogger(__name__)

T = TypeVar("T")
JobKey = tuple[uuid.UUID, uuid.UUID]  # (job id, tenant id)
SubjectKey = tuple[uuid.UUID, str]  # (tenant id, subject external id)


class DatabaseUnavailable(RuntimeError):
    """The database did not answer within the retry budget."""


class TransientDatabaseError(RuntimeError):
    """The database is unreachable or restarting: worth waiting for."""


class JobsRepository(Protocol):
    """Jobs, model versions and templates, as a batch reads and writes them."""

    def mark_running(self, jobs: list[JobKey], batch_id: str, model_version: str) -> list[JobRow]:
        """Set running (attempts + 1, batch_id, started_at, model_version unless set) on the jobs
        that are not final; their rows."""
        ...

    def final_among(self, jobs: list[JobKey]) -> set[uuid.UUID]:
        """The ids of these jobs that are already final."""
        ...

    def model_versions(self, architecture: str) -> list[Any]:
        """The model_versions rows of this architecture, by name (worker.versions.VersionRow)."""
        ...

    def threshold(self, model_version: str, default: float) -> float:
        """The version's match threshold, or default when it has no row."""
        ...

    def templates_for(self, model_version: str, subjects: list[SubjectKey]) -> dict[SubjectKey, np.ndarray]:
        """Every template of model_version per subject; subjects without any are absent."""
        ...

    def nearest(self, probes: list[Probe]) -> list[list[dict[str, Any]]]:
        """For each probe, its top_k nearest subjects of its gallery: [{"subject_id", "distance"}],
        nearest first; all probes of a batch in one call."""
        ...

    def write_outcome(self, item: WorkItem, batch_id: str, model_version: str) -> bool:
        """Final status, result and templates of a job not final yet; False when it already was."""
        ...

    def add_callbacks(self, job_ids: list[uuid.UUID]) -> None:
        """Callback outbox rows for these jobs."""
        ...


class BatchUnitOfWork(Protocol):
    def run(self, fn: Callable[[JobsRepository], T]) -> T:
        """fn(repository) in one transaction, committed when it returns."""
        ...


def is_transient(exc: BaseException) -> bool:
    """True for errors of an unreachable or restarting database (worth waiting for)."""
    if isinstance(exc, TransientDatabaseError):
        return True
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], budget_s: float, first_delay_s: float = 0.25) -> T:
    """fn(), retried with exponential backoff while it fails with a transient database error, for
    up to budget_s seconds; then DatabaseUnavailable. Other errors pass through."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            log.warning("database unavailable, retrying", extra={"retry_in_s": round(delay, 2)})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def in_transaction(uow: BatchUnitOfWork, fn: Callable[[JobsRepository], T], budget_s: float) -> T:
    """uow.run(fn), retried while the database is unreachable (with_db_retry)."""
    return with_db_retry(lambda: uow.run(fn), budget_s)
