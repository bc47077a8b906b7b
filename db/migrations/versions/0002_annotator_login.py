"""Annotator accounts for the app's login: a role (annotator or admin) and a password hash.

Existing annotators become plain annotators without a password (they cannot log in until one is set).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="annotator"))
        batch.add_column(sa.Column("password_hash", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.drop_column("password_hash")
        batch.drop_column("role")
