"""`biofleet up | down | status | keys create`: the embedded stack on one machine.

State lives in settings.state_dir (default .biofleet/): stack.json (URLs and pids), logs/,
valkey/, postgres/, blobs/ and api_key (mode 0600). Any of BIOFLEET_REDIS_URL, _DATABASE_URL and
_BLOB_URL switches that service to an external one; the rest start here.
"""

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import click

from cli.common import database_url
from shared.services import STACK_FILE, read_stack_file

APP_PROCESSES = ("api", "worker", "callbacks", "flower", "exporter")  # stopped first, in this order
API_READY_TIMEOUT_S = 90.0
WORKER_READY_TIMEOUT_S = 300.0  # the worker loads and warms up the face model first
WORKER_STOP_TIMEOUT_S = 60.0  # a running batch finishes, buffered messages go back
KEY_FILE = "api_key"
DEFAULT_TENANT = "default"


# --- state -------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write text to path atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def save_stack(state_dir: Path, stack: dict) -> None:
    write_private(state_dir / STACK_FILE, json.dumps(stack, indent=2, sort_keys=True) + "\n")


@contextmanager
def state_lock(state_dir: Path):
    """One `up` or `down` at a time per state folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def running(stack: dict, name: str) -> int | None:
    """The pid of component name if it still runs (same pid and start time), else None."""
    from shared.stack import pid_alive

    pid = stack.get("pids", {}).get(name)
    if pid is None:
        return None
    return pid if pid_alive(pid, stack.get("started", {}).get(name)) else None


def record(stack: dict, name: str, pid: int) -> None:
    from shared.stack import create_time

    stack.setdefault("pids", {})[name] = pid
    stack.setdefault("started", {})[name] = create_time(pid)


def forget(stack: dict, name: str) -> None:
    stack.get("pids", {}).pop(name, None)
    stack.get("started", {}).pop(name, None)


def redact(url: str | None) -> str | None:
    """url with any password replaced by ***, for printing."""
    if not url:
        return url
    parsed = urlparse(url)
    if not parsed.password:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


# --- up ----------------------------------------------------------------------------------------


def _port_of(url: str | None) -> int | None:
    try:
        return urlparse(url).port if url else None
    except ValueError:
        return None


def ensure_valkey(settings, stack: dict, say) -> str:
    from shared import stack as services

    if settings.redis_url:
        return settings.redis_url
    if running(stack, "valkey") and stack.get("redis_url"):
        return stack["redis_url"]
    previous = _port_of(stack.get("redis_url"))
    port = previous if previous and services.port_is_free(previous) else None
    state = settings.state_dir
    proc, url = services.start_valkey(state / "valkey", port=port, log_path=state / "logs" / "valkey.log")
    record(stack, "valkey", proc.pid)
    say(f"valkey started on {url}")
    return url


def ensure_postgres(settings, stack: dict, say) -> str:
    from shared import stack as services

    if settings.database_url:
        return settings.database_url
    pg_dir = settings.state_dir / "postgres"
    url = services.start_postgres(pg_dir)  # reuses a running server
    pid = services.postgres_pid(pg_dir)
    if pid is not None and stack.get("pids", {}).get("postgres") != pid:
        say("postgres started")
    record(stack, "postgres", pid)
    log_link = settings.state_dir / "logs" / "postgres.log"
    if not log_link.is_symlink():
        log_link.symlink_to(pg_dir / "log")
    return url


def ensure_api_key(database_url: str, state_dir: Path) -> str:
    """The saved key for tenant "default" if it still works, else a new one (saved, mode 0600)."""
    from shared.db.session import session_scope
    from shared.keys import create_api_key, tenant_for_key

    path = state_dir / KEY_FILE
    with session_scope(database_url) as session:
        if path.exists():
            key = path.read_text().strip()
            if tenant_for_key(session, key) is not None:
                return key
        key = create_api_key(session, DEFAULT_TENANT)
    write_private(path, key + "\n")
    return key


def child_env(settings, urls) -> dict:
    """Our environment plus the service URLs, for the API, worker and Flower processes."""
    env = dict(os.environ)
    env.update(
        BIOFLEET_REDIS_URL=urls.redis_url,
        BIOFLEET_DATABASE_URL=urls.database_url,
        BIOFLEET_BLOB_URL=urls.blob_url,
        BIOFLEET_STATE_DIR=str(settings.state_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_app_process(name: str, args: list[str], env: dict, settings, stack: dict, say):
    from shared import stack as services

    proc = services.start_process(args, env, settings.state_dir / "logs" / f"{name}.log")
    record(stack, name, proc.pid)
    save_stack(settings.state_dir, stack)
    say(f"{name} started (pid {proc.pid})")
    return proc


def check_entry_points() -> None:
    import importlib.util

    for module in ("api", "worker"):
        if importlib.util.find_spec(f"{module}.__main__") is None:
            raise click.ClickException(f"`python -m {module}` is not available ({module}/__main__.py)")


def stack_up(settings, say=print) -> dict:
    """Start what is not running yet; return the stack description written to stack.json."""
    from shared import stack as services
    from shared.db.migrate import upgrade
    from shared.safety import UnsafeSettings, refuse_default_secrets
    from shared.services import ServiceUrls

    check_entry_points()
    try:  # before anything starts
        refuse_default_secrets(settings, "biofleet up", ("flower_password",))
    except UnsafeSettings as exc:
        raise click.ClickException(str(exc)) from None
    state = settings.state_dir.resolve()
    settings = settings.model_copy(update={"state_dir": state})
    (state / "logs").mkdir(parents=True, exist_ok=True)
    stack = read_stack_file(state)
    stack.setdefault("pids", {})
    stack.setdefault("started", {})

    redis_url = ensure_valkey(settings, stack, say)
    stack["redis_url"] = redis_url
    save_stack(state, stack)
    database_url = ensure_postgres(settings, stack, say)
    stack["database_url"] = database_url
    save_stack(state, stack)
    upgrade(database_url)
    blob_url = settings.blob_url or (state / "blobs").as_uri()
    if blob_url.startswith("file://"):
        Path(urlparse(blob_url).path).mkdir(parents=True, exist_ok=True)
    urls = ServiceUrls(redis_url, database_url, blob_url)

    endpoints = {
        "api_url": f"http://{settings.api_host}:{settings.api_port}",
        "flower_url": f"http://127.0.0.1:{settings.flower_port}",
        "metrics_url": (
            f"http://127.0.0.1:{settings.worker_metrics_port}/metrics" if settings.worker_metrics_port else None
        ),
        "api_metrics_url": (
            f"http://{settings.metrics_host}:{settings.metrics_port}/metrics" if settings.metrics_port else None
        ),
        "depth_url": (
            f"http://{settings.metrics_host}:{settings.exporter_port}/metrics" if settings.exporter_port else None
        ),
        "callbacks_metrics_url": (
            f"http://127.0.0.1:{settings.callbacks_metrics_port}/metrics" if settings.callbacks_metrics_port else None
        ),
    }
    # App processes started with other service URLs or ports are restarted.
    fingerprint = [redis_url, database_url, blob_url, *endpoints.values()]
    if stack.get("app_config") not in (None, fingerprint):
        for name in APP_PROCESSES:
            pid = running(stack, name)
            if pid:
                services.stop_process(pid, timeout=WORKER_STOP_TIMEOUT_S)
                say(f"{name} stopped: its settings changed")
            forget(stack, name)
    stack.update(blob_url=blob_url, app_config=fingerprint, **endpoints)
    save_stack(state, stack)
    env = child_env(settings, urls)

    if not running(stack, "api"):
        if not services.port_is_free(settings.api_port, settings.api_host):
            raise click.ClickException(f"port {settings.api_port} is in use: set BIOFLEET_API_PORT")
        if settings.metrics_port and not services.port_is_free(settings.metrics_port, settings.metrics_host):
            raise click.ClickException(f"port {settings.metrics_port} is in use: set BIOFLEET_METRICS_PORT")
        start_app_process("api", [sys.executable, "-m", "api"], env, settings, stack, say)
    if not running(stack, "worker"):
        proc = start_app_process("worker", [sys.executable, "-m", "worker"], env, settings, stack, say)
        services.wait_worker_ready(redis_url, WORKER_READY_TIMEOUT_S, proc=proc)
    if not running(stack, "callbacks"):  # the callback dispatcher: never in an inference process
        start_app_process("callbacks", [sys.executable, "-m", "worker", "--callbacks"], env, settings, stack, say)
    if not running(stack, "flower"):
        if not services.port_is_free(settings.flower_port):
            raise click.ClickException(f"port {settings.flower_port} is in use: set BIOFLEET_FLOWER_PORT")
        flower_env = dict(env, FLOWER_BASIC_AUTH=f"{settings.flower_user}:{settings.flower_password}")
        # Flower takes tornado options (--name=value); basic auth comes from FLOWER_BASIC_AUTH,
        # which keeps the password out of the process list.
        args = [
            sys.executable,
            "-m",
            "celery",
            "--broker",
            redis_url,
            "flower",
            f"--port={settings.flower_port}",
            "--address=127.0.0.1",
        ]
        start_app_process("flower", args, flower_env, settings, stack, say)
    if settings.exporter_port and not running(stack, "exporter"):
        if not services.port_is_free(settings.exporter_port, settings.metrics_host):
            raise click.ClickException(f"port {settings.exporter_port} is in use: set BIOFLEET_EXPORTER_PORT")
        start_app_process("exporter", [sys.executable, "-m", "shared.exporter"], env, settings, stack, say)

    services.wait_http(stack["api_url"] + "/healthz", API_READY_TIMEOUT_S)
    services.wait_http(stack["flower_url"] + "/healthcheck", API_READY_TIMEOUT_S)
    for name in ("api_metrics_url", "depth_url"):
        if stack[name]:
            services.wait_http(stack[name], API_READY_TIMEOUT_S)
    services.wait_worker_ready(redis_url, WORKER_READY_TIMEOUT_S)
    stack["api_key_file"] = str(state / KEY_FILE)
    stack["up_at"] = time.time()
    save_stack(state, stack)
    return stack


# --- down --------------------------------------------------------------------------------------


def stack_down(settings, say=print) -> list[str]:
    """Stop every process of the stack (apps first, then valkey and postgres); return what stopped."""
    from shared import stack as services

    state = settings.state_dir.resolve()
    stack = read_stack_file(state)
    stopped = []
    for name in (*APP_PROCESSES, "valkey"):
        pid = running(stack, name)
        if pid:
            timeout = WORKER_STOP_TIMEOUT_S if name == "worker" else 20
            services.stop_process(pid, timeout=timeout)
            stopped.append(name)
            say(f"{name} stopped (pid {pid})")
        forget(stack, name)
    pg_dir = state / "postgres"
    if services.postgres_pid(pg_dir) is not None:
        services.stop_postgres(pg_dir)
        stopped.append("postgres")
        say("postgres stopped")
    forget(stack, "postgres")
    # Without running services the URLs would mislead shared.services.resolve().
    for name in ("redis_url", "database_url", "blob_url", "app_config", "up_at"):
        stack.pop(name, None)
    stack["down_at"] = time.time()
    if (state / STACK_FILE).exists():
        save_stack(state, stack)
    return stopped


# --- status ------------------------------------------------------------------------------------


def stack_status(settings) -> dict:
    """{processes: {name: {pid, alive}}, urls: {...} (passwords redacted), queues: {queue: depth}
    or None, error}."""
    state = settings.state_dir.resolve()
    stack = read_stack_file(state)
    processes = {
        name: {"pid": pid, "alive": running(stack, name) is not None}
        for name, pid in sorted(stack.get("pids", {}).items())
    }
    urls = {
        name: stack.get(name)
        for name in (
            "api_url",
            "flower_url",
            "metrics_url",
            "api_metrics_url",
            "depth_url",
            "callbacks_metrics_url",
            "redis_url",
            "database_url",
            "blob_url",
        )
    }
    redis_url = settings.redis_url or urls["redis_url"]
    urls["redis_url"] = redis_url
    urls = {name: redact(value) for name, value in urls.items()}
    status = {"processes": processes, "urls": urls, "queues": None, "error": None}
    if redis_url:
        import redis

        from shared.queue_depth import queue_depths

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
        try:
            status["queues"] = queue_depths(client)
        except redis.RedisError as exc:
            status["error"] = f"broker not reachable: {exc}"
        finally:
            client.close()
    return status


# --- commands ----------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


@click.command()
def up() -> None:
    """Start the embedded stack (valkey, Postgres, API, worker, callback dispatcher, Flower) unless
    it runs already."""
    from rich.table import Table

    from shared.settings import get_settings
    from shared.stack import StackError

    settings = get_settings()
    console = _console()
    with state_lock(settings.state_dir):
        try:
            with console.status("starting the stack..."):
                stack = stack_up(settings, say=lambda line: console.print(f"[green]✓[/] {line}"))
                key = ensure_api_key(stack["database_url"], settings.state_dir.resolve())
        except StackError as exc:
            raise click.ClickException(f"{exc} (logs in {settings.state_dir / 'logs'})") from None
    table = Table(title="biofleet is up", show_header=False)
    table.add_column("what")
    table.add_column("where", overflow="fold")
    for name in (
        "api_url",
        "flower_url",
        "metrics_url",
        "api_metrics_url",
        "depth_url",
        "redis_url",
        "database_url",
        "blob_url",
    ):
        table.add_row(name.removesuffix("_url"), str(redact(stack.get(name))))
    table.add_row("flower login", f"{settings.flower_user} (password: BIOFLEET_FLOWER_PASSWORD)")
    table.add_row("logs", str(settings.state_dir.resolve() / "logs"))
    console.print(table)
    console.print(f"API key for tenant {DEFAULT_TENANT!r} (also in {settings.state_dir.resolve() / KEY_FILE}):")
    console.print(key, soft_wrap=True)


@click.command()
def down() -> None:
    """Stop every process of the embedded stack."""
    from shared.settings import get_settings

    settings = get_settings()
    console = _console()
    if not (settings.state_dir / STACK_FILE).exists():
        console.print("nothing was running")
        return
    with state_lock(settings.state_dir):
        stopped = stack_down(settings, say=lambda line: console.print(f"[green]✓[/] {line}"))
    if not stopped:
        console.print("nothing was running")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--watch", "live", is_flag=True, help="A live view of depth, throughput, latency and workers (1 s).")
def status(as_json: bool, live: bool) -> None:
    """What runs (pid, alive), the URLs, and the depth of each job queue."""
    from rich.table import Table

    from shared.settings import get_settings

    if live:
        from cli.watch import stack_metric_urls, watch

        settings = get_settings()
        urls = stack_metric_urls(read_stack_file(settings.state_dir.resolve()), settings.worker_concurrency)
        if not urls:
            raise click.ClickException("no metrics endpoint recorded: run `biofleet up`")
        watch(urls)
        return
    info = stack_status(get_settings())
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    console = _console()
    processes = Table(title="processes")
    for column in ("name", "pid", "alive"):
        processes.add_column(column)
    for name, entry in info["processes"].items():
        processes.add_row(name, str(entry["pid"]), "[green]yes[/]" if entry["alive"] else "[red]no[/]")
    console.print(processes if info["processes"] else "no process recorded: run `biofleet up`")
    urls = Table(title="urls", show_header=False)
    urls.add_column("what")
    urls.add_column("where", overflow="fold")
    for name, value in info["urls"].items():
        if value:
            urls.add_row(name.removesuffix("_url"), value)
    if urls.row_count:
        console.print(urls)
    if info["queues"] is not None:
        queues = Table(title="queue depth (waiting + reserved)")
        queues.add_column("queue")
        queues.add_column("depth", justify="right")
        for name, depth in info["queues"].items():
            queues.add_row(name, str(depth))
        console.print(queues)
    if info["error"]:
        console.print(f"[yellow]{info['error']}[/]")


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created when missing.")
@click.option(
    "--image-uri-prefix",
    "prefixes",
    multiple=True,
    help="Allow images by reference under this prefix (s3://bucket/folder/, file:///folder/); repeatable. "
    "Replaces the tenant's prefixes when given.",
)
def create_key(tenant: str, prefixes: tuple[str, ...]) -> None:
    """Create an API key for TENANT and print it (alone, on stdout). It is shown only once."""
    from shared.db.session import session_scope
    from shared.image_refs import BadUri, set_tenant_prefixes
    from shared.keys import create_api_key

    try:
        with session_scope(database_url()) as session:
            key = create_api_key(session, tenant)
            if prefixes:
                set_tenant_prefixes(session, tenant, list(prefixes))
    except BadUri as exc:
        raise click.ClickException(f"bad --image-uri-prefix: {exc}") from None
    click.echo(key)
    click.echo(f"callbacks are signed with the tenant's secret: biofleet webhooks secret --tenant {tenant}", err=True)


@keys.command("revoke")
@click.argument("key")
def revoke_key(key: str) -> None:
    """Revoke KEY (or read it from stdin when KEY is -): requests with it get 401 from now on."""
    from shared.db.session import session_scope
    from shared.keys import SHOWN_CHARS, revoke_api_key

    if key == "-":
        key = sys.stdin.readline().strip()
    with session_scope(database_url()) as session:
        revoked = revoke_api_key(session, key)
    if not revoked:
        raise click.ClickException("no live key matches")
    click.echo(f"revoked {key[:SHOWN_CHARS]}...")


@keys.command("image-prefixes")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--set", "prefixes", multiple=True, help="A prefix to allow (repeatable); replaces the list.")
@click.option("--clear", is_flag=True, help="Allow no images by reference.")
def image_prefixes(tenant: str, prefixes: tuple[str, ...], clear: bool) -> None:
    """Show, set (--set, repeated) or --clear the prefixes under which TENANT may send images by
    reference ({"uri": "s3://bucket/key"}); prints them, one a line."""
    from sqlalchemy import select

    from shared.db.models import Tenant
    from shared.db.session import session_scope
    from shared.image_refs import BadUri, set_tenant_prefixes

    if clear and prefixes:
        raise click.UsageError("--set and --clear do not go together")
    try:
        with session_scope(database_url()) as session:
            if prefixes or clear:
                found = set_tenant_prefixes(session, tenant, list(prefixes))
            else:
                found = session.execute(
                    select(Tenant.image_uri_prefixes).where(Tenant.name == tenant)
                ).scalar_one_or_none()
    except BadUri as exc:
        raise click.ClickException(f"bad prefix: {exc}") from None
    if found is None:
        raise click.ClickException(f"no tenant {tenant!r}")
    for prefix in found:
        click.echo(prefix)


COMMANDS = [up, down, status, keys]
