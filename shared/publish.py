"""Job messages onto their queues in one Redis round trip.

publish_all(celery, messages, retries=0) puts each JobMessage on its kind's queue as the
RUN_JOBS_TASK with the job id as task id, in one non-transactional Redis pipeline on the broker
connection of the Celery app.

The messages are written here, not through celery.send_task: building one through Celery and
kombu costs about half a millisecond of CPU (task headers, a safe repr of the kwargs, the exchange
lookup, a task-sent event), more than the rest of a submit. task_message() gives what send_task
gives for a task of protocol 2 sent to a queue with priority 0 (kombu's Redis transport: the JSON
envelope, the body in base64, pushed with LPUSH on the queue's list); a test compares the two, and
every worker test consumes these. No task-sent event is sent: Flower shows a job once a worker has
received it, and the queued ones as queue depth.
"""

import base64
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from shared.messages import JobMessage
from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK

REPR_MAX = 1024  # Celery's kwargsrepr_maxsize
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPLY_TO = str(uuid.uuid4())  # replies are never read (task_ignore_result)


def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(message: JobMessage, origin: str | None = None) -> tuple[str, bytes]:
    """(queue, the bytes kombu's Redis transport stores for this task)."""
    kwargs = message.model_dump(mode="json")
    queue = QUEUE_FOR_KIND[message.kind]
    body = orjson.dumps([[], kwargs, _EMBED])
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": RUN_JOBS_TASK,
            "id": message.job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": message.job_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": repr(kwargs)[:REPR_MAX],
            "origin": origin or _origin(),
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": message.job_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return queue, orjson.dumps(envelope)


def publish_all(celery: Any, messages: Sequence[JobMessage], retries: int = 0, retry_wait_s: float = 0.2) -> None:
    """Send every message; raises when the broker does not take them after `retries` more tries
    (none or some may be queued: a job published twice is still applied once)."""
    if not messages:
        return
    origin = _origin()
    payloads = [task_message(message, origin) for message in messages]
    for attempt in range(retries + 1):
        try:
            _push(celery, payloads)
            return
        except Exception:
            if attempt == retries:
                raise
            time.sleep(retry_wait_s)


def _push(celery: Any, payloads: list[tuple[str, bytes]]) -> None:
    with celery.producer_or_acquire() as producer, producer.channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        for queue, payload in payloads:
            pipe.lpush(queue, payload)
        pipe.execute()
