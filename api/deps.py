"""What routes depend on, made once per app and opened on first use.

Backends(settings): urls, blobs, celery, redis (each opened lazily; keys, the API key cache, so the app starts without them).
get_backends(request) -> Backends; get_blobs, get_publisher (the Celery app that sends jobs),
get_database_url: FastAPI dependencies, replaceable through app.dependency_overrides.
"""

from functools import cached_property

from fastapi import Request

from api.keycache import KeyCache
from shared.services import ServiceUrls, resolve
from shared.settings import Settings

REDIS_TIMEOUT_S = 2.0


class Backends:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = KeyCache(settings.key_cache_s)

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

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()


def get_backends(request: Request) -> Backends:
    return request.app.state.backends


def get_settings_of(request: Request) -> Settings:
    return request.app.state.backends.settings


def get_database_url(request: Request) -> str:
    return get_backends(request).database_url


def get_blobs(request: Request):
    return get_backends(request).blobs


def get_publisher(request: Request):
    return get_backends(request).celery
