"""Real services for integration tests: Valkey and Postgres (pgserver) in temporary folders.

Fixtures: services -> ServiceUrls; make_key(tenant_name) -> API key; worker_env -> env for
subprocesses; start_worker(**settings) -> a running `python -m worker`; api_client -> TestClient
of api.app:create_app(); redis_client -> a redis.Redis on the test broker.
"""

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import stack
from shared.services import ServiceUrls

SERVICE_ENV = ("BIOFLEET_REDIS_URL", "BIOFLEET_DATABASE_URL", "BIOFLEET_BLOB_URL")
WORKER_READY_TIMEOUT_S = 120.0


def clear_caches() -> None:
    """Forget cached settings, Celery app, Celery config and engines, so new env vars take effect."""
    from shared.db.session import dispose_engines
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        from shared.celery_app import get_celery

        get_celery.cache_clear()
    except ImportError:
        pass
    dispose_engines()


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[ServiceUrls]:
    """Valkey + Postgres with migrations applied + a file blob store, all under a temp folder."""
    from shared.db.migrate import upgrade

    root = tmp_path_factory.mktemp("services")
    valkey, redis_url = stack.start_valkey(root / "valkey")
    pg_dir = root / "pg"
    try:
        database_url = stack.start_postgres(pg_dir)
        upgrade(database_url)
    except BaseException:
        stack.stop_postgres(pg_dir)
        stack.stop_process(valkey, timeout=5)
        raise
    blob_dir = root / "blobs"
    blob_dir.mkdir()
    urls = ServiceUrls(redis_url=redis_url, database_url=database_url, blob_url=blob_dir.as_uri())

    saved = {name: os.environ.get(name) for name in SERVICE_ENV}
    os.environ.update(
        BIOFLEET_REDIS_URL=urls.redis_url, BIOFLEET_DATABASE_URL=urls.database_url, BIOFLEET_BLOB_URL=urls.blob_url
    )
    clear_caches()
    try:
        yield urls
    finally:
        clear_caches()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stack.stop_postgres(pg_dir)
        stack.stop_process(valkey, timeout=10)


@pytest.fixture(scope="session")
def redis_client(services):
    import redis

    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def make_key(services):
    """make_key(tenant_name) -> a fresh plain API key for that tenant (created when missing)."""
    from shared.db.session import session_scope
    from shared.keys import create_api_key

    def make(tenant_name: str) -> str:
        with session_scope(services.database_url) as session:
            return create_api_key(session, tenant_name)

    return make


@pytest.fixture(scope="session")
def worker_env(services, tmp_path_factory) -> dict:
    """os.environ plus the service URLs, for subprocesses (state dir in a temp folder)."""
    env = dict(os.environ)
    env.update(
        BIOFLEET_REDIS_URL=services.redis_url,
        BIOFLEET_DATABASE_URL=services.database_url,
        BIOFLEET_BLOB_URL=services.blob_url,
        BIOFLEET_STATE_DIR=str(tmp_path_factory.mktemp("state")),
        PYTHONUNBUFFERED="1",
    )
    return env


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@pytest.fixture
def start_worker(services, worker_env, tmp_path):
    """start_worker(**settings) -> Popen of a ready `python -m worker`; settings become BIOFLEET_* env.

    The returned process has .log_path (its combined stdout/stderr). Stopped at teardown.
    """
    if importlib.util.find_spec("worker.__main__") is None:
        pytest.skip("`python -m worker` does not exist yet (worker/__main__.py)")
    started: list[subprocess.Popen] = []

    def start(**overrides) -> subprocess.Popen:
        env = dict(worker_env)
        env["BIOFLEET_WORKER_METRICS_PORT"] = str(stack.free_port())
        for name, value in overrides.items():
            env[f"BIOFLEET_{name.upper()}"] = str(value)
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = stack.start_process([sys.executable, "-m", "worker"], env, log_path)
        proc.log_path = log_path
        started.append(proc)
        try:
            alive = sum(p.poll() is None for p in started)
            stack.wait_worker_ready(services.redis_url, WORKER_READY_TIMEOUT_S, min_workers=alive, proc=proc)
        except stack.StackError as exc:
            raise RuntimeError(f"{exc}\n--- worker log ---\n{_log_tail(log_path)}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}\n{_log_tail(log_path)}")
        return proc

    yield start
    for proc in started:
        stack.stop_process(proc, timeout=30)


@pytest.fixture(scope="session")
def api_client(services):
    """fastapi.testclient.TestClient over api.app:create_app(), against the test services."""
    if importlib.util.find_spec("api.app") is None:
        pytest.skip("api.app does not exist yet")
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def start_dispatcher(services, worker_env, tmp_path):
    """start_dispatcher(**settings) -> Popen of a running `python -m worker --callbacks` (the
    callback dispatcher); settings become BIOFLEET_* env. Stopped at teardown."""
    import time

    started: list[subprocess.Popen] = []

    def start(**overrides) -> subprocess.Popen:
        env = dict(worker_env, BIOFLEET_CALLBACKS_METRICS_PORT=str(stack.free_port()))
        for name, value in overrides.items():
            env[f"BIOFLEET_{name.upper()}"] = str(value)
        log_path = tmp_path / f"dispatcher-{len(started)}.log"
        proc = stack.start_process([sys.executable, "-m", "worker", "--callbacks"], env, log_path)
        proc.log_path = log_path
        started.append(proc)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while "callback dispatcher started" not in (log_path.read_text(errors="replace") if log_path.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dispatcher did not start\n{_log_tail(log_path)}")
            time.sleep(0.1)
        return proc

    yield start
    for proc in started:
        stack.stop_process(proc, timeout=30)
