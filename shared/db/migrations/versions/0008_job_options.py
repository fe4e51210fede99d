"""jobs.options: the request's face options (max_faces, min_face_size, ...), null for defaults.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("options", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "options")
