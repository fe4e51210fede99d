"""The Celery app: built here, configured from settings (celeryconfig.celery_config), naming the
task modules the worker loads (TASK_MODULES, imported only by a worker). The API uses it only to
publish."""

from functools import lru_cache

from celery import Celery

from shared.settings import Settings, get_settings

TASK_MODULES = ["worker.tasks"]


def build_celery(settings: Settings, name: str = "biofleet") -> Celery:
    """A Celery app with the configuration for these settings."""
    from celeryconfig import celery_config

    app = Celery(name, include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    return app


@lru_cache
def get_celery() -> Celery:
    """This process's app, for the current settings (get_celery.cache_clear() after they change)."""
    return build_celery(get_settings())
