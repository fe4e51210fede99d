"""The worker's Celery task, a thin entry point over worker.batch.

RUN_JOBS_TASK: a celery-batches task; Celery hands it up to settings.batch_size requests, or what
arrived within settings.flush_interval_ms, as one list. Callbacks are not tasks: the batch writes
them to the outbox, and the callback dispatcher (worker.dispatcher) sends them.
"""

import logging
import threading
import time

from billiard.exceptions import WorkerLostError
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from shared.celery_app import get_celery
from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK
from shared.settings import get_settings
from worker.batch import Delivery, run_batch

log = logging.getLogger(__name__)
app = get_celery()
settings = get_settings()


class JobBatches(Batches):
    """celery_batches.Batches with two changes:

    - dynamic batching: while every pool process is busy, the flush timer leaves the buffer to
      grow (up to flush_every) instead of queueing a small batch behind the running one;
    - a batch whose pool process dies goes back to the broker (task_reject_on_worker_lost)
      instead of staying unacked until the visibility timeout.
    """

    _in_flight = 0
    _in_flight_lock = threading.Lock()
    _last_flush = 0.0
    HOLD_LIMIT_S = 5.0  # never hold a partial batch longer, whatever the pool reports

    def _pool_busy(self) -> bool:
        held_s = time.monotonic() - self._last_flush
        return self._in_flight >= settings.worker_concurrency and held_s < self.HOLD_LIMIT_S

    def _do_flush(self):
        if self._pool_busy() and self._buffer.qsize() < self.flush_every:
            return  # flushed when the buffer is full or, on a later tick, once a process is free
        super()._do_flush()

    def _batch_done(self):
        with self._in_flight_lock:
            JobBatches._in_flight -= 1

    def flush(self, requests):
        requests = list(requests)
        early = [r for r in requests if not r.task.acks_late]
        late = [r for r in requests if r.task.acks_late]
        with self._in_flight_lock:
            JobBatches._in_flight += 1
            JobBatches._last_flush = time.monotonic()

        def on_accepted(pid, time_accepted):
            for request in early:
                request.acknowledge()

        def on_return(result):
            self._batch_done()
            for request in late:
                request.acknowledge()

        def on_error(exc_info):
            self._batch_done()
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
    """requests: list of celery_batches.SimpleRequest whose kwargs are JobMessages. Each request
    is reported to Flower as started and finished, naming its batch (worker.visibility)."""
    import uuid

    from worker.app import get_runtime
    from worker.visibility import batch_finished, batch_started

    batch_id = str(uuid.uuid4())
    started = batch_started(app, requests, batch_id)
    report = run_batch([Delivery(task_id=r.id, kwargs=r.kwargs) for r in requests], get_runtime(), batch_id=batch_id)
    batch_finished(app, requests, report, started)


def republish(deliveries: list[Delivery]) -> None:
    """Send messages again, unchanged: same kwargs, the queue of their kind, the same task id."""
    for delivery in deliveries:
        app.send_task(
            RUN_JOBS_TASK,
            kwargs=delivery.kwargs,
            queue=QUEUE_FOR_KIND[delivery.kwargs["kind"]],
            task_id=delivery.task_id,
        )
