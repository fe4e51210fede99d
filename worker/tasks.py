"""The worker's Celery tasks, thin entry points over worker.batch and worker.callbacks.

RUN_JOBS_TASK: a celery-batches task; Celery hands it up to settings.batch_size requests, or what
arrived within settings.flush_interval_ms, as one list. CALLBACK_TASK(job_id): post the job's
signed callback, retried with exponential backoff up to settings.callback_max_attempts.
"""

import logging

from billiard.exceptions import WorkerLostError
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from shared.celery_app import get_celery
from shared.queues import CALLBACK_TASK, CALLBACKS, QUEUE_FOR_KIND, RUN_JOBS_TASK
from shared.settings import get_settings
from worker.batch import Delivery, is_transient, run_batch
from worker.callbacks import CallbackFailed, backoff_s, deliver

log = logging.getLogger(__name__)
app = get_celery()
settings = get_settings()


class JobBatches(Batches):
    """Batches that hands its requests back to the broker when the pool process running them
    dies (task_reject_on_worker_lost), instead of leaving them unacked until the visibility
    timeout. Otherwise as celery_batches.Batches.flush."""

    def flush(self, requests):
        requests = list(requests)
        early = [r for r in requests if not r.task.acks_late]
        late = [r for r in requests if r.task.acks_late]

        def on_accepted(pid, time_accepted):
            for request in early:
                request.acknowledge()

        def on_return(result):
            for request in late:
                request.acknowledge()

        def on_error(exc_info):
            exc = getattr(exc_info, "exception", None)
            lost = isinstance(getattr(exc, "exc", exc), WorkerLostError)  # billiard wraps it
            requeue = lost and bool(self.app.conf.task_reject_on_worker_lost)
            log.error("batch process failed", extra={"requests": len(late), "requeued": requeue})
            for request in late:
                if requeue:
                    request.reject(requeue=True)
                else:
                    request.acknowledge()

        simple = ([SimpleRequest.from_request(r) for r in requests],)
        return self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
        )


@app.task(
    name=RUN_JOBS_TASK,
    base=JobBatches,
    flush_every=settings.batch_size,
    flush_interval=settings.flush_interval_ms / 1000,
    acks_late=True,
    ignore_result=True,
)
def run_jobs(requests):
    """requests: list of celery_batches.SimpleRequest whose kwargs are JobMessages."""
    from worker.app import get_runtime

    run_batch([Delivery(task_id=r.id, kwargs=r.kwargs) for r in requests], get_runtime())


def republish(deliveries: list[Delivery]) -> None:
    """Send messages again, unchanged: same kwargs, the queue of their kind, the same task id."""
    for delivery in deliveries:
        app.send_task(
            RUN_JOBS_TASK,
            kwargs=delivery.kwargs,
            queue=QUEUE_FOR_KIND[delivery.kwargs["kind"]],
            task_id=delivery.task_id,
        )


def enqueue_callback(job_id: str) -> None:
    app.send_task(CALLBACK_TASK, kwargs={"job_id": job_id}, queue=CALLBACKS)


@app.task(name=CALLBACK_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def post_callback(self, job_id: str) -> None:
    """Post the job's callback; on failure send it again after backoff_s(attempt)."""
    current = get_settings()
    try:
        deliver(job_id, current)
    except Exception as exc:
        if not isinstance(exc, CallbackFailed) and not is_transient(exc):
            raise
        attempt = self.request.retries + 1
        extra = {"job_id": job_id, "attempt": attempt, "error": str(exc) if isinstance(exc, CallbackFailed) else type(exc).__name__}
        if attempt >= current.callback_max_attempts:
            log.error("callback abandoned", extra=extra)
            return
        log.warning("callback failed, will retry", extra=extra)
        raise self.retry(countdown=backoff_s(attempt)) from None
