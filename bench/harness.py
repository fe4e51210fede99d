"""A private stack for the end-to-end benchmarks, and the jobs they send through it.

BenchStack(): Valkey, Postgres (pgserver, migrations applied) and a file blob store in a
temporary folder; start_api() -> api_url (a free loopback port); start_worker(**settings) ->
Popen once it answers a ping (settings become BIOFLEET_* variables); stop_worker(proc); close().
Use it as a context manager: every process it started is stopped and the folder removed.

Jobs: load_faces(faces_dir) -> {identity: [jpeg bytes]}; enroll_all(stack, faces) enrolls every
identity with 3 images and waits; verify_bodies(faces, count) -> create_verification arguments
(images as bytes); wire_body(body) -> the same body as the API's JSON; submit_all(api_url, key,
kind, bodies, concurrency) -> [Sent], sent with biofleet_client.AsyncClient (submit(client, kind,
body) for one); wait_jobs(stack, ids, timeout) -> {job id: JobTimes}; purge_queues(stack) empties
the job queues.

bench/enqueue.py keeps its own raw keep-alive HTTP generator on purpose: the enqueue rate needs a
generator that costs far less CPU than the API it measures, so it posts pre-encoded JSON bytes
without the client's request models.
"""

import asyncio
import base64
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from biofleet_client import AsyncClient, BiofleetError
from shared import stack as services
from shared.queues import JOB_QUEUES

ENROLL_SAMPLES = 3
TENANT = "bench"
ACCEPTED = 202  # the status of a submit the client returns a job for
API_READY_TIMEOUT_S = 60.0
WORKER_READY_TIMEOUT_S = 300.0


@dataclass
class Sent:
    """One submission: the job id (None when refused), HTTP status and wall-clock send/answer times."""

    job_id: str | None
    status: int
    sent: float  # time.time() when the request started
    answered: float  # time.time() when the 202 (or error) came back

    @property
    def latency_s(self) -> float:
        return self.answered - self.sent


@dataclass
class JobTimes:
    """A job's final state and its Postgres timestamps (unix seconds; finished None if not final)."""

    status: str
    submitted: float
    finished: float | None
    batch_id: str | None = None
    result: dict | None = None


class BenchStack:
    """See the module docstring. Services start in __init__; the API and workers on demand."""

    def __init__(self, root: Path | None = None, log_level: str = "INFO", keep: bool = False):
        """root: the folder (default: a new temporary one); keep: leave it (data included) on close,
        so a later stack on the same root finds the data again."""
        self.root = Path(root or tempfile.mkdtemp(prefix="biofleet-bench-"))
        self.keep = keep
        self.processes: list = []
        self.api_proc = None
        self.api_url: str | None = None
        self._valkey = None
        self._pg_dir = self.root / "pg"
        try:
            self._start_services(log_level)
        except BaseException:
            self.close()
            raise

    def _start_services(self, log_level: str) -> None:
        from shared.db.migrate import upgrade
        from shared.db.session import session_scope
        from shared.keys import create_api_key

        self._valkey, self.redis_url = services.start_valkey(self.root / "valkey")
        self.database_url = services.start_postgres(self._pg_dir)
        upgrade(self.database_url)
        blobs = self.root / "blobs"
        blobs.mkdir(exist_ok=True)
        self.blob_url = blobs.as_uri()
        with session_scope(self.database_url) as session:
            self.key = create_api_key(session, TENANT)
        self.env = dict(os.environ)
        self.env.update(
            BIOFLEET_REDIS_URL=self.redis_url,
            BIOFLEET_DATABASE_URL=self.database_url,
            BIOFLEET_BLOB_URL=self.blob_url,
            BIOFLEET_STATE_DIR=str(self.root / "state"),
            BIOFLEET_LOG_LEVEL=log_level,
            BIOFLEET_WORKER_METRICS_PORT="0",
            BIOFLEET_METRICS_PORT="0",  # no fixed port: several stacks may run at once
            BIOFLEET_RATE_LIMIT_REQUESTS="0",  # measure the API itself, not the per-key policy
            PYTHONUNBUFFERED="1",
        )

    def __enter__(self) -> "BenchStack":
        _exit_cleanly_on_signals()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _env(self, settings: dict) -> dict:
        env = dict(self.env)
        env.update({f"BIOFLEET_{name.upper()}": str(value) for name, value in settings.items()})
        return env

    def start_api(self, **settings) -> str:
        """Start `python -m api` on a free loopback port; returns its base URL once /healthz answers."""
        port = services.free_port()
        env = self._env({"api_host": "127.0.0.1", "api_port": port, **settings})
        self.api_proc = services.start_process([sys.executable, "-m", "api"], env, self.root / "logs" / "api.log")
        self.processes.append(self.api_proc)
        self.api_url = f"http://127.0.0.1:{port}"
        services.wait_http(self.api_url + "/healthz", API_READY_TIMEOUT_S)
        return self.api_url

    def spawn_worker(self, **settings):
        """Start `python -m worker` without waiting for it (cold-start timing)."""
        name = f"worker-{len(self.processes)}.log"
        proc = services.start_process([sys.executable, "-m", "worker"], self._env(settings), self.root / "logs" / name)
        self.processes.append(proc)
        return proc

    def start_worker(self, **settings):
        """Start `python -m worker` and return it once it answers a ping."""
        proc = self.spawn_worker(**settings)
        services.wait_worker_ready(self.redis_url, WORKER_READY_TIMEOUT_S, proc=proc)
        return proc

    def stop_worker(self, proc) -> None:
        services.stop_process(proc, timeout=60)

    def close(self) -> None:
        """Stop every process started here, then the services; remove the folder unless kept."""
        for proc in reversed(self.processes):
            services.stop_process(proc, timeout=30)
        self.processes.clear()
        try:
            services.stop_postgres(self._pg_dir)
        finally:
            if self._valkey is not None:
                services.stop_process(self._valkey, timeout=10)
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _exit_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT (ignored in background jobs otherwise) unwind the stack, so close() runs."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_exit)
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --- jobs ----------------------------------------------------------------------------------------


def load_faces(faces_dir: Path) -> dict[str, list[bytes]]:
    """{identity: JPEG bytes, sorted by file name} from faces_dir/lfw_colour."""
    root = Path(faces_dir) / "lfw_colour"
    faces = {
        folder.name: [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        for folder in sorted(root.iterdir())
        if folder.is_dir()
    }
    faces = {name: images for name, images in faces.items() if len(images) > ENROLL_SAMPLES}
    if not faces:
        raise SystemExit(f"no identity with {ENROLL_SAMPLES + 1}+ images under {root}")
    return faces


KIND_CALLS = {
    "enroll": "create_enrollment",
    "verify": "create_verification",
    "identify": "create_identification",
    "detect": "create_detection",
}
"""Job kind -> the biofleet_client.AsyncClient method that submits it."""


def wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """A submit body as the API's JSON takes it: image bytes as base64 text."""
    out = dict(body)
    if isinstance(out.get("image"), bytes):
        out["image"] = base64.b64encode(out["image"]).decode()
    if out.get("images") is not None:
        out["images"] = [base64.b64encode(i).decode() if isinstance(i, bytes) else i for i in out["images"]]
    return out


def verify_bodies(faces: dict[str, list[bytes]], count: int) -> list[dict[str, Any]]:
    """count verification bodies (create_verification arguments, the image as bytes): each
    identity's images past the enrolled ones, claimed in turn as that identity (even indexes: a
    genuine claim) and as the next one (odd: an impostor claim)."""
    names = sorted(faces)
    probes = [(name, image) for name in names for image in faces[name][ENROLL_SAMPLES:]]
    bodies = []
    for i in range(count):
        name, image = probes[i % len(probes)]
        claimed = name if i % 2 == 0 else names[(names.index(name) + 1) % len(names)]
        bodies.append({"subject_id": claimed, "image": image})
    return bodies


async def submit(client: AsyncClient, kind: str, body: dict[str, Any]) -> Sent:
    """One submit of kind through the client; a refused request counts with its HTTP status, a
    transport error (refused connection, timeout) with 0."""
    call = getattr(client, KIND_CALLS[kind])
    sent = time.time()  # before the body is built and encoded, as when it was posted as JSON
    try:
        job = await call(**body)
        status, job_id = ACCEPTED, job.id
    except BiofleetError as exc:
        status, job_id = exc.status or 0, None
    except httpx.HTTPError:
        status, job_id = 0, None
    return Sent(job_id, status, sent, time.time())


def api_client(api_url: str, key: str, connections: int) -> AsyncClient:
    """An AsyncClient on api_url with room for `connections` requests in flight, all kept alive."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    http = httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits)
    return AsyncClient(api_url, api_key=key, http=http)


async def _submit_all(api_url: str, key: str, kind: str, bodies: list[dict[str, Any]], concurrency: int) -> list[Sent]:
    results: list[Sent | None] = [None] * len(bodies)
    queue = list(enumerate(bodies))[::-1]
    client = api_client(api_url, key, concurrency)
    async with client.http:

        async def lane() -> None:
            while queue:
                index, body = queue.pop()
                results[index] = await submit(client, kind, body)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    done = [s for s in results if s is not None]
    assert len(done) == len(bodies), "a body was not sent"
    return done


def submit_all(api_url: str, key: str, kind: str, bodies: list[dict[str, Any]], concurrency: int = 16) -> list[Sent]:
    """Submit every body as a job of kind (the arguments of its client method, see KIND_CALLS) as
    fast as the API answers, `concurrency` requests in flight (closed loop); one Sent per body."""
    return asyncio.run(_submit_all(api_url, key, kind, bodies, concurrency))


def wait_jobs(stack: BenchStack, job_ids: list[str], timeout: float, poll_s: float = 0.25) -> dict[str, JobTimes]:
    """Poll Postgres until every job is final or timeout seconds pass; the jobs' times."""
    # Postgres, not client.list_jobs(ids=...): the API under measurement gets no polling load
    # while jobs drain, and the rows give the worker's batch_id and the exact timestamps at once.
    import uuid

    from sqlalchemy import select

    from shared.db.models import FINAL_STATUSES, Job
    from shared.db.session import session_scope

    ids = [uuid.UUID(i) for i in job_ids if i]
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(stack.database_url) as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.submitted_at, Job.finished_at, Job.batch_id, Job.result).where(
                    Job.id.in_(ids)
                )
            ).all()
        done = sum(row.status in FINAL_STATUSES for row in rows)
        if done == len(ids) or time.monotonic() > deadline:
            return {
                str(row.id): JobTimes(
                    row.status,
                    row.submitted_at.timestamp(),
                    row.finished_at.timestamp() if row.status in FINAL_STATUSES and row.finished_at else None,
                    str(row.batch_id) if row.batch_id else None,
                    row.result,
                )
                for row in rows
            }
        time.sleep(poll_s)


def enroll_all(stack: BenchStack, faces: dict[str, list[bytes]], timeout: float = 300) -> int:
    """Enroll every identity with its first 3 images (a worker must run); the count that succeeded."""
    bodies = [{"subject_id": name, "images": images[:ENROLL_SAMPLES]} for name, images in faces.items()]
    sent = submit_all(stack.api_url, stack.key, "enroll", bodies, 1)
    refused = [s for s in sent if s.job_id is None]
    if refused:
        raise SystemExit(f"enrollment refused with HTTP {refused[0].status}")
    jobs = wait_jobs(stack, [s.job_id for s in sent], timeout)
    return sum(job.status == "succeeded" for job in jobs.values())


def purge_queues(stack: BenchStack) -> None:
    """Delete every job queue's messages from the broker (their rows stay queued in Postgres)."""
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.delete(*JOB_QUEUES)
    finally:
        client.close()
