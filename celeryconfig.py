"""Celery settings: broker, queues and routes, prefetch, acks, timeouts. JSON only.

celery_config(settings) -> the Celery configuration for these settings; shared.celery_app applies
it when it builds the app. Nothing is read at import.
"""

import math
from typing import Any

from kombu import Exchange, Queue

from shared import queues
from shared.services import resolve
from shared.settings import Settings


def prefetch_multiplier(batch_size: int, prefetch_batches: int, concurrency: int) -> int:
    """Celery's prefetch multiplier (messages reserved = multiplier x concurrency).

    celery-batches fills a batch only from reserved messages, so reserve enough for one batch in
    every pool process plus prefetch_batches - 1 filling behind them (at least one more message
    than a batch): with one process and prefetch_batches=2, one batch runs while the next fills.
    """
    wanted = max((concurrency + prefetch_batches - 1) * batch_size, batch_size + 1)
    return max(1, math.ceil(wanted / concurrency))


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings (BIOFLEET_* environment variables)."""
    return {
        "broker_url": resolve(settings).redis_url,
        # kombu's Redis transport, dropping (not crashing on) bytes that are not a JSON message.
        "broker_transport": "shared.broker:SafeRedisTransport",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # A message reserved but not acked goes back to its queue after this long: longer than the
            # slowest batch (including db_retry_s), short enough that a dead worker's jobs do not wait long.
            "visibility_timeout": settings.visibility_timeout_s,
            # Consume queues in the order the worker lists them (shared.queues.CONSUME_ORDER), not round robin.
            "queue_order_strategy": "priority",
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,  # results live in Postgres
        "result_backend": None,
        # One direct exchange per queue, routing key = queue name: a message lands in exactly its queue.
        # Job messages name their queue; callbacks go through the outbox table, not the broker.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in queues.ALL_QUEUES],
        "task_default_queue": queues.VERIFY,
        # Ack after the batch returns; a job is applied at most once by its idempotent writes.
        "task_acks_late": True,
        # Hand a batch back to the broker when its pool process dies (worker.tasks.JobBatches); the
        # redelivery loop is bounded by settings.max_job_attempts, counted on the job row.
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": prefetch_multiplier(
            settings.batch_size, settings.prefetch_batches, settings.worker_concurrency
        ),
        "worker_concurrency": settings.worker_concurrency,
        # Each pool process loads and warms up the face model, and makes sure of its model version row
        # (waiting up to db_retry_s for Postgres), before it reports up: Celery's default is 4 s.
        "worker_proc_alive_timeout": max(300.0, settings.db_retry_s + 120.0),
        # On a lost broker connection a running batch finishes, and its messages, redelivered, find
        # their jobs final.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # On SIGTERM, give running batches time to finish before unacked messages are restored.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,  # worker.signals configures structured logs
    }
