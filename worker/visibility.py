"""Batches in Flower. celery-batches runs a batch as one pool job, so Flower sees its requests
received and nothing more; these task events finish the story for each request (its task id is
the job id):

  task-started    when the batch starts (hostname, pid);
  task-succeeded  when it ends, result = {"batch_id", "batch_size", "status"} (the job's final
                  status, or "not_final" when the batch skipped it or handed it back);
  batch-finished  one custom event per batch: batch_id, size, job_ids, finished, runtime.

In Flower, search the task list for a batch id to see its jobs; a job's batch_id is in
GET /v1/jobs/{id} and in its Flower result. Events never fail a batch: errors are logged.
"""

import json
import logging
import time

log = logging.getLogger(__name__)


def _send(app, hostname: str | None, events: list[tuple[str, dict]]) -> None:
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            for event_type, fields in events:
                dispatcher.send(event_type, **fields)
    except Exception as exc:
        log.warning("batch events not sent", extra={"error": type(exc).__name__})


def batch_started(app, requests, batch_id: str) -> float:
    """Send task-started for every request (the event carries this pid); returns the start time."""
    hostname = requests[0].hostname if requests else None
    _send(app, hostname, [("task-started", {"uuid": r.id, "batch_id": batch_id}) for r in requests])
    return time.monotonic()


def batch_finished(app, requests, report, started: float) -> None:
    """Send task-succeeded for every request (result names the batch) and one batch-finished."""
    hostname = requests[0].hostname if requests else None
    runtime = time.monotonic() - started
    events = []
    for request in requests:
        status = report.finished.get(str(request.id), "not_final")
        result = {"batch_id": report.batch_id, "batch_size": len(requests), "status": status}
        events.append(("task-succeeded", {"uuid": request.id, "result": json.dumps(result), "runtime": runtime}))
    events.append(
        (
            "batch-finished",
            {
                "batch_id": report.batch_id,
                "size": len(requests),
                "job_ids": [r.id for r in requests],
                "finished": len(report.finished),
                "runtime": runtime,
            },
        )
    )
    _send(app, hostname, events)
