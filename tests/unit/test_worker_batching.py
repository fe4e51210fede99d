"""The batching worker's pure parts: message parsing, outcomes, distances, signatures, prefetch."""

import importlib
import sys
import uuid

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.settings import get_settings
from shared.webhooks import new_secret, signed_headers
from worker.batch import BatchReport, Delivery, WorkItem, enroll_outcome, is_transient, parse
from worker.callbacks import backoff_s
from worker.compare import verify
from worker.face.types import FaceResult


def message(**changes) -> dict:
    kwargs = {
        "job_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "kind": "verify",
        "blob_keys": ["t/j/0"], "subject_id": "s", "submitted_at": 1.0,
    }  # fmt: skip
    return {**kwargs, **changes}


def test_parse_drops_invalid_messages_and_keeps_one_per_job():
    good = message()
    report = BatchReport(batch_id="b", received=6)
    valid = parse(
        [
            Delivery("1", good),
            Delivery("2", good),  # the same job again
            Delivery("3", "not an object"),
            Delivery("4", message(kind="dance")),
            Delivery("5", message(job_id="not-a-uuid")),
            Delivery("6", {**message(), "extra": 1}),
        ],
        report,
    )
    assert [d.task_id for d, _ in valid] == ["1"]
    assert valid[0][1].job_id == good["job_id"]
    assert (report.dropped, report.skipped) == (4, 1)


def item(kind: str, faces: list[FaceResult]) -> WorkItem:
    return WorkItem(
        delivery=Delivery("t", {}), message=None, job_id=uuid.uuid4(), tenant_id=uuid.uuid4(), kind=kind,
        subject="s", top_k=None, cropped=False, blob_keys=[f"k{i}" for i in range(len(faces))],
        callback_url=None, attempts=1, faces=faces,
    )  # fmt: skip


def test_enroll_outcome_succeeds_with_any_enrolled_image():
    ok = FaceResult(descriptor=np.ones(128, dtype=np.float32))
    bad = FaceResult(error_code="no_face", error_message="none")
    outcome = enroll_outcome(item("enroll", [bad, ok]), "mv")
    assert outcome.status == "succeeded"
    assert outcome.result["templates_created"] == 1
    assert [i["status"] for i in outcome.result["images"]] == ["failed", "enrolled"]
    assert outcome.result["images"][0]["error"] == {"code": "no_face", "message": "none"}
    assert [(index, key) for index, _, key in outcome.templates] == [(1, "k1")]


def test_enroll_outcome_fails_with_the_first_image_error():
    faces = [FaceResult(error_code="bad_image", error_message="x"), FaceResult(error_code="no_face", error_message="y")]
    outcome = enroll_outcome(item("enroll", faces), "mv")
    assert (outcome.status, outcome.error_code, outcome.result, outcome.templates) == ("failed", "bad_image", None, [])


def test_verify_is_the_minimum_euclidean_distance():
    probe = np.zeros(128, dtype=np.float32)
    templates = np.zeros((3, 128), dtype=np.float32)
    templates[0, 0], templates[1, 1], templates[2, :4] = 3.0, 0.5, 1.0
    distance, count = verify(probe, templates)
    assert count == 3
    assert distance == pytest.approx(0.5)
    with pytest.raises(ValueError):
        verify(probe, np.zeros((0, 128)))


def test_only_connection_errors_are_transient():
    assert is_transient(OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bug"))


def test_callbacks_carry_standard_webhooks_signatures():
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    body = b'{"id":"1","status":"succeeded"}'
    current, previous, stranger = new_secret(), new_secret(), new_secret()
    headers = signed_headers([current, previous], "msg_1", body)
    assert headers["webhook-id"] == "msg_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    assert Webhook(current).verify(body, headers) == {"id": "1", "status": "succeeded"}
    assert Webhook(previous).verify(body, headers)  # during a rotation's grace period
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(current).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(current).verify(body, {**headers, "webhook-id": "msg_2"})


def test_callback_backoff_doubles_up_to_a_cap():
    assert [backoff_s(n) for n in range(1, 6)] == [2, 4, 8, 16, 32]
    assert backoff_s(30) == 300


@pytest.fixture
def celeryconfig(monkeypatch):
    """celeryconfig imported with explicit service URLs (it reads settings at import)."""
    monkeypatch.setenv("BIOFLEET_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("BIOFLEET_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("BIOFLEET_BLOB_URL", "file:///nonexistent")
    get_settings.cache_clear()
    sys.modules.pop("celeryconfig", None)
    yield importlib.import_module("celeryconfig")
    sys.modules.pop("celeryconfig", None)
    get_settings.cache_clear()


@pytest.mark.parametrize(("batch", "batches", "processes"), [(32, 2, 1), (16, 2, 1), (32, 2, 4), (1, 1, 1), (8, 0, 3)])
def test_prefetch_lets_every_process_fill_a_batch(celeryconfig, batch, batches, processes):
    reserved = celeryconfig.prefetch_multiplier(batch, batches, processes) * processes
    assert reserved > batch
    assert reserved >= (processes + batches - 1) * batch


def test_celery_config_is_json_only_and_late_ack(celeryconfig):
    assert celeryconfig.accept_content == ["json"] and celeryconfig.task_serializer == "json"
    assert celeryconfig.task_acks_late and celeryconfig.task_reject_on_worker_lost
    assert {q.name: q.routing_key for q in celeryconfig.task_queues} == {
        name: name for name in ("verify", "enroll", "identify", "reenroll")
    }
