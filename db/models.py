"""The feedback store's tables as SQLAlchemy 2.x `Mapped` classes.

The schema itself is owned by the Alembic migrations in `db/migrations/versions`; these classes describe the
head revision and a test checks that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Prompt(Base):
    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    # sha256 of the text: duplicates are found by an index, whatever the text's length or the back end
    text_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(200), default="")
    split: Mapped[str] = mapped_column(String(16), default="train", index=True)  # train | heldout
    reference_summary: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # None: the base model with a fresh (identity) adapter, i.e. the reference policy
    adapter_path: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"))
    is_current: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    made_by: Mapped[TrainingRound | None] = relationship(
        primaryjoin="PolicyVersion.id == TrainingRound.output_version_id", viewonly=True, uselist=False
    )


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")  # annotator | admin (migration 0002)
    password_hash: Mapped[str | None] = mapped_column(String(200))  # pbkdf2; None: no login (migration 0002)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Generation(Base):
    """One response of one policy version to one prompt, with what an on-policy PPO update needs."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"), index=True)
    query_text: Mapped[str] = mapped_column(Text)  # the prompt as the policy saw it (template applied)
    response: Mapped[str] = mapped_column(Text)
    query_ids: Mapped[list[Any]] = mapped_column(JSON)  # token ids fed to the policy (chat template applied)
    response_ids: Mapped[list[Any]] = mapped_column(JSON)  # sampled token ids, truncated after the first EOS
    logprobs: Mapped[list[Any]] = mapped_column(JSON)  # log-probs of response_ids at sampling time (old log-probs)
    model_score: Mapped[float | None] = mapped_column(Float)  # classifier score in [0, 1], 1 = not hateful
    model_logit: Mapped[float | None] = mapped_column(Float)
    scorer: Mapped[str | None] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # the queue's lease: an item handed to one annotator is not handed to another until it expires
    leased_to: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime)

    prompt: Mapped[Prompt] = relationship()


class Rating(Base):
    """A binary (0 toxic / 1 not toxic) or 1-5 harmlessness rating; `score` is its value mapped to [0, 1]."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("generation_id", "annotator_id", name="uq_rating_generation_annotator"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # binary | scale
    value: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    # the client's id for this submit: a retried submit with the same id returns the first one's row
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Comparison(Base):
    """A pairwise preference between two generations of one prompt: winner 'a', 'b' or 'tie'."""

    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("annotator_id", "generation_a_id", "generation_b_id", name="uq_comparison_pair_annotator"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    generation_a_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    generation_b_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    winner: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Skip(Base):
    __tablename__ = "skips"

    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrainingRound(Base):
    __tablename__ = "training_rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    reward_mode: Mapped[str] = mapped_column(String(16))  # model | human | blend
    reward_weight: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    metrics: Mapped[list[Any]] = mapped_column(JSON, default=list)  # one dict per PPO step
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    input_version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"))
    output_version_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started: Mapped[datetime | None] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime)
    # the running process's last sign of life (`feedback.rounds.HEARTBEAT_S`); another process sharing the database
    # treats a queued or running round as alive while this is recent
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(200))  # "host:pid" of the app process running it
