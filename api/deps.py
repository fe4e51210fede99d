"""What routes depend on, made once per app and opened on first use.

Backends(settings): urls, blobs, celery, redis (each opened lazily; keys, the API key cache, so the app starts without them);
submitter(blobs, publisher, database_url): the GroupSubmitter of single submits.
backends_of(request) -> Backends; get_backends, get_blobs, get_publisher (the Celery app that sends jobs),
get_database_url: FastAPI dependencies, replaceable through app.dependency_overrides.
"""

import threading
from functools import cached_property
from typing import Any

from fastapi import Request

from api.keycache import KeyCache
from shared.services import ServiceUrls, resolve
from shared.settings import Settings

REDIS_TIMEOUT_S = 2.0


class Backends:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = KeyCache(settings.key_cache_s)
        self._submitters: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @cached_property
    def urls(self) -> ServiceUrls:
        return resolve(self.settings)

    @cached_property
    def blobs(self):
        from shared.blob import open_blob_store

        return open_blob_store(self.urls.blob_url)

    @cached_property
    def celery(self):
        from shared.celery_app import get_celery

        return get_celery()

    @cached_property
    def redis(self):
        import redis

        return redis.Redis.from_url(
            self.urls.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )

    @cached_property
    def database_url(self) -> str:
        """The database URL, its engine made with this process's pool size (settings.api_db_pool)."""
        from shared.db.session import get_engine

        url = self.urls.database_url
        get_engine(url, pool_size=self.settings.api_db_pool)
        return url

    def submitter(self, blobs: Any, publisher: Any, database_url: str) -> Any:
        """The GroupSubmitter writing single submits to these backends (one per combination: tests
        replace the publisher)."""
        from shared.group_submit import GroupSubmitter

        key = (id(blobs), id(publisher), database_url)
        with self._lock:
            if key not in self._submitters:
                self._submitters[key] = GroupSubmitter(blobs, publisher, database_url)
            return self._submitters[key]

    def close(self) -> None:
        with self._lock:
            submitters, self._submitters = list(self._submitters.values()), {}
        for submitter in submitters:
            submitter.close()
        if "redis" in self.__dict__:
            self.redis.close()


def backends_of(request: Request) -> Backends:
    return request.app.state.backends


# The dependencies are coroutines: FastAPI runs a plain function dependency in its thread pool,
# a thread hop per dependency per request for what is an attribute read.
async def get_backends(request: Request) -> Backends:
    return backends_of(request)


async def get_settings_of(request: Request) -> Settings:
    return backends_of(request).settings


async def get_database_url(request: Request) -> str:
    return backends_of(request).database_url


async def get_blobs(request: Request) -> Any:
    return backends_of(request).blobs


async def get_publisher(request: Request) -> Any:
    return backends_of(request).celery
