"""worker.batch.run_batch against an in-memory unit of work and a stub pipeline: no database, no
network. tests/integration/test_job_path.py runs the same path against Postgres and the real network."""

import copy
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from shared.blob import FileBlobStore
from shared.db.models import FINAL_STATUSES
from shared.settings import Settings
from worker.batch import Delivery, Runtime, TransientDatabaseError, run_batch
from worker.batch.model import JobRow, Probe, WorkItem
from worker.face.types import FaceResult
from worker.versions import BASE_PREPROCESSING, PRESETS, VersionBook, VersionRow

T = TypeVar("T")
ACTIVE, CANDIDATE = "dlib-resnet-v1", "dlib-resnet-v1-flip"
SHA = "0" * 64


def vector(name: str, variant: dict[str, Any]) -> np.ndarray:
    """A fixed unit descriptor per identity; each preprocessing variant shifts it a little."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    v = rng.normal(size=128)
    v = v / np.linalg.norm(v)
    return (v + (0.01 if variant.get("flip") else 0.0)).astype(np.float32)


class StubPipeline:
    """Image bytes b"face:NAME" -> NAME's descriptor; b"bad" -> bad_image; anything else -> no_face."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def process(
        self, images: list[bytes], cropped: list[bool], variants: dict[str, dict[str, Any]]
    ) -> list[FaceResult]:
        self.calls.append({"images": len(images), "variants": sorted(variants)})
        results = []
        for data in images:
            if data.startswith(b"face:"):
                name = data[5:].decode()
                descriptors = {version: vector(name, pre) for version, pre in variants.items()}
                results.append(FaceResult(descriptor=next(iter(descriptors.values())), descriptors=descriptors))
            elif data == b"bad":
                results.append(FaceResult(error_code="bad_image", error_message="not an image"))
            else:
                results.append(FaceResult(error_code="no_face", error_message="no face found"))
        return results


class FakeUnitOfWork:
    """Jobs, templates and model versions in dicts; run(fn) restores them when fn raises. down:
    every run fails as an unreachable database would; fail_from: runs from that number on fail."""

    def __init__(self, versions: list[VersionRow] | None = None) -> None:
        self.jobs: dict[uuid.UUID, dict[str, Any]] = {}
        self.templates: list[dict[str, Any]] = []  # tenant, subject, version, vector, job, index
        self.versions = versions or []
        self.outbox: list[uuid.UUID] = []
        self.runs = 0
        self.searches = 0  # calls of nearest: one per batch, whatever its identify probes
        self.fail_from: int | None = None

    def run(self, fn: Callable[[Any], T]) -> T:
        self.runs += 1
        if self.fail_from is not None and self.runs >= self.fail_from:
            raise TransientDatabaseError("connection refused")
        saved = copy.deepcopy((self.jobs, self.templates, self.outbox))
        try:
            return fn(self)
        except BaseException:
            self.jobs, self.templates, self.outbox = saved
            raise

    # JobsRepository
    def mark_running(self, jobs: list[tuple[uuid.UUID, uuid.UUID]], batch_id: str, model_version: str) -> list[JobRow]:
        rows = []
        for job_id, tenant in jobs:
            job = self.jobs.get(job_id)
            if job is None or job["tenant_id"] != tenant or job["status"] in FINAL_STATUSES:
                continue
            job.update(status="running", attempts=job["attempts"] + 1, batch_id=batch_id)
            job["model_version"] = job.get("model_version") or model_version
            rows.append(
                JobRow(
                    job_id,
                    tenant,
                    job["kind"],
                    job["subject"],
                    job["top_k"],
                    False,
                    job["blob_keys"],
                    job["callback_url"],
                    job["attempts"],
                )
            )
        return rows

    def final_among(self, jobs: list[tuple[uuid.UUID, uuid.UUID]]) -> set[uuid.UUID]:
        return {j for j, _ in jobs if j in self.jobs and self.jobs[j]["status"] in FINAL_STATUSES}

    def model_versions(self, architecture: str) -> list[VersionRow]:
        return list(self.versions)

    def threshold(self, model_version: str, default: float) -> float:
        return next((v.threshold for v in self.versions if v.name == model_version), default)

    def templates_for(self, model_version: str, subjects: list[tuple[uuid.UUID, str]]) -> dict:
        found: dict[tuple[uuid.UUID, str], list[np.ndarray]] = {}
        for t in self.templates:
            key = (t["tenant_id"], t["subject"])
            if t["version"] == model_version and key in subjects:
                found.setdefault(key, []).append(t["vector"])
        return {key: np.stack(rows) for key, rows in found.items()}

    def nearest(self, probes: list[Probe]) -> list[list[dict]]:
        self.searches += 1
        return [self._nearest(p) for p in probes]

    def _nearest(self, probe: Probe) -> list[dict]:
        best: dict[str, float] = {}
        for t in self.templates:
            if t["tenant_id"] == probe.tenant_id and t["version"] == probe.model_version:
                d = float(np.linalg.norm(t["vector"] - probe.descriptor))
                best[t["subject"]] = min(d, best.get(t["subject"], d))
        ranked = sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[: probe.top_k]
        return [{"subject_id": s, "distance": d} for s, d in ranked]

    def write_outcome(self, item: WorkItem, batch_id: str, model_version: str) -> bool:
        job = self.jobs[item.job_id]
        if job["status"] in FINAL_STATUSES:
            return False
        outcome = item.outcome
        job.update(
            status=outcome.status,
            result=outcome.result,
            error_code=outcome.error_code,
            batch_id=batch_id,
            model_version=model_version,
        )
        rows = [(model_version, outcome.templates)] + list(outcome.extra_templates.items())
        for version, templates in rows:
            for index, descriptor, _ in templates:
                self.templates.append(
                    {
                        "tenant_id": item.tenant_id,
                        "subject": item.subject,
                        "version": version,
                        "vector": np.asarray(descriptor),
                        "job": item.job_id,
                        "index": index,
                    }
                )
        return True

    def add_callbacks(self, job_ids: list[uuid.UUID]) -> None:
        self.outbox += job_ids

    # test helpers
    def queue(
        self,
        blobs: FileBlobStore,
        kind: str,
        images: list[bytes],
        subject: str | None = None,
        tenant: uuid.UUID | None = None,
        top_k: int | None = None,
        callback_url: str | None = None,
    ) -> Delivery:
        """A queued job with its images stored, and its message."""
        job_id, tenant = uuid.uuid4(), tenant or uuid.uuid4()
        keys = [f"{tenant}/{job_id}/{i}" for i in range(len(images))]
        for key, data in zip(keys, images):
            blobs.put(key, data)
        self.jobs[job_id] = {
            "tenant_id": tenant,
            "kind": kind,
            "subject": subject,
            "top_k": top_k,
            "blob_keys": keys,
            "callback_url": callback_url,
            "status": "queued",
            "attempts": 0,
        }
        kwargs = {
            "job_id": str(job_id),
            "tenant_id": str(tenant),
            "kind": kind,
            "blob_keys": keys,
            "subject_id": subject,
            "top_k": top_k,
            "submitted_at": time.time(),
        }
        return Delivery(task_id=str(job_id), kwargs=kwargs)

    def job(self, delivery: Delivery) -> dict[str, Any]:
        return self.jobs[uuid.UUID(delivery.task_id)]


@pytest.fixture
def blobs(tmp_path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def make_runtime(blobs: FileBlobStore, versions: bool = False, **settings: Any) -> tuple[Runtime, list[Delivery]]:
    republished: list[Delivery] = []
    runtime = Runtime(
        pipeline=StubPipeline(),
        blobs=blobs,
        database_url="",
        model_version=ACTIVE,
        settings=Settings(redis_url="redis://x", database_url="postgresql://x", **settings),
        republish=republished.extend,
        versions=VersionBook("dlib-resnet-29", SHA, ACTIVE, 0.6) if versions else None,
    )
    return runtime, republished


def test_enroll_writes_a_template_per_face_and_one_callback(blobs):
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    job = uow.queue(blobs, "enroll", [b"face:ann", b"face:ann"], subject="ann", callback_url="https://x.test/cb")
    report = run_batch([job, job], runtime, uow)
    assert report.finished == {job.task_id: "succeeded"} and report.skipped == 1
    row = uow.job(job)
    assert (row["attempts"], row["result"]["templates_created"], row["model_version"]) == (1, 2, ACTIVE)
    assert [t["index"] for t in uow.templates] == [0, 1]
    assert uow.outbox == [uuid.UUID(job.task_id)]
    assert runtime.pipeline.calls == [{"images": 2, "variants": [ACTIVE]}]
    again = run_batch([job], runtime, uow)  # redelivered: applied once
    assert again.finished == {} and again.skipped == 1 and len(uow.templates) == 2


def test_verify_matches_its_own_subject_and_fails_an_unknown_one(blobs):
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    tenant = uuid.uuid4()
    run_batch([uow.queue(blobs, "enroll", [b"face:ann"], subject="ann", tenant=tenant)], runtime, uow)
    genuine = uow.queue(blobs, "verify", [b"face:ann"], subject="ann", tenant=tenant)
    impostor = uow.queue(blobs, "verify", [b"face:bob"], subject="ann", tenant=tenant)
    unknown = uow.queue(blobs, "verify", [b"face:ann"], subject="nobody", tenant=tenant)
    report = run_batch([genuine, impostor, unknown], runtime, uow)
    assert set(report.finished.values()) == {"succeeded", "failed"}
    assert uow.job(genuine)["result"]["match"] is True
    assert uow.job(genuine)["result"]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert uow.job(impostor)["result"]["match"] is False
    assert uow.job(unknown)["error_code"] == "subject_not_found"
    with pytest.raises(FileNotFoundError):  # probe images are deleted once the jobs are final
        (blobs.root / genuine.kwargs["blob_keys"][0]).read_bytes()


def test_identify_ranks_subjects_by_their_nearest_template(blobs):
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    tenant = uuid.uuid4()
    enrolls = [
        uow.queue(blobs, "enroll", [f"face:{n}".encode()], subject=n, tenant=tenant) for n in ("ann", "bob", "cy")
    ]
    run_batch(enrolls, runtime, uow)
    probe = uow.queue(blobs, "identify", [b"face:bob"], tenant=tenant, top_k=2)
    stranger = uow.queue(blobs, "identify", [b"face:bob"], top_k=2)  # another tenant sees nothing
    run_batch([probe, stranger], runtime, uow)
    assert uow.searches == 1  # the batch's probes in one search
    candidates = uow.job(probe)["result"]["candidates"]
    assert len(candidates) == 2 and candidates[0]["subject_id"] == "bob"
    assert candidates[0]["distance"] < candidates[1]["distance"]
    assert uow.job(stranger)["result"]["candidates"] == []


def test_a_failed_image_fails_only_its_job(blobs):
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    mixed = uow.queue(blobs, "enroll", [b"bad", b"face:ann"], subject="ann")
    empty = uow.queue(blobs, "enroll", [b"blank"], subject="eve")
    probe = uow.queue(blobs, "verify", [b"bad"], subject="ann")
    report = run_batch([mixed, empty, probe], runtime, uow)
    assert report.finished == {mixed.task_id: "succeeded", empty.task_id: "failed", probe.task_id: "failed"}
    images = uow.job(mixed)["result"]["images"]
    assert [i["status"] for i in images] == ["failed", "enrolled"] and images[0]["error"]["code"] == "bad_image"
    assert (uow.job(empty)["error_code"], uow.job(probe)["error_code"]) == ("no_face", "bad_image")
    assert [t["index"] for t in uow.templates] == [1]


@pytest.mark.parametrize("fail_from", [1, 4], ids=["before-marking", "at-the-commit"])
def test_a_database_outage_hands_the_batch_back(blobs, fail_from):
    uow = FakeUnitOfWork()
    runtime, republished = make_runtime(blobs, db_retry_s=0.3)
    jobs = [
        uow.queue(blobs, "enroll", [b"face:ann"], subject="ann"),
        uow.queue(blobs, "verify", [b"face:ann"], subject="x"),
    ]
    uow.fail_from = fail_from  # runs: 1 mark running, 2 plan, 3 compare, 4 commit
    report = run_batch(jobs, runtime, uow)
    assert report.republished == 2 and republished == jobs and report.finished == {}
    assert uow.templates == [] and uow.outbox == []
    assert all(uow.job(j)["status"] in ("queued", "running") for j in jobs)
    uow.fail_from = None
    assert run_batch(republished, runtime, uow).finished == {
        j.task_id: s for j, s in zip(jobs, ["succeeded", "failed"])
    }


def test_an_enrollment_writes_the_active_version_and_every_candidate(blobs):
    versions = [
        VersionRow(ACTIVE, "active", 0.6, dict(BASE_PREPROCESSING), SHA),
        VersionRow(CANDIDATE, "candidate", 0.55, dict(PRESETS[CANDIDATE]), SHA),
        VersionRow("other-network", "candidate", 0.5, dict(BASE_PREPROCESSING), "f" * 64),
    ]
    uow = FakeUnitOfWork(versions)
    runtime, _ = make_runtime(blobs, versions=True)
    tenant = uuid.uuid4()
    enroll = uow.queue(blobs, "enroll", [b"face:ann", b"face:ann"], subject="ann", tenant=tenant)
    probe = uow.queue(blobs, "verify", [b"face:ann"], subject="ann", tenant=tenant)
    run_batch([enroll], runtime, uow)
    run_batch([probe], runtime, uow)
    result = uow.job(enroll)["result"]
    assert (result["model_version"], result["also_written"]) == (ACTIVE, {CANDIDATE: 2})
    by_version = {v: [t["vector"] for t in uow.templates if t["version"] == v] for v in (ACTIVE, CANDIDATE)}
    assert [len(rows) for rows in by_version.values()] == [2, 2]
    assert not np.allclose(by_version[ACTIVE][0], by_version[CANDIDATE][0])  # each its own descriptor
    assert runtime.pipeline.calls[0] == {"images": 2, "variants": sorted([ACTIVE, CANDIDATE])}  # one pass
    assert runtime.pipeline.calls[1]["variants"] == [ACTIVE]  # a probe uses the active version only
    assert uow.job(probe)["result"]["threshold"] == 0.6


def test_the_batch_finished_line_carries_its_stage_seconds(blobs, caplog):
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    tenant = uuid.uuid4()
    run_batch([uow.queue(blobs, "enroll", [b"face:ann"], subject="ann", tenant=tenant)], runtime, uow)
    probes = [uow.queue(blobs, "identify", [b"face:ann"], tenant=tenant, top_k=1) for _ in range(3)]
    with caplog.at_level("INFO", logger="worker.batch.run"):
        report = run_batch(probes, runtime, uow)
    # records of the enrollment's batch may be captured too (the logger's level set by other tests)
    lines = [r for r in caplog.records if r.getMessage() == "batch finished" and r.batch_id == report.batch_id]
    assert len(lines) == 1 and lines[0].jobs == 3
    stages = lines[0].stage_s
    assert {"fetch", "compare", "search", "commit"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values()) and stages["search"] <= stages["compare"] + 0.001
