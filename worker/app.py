"""The worker's Celery app (shared.celery_app, which names the task modules) and its process
signals.

Each pool process, when it starts (worker_process_init), loads its runtime once
(worker.runtime: the face pipeline warmed up, its model version row) and serves its metrics; only
then does it take batches. The main process runs worker.sweeper's Housekeeper (stranded jobs
published again, retention). `celery -A worker.app worker` or `python -m worker`.
"""

import logging
from typing import Any

from celery import Celery, signals

from shared.celery_app import get_celery
from shared.logs import configure_logging
from shared.settings import get_settings

log = logging.getLogger(__name__)

_housekeeper: Any = None  # worker.sweeper.Housekeeper of the main process


def _setup_logging(**_: Any) -> None:
    """Structured logs instead of Celery's own format, in the main and the pool processes."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)


def _init_pool_process(**_: Any) -> None:
    from celery.utils.log import current_process_index

    from shared.db.session import dispose_engines
    from worker.metrics import start_metrics_server
    from worker.runtime import get_runtime

    dispose_engines()  # never share the parent's database connections
    get_runtime()
    settings = get_settings()
    if settings.worker_metrics_port:
        start_metrics_server(settings.worker_metrics_port + (current_process_index(base=0) or 0))


def _start_housekeeping(**_: Any) -> None:
    """The sweeper and retention thread, in the main process (worker.sweeper)."""
    global _housekeeper
    from worker.sweeper import Housekeeper

    _housekeeper = Housekeeper(get_settings())
    _housekeeper.start()


def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


def worker_app() -> Celery:
    """The app with the worker's signal handlers connected."""
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.worker_process_init.connect(_init_pool_process, weak=False)
    signals.worker_ready.connect(_start_housekeeping, weak=False)
    signals.worker_shutting_down.connect(_stop_housekeeping, weak=False)
    return get_celery()


def __getattr__(name: str) -> Celery:
    """`celery -A worker.app` reads worker.app.app: built on first access, not at import."""
    if name == "app":
        return worker_app()
    raise AttributeError(name)
