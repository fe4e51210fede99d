"""`biofleet enroll-dir ROOT`: enroll every ROOT/<subject>/<images> through the API.

ROOT is a local folder (images uploaded) or s3://bucket/prefix (images sent by reference,
{"uri": "s3://bucket/key"}: the workers read them, so the tenant needs the prefix allowed,
`biofleet keys image-prefixes`). Each subject is one enroll job of its first K
images, sent with an Idempotency-Key derived from the subject, its images and its attempt
number, so a job submitted before an interruption is found again, never enrolled twice. A state
file (JSON lines) records each subject's job and final status: a rerun skips subjects that
succeeded, waits for the ones it submitted, and retries the ones that failed. Submission waits
while the queue depth exporter (--depth-url, shared/exporter.py) reports more than --max-queue
enroll messages (backpressure).
"""

import csv
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click

from shared.services import read_stack_file
from shared.settings import get_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".webp"}
FINAL = ("succeeded", "failed")
RETRY_STATUSES = (429, 502, 503, 504)


@dataclass
class SubjectSource:
    """One subject folder: its id and image locations (paths, or s3 keys)."""

    subject_id: str
    images: list[str]


@dataclass
class Tally:
    enrolled: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier run
    images: int = 0  # images sent
    templates: int = 0
    failures: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# --- sources ---------------------------------------------------------------------------------


def list_subjects(root: str, samples: int) -> list[SubjectSource]:
    """Subjects under a local folder or s3://bucket/prefix, each with its first `samples` images."""
    if root.startswith("s3://"):
        return _s3_subjects(root, samples)
    folder = Path(root)
    if not folder.is_dir():
        raise click.ClickException(f"{root} is not a folder")
    subjects = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(str(p) for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            subjects.append(SubjectSource(sub.name, images[:samples]))
    return subjects


def _s3_parts(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return bucket, (prefix.rstrip("/") + "/") if prefix else ""


def _s3_subjects(url: str, samples: int) -> list[SubjectSource]:
    import boto3

    bucket, prefix = _s3_parts(url)
    grouped: dict[str, list[str]] = {}
    for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            rest = entry["Key"][len(prefix) :]
            subject, sep, name = rest.partition("/")
            if sep and "/" not in name and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                grouped.setdefault(subject, []).append(entry["Key"])
    return [SubjectSource(s, sorted(keys)[:samples]) for s, keys in sorted(grouped.items())]


def image_ref(root: str, location: str) -> dict[str, str] | None:
    """The JSON image field for an image by reference ({"uri": ...}) under an s3 root; None for a
    local file, which is uploaded."""
    if not root.startswith("s3://"):
        return None
    bucket, _ = _s3_parts(root)
    return {"uri": f"s3://{bucket}/{location}"}


def read_image(root: str, location: str) -> bytes:
    if root.startswith("s3://"):
        import boto3

        bucket, _ = _s3_parts(root)
        return boto3.client("s3").get_object(Bucket=bucket, Key=location)["Body"].read()
    return Path(location).read_bytes()


# --- state -----------------------------------------------------------------------------------


class StateFile:
    """Append-only JSON lines: {"subject", "attempt", "job_id", "status", ...}; the last line of a
    subject wins."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.latest: dict[str, dict] = {}
        self.failures: dict[str, int] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by an interruption
                self._note(entry)

    def _note(self, entry: dict) -> None:
        self.latest[entry["subject"]] = entry
        if entry.get("status") == "failed":
            self.failures[entry["subject"]] = entry.get("attempt", 0) + 1

    def record(self, entry: dict) -> None:
        with self.lock:
            self._note(entry)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()

    def attempt(self, subject: str) -> int:
        return self.failures.get(subject, 0)


def default_state_path(state_dir: Path, root: str) -> Path:
    digest = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:12]
    return state_dir / "enroll-dir" / f"{digest}.jsonl"


def idempotency_key(subject: SubjectSource, attempt: int) -> str:
    names = "\n".join(Path(image).name for image in subject.images)
    digest = hashlib.sha256(f"{subject.subject_id}\n{names}".encode()).hexdigest()[:32]
    return f"enroll-dir:{digest}:{attempt}"


# --- the API side ----------------------------------------------------------------------------


def enroll_queue_depth(depth_url: str | None) -> float | None:
    """biofleet_queue_depth{queue="enroll"} from the depth exporter, or None when unreadable."""
    import httpx

    if not depth_url:
        return None
    try:
        text = httpx.get(depth_url, timeout=5).text
    except Exception:
        return None
    for line in text.splitlines():
        if line.startswith('biofleet_queue_depth{queue="enroll"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


class Enroller:
    """Submits one subject's enroll job and waits for it, recording both in the state file."""

    def __init__(
        self,
        api,
        root: str,
        state: StateFile,
        tally: Tally,
        max_queue: int,
        stop: threading.Event,
        timeout: float,
        advance,
        depth_url: str | None = None,
    ):
        self.api, self.root, self.state, self.tally, self.depth_url = api, root, state, tally, depth_url
        self.max_queue, self.stop, self.timeout, self.advance = max_queue, stop, timeout, advance
        self.room = threading.Lock()
        self.checked_at = 0.0  # when the depth was last read below the bound

    def _wait_room(self) -> None:
        with self.room:  # one thread reads the depth at a time, at most once a second
            while not self.stop.is_set():
                if time.monotonic() - self.checked_at < 1.0:
                    return
                depth = enroll_queue_depth(self.depth_url)
                if depth is None or depth < self.max_queue:
                    self.checked_at = time.monotonic()
                    return
                time.sleep(0.5)

    def _post(self, subject: SubjectSource, key: str) -> str:
        """The job id (biofleet_client); 429 and 5xx answers are retried with backoff."""
        from biofleet_client import BiofleetError

        refs = [image_ref(self.root, image) for image in subject.images]
        images = refs if all(refs) else [read_image(self.root, image) for image in subject.images]
        for attempt in range(8):
            try:
                return self.api.create_enrollment(subject.subject_id, images, idempotency_key=key).id
            except BiofleetError as exc:
                if exc.status not in RETRY_STATUSES or attempt == 7:
                    raise
                time.sleep(min(exc.retry_after or 0.5 * 2**attempt, 10.0))
        raise AssertionError("unreachable")

    def run(self, subject: SubjectSource) -> None:
        from biofleet_client import BiofleetError

        if self.stop.is_set():
            return
        attempt = self.state.attempt(subject.subject_id)
        self._wait_room()
        if self.stop.is_set():
            return
        try:
            job_id = self._post(subject, idempotency_key(subject, attempt))
        except BiofleetError as exc:
            self._fail(subject, attempt, None, exc.code, exc.message)
            return
        except Exception as exc:
            self._fail(subject, attempt, None, "request_failed", f"{type(exc).__name__}: {exc}")
            return
        self.state.record({"subject": subject.subject_id, "attempt": attempt, "job_id": job_id, "status": "submitted"})
        job = self._wait(job_id)
        if job is None:
            return  # interrupted or timed out: the next run picks it up by its Idempotency-Key
        with self.tally.lock:
            self.tally.images += len(subject.images)
        if job["status"] == "succeeded":
            result = job.get("result") or {}
            self.state.record(
                {
                    "subject": subject.subject_id,
                    "attempt": attempt,
                    "job_id": job_id,
                    "status": "succeeded",
                    "templates": result.get("templates_created", 0),
                }
            )
            with self.tally.lock:
                self.tally.enrolled += 1
                self.tally.templates += result.get("templates_created", 0)
                for image in result.get("images", []):
                    if image["status"] != "enrolled":
                        self.tally.failures.append(
                            {
                                "subject": subject.subject_id,
                                "job_id": job_id,
                                "image": Path(subject.images[image["index"]]).name,
                                "code": image["error"]["code"],
                                "message": image["error"]["message"],
                            }
                        )
            self.advance(ok=True)
        else:
            error = job.get("error") or {}
            self._fail(subject, attempt, job_id, error.get("code"), error.get("message"))

    def _wait(self, job_id: str) -> dict | None:
        """The final job's JSON; None when stopped or past the timeout."""
        from biofleet_client import WaitTimeout

        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:  # short waits, so that a stop is seen within seconds
                job = self.api.wait(job_id, timeout=min(2.0, deadline - time.monotonic()), raise_on_failure=False)
                return job.model_dump(mode="json")
            except WaitTimeout:
                continue
            except Exception:
                self.stop.wait(0.3)  # the API restarting: keep polling
        return None

    def _fail(self, subject: SubjectSource, attempt: int, job_id, code, message) -> None:
        self.state.record(
            {"subject": subject.subject_id, "attempt": attempt, "job_id": job_id, "status": "failed", "code": code}
        )
        with self.tally.lock:
            self.tally.failed += 1
            self.tally.failures.append(
                {"subject": subject.subject_id, "job_id": job_id, "image": "", "code": code, "message": message}
            )
        self.advance(ok=False)


def write_failures(path: Path, failures: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "job_id", "image", "code", "message"])
        writer.writeheader()
        writer.writerows(failures)


@click.command("enroll-dir")
@click.argument("root")
@click.option("--api", "api_url", default=None, help="API base URL (default: the running stack's).")
@click.option("--key", default=None, help="API key (default: the running stack's key).")
@click.option(
    "--samples-per-subject",
    "samples",
    default=5,
    show_default=True,
    type=click.IntRange(1, 10),
    help="Images enrolled per subject (the first ones by name).",
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Subjects in flight.")
@click.option(
    "--max-queue",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Wait while the enroll queue holds this many messages.",
)
@click.option("--depth-url", default=None, help="The queue depth exporter's /metrics (default: the running stack's).")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="State file (default: under the state dir, named after ROOT).",
)
@click.option(
    "--failures",
    "failures_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV of failures (default: beside the state file).",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for one job.")
def enroll_dir(
    root: str,
    api_url,
    key,
    samples: int,
    concurrency: int,
    max_queue: int,
    depth_url,
    state_path,
    failures_path,
    timeout: float,
) -> None:
    """Enroll ROOT/<subject>/<images> (a folder or s3://bucket/prefix) through the API, resumably.

    Shows a progress bar, ends with a summary table and a CSV of failures with their codes. The
    exit status is 1 when a subject failed, 130 when interrupted (rerun to resume)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from biofleet_client import Client

    settings = get_settings()
    stack = read_stack_file(settings.state_dir)
    api_url = api_url or stack.get("api_url") or f"http://{settings.api_host}:{settings.api_port}"
    depth_url = depth_url or stack.get("depth_url")
    key = key or (stack.get("api_key_file") and Path(stack["api_key_file"]).read_text().strip())
    if not key:
        raise click.ClickException("no API key: pass --key or start the stack with `biofleet up`")
    subjects = list_subjects(root, samples)
    state_path = state_path or default_state_path(settings.state_dir, root)
    failures_path = failures_path or state_path.with_name(state_path.stem + "-failures.csv")
    state = StateFile(state_path)
    tally = Tally()
    todo = []
    for subject in subjects:
        if state.latest.get(subject.subject_id, {}).get("status") == "succeeded":
            tally.skipped += 1
        else:
            todo.append(subject)

    console = Console(stderr=True)
    stop = threading.Event()
    columns = (
        TextColumn("enroll"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("subjects"),
        TextColumn("{task.fields[images]} images, {task.fields[failed]} failed, {task.fields[rate]}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    interrupted = False
    api = Client(api_url, api_key=key, timeout=60)
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("enroll", total=len(subjects), completed=tally.skipped, images=0, failed=0, rate="0.0")

        def advance(ok: bool) -> None:
            rate = (tally.enrolled + tally.failed) / max(time.monotonic() - started, 1e-6)
            progress.update(bar, advance=1, images=tally.images, failed=tally.failed, rate=f"{rate:.1f}")

        enroller = Enroller(api, root, state, tally, max_queue, stop, timeout, advance, depth_url)
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="enroll")
        futures = [pool.submit(enroller.run, subject) for subject in todo]
        try:
            for future in futures:
                while not future.done():
                    time.sleep(0.1)
                future.result()
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    api.close()
    write_failures(failures_path, tally.failures)
    _print_summary(Console(), tally, len(subjects), time.monotonic() - started, state_path, failures_path)
    if interrupted:
        click.echo("interrupted: rerun the same command to resume", err=True)
        raise SystemExit(130)
    if tally.failed:
        raise SystemExit(1)


def _print_summary(console, tally: Tally, total: int, elapsed: float, state_path: Path, failures_path: Path) -> None:
    from rich.table import Table

    table = Table(title="enroll-dir")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("subjects found", str(total))
    table.add_row("enrolled now", str(tally.enrolled))
    table.add_row("enrolled earlier (skipped)", str(tally.skipped))
    table.add_row("subjects enrolled", str(tally.enrolled + tally.skipped))
    table.add_row("failed", str(tally.failed))
    table.add_row("images sent", str(tally.images))
    table.add_row("templates created", str(tally.templates))
    table.add_row("image failures", str(sum(1 for f in tally.failures if f["image"])))
    table.add_row("seconds", f"{elapsed:.1f}")
    console.print(table)
    console.print(f"state: {state_path}")
    console.print(f"failures: {failures_path}")


COMMANDS = [enroll_dir]
