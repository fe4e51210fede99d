"""Job messages onto their queues in one Redis round trip.

publish_all(celery, messages, retries=0) sends each JobMessage as the RUN_JOBS_TASK with its kind's queue
and the job id as task id (the format of a single send_task), buffered in kombu's producer batch
(one non-transactional Redis pipeline) and flushed once. The routing table of each queue's
exchange (a Redis set kombu reads on every publish) is cached for TABLE_CACHE_S: the bindings
of the job queues never change while the service runs.
"""

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from shared.messages import JobMessage
from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK

TABLE_CACHE_S = 30.0
_tables: dict[str, tuple[float, list]] = {}
_tables_lock = threading.Lock()


@contextmanager
def _cached_tables(channel: Any) -> Iterator[None]:
    """Serve channel.get_table(exchange) from the process cache while the block runs."""
    original = channel.get_table

    def get_table(exchange: str) -> list:
        now = time.monotonic()
        with _tables_lock:
            hit = _tables.get(exchange)
        if hit is not None and now - hit[0] < TABLE_CACHE_S:
            return hit[1]
        table = original(exchange)
        if table:  # an empty table is not kept: the queue may be declared next
            with _tables_lock:
                _tables[exchange] = (now, table)
        return table

    channel.get_table = get_table
    try:
        yield
    finally:
        del channel.get_table  # back to the class's method


def publish_all(celery: Any, messages: Sequence[JobMessage], retries: int = 0, retry_wait_s: float = 0.2) -> None:
    """Send every message; raises when the broker does not take them after `retries` more tries
    (none or some may be queued: a job published twice is still applied once)."""
    for attempt in range(retries + 1):
        try:
            _publish_once(celery, messages)
            return
        except Exception:
            if attempt == retries:
                raise
            time.sleep(retry_wait_s)


def _publish_once(celery: Any, messages: Sequence[JobMessage]) -> None:
    if not messages:
        return
    with celery.producer_or_acquire() as producer:
        channel = producer.channel
        patched = hasattr(channel, "get_table")
        with _cached_tables(channel) if patched else _nothing(), producer.batch(max_size=2 * len(messages) + 8):
            for message in messages:
                celery.send_task(
                    RUN_JOBS_TASK,
                    kwargs=message.model_dump(mode="json"),
                    queue=QUEUE_FOR_KIND[message.kind],
                    task_id=message.job_id,
                    producer=producer,
                )


@contextmanager
def _nothing() -> Iterator[None]:
    yield
