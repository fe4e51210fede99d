"""Alembic migrations of the biofleet database (run with shared.db.migrate.upgrade)."""
