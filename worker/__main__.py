"""`python -m worker`: the inference worker, a Celery worker (as `celery -A worker.app worker`) on
every job queue. `python -m worker --callbacks`: the callback dispatcher (worker.dispatcher)
instead, a process of its own that never runs inference.

Prefork pool of settings.worker_concurrency processes, task events on (Flower), no mingle or
gossip, node name biofleet-<pid>@<host>, log level from settings. Extra arguments are passed on to Celery.
"""

import os
import sys

from shared.queues import CONSUME_ORDER
from shared.settings import get_settings

CALLBACKS_FLAG = "--callbacks"


def worker_argv(extra: list[str] | None = None) -> list[str]:
    """The `celery worker` arguments from settings."""
    settings = get_settings()
    return [
        "worker",
        "--queues",
        ",".join(CONSUME_ORDER),  # in priority order (celeryconfig)
        "--pool",
        "prefork",
        "--concurrency",
        str(settings.worker_concurrency),
        "--task-events",
        "--without-mingle",  # no revoked-task sync at start: biofleet does not revoke jobs
        "--without-gossip",  # workers need not hear each other; Flower reads task events
        "--hostname",
        f"biofleet-{os.getpid()}@%h",
        "--loglevel",
        settings.log_level.upper(),
        *(extra or []),
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if CALLBACKS_FLAG in argv:
        from shared.logs import configure_logging
        from worker.dispatcher import main as dispatch

        settings = get_settings()
        configure_logging(settings.log_level, json=settings.log_json)
        dispatch(settings)
        return
    from worker.app import worker_app

    worker_app().worker_main(worker_argv(argv))


if __name__ == "__main__":
    main()
