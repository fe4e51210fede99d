"""Celery settings: broker, queues and routes, prefetch, acks, timeouts. JSON only."""

from kombu import Queue

from shared import queues
from shared.services import resolve
from shared.settings import get_settings

_settings = get_settings()

broker_url = resolve(_settings).redis_url
broker_connection_retry_on_startup = True
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True  # results live in Postgres
result_backend = None

task_queues = [Queue(name) for name in queues.ALL_QUEUES]
task_default_queue = queues.VERIFY
task_routes = {queues.CALLBACK_TASK: {"queue": queues.CALLBACKS}}  # job messages name their queue

task_acks_late = True
task_reject_on_worker_lost = True
# celery-batches only fills a batch from prefetched messages: prefetch must exceed batch_size.
worker_prefetch_multiplier = max(
    1, _settings.prefetch_batches * _settings.batch_size // _settings.worker_concurrency
)
worker_concurrency = _settings.worker_concurrency
worker_send_task_events = True
task_send_sent_event = True
