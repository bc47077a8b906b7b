"""Labeling: the rating queue with its leases, submits (idempotent), skip and undo, pairwise comparisons, progress,
deleting one annotator's ratings, and the ratings' statistics and export: the labeling part of
`FeedbackService`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import queries as q
from db.models import Comparison, Generation, Rating, utcnow
from db.session import retry_on_conflict
from feedback.io import export_ratings
from feedback.rewards import comparison_scores, krippendorff_alpha, rating_score
from feedback.types import Item, PairItem, Progress, Receipt

QUEUE_WINDOW = 32  # candidates tried for a lease before sharing one that another annotator holds


class LabelingMixin:
    """One user action per method, each one transaction (see `FeedbackService` for the settings it reads)."""

    Session: sessionmaker[Session]
    lease: timedelta

    # ---- the queue --------------------------------------------------------------------------------------------
    def next_item(self, annotator_id: int) -> Item | None:
        """The next generation for this annotator (leased to them), or None when none is left for them."""
        with self.Session.begin() as s:
            return self._next(s, annotator_id)

    def _next(self, s: Session, annotator_id: int) -> Item | None:
        cur = q.current_version(session=s)
        if cur is None:
            return None
        now = utcnow()
        held = q.held_lease(annotator_id, cur.id, now, session=s)
        if held is not None:
            q.force_lease(held, annotator_id, now, self.lease, session=s)
            return _item(s.get(Generation, held))
        candidates = q.queue_candidates(annotator_id, cur.id, now, limit=QUEUE_WINDOW, session=s)
        for gid in candidates:
            if q.try_lease(gid, annotator_id, now, self.lease, session=s):
                return _item(s.get(Generation, gid))
        if candidates:
            # every item left for this annotator is leased to someone else: share one rather than show nothing
            q.force_lease(candidates[0], annotator_id, now, self.lease, session=s)
            return _item(s.get(Generation, candidates[0]))
        return None

    # ---- ratings ----------------------------------------------------------------------------------------------
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
    ) -> tuple[Receipt, Item | None]:
        """Store a rating and hand out the next item, in one transaction."""
        return self._submit(annotator_id, generation_id, kind, value, comment, request_id, advance=True)

    def _submit(self, annotator_id, generation_id, kind, value, comment, request_id, advance):
        score = rating_score(kind, int(value))
        comment = (comment or "").strip() or None

        def store(s: Session) -> tuple[Receipt, Item | None]:
            if request_id:
                prior = q.rating_by_request(request_id, session=s)
                if prior is not None:
                    nxt = self._next(s, annotator_id) if advance else None
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
            nxt = self._next(s, annotator_id) if advance else None
            return _receipt(r), nxt

        # a concurrent retry of the same request may win the insert: the next attempt finds its row
        return retry_on_conflict(self.Session, store)

    def skip(self, annotator_id: int, generation_id: int) -> Item | None:
        """Put this item aside for this annotator (others still get it) and return the next one."""
        with self.Session.begin() as s:
            q.add_skip(annotator_id, generation_id, session=s)
            q.release_lease(generation_id, annotator_id, session=s)
            return self._next(s, annotator_id)

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

    # ---- pairwise comparisons ---------------------------------------------------------------------------------
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

        def store(s: Session) -> Receipt:
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

        # as in `_submit`: a concurrent retry of the same request may win the insert
        return retry_on_conflict(self.Session, store)

    # ---- progress and the ratings as a whole ------------------------------------------------------------------
    def progress(self, annotator_id: int) -> Progress:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            mine = q.count_judgements_of(annotator_id, session=s)
            if cur is None:
                return Progress(0, 0, mine, 0)
            total = q.count_generations(cur.id, session=s)
            unrated = q.count_unrated(cur.id, session=s)
            left = q.count_open_for(annotator_id, cur.id, session=s)
            return Progress(total - unrated, total, mine, left)

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

    def agreement(self) -> float | None:
        """Krippendorff's alpha (interval) over every binary / 1-5 rating in the store."""
        return self.agreement_detail()[0]

    def agreement_detail(self) -> tuple[float | None, int]:
        """Krippendorff's alpha and the number of items it rests on (those rated by two or more annotators)."""
        with self.Session.begin() as s:
            table = q.ratings_table(session=s)
        raters: dict[int, set[int]] = {}
        for item, annotator, _ in table:
            raters.setdefault(item, set()).add(annotator)
        return krippendorff_alpha(table), sum(len(a) >= 2 for a in raters.values())

    def counts_per_annotator(self) -> list[tuple[str, int, int]]:
        with self.Session.begin() as s:
            return q.counts_per_annotator(session=s)

    def export_ratings(self, out: Path, fmt: str = "jsonl", shape: str = "unpaired") -> Path:
        """`feedback.io.export_ratings` from this store."""
        return export_ratings(self.Session, out, fmt, shape)


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


def _item(g: Generation) -> Item:
    return Item(g.id, g.prompt_id, g.prompt.text, g.response, g.model_score, g.policy_version_id)


def _receipt(r: Rating, duplicate: bool = False) -> Receipt:
    return Receipt(r.id, r.annotator_id, r.kind, r.value, duplicate)
