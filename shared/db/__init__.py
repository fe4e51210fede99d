"""Postgres: models, engine and session, migrations."""
