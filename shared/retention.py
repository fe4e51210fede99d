"""Retention: stored images older than their retention period are deleted.

run_retention(database_url, blobs, settings, now=None) -> RetentionReport.
  Enrollment images (kinds enroll, reenroll) are kept settings.enrollment_retention_days days,
  for re-enrollment on a model change; probe images (verify, identify) settings.probe_retention_s
  seconds (0: deleted when the job is final; this also removes any the worker failed to delete).
  Only final jobs are touched. Their blob keys are cleared and templates forget the image key;
  templates themselves and job results (which hold no image data) stay. An image by reference
  (s3://, file://) is the customer's object: it is never deleted, only forgotten like a key.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select, update

from shared.db.models import FINAL_STATUSES, Job, Template
from shared.db.session import session_scope
from shared.image_refs import is_reference
from shared.settings import Settings

log = logging.getLogger(__name__)

ENROLL_KINDS = ("enroll", "reenroll")
PROBE_KINDS = ("verify", "identify", "detect")
CHUNK = 500


@dataclass
class RetentionReport:
    jobs: int = 0  # jobs whose images were removed
    images: int = 0  # blobs deleted
    delete_failures: int = 0


def expired_jobs(session, settings: Settings, now: datetime, limit: int) -> list[tuple]:
    """(job id, blob keys) of final jobs holding images past their retention."""
    enroll_cutoff = now - timedelta(days=settings.enrollment_retention_days)
    probe_cutoff = now - timedelta(seconds=settings.probe_retention_s)
    return session.execute(
        select(Job.id, Job.blob_keys)
        .where(
            Job.status.in_(FINAL_STATUSES),
            func.jsonb_array_length(Job.blob_keys) > 0,
            or_(
                and_(Job.kind.in_(ENROLL_KINDS), Job.submitted_at < enroll_cutoff),
                and_(Job.kind.in_(PROBE_KINDS), Job.submitted_at <= probe_cutoff),
            ),
        )
        .order_by(Job.submitted_at)
        .limit(limit)
    ).all()


def run_retention(database_url: str, blobs, settings: Settings, now: datetime | None = None) -> RetentionReport:
    """Delete expired images chunk by chunk; see the module docstring."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    while True:
        with session_scope(database_url) as session:
            rows = expired_jobs(session, settings, now, CHUNK)
        if not rows:
            break
        keys = sorted({key for _, job_keys in rows for key in job_keys})
        for key in keys:
            if is_reference(key):
                continue
            try:
                blobs.delete(key)
                report.images += 1
            except Exception as exc:
                report.delete_failures += 1
                log.warning("blob delete failed", extra={"blob_key": key, "error": type(exc).__name__})
        ids = [job_id for job_id, _ in rows]
        with session_scope(database_url) as session:
            session.execute(update(Job).where(Job.id.in_(ids)).values(blob_keys=[]))
            session.execute(update(Template).where(Template.image_key.in_(keys)).values(image_key=None))
        report.jobs += len(ids)
        if len(rows) < CHUNK:
            break
    log.info(
        "retention run", extra={"jobs": report.jobs, "images": report.images, "delete_failures": report.delete_failures}
    )
    return report
