"""Queue depth per queue: what autoscalers and the metrics read.

queue_depths(redis_client, queues=JOB_QUEUES) -> {queue: waiting + reserved}, where waiting is the
length of the queue's Redis lists (the plain list and kombu's priority lists) and reserved counts
messages workers hold but have not acked (kombu's `unacked` hash).
"""

import json

from shared.queues import JOB_QUEUES

PRIORITY_SEP = "\x06\x16"  # kombu's default separator for priority lists
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps besides 0 (which is the plain list)
UNACKED_KEY = "unacked"


def list_names(queue: str) -> list[str]:
    """The Redis lists that hold a queue's waiting messages."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def waiting_counts(redis_client, queues=JOB_QUEUES) -> dict[str, int]:
    """Messages waiting in each queue's lists."""
    pipe = redis_client.pipeline(transaction=False)
    for queue in queues:
        for name in list_names(queue):
            pipe.llen(name)
    sizes = iter(pipe.execute())
    return {queue: sum(next(sizes) for _ in list_names(queue)) for queue in queues}


def _queue_of(raw: bytes | str, queues) -> str | None:
    """The queue an unacked entry ([payload, exchange, routing_key]) came from, if one of queues."""
    try:
        payload, exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    for candidate in (routing_key, exchange):
        if candidate in queues:
            return candidate
    try:
        candidate = payload["properties"]["delivery_info"]["routing_key"]
    except (KeyError, TypeError):
        return None
    return candidate if candidate in queues else None


def reserved_counts(redis_client, queues=JOB_QUEUES) -> dict[str, int]:
    """Messages reserved by workers but not yet acked, per queue."""
    counts = dict.fromkeys(queues, 0)
    for _tag, raw in redis_client.hscan_iter(UNACKED_KEY, count=500):
        queue = _queue_of(raw, queues)
        if queue is not None:
            counts[queue] += 1
    return counts


def queue_depths(redis_client, queues=JOB_QUEUES) -> dict[str, int]:
    """Waiting plus reserved messages per queue."""
    queues = tuple(queues)
    waiting = waiting_counts(redis_client, queues)
    reserved = reserved_counts(redis_client, queues)
    return {queue: waiting[queue] + reserved[queue] for queue in queues}
