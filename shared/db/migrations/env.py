"""Alembic environment: online migrations only, on the connection or URL given by the caller."""

from alembic import context
from sqlalchemy import create_engine, pool

from shared.db.models import Base
from shared.db.session import normalise_url
from shared.gallery_index import not_a_gallery_index

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from shared.services import resolve

        url = resolve().database_url
    return normalise_url(url)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, include_object=not_a_gallery_index)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool, hide_parameters=True)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, include_object=not_a_gallery_index)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
run_migrations_online()
