"""Callback outbox (shared.db.models.CallbackDelivery) and per-tenant webhook signing secrets.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# 32 random bytes, base64, as Standard Webhooks secrets are written (whsec_<base64>).
NEW_SECRET = (
    "'whsec_' || encode(decode(replace(gen_random_uuid()::text, '-', '') "
    "|| replace(gen_random_uuid()::text, '-', ''), 'hex'), 'base64')"
)


def upgrade() -> None:
    op.add_column("tenants", sa.Column("webhook_secret", sa.Text(), nullable=True))
    op.add_column("tenants", sa.Column("previous_webhook_secret", sa.Text(), nullable=True))
    op.add_column("tenants", sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(f"UPDATE tenants SET webhook_secret = {NEW_SECRET} WHERE webhook_secret IS NULL")
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_callback_deliveries_due", "callback_deliveries", ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_callback_deliveries_due", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    op.drop_column("tenants", "previous_secret_expires_at")
    op.drop_column("tenants", "previous_webhook_secret")
    op.drop_column("tenants", "webhook_secret")
