"""One batch of job messages as one unit of work, testable without Celery.

run_batch(deliveries, runtime, batch_id=None) -> BatchReport:
  parse the messages (poison ones are logged and dropped) -> mark the jobs running -> plan model
  versions (runtime.versions: verify and identify use the active version, enroll writes the
  active one and every candidate, reenroll the version its message names) -> fetch their images
  from the blob store (thread pool) -> one FacePipeline.process call for every image of every job
  (one per set of versions) -> compare (verify, identify) -> one transaction: templates, final
  job statuses and callback outbox rows (shared.outbox) -> delete probe images.

Suspects (jobs of a batch whose pool process died; worker.suspects) run after the others, each
alone and committed before the next, so a job that kills its process fails alone, with
worker_crash. Images go through the pipeline in parts of at most settings.batch_pixel_budget
decoded pixels (from the image headers), a job's images never split across parts.

Every job is decided on its own: an image error fails only its job, an unexpected error fails
the jobs still undecided with internal_error. Only an unreachable Postgres (after retrying for
settings.db_retry_s) hands the whole batch back: its messages are re-published, unchanged.
Writes are idempotent by job id: a job already final is never rewritten.
"""

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import func, null, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared import outbox
from shared.blob import BlobNotFound, BlobStore
from shared.db.models import FINAL_STATUSES, Job, Subject, Template
from shared.db.session import session_scope
from shared.messages import JobMessage
from shared.settings import Settings
from worker import compare, metrics, nearest
from worker.face.decode import image_pixels
from worker.face.types import FaceResult

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
WORKER_CRASH = "worker_crash"  # the job's process died (OOM kill, segfault) each time it ran alone
SUBJECT_NOT_FOUND = "subject_not_found"
ENROLL_KINDS = ("enroll", "reenroll")  # reenroll: stored enrollment images, embedded again by this version
PROBE_KINDS = ("verify", "identify")
DEFAULT_TOP_K = 5


class DatabaseUnavailable(RuntimeError):
    """Postgres did not answer within settings.db_retry_s."""


@dataclass(frozen=True)
class Delivery:
    """One message of a batch: its Celery task id and kwargs (a JobMessage as JSON)."""

    task_id: str
    kwargs: Any


@dataclass
class Runtime:
    """What a batch needs, loaded once per worker process."""

    pipeline: Any  # worker.face.pipeline.FacePipeline: process(images, cropped) -> list[FaceResult]
    blobs: BlobStore
    database_url: str
    model_version: str
    settings: Settings
    republish: Callable[[list[Delivery]], None]  # send these messages again, unchanged
    # worker.variants.VersionBook: the active version and the candidates, read per batch. None:
    # every job uses model_version.
    versions: Any = None
    suspects: Any = None  # worker.suspects.Suspects; None: no job is ever run alone


@dataclass
class Outcome:
    """A job's final status, result or error, and the templates it creates."""

    status: str
    result: dict | None = None
    error_code: str | None = None
    error_message: str | None = None
    templates: list[tuple[int, np.ndarray, str]] = field(default_factory=list)  # (index, descriptor, key)
    extra_templates: dict[str, list] = field(default_factory=dict)  # other version -> templates like above


def failed(code: str, message: str) -> Outcome:
    return Outcome(status="failed", error_code=code, error_message=message)


@dataclass
class WorkItem:
    """One job of the batch, as read from its row when it was marked running."""

    delivery: Delivery
    message: JobMessage
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    subject: str | None
    top_k: int | None
    cropped: bool
    blob_keys: list[str]
    callback_url: str | None
    attempts: int
    images: list = field(default_factory=list)  # bytes, or a FaceResult error when the fetch failed
    faces: list[FaceResult] = field(default_factory=list)  # one per image
    outcome: Outcome | None = None
    versions: tuple[str, ...] = ()  # the model versions this job embeds for; the first is its own
    descriptors: list[dict] = field(default_factory=list)  # per image: version -> descriptor

    @property
    def model_version(self) -> str | None:
        return self.versions[0] if self.versions else None


@dataclass
class BatchReport:
    """What happened to each message of a batch."""

    batch_id: str
    received: int
    dropped: int = 0  # invalid message, or no such job
    skipped: int = 0  # job already final, or its message twice in the batch
    republished: int = 0  # handed back because Postgres was unreachable
    finished: dict[str, str] = field(default_factory=dict)  # job id -> final status


# --- the unit of work ------------------------------------------------------------------------


def run_batch(deliveries: list[Delivery], runtime: Runtime, batch_id: str | None = None) -> BatchReport:
    """Process one batch of messages end to end; see the module docstring. Suspects (jobs of a
    batch whose process died, worker.suspects) run after the others, each alone."""
    report = BatchReport(batch_id=batch_id or str(uuid.uuid4()), received=len(deliveries))
    metrics.observe_batch(len(deliveries))
    messages = parse(deliveries, report)
    if not messages:
        return report
    suspects = runtime.suspects.among([m.job_id for _, m in messages]) if runtime.suspects is not None else set()
    units = [[pair for pair in messages if pair[1].job_id not in suspects]]
    units += [[pair] for pair in messages if pair[1].job_id in suspects]
    for index, unit in enumerate(units):
        if not unit:
            continue
        if len(unit) == 1 and unit[0][1].job_id in suspects:
            handed_back = not _run_alone(unit[0], runtime, report)
        else:
            handed_back = not _run_unit(unit, runtime, report)
        if handed_back:  # Postgres is away: the jobs not run yet go back too
            rest = [delivery for later in units[index + 1 :] for delivery, _ in later]
            if rest:
                runtime.republish(rest)
                report.republished += len(rest)
            break
    return report


def _run_alone(pair: tuple[Delivery, JobMessage], runtime: Runtime, report: BatchReport) -> bool:
    """A suspect alone, counted as a solo run until it returns; one whose process already died
    settings.max_crashes_alone times alone fails with worker_crash instead."""
    job_id = pair[1].job_id
    crashes = runtime.suspects.crashes(job_id)
    log.warning("suspect runs alone", extra={"job_id": job_id, "batch_id": report.batch_id, "crashes_alone": crashes})
    if crashes >= runtime.settings.max_crashes_alone:
        verdict = failed(WORKER_CRASH, f"the worker process died {crashes} times while processing this job alone")
        done = _run_unit([pair], runtime, report, verdict=verdict)
        if done:
            runtime.suspects.returned(job_id, done)
        return done
    runtime.suspects.start_alone(job_id)
    done = _run_unit([pair], runtime, report)
    runtime.suspects.returned(job_id, done)
    return done


def _run_unit(messages, runtime: Runtime, report: BatchReport, verdict: Outcome | None = None) -> bool:
    """Mark running, decide (or give every job `verdict`), commit, then after_commit. False when
    Postgres was unreachable and the messages were handed back."""
    try:
        items, final, unknown = with_db_retry(
            lambda: _in_transaction(runtime, lambda s: mark_running(s, messages, report.batch_id, runtime)),
            runtime.settings.db_retry_s,
        )
    except DatabaseUnavailable:
        _hand_back(runtime, [d for d, _ in messages], report)
        return False
    for job_id in final:
        log.info("job already final, skipped", extra={"job_id": str(job_id), "batch_id": report.batch_id})
    for job_id in unknown:
        log.warning("dropped message for an unknown job", extra={"job_id": str(job_id), "batch_id": report.batch_id})
    report.skipped += len(final)
    report.dropped += len(unknown)
    if not items:
        return True
    log.info("batch started", extra={"batch_id": report.batch_id, "size": report.received, "jobs": len(items)})
    try:
        if verdict is not None:
            for item in items:
                item.outcome = verdict
        else:
            decide(items, runtime, report.batch_id)
        with metrics.stage("commit"):
            finished = commit_all(items, runtime, report.batch_id)
    except DatabaseUnavailable:
        _hand_back(runtime, [i.delivery for i in items], report)
        return False
    report.skipped += len(items) - len(finished)
    after_commit(finished, runtime, report)
    return True


def parse(deliveries: Iterable[Delivery], report: BatchReport) -> list[tuple[Delivery, JobMessage]]:
    """Valid messages, one per job id; invalid ones are logged (never their payload) and dropped."""
    seen: set[str] = set()
    valid = []
    for delivery in deliveries:
        try:
            if not isinstance(delivery.kwargs, dict):
                raise TypeError(f"kwargs is {type(delivery.kwargs).__name__}, not an object")
            message = JobMessage.model_validate(delivery.kwargs)
            uuid.UUID(message.job_id)
            uuid.UUID(message.tenant_id)
        except (ValidationError, TypeError, ValueError) as exc:
            fields = [".".join(map(str, e["loc"])) for e in exc.errors()] if isinstance(exc, ValidationError) else []
            log.warning(
                "dropped invalid message",
                extra={"task_id": delivery.task_id, "batch_id": report.batch_id, "error": type(exc).__name__,
                       "fields": fields},
            )  # fmt: skip
            report.dropped += 1
            continue
        if message.job_id in seen:  # the same job twice in one batch: done once
            report.skipped += 1
            continue
        seen.add(message.job_id)
        valid.append((delivery, message))
    return valid


def mark_running(session, messages, batch_id: str, runtime: Runtime):
    """Set status running (started_at, attempts + 1, batch_id, model_version) on the jobs that are
    not final. Returns (work items, ids of jobs already final, ids of jobs not found)."""
    by_id = {uuid.UUID(m.job_id): (d, m) for d, m in messages}
    pairs = [(job_id, uuid.UUID(m.tenant_id)) for job_id, (_, m) in by_id.items()]
    rows = session.execute(
        update(Job)
        .where(tuple_(Job.id, Job.tenant_id).in_(pairs), Job.status.not_in(FINAL_STATUSES))
        .values(
            status="running",
            started_at=func.now(),
            attempts=Job.attempts + 1,
            batch_id=batch_id,
            model_version=func.coalesce(Job.model_version, runtime.model_version),  # reenroll: its target
        )
        .returning(
            Job.id,
            Job.tenant_id,
            Job.kind,
            Job.subject_external_id,
            Job.top_k,
            Job.cropped,
            Job.blob_keys,
            Job.callback_url,
            Job.attempts,
        )  # fmt: skip
    ).all()
    items = []
    for row in rows:
        delivery, message = by_id[row.id]
        item = WorkItem(
            delivery=delivery, message=message, job_id=row.id, tenant_id=row.tenant_id, kind=row.kind,
            subject=row.subject_external_id, top_k=row.top_k, cropped=bool(row.cropped),
            blob_keys=list(row.blob_keys or []), callback_url=row.callback_url, attempts=row.attempts,
        )  # fmt: skip
        if item.attempts > runtime.settings.max_job_attempts:
            item.outcome = failed(INTERNAL_ERROR, f"gave up after {item.attempts - 1} attempts")
        elif not item.blob_keys:
            item.outcome = failed(INTERNAL_ERROR, "the job has no images")
        items.append(item)
    started = {row.id for row in rows}
    missing = [pair for pair in pairs if pair[0] not in started]
    final: set[uuid.UUID] = set()
    if missing:
        final = set(
            session.execute(
                select(Job.id).where(tuple_(Job.id, Job.tenant_id).in_(missing), Job.status.in_(FINAL_STATUSES))
            ).scalars()
        )
    unknown = [job_id for job_id, _ in missing if job_id not in final]
    return items, sorted(final), unknown


def decide(items: list[WorkItem], runtime: Runtime, batch_id: str) -> None:
    """Fetch, embed and compare: give every item an outcome. DatabaseUnavailable passes through;
    any other error fails the items still undecided with internal_error."""
    try:
        preprocessing = with_db_retry(
            lambda: _in_transaction(runtime, lambda s: plan_versions(s, items, runtime)),
            runtime.settings.db_retry_s,
        )
        with metrics.stage("fetch"):
            fetch(items, runtime)
        embed(items, runtime, batch_id, preprocessing)
        with metrics.stage("compare"):
            with_db_retry(
                lambda: _in_transaction(runtime, lambda s: compare_all(s, items, runtime)),
                runtime.settings.db_retry_s,
            )
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("batch failed; undecided jobs fail with internal_error", extra={"batch_id": batch_id})
        for item in items:
            if item.outcome is None:
                item.outcome = failed(INTERNAL_ERROR, "internal error while processing the job")
    finally:
        for item in items:
            item.images = []  # the bytes are not needed past this point


def fetch(items: list[WorkItem], runtime: Runtime) -> None:
    """Read every image of the undecided items from the blob store, in a thread pool."""
    wanted = [(item, key) for item in items if item.outcome is None for key in item.blob_keys]
    if not wanted:
        return
    threads = min(len(wanted), runtime.settings.fetch_threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        blobs = list(pool.map(lambda pair: _read_blob(runtime.blobs, pair[1]), wanted))
    for (item, _), blob in zip(wanted, blobs):
        item.images.append(blob)


def _read_blob(blobs: BlobStore, key: str) -> bytes | FaceResult:
    """The image bytes, or a FaceResult error when the blob is missing or unreadable (one retry)."""
    for attempt in range(2):
        try:
            return blobs.get(key)
        except BlobNotFound:
            return FaceResult(error_code=INTERNAL_ERROR, error_message="image not found in the blob store")
        except Exception as exc:
            if attempt == 1:
                log.warning("blob read failed", extra={"blob_key": key, "error": type(exc).__name__})
    return FaceResult(error_code=INTERNAL_ERROR, error_message="image could not be read from the blob store")


VERSION_UNAVAILABLE = "model_version_unavailable"


def plan_versions(session, items: list[WorkItem], runtime: Runtime) -> dict[str, dict]:
    """Give each undecided item its versions: verify and identify the active one, enroll the active
    one and the candidates, reenroll the version its message names. Returns version -> preprocessing."""
    if runtime.versions is None:
        for item in items:
            item.versions = (runtime.model_version,)
        return {runtime.model_version: {}}
    from worker.variants import PRESETS

    plan = runtime.versions.plan(session)
    for item in items:
        if item.outcome is not None:
            continue
        if item.kind == "enroll":
            item.versions = plan.enroll
        elif item.kind == "reenroll":
            target = item.message.model_version if item.message is not None else None
            row = plan.servable.get(target) if target else None
            if row is None or row.status == "retired":
                item.versions = (target or runtime.model_version,)
                item.outcome = failed(VERSION_UNAVAILABLE, f"model version {target!r} is not one this worker can write")
                continue
            item.versions = (target,)
        else:
            item.versions = (plan.active,)
    return {name: dict(row.preprocessing or PRESETS.get(name, {})) for name, row in plan.servable.items()}


def _multi_embedder(pipeline):
    """The worker.variants.MultiEmbedder inside pipeline.embedder (through wrappers), or None."""
    from worker.variants import MultiEmbedder

    embedder = getattr(pipeline, "embedder", None)
    while embedder is not None and not isinstance(embedder, MultiEmbedder):
        embedder = embedder.__dict__.get("inner")
    return embedder


def embed(items: list[WorkItem], runtime: Runtime, batch_id: str, preprocessing: dict | None = None) -> None:
    """One pipeline.process call per set of versions for every fetched image of the undecided
    items (usually one call); on an unexpected error, one call per item, so that only the item
    that breaks it fails."""
    groups: dict[tuple, list[WorkItem]] = {}
    for item in items:
        if item.outcome is None:
            groups.setdefault(item.versions or (runtime.model_version,), []).append(item)
    for versions, pending in groups.items():
        _embed_group(pending, versions, runtime, batch_id, preprocessing or {})


def _embed_group(
    pending: list[WorkItem], versions: tuple, runtime: Runtime, batch_id: str, preprocessing: dict
) -> None:
    images, cropped, slots = [], [], []
    for item in pending:
        item.faces = [None] * len(item.images)
        item.descriptors = [{} for _ in item.images]
        for index, data in enumerate(item.images):
            if isinstance(data, FaceResult):
                item.faces[index] = data
            else:
                images.append(data)
                cropped.append(item.cropped)
                slots.append((item, index))
    if not images:
        return
    multi = _multi_embedder(runtime.pipeline)
    if multi is not None:
        multi.want = {name: preprocessing.get(name, {}) for name in versions}
    elif len(versions) > 1 or versions[0] != runtime.model_version:
        for item in pending:
            item.outcome = failed(VERSION_UNAVAILABLE, f"this worker computes only {runtime.model_version}")
        return

    def run(part_images, part_cropped):
        _crash_hook(runtime.settings, part_images)
        if multi is not None:
            multi.last = {}
        return _with_versions(process_images(runtime.pipeline, part_images, part_cropped), multi, versions)

    for start, end in pixel_parts(runtime, images, slots):
        part_slots = slots[start:end]
        try:
            results = run(images[start:end], cropped[start:end])
        except Exception:
            log.exception("batch forward pass failed; retrying job by job", extra={"batch_id": batch_id})
            results = _process_one_by_one(run, images[start:end], cropped[start:end], part_slots, batch_id)
        for (item, index), (result, by_version) in zip(part_slots, results):
            item.faces[index] = result
            item.descriptors[index] = by_version


def pixel_parts(runtime: Runtime, images: list[bytes], slots: list) -> list[tuple[int, int]]:
    """(start, end) ranges of images, in order, each within settings.batch_pixel_budget decoded
    pixels (counted from the headers), a job's images never split: a job over the budget is a
    part of its own."""
    budget = runtime.settings.batch_pixel_budget
    count = getattr(runtime.pipeline, "decoded_pixels", None) or image_pixels
    pixels = [count(data) for data in images]
    parts: list[tuple[int, int]] = []
    start = used = 0
    index = 0
    while index < len(slots):
        end = index
        while end < len(slots) and slots[end][0] is slots[index][0]:
            end += 1
        job_pixels = sum(pixels[index:end])
        if index > start and used + job_pixels > budget:
            parts.append((start, index))
            start, used = index, 0
        used += job_pixels
        index = end
    if start < len(slots):
        parts.append((start, len(slots)))
    return parts


def _crash_hook(settings: Settings, images: list[bytes]) -> None:
    """Tests only (settings.crash_marker): die like an OOM-killed process on a marked image."""
    marker = settings.crash_marker.encode()
    if marker and any(marker in data for data in images):
        os.kill(os.getpid(), signal.SIGKILL)


def _with_versions(results: list[FaceResult], multi, versions: tuple) -> list[tuple[FaceResult, dict]]:
    """Each result with its descriptor per version (from the MultiEmbedder's last call)."""
    if multi is None:
        return [(r, {versions[0]: r.descriptor} if r.ok else {}) for r in results]
    found = [i for i, r in enumerate(results) if r.ok]
    per_image: list[dict] = [{} for _ in results]
    for name in versions:
        rows = multi.last.get(name, np.zeros((0, 128), dtype=np.float32))
        if len(rows) != len(found):
            raise RuntimeError(f"{len(rows)} descriptors of {name} for {len(found)} faces")
        for i, row in zip(found, rows):
            per_image[i][name] = row
    return list(zip(results, per_image))


def process_images(pipeline, images: list[bytes], cropped: list[bool]) -> list[FaceResult]:
    """pipeline.process, timed as the detect and embed stages (split when the pipeline's embedder
    is a metrics.TimedEmbedder, else all counted as detect)."""
    timed = pipeline.embedder if isinstance(getattr(pipeline, "embedder", None), metrics.TimedEmbedder) else None
    if timed is not None:
        timed.last_s = 0.0
    start = time.perf_counter()
    results = pipeline.process(images, cropped)
    elapsed = time.perf_counter() - start
    if len(results) != len(images):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(images)} images")
    if timed is not None:
        metrics.observe_stage("embed", timed.last_s)
        metrics.observe_stage("detect", max(0.0, elapsed - timed.last_s))
    else:
        metrics.observe_stage("detect", elapsed)
    return results


def _process_one_by_one(run, images, cropped, slots, batch_id) -> list[tuple[FaceResult, dict]]:
    """run(images, cropped) on each item's images alone; an item whose call fails gets errors."""
    results: list[tuple[FaceResult, dict]] = []
    start = 0
    while start < len(slots):
        item = slots[start][0]
        end = start
        while end < len(slots) and slots[end][0] is item:
            end += 1
        try:
            results.extend(run(images[start:end], cropped[start:end]))
        except Exception:
            log.exception("forward pass failed for a job", extra={"job_id": str(item.job_id), "batch_id": batch_id})
            error = FaceResult(error_code=INTERNAL_ERROR, error_message="internal error while processing the image")
            results.extend([(error, {})] * (end - start))
        start = end
    return results


def compare_all(session, items: list[WorkItem], runtime: Runtime) -> None:
    """Give every undecided item its outcome (verify and identify read templates)."""
    pending = [item for item in items if item.outcome is None]
    used = {item.model_version or runtime.model_version for item in pending}
    thresholds = {v: compare.model_threshold(session, v, runtime.settings.match_threshold) for v in used}
    templates = {}
    for v in used:
        verify_keys = [
            (i.tenant_id, i.subject) for i in pending
            if i.kind == "verify" and i.faces and i.faces[0].ok and (i.model_version or runtime.model_version) == v
        ]  # fmt: skip
        templates[v] = compare.subject_templates(session, v, verify_keys)
    identified = nearest.identify_items(session, pending, runtime.model_version, runtime.settings, DEFAULT_TOP_K)
    for item in pending:
        mv = item.model_version or runtime.model_version
        threshold = thresholds[mv]
        if item.kind in ENROLL_KINDS:
            item.outcome = enroll_outcome(item, mv)
            continue
        probe = item.faces[0]
        if not probe.ok:
            item.outcome = failed(probe.error_code or INTERNAL_ERROR, probe.error_message or "no descriptor")
        elif item.kind == "verify":
            gallery = templates[mv].get((item.tenant_id, item.subject))
            if gallery is None:
                item.outcome = failed(SUBJECT_NOT_FOUND, f"subject {item.subject!r} has no templates of {mv}")
                continue
            distance, count = compare.verify(probe.descriptor, gallery)
            item.outcome = Outcome(
                status="succeeded",
                result={"distance": distance, "threshold": threshold, "match": distance <= threshold,
                        "model_version": mv, "templates_compared": count},
            )  # fmt: skip
        elif item.kind == "identify":
            candidates = identified[id(item)]
            item.outcome = Outcome(
                status="succeeded", result={"candidates": candidates, "threshold": threshold, "model_version": mv}
            )
        else:
            item.outcome = failed(INTERNAL_ERROR, f"unknown job kind {item.kind!r}")


def enroll_outcome(item: WorkItem, model_version: str) -> Outcome:
    """Succeeded with a template per enrolled image, or failed with the first image's error."""
    images, templates = [], []
    for index, face in enumerate(item.faces):
        if face.ok:
            templates.append((index, face.descriptor, item.blob_keys[index]))
            images.append({"index": index, "status": "enrolled", "error": None})
        else:
            error = {"code": face.error_code or INTERNAL_ERROR, "message": face.error_message or "no descriptor"}
            images.append({"index": index, "status": "failed", "error": error})
    if not templates:
        first = images[0]["error"]
        return failed(first["code"], first["message"])
    result = {"subject_id": item.subject, "templates_created": len(templates), "model_version": model_version,
              "images": images}  # fmt: skip
    extra = {}
    for version in item.versions[1:]:  # candidates written beside the active version
        extra[version] = [
            (index, item.descriptors[index][version], key)
            for index, _, key in templates
            if index < len(item.descriptors) and version in item.descriptors[index]
        ]
    if extra:
        result["also_written"] = {version: len(rows) for version, rows in extra.items()}
    return Outcome(status="succeeded", result=result, templates=templates, extra_templates=extra)


# --- the transaction -------------------------------------------------------------------------


def commit_all(items: list[WorkItem], runtime: Runtime, batch_id: str) -> list[WorkItem]:
    """Write every outcome in one transaction; if that fails for a reason other than an
    unreachable database, job by job, failing with internal_error a job that cannot be written.
    Returns the items this call made final."""
    try:
        return with_db_retry(
            lambda: _in_transaction(runtime, lambda s: write_outcomes(s, items, runtime.model_version, batch_id)),
            runtime.settings.db_retry_s,
        )
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("batch transaction failed; writing job by job", extra={"batch_id": batch_id})
    finished = []
    for item in items:
        try:
            finished += with_db_retry(
                lambda: _in_transaction(runtime, lambda s: write_outcomes(s, [item], runtime.model_version, batch_id)),
                runtime.settings.db_retry_s,
            )
            continue
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception("job could not be written", extra={"job_id": str(item.job_id), "batch_id": batch_id})
        item.outcome = failed(INTERNAL_ERROR, "internal error while saving the result")
        try:
            finished += _in_transaction(runtime, lambda s: write_outcomes(s, [item], runtime.model_version, batch_id))
        except Exception:
            log.exception("job left unfinished", extra={"job_id": str(item.job_id), "batch_id": batch_id})
    return finished


def write_outcomes(session, items: list[WorkItem], model_version: str, batch_id: str) -> list[WorkItem]:
    """Final status, templates and callback outbox row of each item whose job is not final yet;
    the items written."""
    written = []
    for item in items:
        outcome = item.outcome
        row = session.execute(
            update(Job)
            .where(Job.id == item.job_id, Job.status.not_in(FINAL_STATUSES))
            .values(
                status=outcome.status,
                result=outcome.result if outcome.result is not None else null(),
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                finished_at=func.now(),
                batch_id=batch_id,
                model_version=item.model_version or model_version,
            )
            .returning(Job.id)
        ).first()
        if row is None:
            log.info("job already final, not rewritten", extra={"job_id": str(item.job_id), "batch_id": batch_id})
            continue
        if outcome.templates:
            write_templates(session, item, item.model_version or model_version)
        for version, rows in outcome.extra_templates.items():
            if rows:
                write_templates(session, item, version, rows)
        written.append(item)
    outbox.add(session, [item.job_id for item in written if item.callback_url])
    return written


def write_templates(session, item: WorkItem, model_version: str, templates: list | None = None) -> None:
    """Create the subject if missing, then its templates of model_version (default: the outcome's
    own), ON CONFLICT DO NOTHING."""
    session.execute(
        insert(Subject)
        .values(id=uuid.uuid4(), tenant_id=item.tenant_id, external_id=item.subject)
        .on_conflict_do_nothing(index_elements=["tenant_id", "external_id"])
    )
    subject_id = session.execute(
        select(Subject.id).where(Subject.tenant_id == item.tenant_id, Subject.external_id == item.subject)
    ).scalar_one()
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": item.tenant_id,
            "subject_id": subject_id,
            "model_version": model_version,
            "embedding": np.asarray(descriptor, dtype=np.float32),
            "source_job_id": item.job_id,
            "image_index": index,
            "image_key": key,
        }  # fmt: skip
        for index, descriptor, key in (item.outcome.templates if templates is None else templates)
    ]
    session.execute(
        insert(Template)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["source_job_id", "image_index", "model_version"])
    )


# --- after the commit ------------------------------------------------------------------------


def after_commit(finished: list[WorkItem], runtime: Runtime, report: BatchReport) -> None:
    """Delete probe images (and enrollment images that gave no template), count and log each
    finished job. Failures here are logged, never raised."""
    delete_keys = []
    for item in finished:
        if item.kind in PROBE_KINDS and runtime.settings.probe_retention_s == 0:
            delete_keys += item.blob_keys
        elif item.kind == "enroll":
            kept = {key for _, _, key in item.outcome.templates}
            delete_keys += [key for key in item.blob_keys if key not in kept]
    if delete_keys:
        with ThreadPoolExecutor(max_workers=min(len(delete_keys), runtime.settings.fetch_threads)) as pool:
            list(pool.map(lambda key: _delete_blob(runtime.blobs, key, report.batch_id), delete_keys))
    now = time.time()
    for item in finished:
        outcome = item.outcome
        extra = {"job_id": str(item.job_id), "batch_id": report.batch_id}
        report.finished[str(item.job_id)] = outcome.status
        metrics.job_finished(item.kind, outcome.status, now - item.message.submitted_at)
        log.info(
            "job finished",
            extra={**extra, "kind": item.kind, "status": outcome.status, "error_code": outcome.error_code},
        )


def _delete_blob(blobs: BlobStore, key: str, batch_id: str) -> None:
    try:
        blobs.delete(key)
    except Exception as exc:
        log.warning("blob delete failed", extra={"blob_key": key, "batch_id": batch_id, "error": type(exc).__name__})


# --- database helpers ------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """True for errors of an unreachable or restarting database (worth waiting for)."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], Any], budget_s: float, first_delay_s: float = 0.25) -> Any:
    """fn(), retried with exponential backoff while it fails with a transient database error, for
    up to budget_s seconds; then DatabaseUnavailable. Other errors pass through."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            log.warning("database unavailable, retrying", extra={"retry_in_s": round(delay, 2)})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _in_transaction(runtime: Runtime, fn: Callable[[Any], Any]) -> Any:
    with session_scope(runtime.database_url) as session:
        return fn(session)


def _hand_back(runtime: Runtime, deliveries: list[Delivery], report: BatchReport) -> BatchReport:
    """Re-publish the messages unchanged (same kwargs, queue and task id) so nothing is lost."""
    log.error(
        "database unavailable; batch handed back to the broker",
        extra={"batch_id": report.batch_id, "jobs": len(deliveries)},
    )
    runtime.republish(deliveries)
    report.republished += len(deliveries)
    return report
