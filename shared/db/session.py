"""Engine and sessions. One engine per database URL per process.

get_engine(url, pool_size=None) -> Engine; get_sessionmaker(url) -> sessionmaker; session_scope(url) -> a session
that commits on success and rolls back on error. `url` defaults to resolve().database_url.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}


def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// URLs -> postgresql+psycopg:// (psycopg 3); others unchanged."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _default_url() -> str:
    from shared.services import resolve

    return resolve().database_url


def get_engine(url: str | None = None, pool_size: int | None = None) -> Engine:
    """The cached engine for `url` (default: the resolved database URL). pool_size (kept
    connections, and as many again in overflow) counts when the engine is made: a process that
    serves many concurrent requests (the API) makes it first with its own size."""
    url = normalise_url(url or _default_url())
    engine = _engines.get(url)
    if engine is None:
        pool = {"pool_size": pool_size, "max_overflow": pool_size} if pool_size else {}
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True, **pool)  # no descriptors in logs
        _engines[url] = engine
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A sessionmaker bound to get_engine(url); objects stay readable after commit."""
    url = normalise_url(url or _default_url())
    maker = _makers.get(url)
    if maker is None:
        maker = sessionmaker(bind=get_engine(url), expire_on_commit=False)
        _makers[url] = maker
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session in one transaction: commit when the block ends, rollback if it raises."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection and forget the cached engines (tests, forked processes)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _makers.clear()
