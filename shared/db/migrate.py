"""Apply the Alembic migrations in shared/db/migrations/.

upgrade(database_url) -> None: bring the database to the newest revision (idempotent), then build
  the gallery indexes existing data needs (shared.gallery_index, concurrently).
current_revision(database_url) -> str | None: the revision the database is at.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool, text

from shared.db.session import normalise_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent upgrades (several processes starting at once) inside Postgres.
_LOCK_ID = 7_315_001


def alembic_config(database_url: str) -> Config:
    """An Alembic Config pointing at our migrations and `database_url` (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` against database_url, under an advisory lock."""
    config = alembic_config(database_url)
    engine = create_engine(normalise_url(database_url), poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
    if revision == "head":
        from shared.gallery_index import maintain_indexes
        from shared.settings import get_settings

        maintain_indexes(database_url, get_settings())  # concurrent builds need no transaction


def current_revision(database_url: str) -> str | None:
    """The Alembic revision recorded in the database, or None before the first upgrade."""
    engine = create_engine(normalise_url(database_url), poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
