"""`python -m api [--workers N]`: uvicorn serving create_app() on settings.api_host:settings.api_port,
and the API's Prometheus metrics on settings.metrics_host:settings.metrics_port (a port the ingress
does not expose). N processes (default settings.api_workers; 0: one per CPU core) share the port;
with more than one, their metrics are summed through prometheus_client's multiprocess mode and
served by the parent process.
"""

import argparse
import os
import shutil
import tempfile
from typing import Any

import uvicorn

from shared.logs import configure_logging
from shared.settings import get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory when there are several)."""
    from api.app import create_app

    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings)


def process_count(requested: int | None) -> int:
    """requested, else settings.api_workers, where 0 means the CPU cores."""
    count = requested if requested is not None else get_settings().api_workers
    return count or os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the biofleet API.")
    parser.add_argument("--workers", type=int, default=None, help="API processes (default: one per CPU core)")
    workers = process_count(parser.parse_args(argv).workers)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,  # keep the structured handlers of configure_logging
        "access_log": False,  # api.app logs each request itself
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if workers == 1:
        from api.metrics import start_metrics_server

        app = worker_app()
        start_metrics_server(app.state.metrics, settings.metrics_port, settings.metrics_host)
        uvicorn.run(app, **options)
        return
    folder = tempfile.mkdtemp(prefix="biofleet-api-metrics-")
    os.environ[MULTIPROC_ENV] = folder  # before prometheus_client is imported here or in a worker
    try:
        from api.metrics import start_multiprocess_metrics_server

        start_multiprocess_metrics_server(folder, settings.metrics_port, settings.metrics_host)
        uvicorn.run("api.__main__:worker_app", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
