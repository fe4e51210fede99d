"""`biofleet models list|register|activate|index|retire` and `biofleet reenroll --to-model VERSION`.

Both talk to Postgres (and reenroll to Redis) directly, through the running stack's URLs or the
BIOFLEET_* settings: they are operator tools, not API clients.
"""

import json
import sys
import time
import uuid

import click

from cli.common import database_url

MAX_KEYS = 10  # images per reenroll job (JobMessage.blob_keys)
REENROLL_MAX_QUEUED = 8  # reenroll messages in Redis at once: a worker batch holds at most this many


def _settings():
    from shared.logs import configure_logging
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging("WARNING", settings.log_json)
    return settings


def _run(settings, fn):
    """fn(session) in one transaction; GalleryError becomes a clean CLI error."""
    from shared.db.session import session_scope
    from shared.gallery import GalleryError

    try:
        with session_scope(database_url(settings)) as session:
            return fn(session)
    except GalleryError as error:
        raise click.ClickException(str(error)) from None


@click.group()
def models() -> None:
    """Model versions: list, register, activate, retire."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_models(as_json: bool) -> None:
    """Every model version: status, threshold, templates, subjects, coverage of the active one."""
    from shared.gallery import versions_table

    rows = _run(_settings(), versions_table)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model versions")
    for column in ("name", "status", "threshold", "preprocessing", "templates", "subjects", "coverage"):
        numeric = column in ("threshold", "templates", "subjects", "coverage")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column in ("name", "status"))
    for row in rows:
        extra = {k: v for k, v in (row["preprocessing"] or {}).items() if k in ("jitter", "flip")}
        cover = "-" if row["coverage"] is None else f"{100 * row['coverage']:.1f}%"
        table.add_row(
            row["name"],
            row["status"],
            f"{row['threshold']:.4f}",
            json.dumps(extra) if extra else "-",
            str(row["templates"]),
            str(row["subjects"]),
            cover,
        )
    Console().print(table)


@models.command("register")
@click.argument("name")
@click.option("--jitter", type=click.IntRange(0, 16), default=None, help="Average N jittered copies of each chip.")
@click.option("--flip", is_flag=True, default=None, help="Average each chip with its mirror image.")
@click.option("--threshold", type=float, default=None, help="Match threshold (default: settings.match_threshold).")
def register(name: str, jitter: int | None, flip: bool | None, threshold: float | None) -> None:
    """Register NAME as a candidate version of the network this install ships.

    Known names (dlib-resnet-v1, dlib-resnet-v1-jitter4, dlib-resnet-v1-flip) take their
    preprocessing from the preset; any other name needs --jitter or --flip (or neither: plain)."""
    from worker.face.weights import RECOGNITION_MODEL, model_path, sha256_file
    from worker.versions import ARCHITECTURE, check_preprocessing, preset

    settings = _settings()
    preprocessing = preset(name)
    if jitter is not None:
        preprocessing["jitter"] = jitter
    if flip:
        preprocessing["flip"] = True
    try:
        check_preprocessing(preprocessing)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    sha = sha256_file(model_path(RECOGNITION_MODEL))
    chosen = settings.match_threshold if threshold is None else threshold
    from shared.gallery import register_version

    _run(settings, lambda s: register_version(s, name, ARCHITECTURE, sha, preprocessing, chosen))
    click.echo(f"registered {name} as a candidate (threshold {chosen:g}); enrollments now write it too")
    click.echo(f"next: biofleet reenroll --to-model {name}, then biofleet models activate {name}")


@models.command("activate")
@click.argument("name")
@click.option("--force", is_flag=True, help="Activate below 100% coverage (uncovered subjects stop verifying).")
def activate(name: str, force: bool) -> None:
    """Make NAME the version verifications use, atomically; refused below 100% coverage.
    NAME's gallery indexes are built first (concurrently), so identification stays fast."""
    from shared.gallery import activate_version, get_version

    settings = _settings()
    _run(settings, lambda s: get_version(s, name))
    _build_indexes(settings, [name])
    cover = _run(settings, lambda s: activate_version(s, name, force=force))
    click.echo(f"{name} is active ({cover.covered}/{cover.subjects} subjects of {cover.source or '-'} covered)")
    if cover.source:
        click.echo(f"{cover.source} is now a candidate: retire it with `biofleet models retire {cover.source}`")


def _build_indexes(settings, versions: list[str] | None) -> None:
    """Build the missing gallery indexes (of `versions`, default all) and say what was done."""
    from shared.gallery_index import maintain_indexes

    started = time.monotonic()
    report = maintain_indexes(database_url(settings), settings, versions)
    if report is None:
        click.echo("gallery indexes: another process is building them; run again later")
    elif report["built"] or report["dropped"]:
        click.echo(
            f"gallery indexes: {len(report['built'])} built, {len(report['dropped'])} dropped "
            f"({time.monotonic() - started:.1f} s)"
        )


@models.command("index")
def index() -> None:
    """Build the gallery indexes that galleries over BIOFLEET_ANN_MIN_TEMPLATES lack, drop stale ones."""
    _build_indexes(_settings(), None)


@models.command("retire")
@click.argument("name")
def retire(name: str) -> None:
    """Stop writing NAME's templates (they are kept). The active version cannot be retired."""
    from shared.gallery import retire_version

    _run(_settings(), lambda s: retire_version(s, name))
    click.echo(f"{name} is retired")


# --- reenroll --------------------------------------------------------------------------------


def submit_reenroll(database_url: str, celery, subject, target: str) -> list[str]:
    """Reenroll jobs for one subject: its retained images, 10 per job, crops apart from photos as
    they were enrolled. The rows are committed, then the messages published (a row whose message
    is lost is published again by the sweeper)."""
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.jobs import message_for, publish

    messages = []
    with session_scope(database_url) as session:
        for cropped, keys in subject.groups():
            for start in range(0, len(keys), MAX_KEYS):
                job = Job(
                    id=uuid.uuid4(),
                    tenant_id=subject.tenant_id,
                    kind="reenroll",
                    status="queued",
                    subject_external_id=subject.external_id,
                    blob_keys=keys[start : start + MAX_KEYS],
                    cropped=cropped,
                    attempts=0,
                    model_version=target,
                )
                session.add(job)
                session.flush()
                session.refresh(job)
                messages.append(message_for(job))
    for message in messages:
        publish(celery, message)
    return [message.job_id for message in messages]


def _wait_room(redis_client, bound: int, stop_after: float) -> None:
    from shared.queue_depth import queue_depths
    from shared.queues import REENROLL

    while queue_depths(redis_client, (REENROLL,))[REENROLL] >= bound and time.monotonic() < stop_after:
        time.sleep(0.2)


def _job_states(database_url: str, job_ids: list[str]) -> dict[str, tuple]:
    from sqlalchemy import select

    from shared.db.models import Job
    from shared.db.session import session_scope

    if not job_ids:
        return {}
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.subject_external_id, Job.tenant_id, Job.error_code, Job.result).where(
                Job.id.in_([uuid.UUID(j) for j in job_ids])
            )
        ).all()
    return {str(r.id): (r.status, r.subject_external_id, r.tenant_id, r.error_code, r.result) for r in rows}


@click.command()
@click.option("--to-model", "target", required=True, help="The candidate version to write templates of.")
@click.option(
    "--max-queued",
    default=REENROLL_MAX_QUEUED,
    show_default=True,
    type=click.IntRange(min=1),
    help="Reenroll messages in Redis at once (backpressure).",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def reenroll(target: str, max_queued: int, timeout: float, as_json: bool) -> None:
    """Re-embed every retained enrollment image of every subject of the active version into
    TARGET, through the low-priority `reenroll` queue. Resumable: a rerun skips covered subjects
    and waits for jobs an earlier run left queued. Exit status 1 while coverage is incomplete."""
    import redis
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shared.celery_app import get_celery
    from shared.db.session import session_scope
    from shared.gallery import coverage, reenroll_plan
    from shared.services import resolve

    settings = _settings()
    urls = resolve(settings)
    plan = _run(settings, lambda s: reenroll_plan(s, target))
    if plan.source is None:
        raise click.ClickException(f"no active version other than {target} to reenroll from (is it active already?)")
    celery = get_celery()
    redis_client = redis.Redis.from_url(urls.redis_url)
    deadline = time.monotonic() + timeout
    job_ids = [str(j) for j in plan.pending]
    total = len(plan.todo) + len(plan.pending)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    states: dict[str, tuple] = {}
    with Progress(*columns, console=_console(), transient=as_json) as progress:
        bar = progress.add_task(f"reenroll -> {target}", total=total or 1, failed=0)
        for subject in plan.todo:
            _wait_room(redis_client, max_queued, deadline)
            job_ids += submit_reenroll(urls.database_url, celery, subject, target)
            states = _job_states(urls.database_url, job_ids)
            _update(progress, bar, states)
        while time.monotonic() < deadline:
            states = _job_states(urls.database_url, job_ids)
            _update(progress, bar, states)
            if all(state[0] in ("succeeded", "failed") for state in states.values()):
                break
            time.sleep(0.5)
    redis_client.close()
    with session_scope(urls.database_url) as session:
        cover = coverage(session, target)
    summary = _summary(plan, cover, states)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
    if not cover.complete:
        sys.exit(1)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _update(progress, bar, states: dict) -> None:
    subjects: dict[tuple, list[str]] = {}
    for status, external_id, tenant_id, _, _ in states.values():
        subjects.setdefault((tenant_id, external_id), []).append(status)
    done = sum(all(s in ("succeeded", "failed") for s in v) for v in subjects.values())
    failed = sum(any(s == "failed" for s in v) for v in subjects.values())
    progress.update(bar, completed=done, failed=failed)


def _summary(plan, cover, states: dict) -> dict:
    failures = []
    images_missing = 0
    for job_id, (status, external_id, tenant_id, code, result) in sorted(states.items()):
        if status == "failed":
            failures.append({"tenant_id": str(tenant_id), "subject_id": external_id, "job_id": job_id, "code": code})
        elif result:
            images_missing += sum(1 for image in result.get("images", []) if image["status"] != "enrolled")
    return {
        "target": plan.target,
        "source": plan.source,
        "subjects": cover.subjects,
        "covered": cover.covered,
        "coverage": cover.fraction,
        "submitted_jobs": len(states),
        "failed_jobs": failures,
        "images_not_reenrolled": images_missing,
        "no_retained_images": [{"tenant_id": str(t), "subject_id": s} for t, s in plan.no_images],
        "missing": [{"tenant_id": str(t), "subject_id": s} for t, s in cover.missing[:50]],
    }


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reenroll {summary['source']} -> {summary['target']}")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("subjects of the active version", str(summary["subjects"]))
    table.add_row("covered by the target", f"{summary['covered']} ({100 * summary['coverage']:.1f}%)")
    table.add_row("jobs this run watched", str(summary["submitted_jobs"]))
    table.add_row("jobs failed", str(len(summary["failed_jobs"])))
    table.add_row("images not re-enrolled (no face, missing)", str(summary["images_not_reenrolled"]))
    table.add_row("subjects without retained images", str(len(summary["no_retained_images"])))
    console = Console()
    console.print(table)
    for entry in summary["no_retained_images"][:20]:
        console.print(f"no retained images (erased or expired): {entry['tenant_id']} {entry['subject_id']}")
    for entry in summary["failed_jobs"][:20]:
        console.print(f"failed: {entry['tenant_id']} {entry['subject_id']} job {entry['job_id']}: {entry['code']}")
    if summary["coverage"] >= 1:
        console.print(f"coverage complete: biofleet models activate {summary['target']}")


COMMANDS = [models, reenroll]
