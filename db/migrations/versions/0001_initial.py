"""The first feedback store: prompts, policy versions, generations, annotators, ratings, comparisons, skips,
training rounds.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("split", sa.String(16), nullable=False, index=True),
        sa.Column("reference_summary", sa.Text),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("adapter_path", sa.Text),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("policy_versions.id")),
        sa.Column("is_current", sa.Boolean, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False, index=True),
        sa.Column("policy_version_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=False, index=True),
        sa.Column("query_text", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("query_ids", sa.JSON, nullable=False),
        sa.Column("response_ids", sa.JSON, nullable=False),
        sa.Column("logprobs", sa.JSON, nullable=False),
        sa.Column("model_score", sa.Float),
        sa.Column("model_logit", sa.Float),
        sa.Column("scorer", sa.String(200)),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("leased_to", sa.Integer, sa.ForeignKey("annotators.id")),
        sa.Column("lease_expires", sa.DateTime),
    )
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("request_id", sa.String(64), unique=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("generation_id", "annotator_id", name="uq_rating_generation_annotator"),
    )
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False, index=True),
        sa.Column("generation_a_id", sa.Integer, sa.ForeignKey("generations.id"), nullable=False, index=True),
        sa.Column("generation_b_id", sa.Integer, sa.ForeignKey("generations.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("winner", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("request_id", sa.String(64), unique=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("annotator_id", "generation_a_id", "generation_b_id", name="uq_comparison_pair_annotator"),
    )
    op.create_table(
        "skips",
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), primary_key=True),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id"), primary_key=True),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "training_rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("reward_mode", sa.String(16), nullable=False),
        sa.Column("reward_weight", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("evaluation", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("input_version_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=False),
        sa.Column("output_version_id", sa.Integer, sa.ForeignKey("policy_versions.id")),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("started", sa.DateTime),
        sa.Column("finished", sa.DateTime),
    )


def downgrade() -> None:
    for table in (
        "training_rounds",
        "skips",
        "comparisons",
        "ratings",
        "generations",
        "annotators",
        "policy_versions",
        "prompts",
    ):
        op.drop_table(table)
