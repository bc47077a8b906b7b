"""Small query functions. Each takes a keyword-only `session` and never opens or commits one itself: the
service layer owns one transaction per user action.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session

from db.models import (
    Annotator,
    Comparison,
    Generation,
    PolicyVersion,
    Prompt,
    Rating,
    Skip,
    TrainingRound,
    utcnow,
)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- prompts -------------------------------------------------------------------------------------------
def existing_prompt_hashes(hashes: Iterable[str], *, session: Session) -> set[str]:
    wanted = list(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):  # stay under every back end's bound-parameter limit
        chunk = wanted[start : start + 500]
        found.update(session.scalars(select(Prompt.text_hash).where(Prompt.text_hash.in_(chunk))))
    return found


def add_prompts(rows: Sequence[dict], *, session: Session) -> None:
    session.add_all(Prompt(**row) for row in rows)
    session.flush()


def count_prompts(*, session: Session, split: str | None = None) -> int:
    q = select(func.count(Prompt.id))
    if split is not None:
        q = q.where(Prompt.split == split)
    return session.scalar(q) or 0


def prompts_for_generation(version_id: int, n: int, *, session: Session) -> list[Prompt]:
    """Training prompts with the fewest generations by `version_id` (ties by id): spreads the pool."""
    used = (
        select(Generation.prompt_id, func.count(Generation.id).label("n"))
        .where(Generation.policy_version_id == version_id)
        .group_by(Generation.prompt_id)
        .subquery()
    )
    q = (
        select(Prompt)
        .outerjoin(used, used.c.prompt_id == Prompt.id)
        .where(Prompt.split == "train")
        .order_by(func.coalesce(used.c.n, 0), Prompt.id)
        .limit(n)
    )
    return list(session.scalars(q))


def prompts_with_one_generation(version_id: int, n: int, *, session: Session) -> list[Prompt]:
    """Prompts answered exactly once by `version_id`, newest answer first: a second answer makes a pair."""
    per_prompt = (
        select(Generation.prompt_id, func.count(Generation.id).label("n"), func.max(Generation.id).label("last"))
        .where(Generation.policy_version_id == version_id)
        .group_by(Generation.prompt_id)
        .subquery()
    )
    q = select(Prompt).join(per_prompt, per_prompt.c.prompt_id == Prompt.id).where(per_prompt.c.n == 1)
    return list(session.scalars(q.order_by(per_prompt.c.last.desc()).limit(n)))


def random_prompts(split: str, n: int, seed: int, *, session: Session) -> list[Prompt]:
    """`n` prompts of `split` drawn without replacement by a seeded RNG (the same seed, the same draw)."""
    import random

    ids = list(session.scalars(select(Prompt.id).where(Prompt.split == split).order_by(Prompt.id)))
    chosen = random.Random(seed).sample(ids, min(n, len(ids)))
    by_id = {p.id: p for p in session.scalars(select(Prompt).where(Prompt.id.in_(chosen)))}
    return [by_id[i] for i in chosen]


def heldout_prompts(n: int, *, session: Session) -> list[Prompt]:
    return list(session.scalars(select(Prompt).where(Prompt.split == "heldout").order_by(Prompt.id).limit(n)))


# ---- policy versions -----------------------------------------------------------------------------------
def current_version(*, session: Session) -> PolicyVersion | None:
    return session.scalar(select(PolicyVersion).where(PolicyVersion.is_current.is_(True)))


def set_current_version(version_id: int, *, session: Session) -> None:
    session.execute(update(PolicyVersion).values(is_current=(PolicyVersion.id == version_id)))


def list_versions(*, session: Session) -> list[PolicyVersion]:
    return list(session.scalars(select(PolicyVersion).order_by(PolicyVersion.id)))


# ---- annotators ----------------------------------------------------------------------------------------
def annotator_by_name(name: str, *, session: Session) -> Annotator | None:
    return session.scalar(select(Annotator).where(Annotator.name == name))


def count_accounts(*, session: Session) -> int:
    """Annotators with a password (logins are on when there is one)."""
    return session.scalar(select(func.count(Annotator.id)).where(Annotator.password_hash.is_not(None))) or 0


# ---- generations and the queue ----------------------------------------------------------------------------
def add_generations(rows: Sequence[dict], *, session: Session) -> list[int]:
    """Insert generations (dicts of `Generation` columns); returns their ids, in order."""
    added = [Generation(**row) for row in rows]
    session.add_all(added)
    session.flush()
    return [g.id for g in added]


def generations_of(version_id: int, *, session: Session, newest_first: bool = False) -> list[Generation]:
    """Every generation of `version_id`, by id."""
    order = Generation.id.desc() if newest_first else Generation.id
    return list(session.scalars(select(Generation).where(Generation.policy_version_id == version_id).order_by(order)))


def generations_by_ids(ids: Sequence[int], *, session: Session) -> list[Generation]:
    """The generations with these ids, by id (missing ids are skipped)."""
    if not ids:
        return []
    return list(session.scalars(select(Generation).where(Generation.id.in_(set(ids))).order_by(Generation.id)))


def count_generations(version_id: int, *, session: Session) -> int:
    return session.scalar(select(func.count(Generation.id)).where(Generation.policy_version_id == version_id)) or 0


def count_unrated(version_id: int, *, session: Session) -> int:
    """Generations of `version_id` that nobody has rated yet."""
    rated = exists().where(Rating.generation_id == Generation.id)
    return (
        session.scalar(select(func.count(Generation.id)).where(Generation.policy_version_id == version_id, ~rated)) or 0
    )


def _open_for(annotator_id: int, version_id: int) -> tuple:
    """Conditions of the generations of `version_id` this annotator has neither rated nor skipped."""
    mine = exists().where(Rating.generation_id == Generation.id, Rating.annotator_id == annotator_id)
    skipped = exists().where(Skip.generation_id == Generation.id, Skip.annotator_id == annotator_id)
    return Generation.policy_version_id == version_id, ~mine, ~skipped


def count_open_for(annotator_id: int, version_id: int, *, session: Session) -> int:
    return session.scalar(select(func.count(Generation.id)).where(*_open_for(annotator_id, version_id))) or 0


def queue_candidates(annotator_id: int, version_id: int, now: datetime, limit: int, *, session: Session) -> list[int]:
    """Ids of generations `annotator_id` may be given next, best first: unleased ones before leased ones, then
    those with the fewest ratings (ties by id)."""
    n_ratings = (
        select(Rating.generation_id.label("gid"), func.count(Rating.id).label("n"))
        .group_by(Rating.generation_id)
        .subquery()
    )
    leased_by_other = and_(
        Generation.leased_to.is_not(None), Generation.leased_to != annotator_id, Generation.lease_expires > now
    )
    q = (
        select(Generation.id)
        .outerjoin(n_ratings, n_ratings.c.gid == Generation.id)
        .where(*_open_for(annotator_id, version_id))
        .order_by(case((leased_by_other, 1), else_=0), func.coalesce(n_ratings.c.n, 0), Generation.id)
        .limit(limit)
    )
    return list(session.scalars(q))


def held_lease(annotator_id: int, version_id: int, now: datetime, *, session: Session) -> int | None:
    """The unrated, unskipped item this annotator already holds a live lease on (a reload shows it again)."""
    return session.scalar(
        select(Generation.id)
        .where(
            *_open_for(annotator_id, version_id), Generation.leased_to == annotator_id, Generation.lease_expires > now
        )
        .order_by(Generation.id)
        .limit(1)
    )


def try_lease(generation_id: int, annotator_id: int, now: datetime, ttl: timedelta, *, session: Session) -> bool:
    """Atomically lease an item unless another annotator holds a live lease on it (a conditional UPDATE)."""
    res = session.execute(
        update(Generation)
        .where(
            Generation.id == generation_id,
            or_(
                Generation.leased_to.is_(None),
                Generation.leased_to == annotator_id,
                Generation.lease_expires <= now,
            ),
        )
        .values(leased_to=annotator_id, lease_expires=now + ttl)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def force_lease(generation_id: int, annotator_id: int, now: datetime, ttl: timedelta, *, session: Session) -> None:
    session.execute(
        update(Generation)
        .where(Generation.id == generation_id)
        .values(leased_to=annotator_id, lease_expires=now + ttl)
        .execution_options(synchronize_session=False)
    )


def add_skip(annotator_id: int, generation_id: int, *, session: Session) -> None:
    """Put an item aside for one annotator (again: nothing changes)."""
    if session.get(Skip, (annotator_id, generation_id)) is None:
        session.add(Skip(annotator_id=annotator_id, generation_id=generation_id))
        session.flush()


def release_lease(generation_id: int, annotator_id: int, *, session: Session) -> None:
    session.execute(
        update(Generation)
        .where(Generation.id == generation_id, Generation.leased_to == annotator_id)
        .values(leased_to=None, lease_expires=None)
        .execution_options(synchronize_session=False)
    )


def pair_candidates(
    annotator_id: int, version_id: int, *, session: Session, limit: int | None = 1
) -> list[tuple[int, int]]:
    """(a, b) generation pairs of one prompt by `version_id` that this annotator has not compared yet (all of
    them with `limit=None`)."""
    a, b = Generation.__table__.alias("a"), Generation.__table__.alias("b")
    done = exists().where(
        Comparison.annotator_id == annotator_id,
        Comparison.generation_a_id == a.c.id,
        Comparison.generation_b_id == b.c.id,
    )
    counts = (
        select(Comparison.generation_a_id.label("gid"), func.count(Comparison.id).label("n"))
        .group_by(Comparison.generation_a_id)
        .subquery()
    )
    q = (
        select(a.c.id, b.c.id)
        .join(b, and_(a.c.prompt_id == b.c.prompt_id, a.c.id < b.c.id))
        .outerjoin(counts, counts.c.gid == a.c.id)
        .where(a.c.policy_version_id == version_id, b.c.policy_version_id == version_id, ~done)
        .order_by(func.coalesce(counts.c.n, 0), a.c.id, b.c.id)
    )
    if limit is not None:
        q = q.limit(limit)
    return [(x, y) for x, y in session.execute(q)]


def count_comparisons_of(annotator_id: int, version_id: int, *, session: Session) -> int:
    """This annotator's comparisons of `version_id`'s responses."""
    a = Generation.__table__.alias("a")
    return (
        session.scalar(
            select(func.count(Comparison.id))
            .join(a, a.c.id == Comparison.generation_a_id)
            .where(Comparison.annotator_id == annotator_id, a.c.policy_version_id == version_id)
        )
        or 0
    )


# ---- ratings -------------------------------------------------------------------------------------------
def rating_by_request(request_id: str, *, session: Session) -> Rating | None:
    return session.scalar(select(Rating).where(Rating.request_id == request_id))


def comparison_by_request(request_id: str, *, session: Session) -> Comparison | None:
    return session.scalar(select(Comparison).where(Comparison.request_id == request_id))


def rating_of(generation_id: int, annotator_id: int, *, session: Session) -> Rating | None:
    return session.scalar(
        select(Rating).where(Rating.generation_id == generation_id, Rating.annotator_id == annotator_id)
    )


def last_rating(annotator_id: int, *, session: Session) -> Rating | None:
    return session.scalar(
        select(Rating).where(Rating.annotator_id == annotator_id).order_by(Rating.created.desc(), Rating.id.desc())
    )


def last_comparison(annotator_id: int, *, session: Session) -> Comparison | None:
    return session.scalar(
        select(Comparison)
        .where(Comparison.annotator_id == annotator_id)
        .order_by(Comparison.created.desc(), Comparison.id.desc())
    )


def count_judgements_of(annotator_id: int, *, session: Session) -> int:
    """This annotator's ratings and comparisons, of every version."""
    ratings = session.scalar(select(func.count(Rating.id)).where(Rating.annotator_id == annotator_id)) or 0
    comparisons = session.scalar(select(func.count(Comparison.id)).where(Comparison.annotator_id == annotator_id))
    return ratings + (comparisons or 0)


def judgements_of(annotator_id: int, *, session: Session) -> list[dict]:
    """Every rating and comparison of one annotator, with the texts they judged: what a deletion must keep."""
    rows: list[dict] = []
    for r, g in session.execute(
        select(Rating, Generation)
        .join(Generation, Generation.id == Rating.generation_id)
        .where(Rating.annotator_id == annotator_id)
        .order_by(Rating.id)
    ).tuples():
        rows.append(
            {
                "type": "rating",
                "id": r.id,
                "kind": r.kind,
                "value": r.value,
                "score": r.score,
                "comment": r.comment,
                "created": r.created.isoformat(),
                "generation_id": g.id,
                "policy_version_id": g.policy_version_id,
                "prompt": g.query_text,
                "response": g.response,
            }
        )
    for c in session.scalars(select(Comparison).where(Comparison.annotator_id == annotator_id).order_by(Comparison.id)):
        a, b = session.get(Generation, c.generation_a_id), session.get(Generation, c.generation_b_id)
        rows.append(
            {
                "type": "comparison",
                "id": c.id,
                "winner": c.winner,
                "comment": c.comment,
                "created": c.created.isoformat(),
                "generation_a_id": a.id,
                "generation_b_id": b.id,
                "policy_version_id": a.policy_version_id,
                "prompt": a.query_text,
                "response_a": a.response,
                "response_b": b.response,
            }
        )
    return rows


def delete_judgements_of(annotator_id: int, *, session: Session) -> int:
    """Delete an annotator's ratings, comparisons and skips; returns the ratings and comparisons deleted."""
    n = session.execute(delete(Rating).where(Rating.annotator_id == annotator_id)).rowcount or 0
    n += session.execute(delete(Comparison).where(Comparison.annotator_id == annotator_id)).rowcount or 0
    session.execute(delete(Skip).where(Skip.annotator_id == annotator_id))
    return n


def rating_scores(generation_ids: Sequence[int] | None = None, *, session: Session) -> dict[int, list[float]]:
    """Per generation, the scores in [0, 1] of its binary / 1-5 ratings."""
    out: dict[int, list[float]] = {}
    rq = select(Rating.generation_id, Rating.score)
    if generation_ids is not None:
        rq = rq.where(Rating.generation_id.in_(set(generation_ids)))
    for gid, score in session.execute(rq):
        out.setdefault(gid, []).append(float(score))
    return out


def comparison_outcomes(*, session: Session) -> list[tuple[int, int, str]]:
    """(generation_a_id, generation_b_id, winner) of every pairwise comparison."""
    q = select(Comparison.generation_a_id, Comparison.generation_b_id, Comparison.winner)
    return [(a, b, w) for a, b, w in session.execute(q)]


def ratings_table(*, session: Session) -> list[tuple[int, int, float]]:
    """(generation_id, annotator_id, score) of every binary / scale rating."""
    return [
        (g, a, float(s)) for g, a, s in session.execute(select(Rating.generation_id, Rating.annotator_id, Rating.score))
    ]


def counts_per_annotator(*, session: Session) -> list[tuple[str, int, int]]:
    """(name, ratings, comparisons) per annotator, by name."""
    r = select(Rating.annotator_id, func.count(Rating.id).label("n")).group_by(Rating.annotator_id).subquery()
    c = (
        select(Comparison.annotator_id, func.count(Comparison.id).label("n"))
        .group_by(Comparison.annotator_id)
        .subquery()
    )
    q = (
        select(Annotator.name, func.coalesce(r.c.n, 0), func.coalesce(c.c.n, 0))
        .outerjoin(r, r.c.annotator_id == Annotator.id)
        .outerjoin(c, c.c.annotator_id == Annotator.id)
        .order_by(Annotator.name)
    )
    return [(name, int(n), int(m)) for name, n, m in session.execute(q)]


# ---- training rounds -----------------------------------------------------------------------------------
def list_rounds(*, session: Session) -> list[TrainingRound]:
    return list(session.scalars(select(TrainingRound).order_by(TrainingRound.id.desc())))


def _unfinished():
    """Rounds that have not ended: queued, or running."""
    return TrainingRound.status.in_(("queued", "running"))


def unfinished_rounds(*, session: Session) -> list[TrainingRound]:
    return list(session.scalars(select(TrainingRound).where(_unfinished())))


def mark_interrupted_rounds(stale_after: timedelta, also: Sequence[int] = (), *, session: Session) -> int:
    """Rounds left queued or running by a process that died (no heartbeat for `stale_after`, or their ids in
    `also`): they cannot resume, so say so. A round with a recent heartbeat belongs to a live app process on this
    database and is left alone."""
    res = session.execute(
        update(TrainingRound)
        .where(_unfinished())
        .where(
            or_(
                TrainingRound.heartbeat.is_(None),
                TrainingRound.heartbeat < utcnow() - stale_after,
                TrainingRound.id.in_(list(also)),
            )
        )
        .values(status="interrupted", finished=utcnow(), error="the app stopped while this round was running")
    )
    return res.rowcount or 0


def live_round(stale_after: timedelta, *, session: Session) -> TrainingRound | None:
    """A queued or running round whose process beat within `stale_after` (any app process on this database)."""
    return session.scalars(
        select(TrainingRound).where(_unfinished()).where(TrainingRound.heartbeat >= utcnow() - stale_after).limit(1)
    ).first()


def beat_round(round_id: int, *, session: Session) -> None:
    session.execute(update(TrainingRound).where(TrainingRound.id == round_id).values(heartbeat=utcnow()))


def lock_rounds(*, session: Session) -> None:
    """Serialise round creation across processes for this transaction: PostgreSQL's transaction-scoped advisory
    lock (SQLite's BEGIN IMMEDIATE already holds the write lock)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROUNDS_LOCK_KEY})


ROUNDS_LOCK_KEY = 7_242_001  # the advisory-lock key of round creation (any constant no other code uses)
