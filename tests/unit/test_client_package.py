"""The client package (biofleet_client/) stands alone, its error classes cover the API's codes,
its job models and the API's read what the worker writes, and verify_webhook() accepts what the
callback dispatcher signs."""

import ast
import json
import subprocess
import sys
import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import TypeAdapter

import biofleet_client
from biofleet_client import (
    BiofleetError,
    EnrollJob,
    IdentifyJob,
    OtherJob,
    RateLimited,
    ReenrollJob,
    VerifyJob,
    WebhookVerificationError,
    error_class,
    parse_job,
    verify_webhook,
)
from biofleet_client._core import Backoff, error_from, retry_after_s

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "biofleet_client"
SERVER_PACKAGES = {"api", "worker", "shared", "cli", "bench", "celeryconfig", "tests"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_client_imports_only_the_standard_library_httpx_and_pydantic():
    allowed = set(sys.stdlib_module_names) | {"httpx", "pydantic", "biofleet_client"}
    sources = sorted((CLIENT / "src" / "biofleet_client").rglob("*.py"))
    assert len(sources) >= 5
    for path in sources:
        assert imported_roots(path) <= allowed, path.name


def test_the_client_package_declares_only_httpx_and_pydantic():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "biofleet-client"
    assert {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]} == {"httpx", "pydantic"}
    dev = (ROOT / "requirements" / "dev.txt").read_text().splitlines()
    assert "-e ./biofleet_client" in dev  # make install puts it in the server's venv


def test_importing_the_client_loads_none_of_the_server():
    code = "import sys, biofleet_client; print(sorted({m.split('.')[0] for m in sys.modules}))"
    run = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert SERVER_PACKAGES.isdisjoint(json.loads(run.stdout.replace("'", '"')))


def server_codes() -> set[str]:
    """The stable codes the API answers and failed jobs carry."""
    from api.errors import HTTP_CODES, SUBMIT_STATUS
    from worker.batch import model
    from worker.face import errors

    codes = set(HTTP_CODES.values()) | set(SUBMIT_STATUS)
    codes |= {model.INTERNAL_ERROR, model.WORKER_CRASH, model.SUBJECT_NOT_FOUND, model.VERSION_UNAVAILABLE}
    codes |= {errors.BAD_IMAGE, errors.IMAGE_TOO_LARGE, errors.NO_FACE, errors.MULTIPLE_FACES}
    codes |= {"unauthorized", "rate_limited", "validation_error", "database_unavailable", "not_ready"}
    codes |= {"job_not_found", "subject_not_found", "subject_deleted", "bad_base64", "bad_kind", "no_images"}
    codes |= {"too_many_images", "empty_image", "bad_subject_id", "bad_top_k", "bad_callback_url"}
    codes |= {"callback_url_not_allowed", "bad_idempotency_key"}
    # The contract's codes of the batch, listing and image-by-reference routes.
    return codes | {"batch_not_found", "too_many_jobs", "image_not_found", "uri_not_allowed"}


def test_each_error_code_has_its_class_and_an_unknown_one_the_base():
    for code in server_codes():
        cls = error_class(code)
        assert cls is not BiofleetError and cls.code == code, code
        assert hasattr(biofleet_client, cls.__name__), cls.__name__
    assert error_class("a_code_from_the_future") is BiofleetError


def test_an_error_answer_becomes_its_class_with_status_and_retry_after():
    body = {"error": {"code": "rate_limited", "message": "too many requests"}}
    response = httpx.Response(429, json=body, headers={"Retry-After": "7"})
    error = error_from(response)
    assert isinstance(error, RateLimited)
    assert (error.status, error.retry_after, error.message) == (429, 7.0, "too many requests")
    unknown = error_from(httpx.Response(418, json={"error": {"code": "teapot", "message": "no"}}))
    assert type(unknown) is BiofleetError and unknown.code == "teapot"
    plain = error_from(httpx.Response(502, text="bad gateway"))
    assert plain.code == "internal_error" and plain.status == 502


def test_retry_after_reads_seconds_and_dates():
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= (retry_after_s(httpx.Response(503, headers={"Retry-After": later})) or 0) <= 31
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_backoff_grows_to_its_most_and_a_retry_after_overrides_one_wait():
    backoff = Backoff(timeout_s=3600, first_s=0.2, most_s=1.0, factor=2)
    assert [round(backoff.delay(), 2) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(retry_after=9) == 9
    assert Backoff(timeout_s=0.5).delay(retry_after=9) <= 0.5  # never past the deadline


# --- what the worker writes ------------------------------------------------------------------


def job_row(kind: str, status: str, result: dict | None, error: tuple[str, str] | None = None):
    from shared.db.models import Job

    now = datetime.now(UTC)
    return Job(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        kind=kind,
        status=status,
        subject_external_id=None if kind == "identify" else "alice",
        result=result,
        error_code=error[0] if error else None,
        error_message=error[1] if error else None,
        model_version="v1",
        batch_id="b1",
        attempts=1,
        submitted_at=now,
        started_at=now,
        finished_at=now,
    )


def work_item(kind: str, faces: list, versions: tuple[str, ...]):
    from worker.batch.model import WorkItem

    keys = [f"t/j/{i}" for i in range(len(faces))]
    return WorkItem(
        None, None, uuid.uuid4(), uuid.uuid4(), kind, "alice", None, False, keys, None, 1, [], faces, None, versions
    )  # type: ignore[arg-type]


def worker_jobs() -> list:
    """Job rows of every kind with the results the worker's decisions write."""
    from worker.batch.decide import enroll_outcome, verify_outcome
    from worker.face.types import FaceResult

    vector = np.zeros(128, dtype=np.float32)
    face = FaceResult(descriptor=vector, descriptors={"v1": vector, "v2": vector})
    no_face = FaceResult(error_code="no_face", error_message="no face")
    enroll = enroll_outcome(work_item("enroll", [face, no_face], ("v1", "v2")), "v1")
    reenroll = enroll_outcome(work_item("reenroll", [face], ("v2",)), "v2")
    verify = verify_outcome(vector, np.stack([vector, vector]), 0.6, "v1")
    identify = {"candidates": [{"subject_id": "alice", "distance": 0.1}], "threshold": 0.6, "model_version": "v1"}
    assert enroll.result is not None and "also_written" in enroll.result
    return [
        job_row("enroll", "succeeded", enroll.result),
        job_row("reenroll", "succeeded", reenroll.result),
        job_row("verify", "succeeded", verify.result),
        job_row("identify", "succeeded", identify),
        job_row("verify", "failed", None, ("no_face", "no face found")),
        job_row("enroll", "queued", None),
    ]


def test_the_job_json_of_every_kind_validates_on_the_server_and_in_the_client():
    from api.schemas import Job
    from shared.jobs import job_json

    server = TypeAdapter(Job)
    expected = [EnrollJob, ReenrollJob, VerifyJob, IdentifyJob, VerifyJob, EnrollJob]
    for row, cls in zip(worker_jobs(), expected, strict=True):
        data = json.loads(json.dumps(job_json(row)))
        assert server.validate_python(data).kind == row.kind
        job = parse_job(data)
        assert type(job) is cls
    enroll = parse_job(json.loads(json.dumps(job_json(worker_jobs()[0]))))
    assert isinstance(enroll, EnrollJob) and enroll.result is not None
    assert enroll.result.also_written == {"v2": 1} and enroll.result.images[1].error is not None


def test_the_client_ignores_new_fields_and_keeps_jobs_of_unknown_kinds():
    from shared.jobs import job_json

    data = json.loads(json.dumps(job_json(worker_jobs()[2])))
    job = parse_job({**data, "priority": 3, "result": {**data["result"], "quality": 0.9}})
    assert isinstance(job, VerifyJob) and job.result is not None and job.result.match
    other = parse_job({**data, "kind": "transcribe", "result": {"words": []}})
    assert isinstance(other, OtherJob) and other.result == {"words": []}


# --- webhooks --------------------------------------------------------------------------------


def signed(body: bytes, secrets: list[str], at: datetime | None = None) -> dict:
    from shared.webhooks import signed_headers

    return signed_headers(secrets, "delivery-1", body, at)


def test_verify_webhook_accepts_what_the_dispatcher_signs_and_refuses_the_rest():
    from shared.jobs import job_json
    from shared.webhooks import new_secret

    secret, other = new_secret(), new_secret()
    body = json.dumps(job_json(worker_jobs()[2])).encode()
    headers = signed(body, [secret])
    assert isinstance(verify_webhook(body, headers, secret), VerifyJob)
    upper = {name.title(): value for name, value in headers.items()}
    assert verify_webhook(body.decode(), upper, [other, secret]).kind == "verify"  # rotation: either secret
    assert verify_webhook(body, signed(body, [other, secret]), secret).kind == "verify"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace(b"alice", b"mallory"), headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, other)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, signed(body, [secret], datetime.now(UTC) - timedelta(minutes=10)), secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, {k: v for k, v in headers.items() if k != "webhook-signature"}, secret)


# --- requests the client builds ----------------------------------------------------------------


def test_images_go_as_base64_from_bytes_and_paths_and_as_references(tmp_path):
    import base64

    from biofleet_client import UriImage
    from biofleet_client._core import batch_item, encode_image

    path = tmp_path / "face.jpg"
    path.write_bytes(b"jpeg bytes")
    assert base64.b64decode(encode_image(b"jpeg bytes")) == b"jpeg bytes"  # type: ignore[arg-type]
    assert encode_image(path) == encode_image(str(path)) == encode_image(b"jpeg bytes")
    assert encode_image({"uri": "s3://bucket/a.jpg"}) == UriImage(uri="s3://bucket/a.jpg")
    item = batch_item({"kind": "enroll", "subject_id": "alice", "images": [path, {"uri": "s3://b/k"}], "ref": "r1"})
    body = item.model_dump(mode="json", exclude_none=True)
    assert body == {
        "kind": "enroll",
        "ref": "r1",
        "subject_id": "alice",
        "images": [encode_image(path), {"uri": "s3://b/k"}],
    }
    with pytest.raises(ValueError):
        batch_item({"kind": "verify", "image": b"x", "ref": "r" * 129})


def test_submit_many_splits_into_batches_of_at_most_1000_and_numbers_items_in_order():
    from biofleet_client import BatchAccepted
    from biofleet_client._core import batch_item, chunks, submitted

    items = [batch_item({"kind": "identify", "image": b"x", "ref": str(i)}) for i in range(2500)]
    parts = chunks(items, 1000)
    assert [len(part) for part in parts] == [1000, 1000, 500]
    assert [item.ref for part in parts for item in part] == [str(i) for i in range(2500)]
    with pytest.raises(ValueError):
        chunks(items, 1001)
    answer = BatchAccepted.model_validate(
        {
            "id": "b2",
            "accepted": 1,
            "rejected": 1,
            "items": [
                {"index": 0, "ref": "a", "job_id": "j1", "error": None},
                {"index": 1, "ref": "b", "job_id": None, "error": {"code": "bad_top_k", "message": "top_k"}},
            ],
        }
    )
    first, second = submitted(answer, offset=1000)
    assert (first.index, first.job_id, first.error, first.batch_id) == (1000, "j1", None, "b2")
    assert second.index == 1001 and second.job_id is None and type(second.error) is biofleet_client.BadTopK


def test_list_queries_join_ids_and_format_times_and_path_segments_are_escaped():
    from biofleet_client._core import build

    when = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    call = build("list_jobs", None, {"ids": ["a", "b"], "created_after": when, "status": None, "limit": 50})
    assert call.params == {"ids": "a,b", "created_after": "2026-01-05T10:00:00+00:00", "limit": "50"}
    assert (call.method, call.url) == ("GET", "/v1/jobs")
    assert build("get_subject", {"subject_id": "a/b c"}).url == "/v1/subjects/a%2Fb%20c"
    keyed = build("create_batch", body=None, idempotency_key="k1")
    assert keyed.headers == {"Idempotency-Key": "k1"} and keyed.json is None
