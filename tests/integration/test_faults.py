"""Delivery guarantees with real processes: a worker's main process SIGKILLed mid-batch, Redis
restarted (AOF), Postgres restarted during a batch, SIGTERM with buffered messages, poison and
pickle messages, and the sweeper re-publishing a job whose message was lost.

The module runs its own Valkey (it is restarted here), and the session's Postgres.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.faces]

DEADLINE_S = 300.0  # a bound on waiting, not a timing assertion
PEOPLE = ("Tony_Blair", "Colin_Powell", "George_W_Bush", "Ariel_Sharon")


class Broker:
    """A Valkey of this module (AOF on), restartable on the same port."""

    def __init__(self, data_dir):
        from shared import stack

        self.data_dir = data_dir
        self.proc, self.url = stack.start_valkey(data_dir)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def restart(self) -> None:
        from shared import stack

        stack.stop_process(self.proc, timeout=15)
        self.proc, _ = stack.start_valkey(self.data_dir, port=self.port)

    def stop(self) -> None:
        from shared import stack

        stack.stop_process(self.proc, timeout=10)


@pytest.fixture(scope="module")
def broker(services, tmp_path_factory):
    own = Broker(tmp_path_factory.mktemp("fault-valkey"))
    yield own
    own.stop()


@pytest.fixture(scope="module")
def publisher(broker):
    """A Celery app configured as the API's, on this module's broker."""
    from celery import Celery

    import celeryconfig

    app = Celery("biofleet-faults", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = broker.url
    yield app
    app.close()


@pytest.fixture
def workers(broker, worker_env, tmp_path):
    """workers(**settings) -> a ready `python -m worker` on this module's broker; stopped at the end."""
    from shared import stack

    started: list[subprocess.Popen] = []

    def start(wait: bool = True, **overrides) -> subprocess.Popen:
        env = {**worker_env, "BIOFLEET_REDIS_URL": broker.url, "BIOFLEET_WORKER_METRICS_PORT": "0"}
        env.update({f"BIOFLEET_{k.upper()}": str(v) for k, v in overrides.items()})
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = stack.start_process([sys.executable, "-m", "worker"], env, log_path)
        proc.log_path = log_path
        started.append(proc)
        if wait:
            alive = sum(p.poll() is None for p in started)
            stack.wait_worker_ready(broker.url, 180, min_workers=alive, proc=proc)
        return proc

    start.started = started
    yield start
    for proc in started:
        stack.stop_process(proc, timeout=30)


def tenant(services) -> uuid.UUID:
    from shared.db.session import session_scope
    from shared.keys import get_or_create_tenant

    with session_scope(services.database_url) as session:
        return get_or_create_tenant(session, f"faults-{uuid.uuid4().hex[:8]}")


def queue_enrollments(services, publisher, faces_dir, count: int, publish: bool = True, image_of=None) -> list[str]:
    """count queued enrollment jobs (one real face each, or image_of(i) when given), of a new
    tenant, their messages published."""
    from shared.blob import open_blob_store
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.jobs import message_for
    from shared.jobs import publish as send

    owner = tenant(services)
    blobs = open_blob_store(services.blob_url)
    job_ids = []
    for i in range(count):
        if image_of is not None:
            image = image_of(i)
        else:
            person = PEOPLE[i % len(PEOPLE)]
            image = (faces_dir / "lfw_colour" / person / f"{person}_{1 + i // len(PEOPLE):04d}.jpg").read_bytes()
        job_id = uuid.uuid4()
        key = f"{owner}/{job_id}/0"
        blobs.put(key, image)
        with session_scope(services.database_url) as session:
            job = Job(id=job_id, tenant_id=owner, kind="enroll", status="queued", subject_external_id=f"f-{i}",
                      blob_keys=[key], cropped=False, attempts=0)  # fmt: skip
            session.add(job)
            session.flush()
            session.refresh(job)
            message = message_for(job)
        if publish:
            send(publisher, message)
        job_ids.append(str(job_id))
    return job_ids


def rows(services, job_ids):
    from sqlalchemy import select

    from shared.db.models import Job
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        found = {str(j.id): j for j in session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in job_ids])))}
    return [found[i] for i in job_ids]


def wait_until(predicate, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_all_final(services, job_ids):
    def final():
        current = rows(services, job_ids)
        return current if all(r.status in ("succeeded", "failed") for r in current) else None

    return wait_until(final, "every job to be final")


def templates_per_job(services, job_ids) -> list[int]:
    from sqlalchemy import func, select

    from shared.db.models import Template
    from shared.db.session import session_scope

    ids = [uuid.UUID(i) for i in job_ids]
    with session_scope(services.database_url) as session:
        counts = dict(
            session.execute(
                select(Template.source_job_id, func.count()).where(Template.source_job_id.in_(ids))
                .group_by(Template.source_job_id)
            ).all()
        )  # fmt: skip
    return [counts.get(i, 0) for i in ids]


def finished_lines(procs) -> Counter:
    """job id -> "job finished" lines (one per committed outcome) in these workers' logs."""
    seen = Counter()
    for proc in procs:
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if '"job finished"' in line:
                entry = json.loads(line)
                if entry.get("message") == "job finished":
                    seen[entry["job_id"]] += 1
    return seen


def assert_each_applied_once(services, job_ids, procs):
    done = wait_all_final(services, job_ids)
    assert [r.status for r in done] == ["succeeded"] * len(job_ids), [(r.status, r.error_code) for r in done]
    assert templates_per_job(services, job_ids) == [1] * len(job_ids)
    lines = finished_lines(procs)
    assert [lines[j] for j in job_ids] == [1] * len(job_ids)
    return done


def any_running(services, job_ids):
    return any(r.status == "running" for r in rows(services, job_ids))


# --- the tests ---------------------------------------------------------------------------------


def test_worker_main_process_killed_mid_batch(services, publisher, workers, faces_dir):
    """SIGKILL to the whole worker (main and pool): its reserved messages stay unacked and come
    back after the visibility timeout, to another worker; every job is applied once."""
    job_ids = queue_enrollments(services, publisher, faces_dir, 16)
    first = workers(wait=False, batch_size=4, visibility_timeout_s=5)  # watch from its start
    wait_until(lambda: any_running(services, job_ids), "a batch to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = workers(batch_size=4, visibility_timeout_s=5)
    done = assert_each_applied_once(services, job_ids, [first, second])
    assert max(r.attempts for r in done) >= 2  # the killed batch ran again


def test_redis_restart_keeps_queued_jobs(services, broker, publisher, workers, faces_dir, redis_client):
    """Messages queued before a Redis restart are still there after it (AOF): no worker ran yet."""
    import redis

    job_ids = queue_enrollments(services, publisher, faces_dir, 4)
    client = redis.Redis.from_url(broker.url)
    assert client.llen("enroll") == 4
    broker.restart()
    assert client.llen("enroll") == 4
    client.close()
    worker = workers(batch_size=4)
    assert_each_applied_once(services, job_ids, [worker])


def test_postgres_restart_during_a_batch(services, publisher, workers, faces_dir):
    """Postgres stops while a batch runs: the batch waits (db_retry_s) and completes once it returns."""
    from shared import stack

    pg_dir = _session_pg_dir(services)
    worker = workers(batch_size=4, db_retry_s=120)
    job_ids = queue_enrollments(services, publisher, faces_dir, 6)
    wait_until(lambda: any_running(services, job_ids), "a batch to start")
    stack.stop_postgres(pg_dir)
    time.sleep(3)
    assert stack.start_postgres(pg_dir) == services.database_url
    assert_each_applied_once(services, job_ids, [worker])
    assert worker.poll() is None


def _session_pg_dir(services):
    """The data folder of the session's Postgres (a Unix socket URL names it)."""
    from pathlib import Path
    from urllib.parse import parse_qs, unquote, urlparse

    host = Path(unquote(parse_qs(urlparse(services.database_url).query)["host"][0]))
    return next(p for p in (host, *host.parents) if (p / "PG_VERSION").exists())


def test_sigterm_finishes_the_batch_and_returns_buffered_messages(services, publisher, workers, faces_dir):
    """Scale-down: SIGTERM lets the running batch finish; messages buffered but not started go
    back to the queue and the next worker completes them; nothing runs twice."""
    job_ids = queue_enrollments(services, publisher, faces_dir, 16)
    first = workers(wait=False, batch_size=4)  # watch from its start: a fast machine drains 16 jobs in seconds
    running = wait_until(
        lambda: [r for r in rows(services, job_ids) if r.status == "running"] or None, "a batch to start"
    )
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    after = {str(r.id): r for r in rows(services, job_ids)}
    assert all(after[str(r.id)].status == "succeeded" for r in running)  # the running batch finished
    left = [j for j in job_ids if after[j].status == "queued"]
    assert left, "every job finished before the worker stopped: nothing was buffered"
    assert not [j for j in job_ids if after[j].status == "running"]
    second = workers(batch_size=4)
    done = assert_each_applied_once(services, job_ids, [first, second])
    assert [r.attempts for r in done] == [1] * len(job_ids)


class Unpickled:
    """Unpickling this would create a file: proof that nothing unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_poison_pickle_and_stranded_jobs(services, broker, publisher, workers, faces_dir, tmp_path):
    """Bad JSON, a wrong schema and a pickle message are dropped, never unpickled, and the worker
    carries on; a queued job whose message was lost is published again by the sweeper."""
    import redis
    from celery import Celery
    from sqlalchemy import update

    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.queues import RUN_JOBS_TASK

    client = redis.Redis.from_url(broker.url)
    client.lpush("verify", b"{not json at all")
    publisher.send_task(RUN_JOBS_TASK, kwargs={"job_id": "x", "kind": "dance"}, queue="verify")
    marker = tmp_path / "unpickled"
    evil = Celery("evil", broker=broker.url, set_as_current=False)
    evil.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    evil.send_task(RUN_JOBS_TASK, args=[Unpickled(str(marker))], queue="verify")
    evil.close()
    client.close()

    good = queue_enrollments(services, publisher, faces_dir, 2)
    stranded = queue_enrollments(services, publisher, faces_dir, 1, publish=False)
    with session_scope(services.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(stranded[0]))
            .values(submitted_at=Job.submitted_at - timedelta(hours=1))
        )
    worker = workers(batch_size=4, sweep_after_s=5, sweep_interval_s=1)
    assert_each_applied_once(services, good + stranded, [worker])
    assert worker.poll() is None
    assert not marker.exists()
    log = worker.log_path.read_text()
    assert "pickle" in log  # Celery refused the content type
    assert "dropped a message that is not a JSON message envelope" in log
    assert "stranded jobs published again" in log


def blank_png(_: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (120, 120), (180, 180, 180)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_partial_batches_flush_after_a_redis_restart(services, broker, publisher, workers):
    """celery-batches' flush timer survives a broker reconnect: Redis restarts right after a batch
    (the timer still armed), then 2 jobs, far fewer than a batch, still end within a few flush
    intervals instead of waiting for 32 messages."""
    worker = workers(batch_size=32, flush_interval_ms=10_000)
    first = queue_enrollments(services, publisher, None, 1, image_of=blank_png)  # fails no_face: final all the same
    wait_all_final(services, first)
    broker.restart()  # the timer's next tick, the one that would cancel it, is still seconds away
    later = queue_enrollments(services, publisher, None, 2, image_of=blank_png)
    deadline = time.monotonic() + 120.0  # a bound on waiting: 12 flush intervals
    while not all(r.status in ("succeeded", "failed") for r in rows(services, later)):
        assert time.monotonic() < deadline, "jobs fewer than a batch were not flushed after the Redis restart"
        time.sleep(0.2)
    assert [r.error_code for r in rows(services, later)] == ["no_face", "no_face"]
    assert worker.poll() is None


CRASH_MARKER = "biofleet-test-crash"


def killer_jpeg(faces_dir) -> bytes:
    """A real face whose JPEG comment carries CRASH_MARKER: the worker's pool process dies on it."""
    import io

    from PIL import Image

    person = PEOPLE[0]
    face = Image.open(faces_dir / "lfw_colour" / person / f"{person}_0010.jpg")
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG", quality=90, comment=CRASH_MARKER.encode())
    return buffer.getvalue()


def test_a_job_that_kills_its_process_fails_alone(services, publisher, workers, faces_dir):
    """One job whose image kills the pool process (as an OOM kill would), in one batch with other
    tenants' jobs: the batch is retried with suspects alone, only that job fails with worker_crash,
    every neighbour succeeds, each applied once."""
    neighbours = []
    for _ in range(3):  # three other tenants
        neighbours += queue_enrollments(services, publisher, faces_dir, 2, publish=False)
    killer = queue_enrollments(
        services, publisher, faces_dir, 1, publish=False, image_of=lambda _: killer_jpeg(faces_dir)
    )
    job_ids = neighbours[:3] + killer + neighbours[3:]
    _publish_again(services, publisher, job_ids)
    worker = workers(batch_size=len(job_ids), flush_interval_ms=3000, crash_marker=CRASH_MARKER)
    done = {str(r.id): r for r in wait_all_final(services, job_ids)}
    assert (done[killer[0]].status, done[killer[0]].error_code) == ("failed", "worker_crash")
    assert [(done[j].status, done[j].error_code) for j in neighbours] == [("succeeded", None)] * len(neighbours)
    assert templates_per_job(services, neighbours) == [1] * len(neighbours)
    lines = finished_lines([worker])
    assert [lines[j] for j in job_ids] == [1] * len(job_ids)
    assert max(done[j].attempts for j in neighbours) <= 2  # the first batch, then alone once
    assert worker.poll() is None
    assert "batch process died" in worker.log_path.read_text()


def _publish_again(services, publisher, job_ids) -> None:
    """Publish the messages of these queued jobs, in this order."""
    from shared.jobs import message_for
    from shared.jobs import publish as send

    for job in rows(services, job_ids):
        send(publisher, message_for(job))
