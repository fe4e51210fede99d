"""One batch of job messages as one unit of work, testable without Celery or a database.

run_batch(deliveries, runtime, uow) -> BatchReport (worker.batch.run). The parts:
  model    the records: Delivery, Runtime, WorkItem, Outcome, BatchReport
  uow      the BatchUnitOfWork and JobsRepository interfaces, the database retry policy
  sql      their Postgres implementation
  embed    fetch the images, one pipeline pass per set of versions
  decide   pure decisions: enroll, verify, identify outcomes from faces and templates
  effects  after the commit: image deletes, counts, logs
"""

from worker.batch.decide import enroll_outcome
from worker.batch.embed import pixel_parts
from worker.batch.model import BatchReport, Delivery, Outcome, Runtime, WorkItem
from worker.batch.run import parse, run_batch
from worker.batch.uow import (
    BatchUnitOfWork,
    DatabaseUnavailable,
    JobsRepository,
    TransientDatabaseError,
    is_transient,
    with_db_retry,
)

__all__ = [
    "BatchReport",
    "BatchUnitOfWork",
    "DatabaseUnavailable",
    "Delivery",
    "JobsRepository",
    "Outcome",
    "Runtime",
    "TransientDatabaseError",
    "WorkItem",
    "enroll_outcome",
    "is_transient",
    "parse",
    "pixel_parts",
    "run_batch",
    "with_db_retry",
]
