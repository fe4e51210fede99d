"""The Celery app, configured from celeryconfig. The API uses it only to publish."""

from functools import lru_cache

from celery import Celery


@lru_cache
def get_celery() -> Celery:
    app = Celery("biofleet")
    app.config_from_object("celeryconfig")
    return app
