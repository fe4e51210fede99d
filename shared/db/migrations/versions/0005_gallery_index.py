"""Nearest-neighbour search: partial HNSW indexes on templates.embedding, one per large gallery.

The indexes are named per (tenant, model version) and built by shared/gallery_index.py with
CREATE INDEX CONCURRENTLY, which cannot run in a migration's transaction: shared.db.migrate.upgrade
builds them for existing galleries right after the migrations commit, and workers keep them up to
date (ann_interval_s). This revision checks that the server's pgvector has HNSW (0.5.0+).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op
from sqlalchemy import text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    version = op.get_bind().execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    parts = tuple(int(p) for p in str(version or "0").split(".")[:2] if p.isdigit())
    if parts < (0, 5):
        raise RuntimeError(f"pgvector {version} has no HNSW index: 0.5.0 or newer is needed")


def downgrade() -> None:
    op.execute(
        "DO $$ DECLARE name text; BEGIN FOR name IN SELECT relname FROM pg_class "
        "WHERE relname LIKE 'ix_templates_ann_%' AND relkind = 'i' LOOP "
        "EXECUTE format('DROP INDEX %I', name); END LOOP; END $$"
    )
