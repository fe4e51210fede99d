"""submit_batches: one row per POST /v1/batches (its idempotency key and its answer);
jobs.submit_batch_id; an index for listing a tenant's jobs newest first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "submit_batches",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("answer", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("tenant_id", "idempotency_key"),
    )
    op.add_column("jobs", sa.Column("submit_batch_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_index(
        "ix_jobs_submit_batch", "jobs", ["submit_batch_id"], postgresql_where=sa.text("submit_batch_id IS NOT NULL")
    )
    op.create_index("ix_jobs_tenant_submitted", "jobs", ["tenant_id", sa.text("submitted_at DESC"), sa.text("id DESC")])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_submitted", table_name="jobs")
    op.drop_index("ix_jobs_submit_batch", table_name="jobs")
    op.drop_column("jobs", "submit_batch_id")
    op.drop_table("submit_batches")
