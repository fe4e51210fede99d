"""The run behind `biofleet chaos` (cli/chaos.py).

run_chaos(options: ChaosOptions) -> ChaosReport. The stack lives in a temporary folder (never the
state dir of `biofleet up`); this process points its settings at it (BIOFLEET_* variables) for
the submit path, and every worker gets the same variables with a short visibility timeout and a
fast sweeper, so that killed workers' messages come back quickly.
"""

import io
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT_S = 240.0
# Worker settings for the run: messages of a killed worker come back after 30 s, stranded jobs are
# swept after 30 s, a batch waits up to 120 s for Postgres.
WORKER_SETTINGS = {
    "VISIBILITY_TIMEOUT_S": "30",
    "SWEEP_AFTER_S": "30",
    "SWEEP_INTERVAL_S": "5",
    "RETENTION_INTERVAL_S": "0",
    "DB_RETRY_S": "120",
    "BATCH_SIZE": "8",
    "MAX_JOB_ATTEMPTS": "50",
    "WORKER_METRICS_PORT": "0",
    "DETECTOR_UPSAMPLE": "0",
    "CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32",  # the run's own receivers
}
TENANTS = ("chaos", "chaos-b")  # slow callbacks are spread over both
CALLBACK_DRAIN_S = 300.0  # how long to wait for the outbox to drain once every job is final


@dataclass
class ChaosOptions:
    jobs: int = 400
    kill_every_s: float = 0.0
    restart_redis: bool = False
    restart_postgres: bool = False
    workers: int = 2
    rate: float = 8.0  # submissions per second
    drain_timeout_s: float = 600.0
    keep: bool = False
    idle_phases: bool = False  # a 30 s pause with a Redis restart inside, then 1 job/s for a while
    heavy_jobs: int = 0  # enrollments of ten 5000x5000 images, mixed in
    slow_callbacks: int = 0  # jobs whose callback goes to a receiver that trickles its answer


@dataclass
class ChaosReport:
    accepted: int = 0
    succeeded: int = 0
    failed: Counter = field(default_factory=Counter)  # error code -> jobs
    lost: int = 0
    duplicated: int = 0
    callbacks_expected: int = 0  # accepted jobs whose callback goes to the fast receiver
    callbacks_delivered: int = 0  # of those, jobs with a delivery that verified
    forged: int = 0  # deliveries whose signature did not verify for their tenant
    events: list[str] = field(default_factory=list)  # what was done to the stack, in order

    def codes(self) -> str:
        return ", ".join(f"{code} {n}" for code, n in sorted(self.failed.items())) or "none"

    def line(self) -> str:
        return (
            f"accepted {self.accepted}, succeeded {self.succeeded}, failed {sum(self.failed.values())}, "
            f"lost {self.lost}, duplicated {self.duplicated}, callbacks expected {self.callbacks_expected}, "
            f"delivered {self.callbacks_delivered}, forged {self.forged}"
        )

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.forged or self.callbacks_delivered < self.callbacks_expected)


# --- the workload ------------------------------------------------------------------------------


def _png(colour: int, size: int = 160) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (colour, colour, colour)).save(buffer, format="PNG")
    return buffer.getvalue()


def workload(count: int, faces_dir: Path, seed: int = 7) -> list:
    """count shared.jobs.JobRequest: enrollments of real faces first, then verifications,
    identifications, more enrollments and some undecodable or faceless images."""
    from shared.jobs import JobRequest

    rng = random.Random(seed)
    people = []
    root = faces_dir / "lfw_colour"
    if root.is_dir():
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(person.glob("*.jpg"))
            if len(files) >= 2:
                people.append((person.name, [f.read_bytes() for f in files]))
    requests = []
    for i in range(count):
        roll = rng.random()
        if people and i < len(people):
            name, images = people[i]
            requests.append(JobRequest(kind="enroll", images=(images[0],), subject_id=f"chaos-{name}"))
        elif people and roll < 0.6:
            name, images = rng.choice(people)
            other, _ = rng.choice(people)
            requests.append(JobRequest(kind="verify", images=(rng.choice(images[1:]),), subject_id=f"chaos-{other}"))
        elif people and roll < 0.75:
            _, images = rng.choice(people)
            requests.append(JobRequest(kind="identify", images=(rng.choice(images),), top_k=3))
        elif people and roll < 0.85:
            name, images = rng.choice(people)
            requests.append(JobRequest(kind="enroll", images=(rng.choice(images[1:]),), subject_id=f"chaos-{name}-{i}"))
        elif roll < 0.93:
            requests.append(JobRequest(kind="verify", images=(os.urandom(2048),), subject_id="chaos-nobody"))
        else:
            requests.append(JobRequest(kind="identify", images=(_png(rng.randrange(256)),), top_k=1))
    return requests


HEAVY_SIDE = 5000  # heavy images are HEAVY_SIDE x HEAVY_SIDE
HEAVY_IMAGES = 10  # per heavy enrollment


def heavy_images(faces_dir: Path, count: int = HEAVY_IMAGES, seed: int = 11) -> list[bytes]:
    """count JPEGs of HEAVY_SIDE x HEAVY_SIDE: smooth noise with a real face (~1200 px) pasted in
    (a grey square when the faces are absent), each different, the same on every run."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    faces = sorted((faces_dir / "lfw_colour").glob("*/*.jpg")) if (faces_dir / "lfw_colour").is_dir() else []
    images = []
    for k in range(count):
        noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        canvas = Image.fromarray(noise).resize((HEAVY_SIDE, HEAVY_SIDE), Image.Resampling.BICUBIC)
        face = (
            Image.open(faces[k % len(faces)]).convert("RGB") if faces else Image.new("RGB", (250, 250), (128, 128, 128))
        )
        side = int(rng.integers(1000, 1400))
        canvas.paste(face.resize((side, side), Image.Resampling.BICUBIC),
                     (int(rng.integers(0, HEAVY_SIDE - side)), int(rng.integers(0, HEAVY_SIDE - side))))  # fmt: skip
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=80)
        images.append(buffer.getvalue())
    return images


def with_heavy_jobs(requests: list, count: int, faces_dir: Path) -> list:
    """requests with count of them, evenly spread after the first third, replaced by heavy
    enrollments (the same HEAVY_IMAGES images each, their own subject)."""
    from shared.jobs import JobRequest

    if count <= 0 or not requests:
        return requests
    images = tuple(heavy_images(faces_dir))
    requests = list(requests)
    first = len(requests) // 3
    for k in range(count):
        at = first + (len(requests) - first) * k // count
        requests[at] = JobRequest(kind="enroll", images=images, subject_id=f"chaos-heavy-{k}")
    return requests


IDLE_S = 30.0  # the pause
SLOW_JOBS = 20  # submitted at 1 job/s after the pause


def submission_times(count: int, rate: float, idle_phases: bool) -> tuple[list[float], float | None]:
    """Seconds from the start at which each job is submitted, and the start of the pause (None
    without --idle-phases): a third of the jobs at `rate`, a pause of IDLE_S, SLOW_JOBS at 1 job/s,
    then the rest at `rate`."""
    if not idle_phases:
        return [i / rate for i in range(count)], None
    first = count // 3
    slow = min(SLOW_JOBS, count - first)
    times = [i / rate for i in range(first)]
    pause_at = first / rate
    resume = pause_at + IDLE_S
    times += [resume + i for i in range(slow)]
    after = resume + slow
    times += [after + i / rate for i in range(count - first - slow)]
    return times, pause_at


# --- the stack ---------------------------------------------------------------------------------


class Stack:
    """Valkey, Postgres, a blob folder and the workers of one chaos run, under root."""

    def __init__(self, root: Path, workers: int):
        self.root = root
        self.worker_count = workers
        self.valkey = None
        self.redis_url = ""
        self.database_url = ""
        self.blob_url = ""
        self.workers: list = []  # Popen, newest last
        self.dispatcher = None  # the callback dispatcher's Popen
        self.started = 0
        self.env: dict = {}

    def start(self) -> None:
        from shared import stack
        from shared.db.migrate import upgrade

        self.valkey, self.redis_url = stack.start_valkey(self.root / "valkey")
        self.database_url = stack.start_postgres(self.root / "pg")
        upgrade(self.database_url)
        blobs = self.root / "blobs"
        blobs.mkdir()
        self.blob_url = blobs.as_uri()
        urls = {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url, "BLOB_URL": self.blob_url,
                "STATE_DIR": str(self.root / "state")}  # fmt: skip
        self.env = {**os.environ, **{f"BIOFLEET_{k}": v for k, v in {**urls, **WORKER_SETTINGS}.items()}}
        self.env["PYTHONUNBUFFERED"] = "1"
        submit_env = {**urls, "CALLBACK_ALLOWED_NETWORKS": WORKER_SETTINGS["CALLBACK_ALLOWED_NETWORKS"]}
        os.environ.update({f"BIOFLEET_{k}": v for k, v in submit_env.items()})  # this process's submit path
        _clear_caches()
        for _ in range(self.worker_count):
            self.start_worker()
        self.dispatcher = stack.start_process([sys.executable, "-m", "worker", "--callbacks"], self.env,
                                              self.root / "callbacks.log")  # fmt: skip
        stack.wait_worker_ready(self.redis_url, WORKER_READY_TIMEOUT_S, min_workers=self.worker_count)

    def start_worker(self):
        from shared import stack

        log_path = self.root / f"worker-{self.started}.log"
        self.started += 1
        proc = stack.start_process([sys.executable, "-m", "worker"], self.env, log_path)
        self.workers.append(proc)
        return proc

    def kill_worker(self) -> int:
        """SIGKILL the oldest live worker's process group (main and pool) and start another."""
        live = [p for p in self.workers if p.poll() is None]
        if live:
            victim = live[0]
            try:
                os.killpg(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            victim.wait()
        self.start_worker()
        return live[0].pid if live else 0

    def restart_redis(self) -> None:
        from shared import stack

        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        stack.stop_process(self.valkey, timeout=15)
        self.valkey, _ = stack.start_valkey(self.root / "valkey", port=port)

    def restart_postgres(self, down_s: float = 3.0) -> None:
        from shared import stack

        stack.stop_postgres(self.root / "pg")
        time.sleep(down_s)
        stack.start_postgres(self.root / "pg")

    def stop(self) -> None:
        from shared import stack

        for proc in [*self.workers, self.dispatcher]:
            if proc is not None and proc.poll() is None:
                stack.stop_process(proc, timeout=20)
        if self.valkey is not None:
            stack.stop_process(self.valkey, timeout=10)
        stack.stop_postgres(self.root / "pg")

    def worker_logs(self) -> list[Path]:
        return sorted(self.root.glob("worker-*.log"))


def _clear_caches() -> None:
    from shared.celery_app import get_celery
    from shared.db.session import dispose_engines
    from shared.settings import get_settings

    get_settings.cache_clear()
    get_celery.cache_clear()
    sys.modules.pop("celeryconfig", None)
    dispose_engines()


# --- the run -----------------------------------------------------------------------------------


def submit_all(
    stack: Stack, requests: list, times: list[float], stop: threading.Event, progress, tenants=None, placed=None
) -> list[str]:
    """Submit each request at its time (seconds from the start), retrying one that is refused
    (Redis or Postgres away) with the same Idempotency-Key until it is accepted. Returns the
    accepted job ids. tenants: a tenant name per request (default: all "chaos"); placed, a list:
    gets (index, job id)."""
    from shared.blob import open_blob_store
    from shared.celery_app import get_celery
    from shared.db.session import session_scope
    from shared.jobs import SubmitError, submit_job
    from shared.keys import get_or_create_tenant
    from shared.settings import get_settings

    settings = get_settings()
    with session_scope(stack.database_url) as session:
        tenant_ids = {name: get_or_create_tenant(session, name) for name in set(tenants or ["chaos"])}
    blobs = open_blob_store(stack.blob_url)
    accepted = []
    start = time.monotonic()
    for index, request in enumerate(requests):
        time.sleep(max(0.0, start + times[index] - time.monotonic()))
        while not stop.is_set():
            try:
                tenant_id = tenant_ids[tenants[index] if tenants else "chaos"]
                submitted = submit_job(tenant_id, request, blobs, get_celery(), stack.database_url, settings,
                                       idempotency_key=f"chaos-{index}")  # fmt: skip
                accepted.append(str(submitted.job.id))
                if placed is not None:
                    placed.append((index, str(submitted.job.id)))
                break
            except SubmitError as exc:
                if exc.code not in ("queue_unavailable", "storage_unavailable"):
                    raise
            except Exception as exc:  # Postgres restarting
                log.debug("submit failed", extra={"error": type(exc).__name__})
            time.sleep(0.5)
        progress(len(accepted))
    return accepted


def final_counts(database_url: str, job_ids: list[str]) -> tuple[int, Counter, int]:
    """(succeeded, failed by code, not final) of job_ids."""
    from sqlalchemy import select

    from shared.db.models import Job
    from shared.db.session import session_scope

    ids = [uuid.UUID(j) for j in job_ids]
    with session_scope(database_url) as session:
        rows = session.execute(select(Job.status, Job.error_code).where(Job.id.in_(ids))).all()
    succeeded = sum(1 for status, _ in rows if status == "succeeded")
    failed = Counter(code or "unknown" for status, code in rows if status == "failed")
    return succeeded, failed, len(ids) - succeeded - sum(failed.values())


def duplicated_jobs(database_url: str, logs: list[Path]) -> set[str]:
    """Jobs applied twice: more template rows than their result says they created, or more than
    one "job finished" line (written once per committed outcome) in the worker logs."""
    from sqlalchemy import func, select

    from shared.db.models import Job, Template
    from shared.db.session import session_scope

    duplicated = set()
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Template.source_job_id, func.count(), Job.result)
            .join(Job, Job.id == Template.source_job_id)
            .group_by(Template.source_job_id, Job.result)
        ).all()
    for job_id, count, result in rows:
        if count > (result or {}).get("templates_created", 0):
            duplicated.add(str(job_id))
    finished = Counter()
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"job finished"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "job finished":
                finished[entry.get("job_id")] += 1
    duplicated.update(job_id for job_id, n in finished.items() if n > 1)
    return duplicated


def run_chaos(options: ChaosOptions) -> ChaosReport:
    """Start the stack, run the load and the faults, drain, count; always stop the stack."""
    from rich.console import Console

    from shared.settings import get_settings

    console = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="biofleet-chaos-"))
    stack = Stack(root, options.workers)
    report = ChaosReport()
    stop = threading.Event()
    try:
        console.print(f"starting the stack and {options.workers} workers in {root}")
        stack.start()
        faces_dir = get_settings().faces_dir
        requests = with_heavy_jobs(workload(options.jobs, faces_dir), options.heavy_jobs, faces_dir)
        receivers = start_receivers(stack.database_url)
        requests, tenants, slow = with_callbacks(requests, receivers, options.slow_callbacks)
        times, pause_at = submission_times(len(requests), options.rate, options.idle_phases)
        load_s = times[-1] if times else 0.0
        accepted: list[str] = []
        placed: list[tuple[int, str]] = []
        state = {"submitted": 0}

        def load() -> None:
            accepted.extend(submit_all(stack, requests, times, stop, lambda n: state.update(submitted=n),
                                       tenants=tenants, placed=placed))  # fmt: skip

        submitter = threading.Thread(target=load, name="submit", daemon=True)
        submitter.start()
        started = time.monotonic()
        plan = []  # (at seconds, action name)
        if options.kill_every_s > 0:
            plan += [(t, "kill") for t in _steps(options.kill_every_s, load_s)]
        if options.restart_redis and pause_at is None:
            plan.append((load_s / 3, "redis"))
        elif options.restart_redis:  # under load: in the last phase, after the pause and the slow jobs
            busy_again = times[min(len(times) - 1, len(times) // 3 + SLOW_JOBS)]
            plan.append(((busy_again + load_s) / 2, "redis"))
        if options.restart_postgres:
            plan.append((2 * load_s / 3, "postgres"))
        if pause_at is not None:
            plan.append((pause_at + IDLE_S / 2, "redis"))  # inside the pause: no job in flight
        for at, action in sorted(plan):
            while time.monotonic() - started < at and submitter.is_alive():
                time.sleep(0.1)
            event = _act(stack, action)
            report.events.append(event)
            console.print(f"[{time.monotonic() - started:6.1f} s] {event} ({state['submitted']} submitted)")
        submitter.join()
        report.accepted = len(accepted)
        deadline = time.monotonic() + options.drain_timeout_s
        while True:
            report.succeeded, report.failed, pending = final_counts(stack.database_url, accepted)
            console.print(f"[{time.monotonic() - started:6.1f} s] {report.accepted - pending}/{report.accepted} final")
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(5)
        report.lost = pending
        expected = [job_id for index, job_id in placed if index not in slow]
        report.callbacks_expected = len(expected)
        deadline = time.monotonic() + CALLBACK_DRAIN_S
        while receivers.delivered(expected) < len(expected) and time.monotonic() < deadline:
            console.print(
                f"[{time.monotonic() - started:6.1f} s] callbacks {receivers.delivered(expected)}/{len(expected)}"
            )
            time.sleep(5)
        report.callbacks_delivered = receivers.delivered(expected)
        report.forged = receivers.forged
        receivers.close()
        time.sleep(2)  # let the last log lines reach the files
        report.duplicated = len(duplicated_jobs(stack.database_url, stack.worker_logs()))
    finally:
        stop.set()
        stack.stop()
        if options.keep:
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report


def start_receivers(database_url: str):
    """The run's callback receivers (cli.chaos_callbacks), knowing each tenant's secret."""
    from cli.chaos_callbacks import Receivers
    from shared.db.session import session_scope
    from shared.keys import get_or_create_tenant
    from shared.webhooks import ensure_secret

    with session_scope(database_url) as session:
        secrets = {name: ensure_secret(session, get_or_create_tenant(session, name)) for name in TENANTS}
    return Receivers(secrets)


def with_callbacks(requests: list, receivers, slow_count: int) -> tuple[list, list[str], set[int]]:
    """Every request with a callback_url: slow_count of them, spread evenly over the run and
    alternating between the two tenants, to the trickling receiver; the rest to the fast one.
    Returns (requests, tenant name per request, indices of the slow ones)."""
    from dataclasses import replace

    step = max(1, len(requests) // max(1, slow_count))
    slow = {min(len(requests) - 1, step // 2 + i * step) for i in range(min(slow_count, len(requests)))}
    tenants, out = [], []
    for index, request in enumerate(requests):
        tenant = TENANTS[sorted(slow).index(index) % 2] if index in slow else TENANTS[0]
        url = receivers.slow_url(tenant) if index in slow else receivers.fast_url(tenant)
        tenants.append(tenant)
        out.append(replace(request, callback_url=url))
    return out, tenants, slow


def _steps(every_s: float, until_s: float) -> list[float]:
    steps, t = [], every_s
    while t < until_s:
        steps.append(t)
        t += every_s
    return steps


def _act(stack: Stack, action: str) -> str:
    if action == "kill":
        return f"killed worker {stack.kill_worker()}"
    if action == "redis":
        stack.restart_redis()
        return "restarted Redis"
    stack.restart_postgres()
    return "restarted Postgres"
