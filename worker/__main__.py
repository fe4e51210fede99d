"""`python -m worker`: the Celery worker (as `celery -A worker.app worker`) on every queue.

Prefork pool of settings.worker_concurrency processes, task events on (Flower), no mingle or
gossip, node name biofleet-<pid>@<host>, log level from settings. Extra arguments are passed on to Celery.
Exits with a message instead of starting with the default callback secret next to a non-embedded
Redis or Postgres (shared/safety.py).
"""

import os
import sys

from shared.queues import CONSUME_ORDER
from shared.settings import get_settings


def worker_argv(extra: list[str] | None = None) -> list[str]:
    """The `celery worker` arguments from settings."""
    settings = get_settings()
    return [
        "worker",
        "--queues", ",".join(CONSUME_ORDER),  # in priority order (celeryconfig)
        "--pool", "prefork",
        "--concurrency", str(settings.worker_concurrency),
        "--task-events",
        "--without-mingle",  # no revoked-task sync at start: biofleet does not revoke jobs
        "--without-gossip",  # workers need not hear each other; Flower reads task events
        "--hostname", f"biofleet-{os.getpid()}@%h",
        "--loglevel", settings.log_level.upper(),
        *(extra or []),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from shared.safety import UnsafeSettings, refuse_default_secrets

    try:
        refuse_default_secrets(get_settings(), "the worker", ("callback_secret",))
    except UnsafeSettings as exc:
        sys.exit(f"biofleet worker: {exc}")
    from worker.app import app

    app.worker_main(worker_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
