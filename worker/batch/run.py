"""run_batch: one batch of job messages as one unit of work.

parse the messages (poison ones are logged and dropped) -> mark the jobs running -> plan model
versions (verify and identify use the active version, enroll writes the active one and every
candidate, reenroll the version its message names) -> fetch their images (embed.fetch) -> one
pipeline pass for every image of every job (embed.embed) -> decide (decide.decide_item, with the
templates read through the unit of work) -> one transaction: final statuses, templates, callback
outbox rows -> after-commit effects (effects.after_commit).

Suspects (jobs of a batch whose pool process died; worker.suspects) run after the others, each
alone and committed before the next, so a job that kills its process fails alone, with
worker_crash. Every job is decided on its own: an image error fails only its job, an unexpected
error fails the jobs still undecided with internal_error. Only an unreachable database (after
retrying for settings.db_retry_s) hands the batch back: its messages are re-published, unchanged.
Writes are idempotent by job id: a job already final is never rewritten.
"""

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import ValidationError

from shared.messages import JobMessage
from worker import metrics
from worker.batch.decide import decide_item, plan_versions, verify_keys
from worker.batch.effects import after_commit
from worker.batch.embed import embed, fetch
from worker.batch.model import (
    DEFAULT_TOP_K,
    INTERNAL_ERROR,
    WORKER_CRASH,
    BatchReport,
    Delivery,
    Outcome,
    Probe,
    Runtime,
    WorkItem,
    failed,
)
from worker.batch.same_batch import earlier_templates, merge_candidates, with_earlier
from worker.batch.uow import BatchUnitOfWork, DatabaseUnavailable, JobsRepository, in_transaction

log = logging.getLogger(__name__)

Pair = tuple[Delivery, JobMessage]


def run_batch(
    deliveries: list[Delivery], runtime: Runtime, uow: BatchUnitOfWork | None = None, batch_id: str | None = None
) -> BatchReport:
    """Process one batch of messages end to end; see the module docstring. uow: the jobs and
    templates (default: Postgres at runtime.database_url)."""
    if uow is None:
        from worker.batch.sql import SqlBatchUnitOfWork

        uow = SqlBatchUnitOfWork(runtime.database_url, runtime.settings)
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
            handed_back = not _run_alone(unit[0], runtime, uow, report)
        else:
            handed_back = not _run_unit(unit, runtime, uow, report)
        if handed_back:  # the database is away: the jobs not run yet go back too
            rest = [delivery for later in units[index + 1 :] for delivery, _ in later]
            if rest:
                runtime.republish(rest)
                report.republished += len(rest)
            break
    return report


def _run_alone(pair: Pair, runtime: Runtime, uow: BatchUnitOfWork, report: BatchReport) -> bool:
    """A suspect alone, counted as a solo run until it returns; one whose process already died
    settings.max_crashes_alone times alone fails with worker_crash instead."""
    job_id = pair[1].job_id
    crashes = runtime.suspects.crashes(job_id)
    log.warning("suspect runs alone", extra={"job_id": job_id, "batch_id": report.batch_id, "crashes_alone": crashes})
    if crashes >= runtime.settings.max_crashes_alone:
        verdict = failed(WORKER_CRASH, f"the worker process died {crashes} times while processing this job alone")
        done = _run_unit([pair], runtime, uow, report, verdict=verdict)
        if done:
            runtime.suspects.returned(job_id, done)
        return done
    runtime.suspects.start_alone(job_id)
    done = _run_unit([pair], runtime, uow, report)
    runtime.suspects.returned(job_id, done)
    return done


def _run_unit(
    messages: list[Pair], runtime: Runtime, uow: BatchUnitOfWork, report: BatchReport, verdict: Outcome | None = None
) -> bool:
    """Mark running, decide (or give every job `verdict`), commit, then after_commit. False when
    the database was unreachable and the messages were handed back."""
    budget = runtime.settings.db_retry_s
    try:
        items, final, unknown = in_transaction(
            uow, lambda repo: mark_running(repo, messages, report.batch_id, runtime), budget
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
    metrics.take_stage_totals()  # this unit's stages only
    try:
        if verdict is not None:
            for item in items:
                item.outcome = verdict
        else:
            decide(items, runtime, uow, report.batch_id)
        with metrics.stage("commit"):
            finished = commit_all(items, runtime, uow, report.batch_id)
    except DatabaseUnavailable:
        _hand_back(runtime, [i.delivery for i in items], report)
        return False
    report.skipped += len(items) - len(finished)
    after_commit(finished, runtime, report)
    log.info(
        "batch finished",
        extra={"batch_id": report.batch_id, "jobs": len(items), "stage_s": metrics.take_stage_totals()},
    )
    return True


def parse(deliveries: Iterable[Delivery], report: BatchReport) -> list[Pair]:
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
                extra={
                    "task_id": delivery.task_id,
                    "batch_id": report.batch_id,
                    "error": type(exc).__name__,
                    "fields": fields,
                },
            )
            report.dropped += 1
            continue
        if message.job_id in seen:  # the same job twice in one batch: done once
            report.skipped += 1
            continue
        seen.add(message.job_id)
        valid.append((delivery, message))
    return valid


def mark_running(
    repo: JobsRepository, messages: list[Pair], batch_id: str, runtime: Runtime
) -> tuple[list[WorkItem], list[uuid.UUID], list[uuid.UUID]]:
    """Mark the jobs that are not final running. Returns (work items, ids of jobs already final,
    ids of jobs not found)."""
    by_id = {uuid.UUID(m.job_id): (d, m) for d, m in messages}
    pairs = [(job_id, uuid.UUID(m.tenant_id)) for job_id, (_, m) in by_id.items()]
    rows = repo.mark_running(pairs, batch_id, runtime.model_version)
    items = []
    for row in rows:
        item = WorkItem.from_row(row, *by_id[row.job_id])
        if item.attempts > runtime.settings.max_job_attempts:
            item.outcome = failed(INTERNAL_ERROR, f"gave up after {item.attempts - 1} attempts")
        elif not item.blob_keys:
            item.outcome = failed(INTERNAL_ERROR, "the job has no images")
        items.append(item)
    started = {row.job_id for row in rows}
    missing = [pair for pair in pairs if pair[0] not in started]
    final = repo.final_among(missing) if missing else set()
    unknown = [job_id for job_id, _ in missing if job_id not in final]
    return items, sorted(final), unknown


def decide(items: list[WorkItem], runtime: Runtime, uow: BatchUnitOfWork, batch_id: str) -> None:
    """Plan versions, fetch, embed and compare: give every item an outcome. DatabaseUnavailable
    passes through; any other error fails the items still undecided with internal_error."""
    budget = runtime.settings.db_retry_s
    try:
        preprocessing = in_transaction(uow, lambda repo: _plan(repo, items, runtime), budget)
        with metrics.stage("fetch"):
            fetch(items, runtime)
        embed(items, runtime, batch_id, preprocessing)
        with metrics.stage("compare"):
            in_transaction(uow, lambda repo: compare_all(repo, items, runtime), budget)
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


def _plan(repo: JobsRepository, items: list[WorkItem], runtime: Runtime) -> dict[str, dict[str, Any]]:
    book = runtime.versions
    plan = book.plan(repo.model_versions(book.architecture)) if book is not None else None
    return plan_versions(items, plan, runtime.model_version)


def compare_all(repo: JobsRepository, items: list[WorkItem], runtime: Runtime) -> None:
    """Give every undecided item its outcome: the enrollments first, in submission order, then
    verify and identify, which see the templates of the enrollments submitted before them in the
    batch (worker.batch.same_batch) besides those in the database."""
    pending = [item for item in items if item.outcome is None]
    for item in pending:
        item.versions = item.versions or (runtime.model_version,)
    enrolled = []
    for item in sorted((i for i in pending if i.kind == "enroll"), key=lambda i: i.submitted_at):
        item.outcome = decide_item(item, 0.0, {}, None)
        if item.outcome.status == "succeeded":
            enrolled.append(item)
    pending = [item for item in pending if item.outcome is None]
    used = {item.versions[0] for item in pending}
    default = runtime.settings.match_threshold
    thresholds = {v: repo.threshold(v, default) for v in used}
    galleries = {v: repo.templates_for(v, verify_keys(pending, v)) for v in used}
    found = nearest_all(repo, pending, runtime.settings.max_top_k)
    for item in pending:
        version = item.versions[0]
        earlier = earlier_templates(item, enrolled, version) if enrolled else {}
        gallery = with_earlier(galleries[version], item, earlier)
        candidates = found.get(id(item))
        if candidates is not None and earlier:
            top_k = min(item.top_k or DEFAULT_TOP_K, runtime.settings.max_top_k)
            probes = probe_descriptors(item)
            candidates = [merge_candidates(c, d, earlier, top_k) for c, d in zip(candidates, probes, strict=True)]
        item.outcome = decide_item(item, thresholds[version], gallery, candidates)


def nearest_all(repo: JobsRepository, items: list[WorkItem], max_top_k: int) -> dict[int, list[list[dict[str, Any]]]]:
    """The candidates of every identify item with a probe descriptor, by id(item), per face of its
    image (max_faces > 1: several, largest first): all probes in one search call."""
    asking: list[WorkItem] = []
    probes: list[Probe] = []
    for item in items:
        if item.kind != "identify":
            continue
        top_k = min(item.top_k or DEFAULT_TOP_K, max_top_k)
        for descriptor in probe_descriptors(item):
            asking.append(item)
            probes.append(Probe(item.tenant_id, item.versions[0], descriptor, top_k))
    found: dict[int, list[list[dict[str, Any]]]] = {}
    if probes:
        started = time.perf_counter()
        answers = repo.nearest(probes)
        metrics.add_stage_time("search", time.perf_counter() - started)
        for item, candidates in zip(asking, answers, strict=True):
            found.setdefault(id(item), []).append(candidates)
    return found


def probe_descriptors(item: WorkItem) -> list[np.ndarray]:
    """The descriptors of the faces of an item's first image, largest first."""
    first = item.faces[0] if item.faces else None
    if first is None:
        return []
    return [face.descriptor for face in [first, *first.others] if face.descriptor is not None]


def commit_all(items: list[WorkItem], runtime: Runtime, uow: BatchUnitOfWork, batch_id: str) -> list[WorkItem]:
    """Write every outcome in one transaction; if that fails for a reason other than an
    unreachable database, job by job, failing with internal_error a job that cannot be written.
    Returns the items this call made final."""
    budget = runtime.settings.db_retry_s
    try:
        return in_transaction(uow, lambda repo: write_outcomes(repo, items, runtime, batch_id), budget)
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("batch transaction failed; writing job by job", extra={"batch_id": batch_id})
    finished: list[WorkItem] = []
    for item in items:
        try:
            finished += in_transaction(uow, lambda repo: write_outcomes(repo, [item], runtime, batch_id), budget)
            continue
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception("job could not be written", extra={"job_id": str(item.job_id), "batch_id": batch_id})
        item.outcome = failed(INTERNAL_ERROR, "internal error while saving the result")
        try:
            finished += uow.run(lambda repo: write_outcomes(repo, [item], runtime, batch_id))
        except Exception:
            log.exception("job left unfinished", extra={"job_id": str(item.job_id), "batch_id": batch_id})
    return finished


def write_outcomes(repo: JobsRepository, items: list[WorkItem], runtime: Runtime, batch_id: str) -> list[WorkItem]:
    """Final status, templates and callback outbox row of each item whose job is not final yet;
    the items written."""
    written = []
    for item in items:
        if repo.write_outcome(item, batch_id, item.model_version or runtime.model_version):
            written.append(item)
        else:
            log.info("job already final, not rewritten", extra={"job_id": str(item.job_id), "batch_id": batch_id})
    repo.add_callbacks([item.job_id for item in written if item.callback_url])
    return written


def _hand_back(runtime: Runtime, deliveries: list[Delivery], report: BatchReport) -> None:
    """Re-publish the messages unchanged (same kwargs, queue and task id) so nothing is lost."""
    log.error(
        "database unavailable; batch handed back to the broker",
        extra={"batch_id": report.batch_id, "jobs": len(deliveries)},
    )
    runtime.republish(deliveries)
    report.republished += len(deliveries)
