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
    """celery_batches.Batches with three changes:

    - the flush timer is armed again after a broker reconnect (Celery clears the event loop's
      timers on a lost connection; celery-batches would keep a dead timer and flush only full
      batches);
    - dynamic batching: while every pool process is busy, the flush timer leaves the buffer to
      grow (up to flush_every) instead of queueing a small batch behind the running one;
    - a batch whose pool process dies goes back to the broker (task_reject_on_worker_lost)
      instead of staying unacked until the visibility timeout, its jobs marked as suspects
      (worker.suspects), so that they run alone next time.
    """

    _in_flight = 0
    _in_flight_lock = threading.Lock()
    _last_flush = 0.0
    HOLD_LIMIT_S = 5.0  # never hold a partial batch longer, whatever the pool reports

    def Strategy(self, task, app, consumer):
        """Called on every consumer (re)start, a reconnect included: forget the old timer, so the
        next message arms a live one."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        strategy = super().Strategy(task, app, consumer)
        if self._buffer.qsize() or self._pending.qsize():  # requests held from before the reconnect
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
        return strategy

    def _pool_busy(self) -> bool:
        held_s = time.monotonic() - self._last_flush
        return self._in_flight >= settings.worker_concurrency and held_s < self.HOLD_LIMIT_S

    def _do_flush(self):
        if self._pool_busy() and self._buffer.qsize() < self.flush_every:
            return  # flushed when the buffer is full or, on a later tick, once a process is free
        super()._do_flush()

    _suspects_store = None

    def _suspects(self):
        if JobBatches._suspects_store is None:
            from worker.suspects import Suspects

            JobBatches._suspects_store = Suspects(self.app.conf.broker_url)
        return JobBatches._suspects_store

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
            if lost:
                self._suspects().mark(job_ids(late))
                log.error(
                    "batch process died; its jobs will run alone", extra={"requests": len(late), "requeued": requeue}
                )
            else:
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


def job_ids(requests) -> list[str]:
    """The job ids named by these requests' kwargs (messages that name none are left out)."""
    ids = []
    for request in requests:
        kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
        if isinstance(kwargs.get("job_id"), str):
            ids.append(kwargs["job_id"])
    return ids


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
