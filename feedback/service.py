"""The labeling service: annotators, the rating queue, submits (idempotent), skip and undo, progress, the pool
of generations and its refill, reward previews and PPO samples.

Each public method is one user action and one transaction (`with self.Session.begin()`); what it returns are
the frozen objects of `feedback.types`, never ORM rows. The service is safe to share between threads: it holds
a session factory, not a session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import queries as q
from db.models import Annotator, Comparison, Generation, PolicyVersion, Rating, Skip, TrainingRound, utcnow
from feedback.io import export_ratings, import_prompts
from feedback.rewards import blend, comparison_scores, krippendorff_alpha, mean_or_none, rating_score
from feedback.types import (
    AnnotatorInfo,
    ImportReport,
    Item,
    NewGeneration,
    PairItem,
    PPOSample,
    PreviewRow,
    Progress,
    PromptRef,
    Receipt,
    RoundInfo,
    VersionInfo,
)
from rlhf.scorers import reward_of

log = logging.getLogger(__name__)

ROLES = ("annotator", "admin")
STRATEGIES = ("fewest", "uncertain", "disagreement")


class Generator(Protocol):
    """What the pool asks for new items: responses of the policy version `version_id` to these prompts."""

    version_id: int

    def generate(self, prompts: Sequence[PromptRef]) -> list[NewGeneration]: ...


class FeedbackService:
    """Args:
    session_factory: from `db.session.open_database`.
    generator: the engine side that produces new generations (None: the pool is filled by hand).
    lease_seconds: how long an item handed to one annotator is kept from the others.
    low_water: refill when fewer unrated items of the current version remain.
    refill_size: prompts per refill.
    strategy: default queue order: fewest, uncertain or disagreement.
    use_logit: the run config's `reward.use_logit`: model mode rewards with the classifier's logit (margin), as
        `rlhf train` does (`rlhf.scorers.reward_of`); Blend mixes its probability with the human [0, 1] score.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        generator: Generator | None = None,
        lease_seconds: float = 600,
        low_water: int = 8,
        refill_size: int = 16,
        strategy: str = "fewest",
        use_logit: bool = False,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"queue strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.Session = session_factory
        self.generator = generator
        self.lease = timedelta(seconds=lease_seconds)
        self.low_water = low_water
        self.refill_size = refill_size
        self.strategy = strategy
        self.use_logit = use_logit
        self._refill_lock = threading.Lock()
        self.last_refill_error: str | None = None

    # ---- annotators -------------------------------------------------------------------------------------
    def annotator(self, name: str, role: str | None = None) -> AnnotatorInfo:
        """The annotator called `name`, created on first use (role: annotator unless given)."""
        name = name.strip()
        if not name:
            raise ValueError("an annotator needs a name")
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        for attempt in range(2):
            try:
                with self.Session.begin() as s:
                    a = q.annotator_by_name(name, session=s)
                    if a is None:
                        a = Annotator(name=name, role=role or "annotator")
                        s.add(a)
                        s.flush()
                    elif role is not None and a.role != role:
                        a.role = role
                    return _annotator(a)
            except IntegrityError:  # created by another thread between our read and insert
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def set_password(self, name: str, password: str, role: str | None = None) -> AnnotatorInfo:
        if len(password) < 4:
            raise ValueError(f"the password of {name!r} is too short: a password needs at least 4 characters")
        info = self.annotator(name, role)
        with self.Session.begin() as s:
            s.get(Annotator, info.id).password_hash = _hash_password(password)
        return info

    def check_login(self, name: str, password: str) -> AnnotatorInfo | None:
        with self.Session.begin() as s:
            a = q.annotator_by_name(name.strip(), session=s)
            if a is None or not a.password_hash or not _check_password(password, a.password_hash):
                return None
            return _annotator(a)

    def has_accounts(self) -> bool:
        with self.Session.begin() as s:
            return bool(s.scalar(select(func.count(Annotator.id)).where(Annotator.password_hash.is_not(None))))

    # ---- policy versions ------------------------------------------------------------------------------------
    def ensure_base_version(self) -> VersionInfo:
        """The current version, creating 'v0 (base)' (the reference policy) in an empty store."""
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                cur = PolicyVersion(name="v0 (base)", adapter_path=None, parent_id=None, is_current=True)
                s.add(cur)
                s.flush()
            return _version(cur)

    def current_version(self) -> VersionInfo:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                raise ValueError("the store has no policy version yet; call ensure_base_version() first")
            return _version(cur)

    def versions(self) -> list[VersionInfo]:
        with self.Session.begin() as s:
            return [_version(v) for v in q.list_versions(session=s)]

    def version(self, version_id: int) -> VersionInfo:
        with self.Session.begin() as s:
            v = s.get(PolicyVersion, version_id)
            if v is None:
                raise ValueError(f"no policy version {version_id}")
            return _version(v)

    def set_current(self, version_id: int) -> VersionInfo:
        """Make `version_id` current (a rollback to an earlier version is this too)."""
        with self.Session.begin() as s:
            v = s.get(PolicyVersion, version_id)
            if v is None:
                raise ValueError(f"no policy version {version_id}")
            q.set_current_version(version_id, session=s)
            s.flush()
            s.refresh(v)
            return _version(v)

    # ---- the pool -----------------------------------------------------------------------------------------
    def add_generations(self, version_id: int, gens: Sequence[NewGeneration]) -> list[int]:
        with self.Session.begin() as s:
            rows = [
                Generation(
                    prompt_id=g.prompt_id,
                    policy_version_id=version_id,
                    query_text=g.query_text,
                    response=g.response,
                    query_ids=list(g.query_ids),
                    response_ids=list(g.response_ids),
                    logprobs=[float(x) for x in g.logprobs],
                    model_score=g.model_score,
                    model_logit=g.model_logit,
                    scorer=g.scorer,
                )
                for g in gens
            ]
            s.add_all(rows)
            s.flush()
            return [r.id for r in rows]

    def training_prompts(self, n: int, seed: int = 0) -> list[PromptRef]:
        """`n` training prompts drawn at random (seeded) from the store."""
        with self.Session.begin() as s:
            return [PromptRef(p.id, p.text, p.reference_summary) for p in q.random_prompts("train", n, seed, session=s)]

    def heldout_prompts(self, n: int) -> list[PromptRef]:
        """The first `n` held-out prompts (always the same ones, so evaluations are comparable)."""
        if n <= 0:
            return []
        with self.Session.begin() as s:
            return [PromptRef(p.id, p.text, p.reference_summary) for p in q.heldout_prompts(n, session=s)]

    def prompt_counts(self) -> dict[str, int]:
        with self.Session.begin() as s:
            return {split: q.count_prompts(split=split, session=s) for split in ("train", "heldout")}

    def unrated_count(self) -> int:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            return 0 if cur is None else q.count_unrated(cur.id, session=s)

    def refill_if_low(self, pairs: bool = False) -> int:
        """Ask the generator for `refill_size` new items when fewer than `low_water` unrated ones remain.

        With `pairs`, instead give a second response to prompts that have only one from the current version,
        so pairwise raters have something to compare (asked for when someone finds no pair left).
        Returns how many were added (0 when not low, when another refill is running, or with no generator).
        Generation runs outside any transaction: labeling goes on while the engine works.
        """
        if self.generator is None or not self._refill_lock.acquire(blocking=False):
            return 0
        try:
            with self.Session.begin() as s:
                cur = q.current_version(session=s)
                if cur is None or cur.id != self.generator.version_id:
                    return 0  # the engine still holds another version; the app swaps it first
                if pairs:
                    chosen = q.prompts_with_one_generation(cur.id, max(1, self.refill_size // 2), session=s)
                elif q.count_unrated(cur.id, session=s) < self.low_water:
                    chosen = q.prompts_for_generation(cur.id, self.refill_size, session=s)
                else:
                    return 0
                prompts = [PromptRef(p.id, p.text, p.reference_summary) for p in chosen]
                version_id = cur.id
            if not prompts:
                return 0
            gens = self.generator.generate(prompts)
            added = len(self.add_generations(version_id, gens))
            self.last_refill_error = None
            return added
        except Exception as err:  # noqa: BLE001 - a failed refill is reported, labeling goes on
            log.exception("refilling the pool failed")
            self.last_refill_error = f"{type(err).__name__}: {err}"
            return 0
        finally:
            self._refill_lock.release()

    def refill_in_background(
        self, on_done: Callable[[int], None] | None = None, pairs: bool = False
    ) -> threading.Thread | None:
        """`refill_if_low` in a daemon thread (None when a refill is already running)."""
        if self.generator is None or self._refill_lock.locked():
            return None

        def work() -> None:
            added = self.refill_if_low(pairs=pairs)
            if on_done is not None:
                on_done(added)

        t = threading.Thread(target=work, name="pool-refill", daemon=True)
        t.start()
        return t

    # ---- the queue ----------------------------------------------------------------------------------------
    def next_item(self, annotator_id: int, strategy: str | None = None) -> Item | None:
        """The next generation for this annotator (leased to them), or None when none is left for them."""
        with self.Session.begin() as s:
            return self._next(s, annotator_id, strategy or self.strategy)

    def _next(self, s: Session, annotator_id: int, strategy: str) -> Item | None:
        cur = q.current_version(session=s)
        if cur is None:
            return None
        now = utcnow()
        held = q.held_lease(annotator_id, cur.id, now, session=s)
        if held is not None:
            q.force_lease(held, annotator_id, now, self.lease, session=s)
            return _item(s.get(Generation, held))
        candidates = q.queue_candidates(annotator_id, cur.id, now, strategy, limit=32, session=s)
        for gid in candidates:
            if q.try_lease(gid, annotator_id, now, self.lease, session=s):
                return _item(s.get(Generation, gid))
        if candidates:
            # every item left for this annotator is leased to someone else: share one rather than show nothing
            q.force_lease(candidates[0], annotator_id, now, self.lease, session=s)
            return _item(s.get(Generation, candidates[0]))
        return None

    def submit(
        self,
        annotator_id: int,
        generation_id: int,
        kind: str,
        value: int,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> Receipt:
        receipt, _ = self._submit(annotator_id, generation_id, kind, value, comment, request_id, advance=False)
        return receipt

    def submit_and_next(
        self,
        annotator_id: int,
        generation_id: int,
        kind: str,
        value: int,
        comment: str | None = None,
        request_id: str | None = None,
        strategy: str | None = None,
    ) -> tuple[Receipt, Item | None]:
        """Store a rating and hand out the next item, in one transaction."""
        return self._submit(annotator_id, generation_id, kind, value, comment, request_id, True, strategy)

    def _submit(self, annotator_id, generation_id, kind, value, comment, request_id, advance, strategy=None):
        score = rating_score(kind, int(value))
        comment = (comment or "").strip() or None
        for attempt in range(3):
            try:
                with self.Session.begin() as s:
                    if request_id:
                        prior = q.rating_by_request(request_id, session=s)
                        if prior is not None:
                            nxt = self._next(s, annotator_id, strategy or self.strategy) if advance else None
                            return _receipt(prior, duplicate=True), nxt
                    if s.get(Generation, generation_id) is None:
                        raise ValueError(f"no generation {generation_id}")
                    if q.rating_of(generation_id, annotator_id, session=s) is not None:
                        raise ValueError(
                            f"annotator {annotator_id} has already rated generation {generation_id}; undo it first"
                        )
                    r = Rating(
                        generation_id=generation_id,
                        annotator_id=annotator_id,
                        kind=kind,
                        value=int(value),
                        score=score,
                        comment=comment,
                        request_id=request_id or None,
                        created=utcnow(),
                    )
                    s.add(r)
                    s.flush()
                    q.release_lease(generation_id, annotator_id, session=s)
                    nxt = self._next(s, annotator_id, strategy or self.strategy) if advance else None
                    return _receipt(r), nxt
            except IntegrityError:
                # a concurrent retry of the same request won the insert: the loop finds its row next time
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def skip(self, annotator_id: int, generation_id: int, strategy: str | None = None) -> Item | None:
        """Put this item aside for this annotator (others still get it) and return the next one."""
        with self.Session.begin() as s:
            if s.get(Skip, (annotator_id, generation_id)) is None:
                s.add(Skip(annotator_id=annotator_id, generation_id=generation_id))
                s.flush()
            q.release_lease(generation_id, annotator_id, session=s)
            return self._next(s, annotator_id, strategy or self.strategy)

    def undo(self, annotator_id: int) -> Item | PairItem | None:
        """Delete this annotator's last rating or comparison (nobody else's) and hand its item back to them."""
        with self.Session.begin() as s:
            r = q.last_rating(annotator_id, session=s)
            c = q.last_comparison(annotator_id, session=s)
            if r is None and c is None:
                return None
            if c is not None and (r is None or (c.created, c.id) > (r.created, r.id)):
                a, b = s.get(Generation, c.generation_a_id), s.get(Generation, c.generation_b_id)
                s.delete(c)
                return PairItem(a.prompt_id, a.prompt.text, _item(a), _item(b))
            g = s.get(Generation, r.generation_id)
            s.delete(r)
            s.flush()
            q.force_lease(g.id, annotator_id, utcnow(), self.lease, session=s)
            return dataclasses.replace(_item(g), rated_as=r.kind)

    def next_pair(self, annotator_id: int, skipped: Collection[tuple[int, int]] = ()) -> PairItem | None:
        """Two current-version responses to one prompt that this annotator has not compared, nor skipped (pairs
        of generation ids, lower id first; the page keeps them for its session)."""
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                return None
            pairs = q.pair_candidates(annotator_id, cur.id, session=s, limit=len(skipped) + 1)
            pairs = [p for p in pairs if p not in set(skipped)]
            if not pairs:
                return None
            a, b = (s.get(Generation, i) for i in pairs[0])
            return PairItem(a.prompt_id, a.prompt.text, _item(a), _item(b))

    def pair_progress(self, annotator_id: int, skipped: Collection[tuple[int, int]] = ()) -> tuple[int, int]:
        """(pairs of the current version this annotator compared, pairs left for them)."""
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                return 0, 0
            left = [p for p in q.pair_candidates(annotator_id, cur.id, session=s, limit=None) if p not in set(skipped)]
            done = q.count_comparisons_of(annotator_id, cur.id, session=s)
            return done, len(left)

    def submit_comparison(
        self,
        annotator_id: int,
        generation_a_id: int,
        generation_b_id: int,
        winner: str,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> Receipt:
        comparison_scores(winner)  # validates
        if generation_a_id > generation_b_id:  # one order per pair, so the unique constraint sees repeats
            generation_a_id, generation_b_id = generation_b_id, generation_a_id
            winner = {"a": "b", "b": "a", "tie": "tie"}[winner]
        for attempt in range(3):
            try:
                with self.Session.begin() as s:
                    if request_id:
                        prior = q.comparison_by_request(request_id, session=s)
                        if prior is not None:
                            return Receipt(prior.id, prior.annotator_id, "pairwise", prior.winner, duplicate=True)
                    a, b = s.get(Generation, generation_a_id), s.get(Generation, generation_b_id)
                    if a is None or b is None:
                        raise ValueError(f"no generations {generation_a_id} and {generation_b_id}")
                    if a.prompt_id != b.prompt_id:
                        raise ValueError("a pairwise preference compares two responses to the same prompt")
                    c = Comparison(
                        prompt_id=a.prompt_id,
                        generation_a_id=a.id,
                        generation_b_id=b.id,
                        annotator_id=annotator_id,
                        winner=winner,
                        comment=(comment or "").strip() or None,
                        request_id=request_id or None,
                        created=utcnow(),
                    )
                    s.add(c)
                    s.flush()
                    return Receipt(c.id, annotator_id, "pairwise", winner)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def delete_ratings_of(self, name: str, confirm: str, backup_dir: Path) -> tuple[int, Path]:
        """Delete every rating and comparison of one annotator (e.g. a spammer), after writing them to a JSONL
        file in `backup_dir`; `confirm` must read ``delete NAME``. Returns (how many went, the backup file).

        The file is written and flushed to disk inside the transaction, before the delete commits: if it cannot
        be written, nothing is deleted.
        """
        name = name.strip()
        if not name:
            raise ValueError("type the name of the annotator whose ratings to delete")
        if confirm.strip() != delete_phrase(name):
            raise ValueError(f"nothing deleted: to confirm, type exactly: {delete_phrase(name)}")
        with self.Session.begin() as s:
            a = q.annotator_by_name(name, session=s)
            if a is None:
                raise ValueError(f"no annotator called {name!r}; nothing deleted")
            rows = q.judgements_of(a.id, session=s)
            backup = _write_backup(Path(backup_dir), a.id, rows)
            return q.delete_judgements_of(a.id, session=s), backup

    def progress(self, annotator_id: int) -> Progress:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            mine = (s.scalar(select(func.count(Rating.id)).where(Rating.annotator_id == annotator_id)) or 0) + (
                s.scalar(select(func.count(Comparison.id)).where(Comparison.annotator_id == annotator_id)) or 0
            )
            if cur is None:
                return Progress(0, 0, mine, 0)
            total = s.scalar(select(func.count(Generation.id)).where(Generation.policy_version_id == cur.id)) or 0
            unrated = q.count_unrated(cur.id, session=s)
            left = q.count_open_for(annotator_id, cur.id, session=s)
            return Progress(total - unrated, total, mine, left)

    # ---- prompts in, ratings out ---------------------------------------------------------------------------
    def import_prompt_file(self, path: Path, **options) -> ImportReport:
        """`feedback.io.import_prompts` into this store: every prompt of the file in one transaction, or none."""
        return import_prompts(self.Session, path, **options)

    def export_ratings(self, out: Path, fmt: str = "jsonl", shape: str = "unpaired") -> Path:
        """`feedback.io.export_ratings` from this store."""
        return export_ratings(self.Session, out, fmt, shape)

    # ---- rewards ------------------------------------------------------------------------------------------
    def preview(self, mode: str = "blend", weight: float = 0.5, limit: int | None = None) -> list[PreviewRow]:
        """The labeled items of the current version and the reward each mode gives them."""
        blend([], [], mode, weight)  # validates mode and weight before any work
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                return []
            humans = _human_scores(s)
            gens = [
                g
                for g in s.scalars(
                    select(Generation).where(Generation.policy_version_id == cur.id).order_by(Generation.id.desc())
                )
                if g.id in humans
            ][:limit]
            human = [mean_or_none(humans[g.id]) for g in gens]
            by_mode = self._rewards_by_mode(gens, human, weight)
            return [
                PreviewRow(
                    g.id,
                    g.prompt.text,
                    g.response,
                    len(humans[g.id]),
                    gens[i].model_score,
                    human[i],
                    by_mode["model"][i],
                    by_mode["human"][i],
                    by_mode["blend"][i],
                )
                for i, g in enumerate(gens)
            ]

    def model_reward(self, score: float | None, logit: float | None) -> float | None:
        """What model mode trains on for a stored item: `rlhf.scorers.reward_of`, as the CLI. None (the item is
        left out) when the item lacks the number: unscored, or stored without a logit by a scorer that has none."""
        if score is None or (self.use_logit and logit is None):
            return None
        return reward_of(score, logit, self.use_logit)

    def _rewards_by_mode(self, gens: Sequence[Generation], human: list[float | None], weight: float) -> dict:
        """Per mode, the reward of each generation: model = the CLI's reward; human and blend mix [0, 1] scores
        (the classifier's P(not offensive) with the mean human score)."""
        probability = [g.model_score for g in gens]
        return {
            "model": [self.model_reward(g.model_score, g.model_logit) for g in gens],
            "human": blend(probability, human, "human", weight),
            "blend": blend(probability, human, "blend", weight),
        }

    def agreement(self) -> float | None:
        """Krippendorff's alpha (interval) over every binary / 1-5 rating in the store."""
        with self.Session.begin() as s:
            return krippendorff_alpha(q.ratings_table(session=s))

    def counts_per_annotator(self) -> list[tuple[str, int, int]]:
        with self.Session.begin() as s:
            return q.counts_per_annotator(session=s)

    def ppo_samples(
        self, mode: str, weight: float = 0.5, version_id: int | None = None, rated_only: bool | None = None
    ) -> list[PPOSample]:
        """Generations of the policy version (default: current) with their rewards under `mode`, for PPO.

        Rated items come first. `human` mode leaves unrated items out; `model` and `blend` include them unless
        `rated_only` (default: only in `human` mode).
        """
        blend([], [], mode, weight)
        rated_only = (mode == "human") if rated_only is None else rated_only
        with self.Session.begin() as s:
            vid = version_id if version_id is not None else q.current_version(session=s).id
            gens = list(
                s.scalars(select(Generation).where(Generation.policy_version_id == vid).order_by(Generation.id))
            )
            humans = _human_scores(s, [g.id for g in gens])
            human = [mean_or_none(humans.get(g.id, [])) for g in gens]
            rewards = self._rewards_by_mode(gens, human, weight)[mode]
            out = [
                (h is None, PPOSample(g.id, list(g.query_ids), list(g.response_ids), list(g.logprobs), r))
                for g, h, r in zip(gens, human, rewards, strict=True)
                if r is not None and not (rated_only and h is None)
            ]
            return [sample for _, sample in sorted(out, key=lambda x: x[0])]

    # ---- training rounds ------------------------------------------------------------------------------------
    def create_round(self, config: dict, mode: str, weight: float) -> RoundInfo:
        blend([], [], mode, weight)
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                raise ValueError("the store has no policy version yet")
            r = TrainingRound(
                config=config,
                reward_mode=mode,
                reward_weight=weight,
                status="queued",
                metrics=[],
                input_version_id=cur.id,
            )
            s.add(r)
            s.flush()
            return _round(r)

    def update_round(self, round_id: int, **fields) -> RoundInfo:
        """Set fields of a round (status, metrics, evaluation, error, started, finished, output_version_id)."""
        with self.Session.begin() as s:
            r = s.get(TrainingRound, round_id)
            if r is None:
                raise ValueError(f"no training round {round_id}")
            for k, v in fields.items():
                setattr(r, k, v)
            s.flush()
            return _round(r)

    def finish_round(
        self, round_id: int, adapter_path: str, name: str, metrics: list, evaluation: dict | None
    ) -> VersionInfo:
        """Record a finished round and make its policy version current, in one transaction."""
        with self.Session.begin() as s:
            r = s.get(TrainingRound, round_id)
            v = PolicyVersion(name=name, adapter_path=adapter_path, parent_id=r.input_version_id, is_current=False)
            s.add(v)
            s.flush()
            q.set_current_version(v.id, session=s)
            r.status, r.metrics, r.evaluation = "done", metrics, evaluation
            r.finished, r.output_version_id = utcnow(), v.id
            s.flush()
            s.refresh(v)
            return _version(v)

    def rounds(self) -> list[RoundInfo]:
        with self.Session.begin() as s:
            return [_round(r) for r in q.list_rounds(session=s)]

    def mark_interrupted_rounds(self) -> int:
        with self.Session.begin() as s:
            return q.mark_interrupted_rounds(session=s)


def _human_scores(s: Session, generation_ids: Sequence[int] | None = None) -> dict[int, list[float]]:
    """Per generation, every human score in [0, 1]: its ratings' scores and its comparisons' outcomes."""
    out = q.rating_scores(generation_ids, session=s)
    wanted = set(generation_ids) if generation_ids is not None else None
    for a, b, winner in q.comparison_outcomes(session=s):
        for gid, score in zip((a, b), comparison_scores(winner), strict=True):
            if wanted is None or gid in wanted:
                out.setdefault(gid, []).append(score)
    return out


def delete_phrase(name: str) -> str:
    """What an admin types to confirm deleting `name`'s ratings."""
    return f"delete {name.strip()}"


def _write_backup(folder: Path, annotator_id: int, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"deleted-annotator{annotator_id}-{stamp}.jsonl"  # our own name: never the user's text
    with path.open("x", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


# ---- ORM row -> plain object ---------------------------------------------------------------------------------
def _annotator(a: Annotator) -> AnnotatorInfo:
    return AnnotatorInfo(a.id, a.name, a.role)


def _version(v: PolicyVersion) -> VersionInfo:
    return VersionInfo(v.id, v.name, v.adapter_path, v.parent_id, bool(v.is_current), v.created)


def _item(g: Generation) -> Item:
    return Item(g.id, g.prompt_id, g.prompt.text, g.response, g.model_score, g.policy_version_id)


def _receipt(r: Rating, duplicate: bool = False) -> Receipt:
    return Receipt(r.id, r.annotator_id, r.kind, r.value, duplicate)


def _round(r: TrainingRound) -> RoundInfo:
    return RoundInfo(
        r.id,
        r.status,
        r.reward_mode,
        r.reward_weight,
        dict(r.config or {}),
        list(r.metrics or []),
        r.evaluation,
        r.error,
        r.input_version_id,
        r.output_version_id,
        r.created,
        r.started,
        r.finished,
    )


# ---- passwords (pbkdf2, stdlib) ----------------------------------------------------------------------------------
_PBKDF2_ROUNDS = 200_000


def _hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ROUNDS)
    return f"pbkdf2_sha256${_PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    try:
        _, rounds, salt, digest = stored.split("$")
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(got.hex(), digest)
