"""shared.publish writes the message celery.send_task would write: the same envelope on the same
Redis list, read back from a real Valkey and consumed by a worker in every job test."""

import base64
import json
import time
import uuid

import pytest

from shared.messages import JobMessage
from shared.publish import publish_all
from shared.queues import QUEUE_FOR_KIND, RUN_JOBS_TASK

PER_MESSAGE = {"delivery_tag", "reply_to", "origin"}  # differ between any two sends


def _message(kind: str) -> JobMessage:
    return JobMessage(
        job_id=str(uuid.uuid4()),
        tenant_id=str(uuid.uuid4()),
        kind=kind,
        blob_keys=["t/j/0", "t/j/1"],
        subject_id="person 'o' \"q\" ü",
        top_k=5 if kind == "identify" else None,
        submitted_at=time.time(),
        options={"max_faces": 2, "quality_filter": "medium"},
    )


def _pop(redis_client, queue: str) -> dict:
    raw = redis_client.rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    return json.loads(raw)


def _comparable(envelope: dict) -> tuple[dict, list]:
    body = json.loads(base64.b64decode(envelope.pop("body")))
    for part in ("headers", "properties"):
        for name in PER_MESSAGE & envelope[part].keys():
            envelope[part][name] = type(envelope[part][name]).__name__
    return envelope, body


@pytest.mark.parametrize("kind", ["verify", "identify", "enroll", "detect"])
def test_same_message_as_send_task(services, kind):
    import redis

    from shared.celery_app import get_celery

    celery = get_celery()
    client = redis.Redis.from_url(services.redis_url)
    queue = QUEUE_FOR_KIND[kind]
    client.delete(queue)
    message = _message(kind)
    celery.send_task(RUN_JOBS_TASK, kwargs=message.model_dump(mode="json"), queue=queue, task_id=message.job_id)
    theirs = _comparable(_pop(client, queue))
    publish_all(celery, [message])
    ours = _comparable(_pop(client, queue))
    assert ours == theirs
    assert client.llen(queue) == 0


def test_one_pipeline_many_queues(services):
    import redis

    from shared.celery_app import get_celery

    client = redis.Redis.from_url(services.redis_url)
    messages = [_message(kind) for kind in ("verify", "identify", "verify", "enroll")]
    for message in messages:
        client.delete(QUEUE_FOR_KIND[message.kind])
    publish_all(get_celery(), messages)
    for message in messages:  # LPUSH then RPOP: first in, first out per queue
        envelope = _pop(client, QUEUE_FOR_KIND[message.kind])
        assert envelope["headers"]["id"] == message.job_id
        assert json.loads(base64.b64decode(envelope["body"]))[1] == message.model_dump(mode="json")
