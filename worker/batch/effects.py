"""After the commit: delete images no longer needed, count and log each finished job. Failures
here are logged, never raised: the jobs are final already. Images by reference are the
customer's objects: never deleted."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from shared.blob import BlobStore
from shared.image_refs import is_reference
from worker import metrics
from worker.batch.model import PROBE_KINDS, BatchReport, Runtime, WorkItem

log = logging.getLogger(__name__)


def after_commit(finished: list[WorkItem], runtime: Runtime, report: BatchReport) -> None:
    """Delete probe images (and enrollment images that gave no template), count and log each
    finished job."""
    delete_keys = []
    for item in finished:
        if item.kind in PROBE_KINDS and runtime.settings.probe_retention_s == 0:
            delete_keys += item.blob_keys
        elif item.kind == "enroll" and item.outcome is not None:
            kept = {key for _, _, key in item.outcome.templates}
            delete_keys += [key for key in item.blob_keys if key not in kept]
    delete_keys = [key for key in delete_keys if not is_reference(key)]
    if delete_keys:
        with ThreadPoolExecutor(max_workers=min(len(delete_keys), runtime.settings.fetch_threads)) as pool:
            list(pool.map(lambda key: _delete_blob(runtime.blobs, key, report.batch_id), delete_keys))
    now = time.time()
    for item in finished:
        outcome = item.outcome
        if outcome is None:
            continue
        report.finished[str(item.job_id)] = outcome.status
        metrics.job_finished(item.kind, outcome.status, now - item.message.submitted_at, outcome.error_code)
        log.info(
            "job finished",
            extra={
                "job_id": str(item.job_id),
                "batch_id": report.batch_id,
                "kind": item.kind,
                "status": outcome.status,
                "error_code": outcome.error_code,
            },
        )


def _delete_blob(blobs: BlobStore, key: str, batch_id: str) -> None:
    try:
        blobs.delete(key)
    except Exception as exc:
        log.warning("blob delete failed", extra={"blob_key": key, "batch_id": batch_id, "error": type(exc).__name__})
