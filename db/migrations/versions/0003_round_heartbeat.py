"""A heartbeat and an owner (host:pid) on training rounds, so that app processes sharing one database tell a round another process is
running from one whose process died.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_rounds") as batch:
        batch.add_column(sa.Column("heartbeat", sa.DateTime()))
        batch.add_column(sa.Column("owner", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("training_rounds") as batch:
        batch.drop_column("owner")
        batch.drop_column("heartbeat")
