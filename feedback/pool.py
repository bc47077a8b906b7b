"""The pool of items to rate: stored generations, the prompts they answer, and the refill that asks the policy for
more when few are left: the pool part of `FeedbackService`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db import queries as q
from feedback.io import import_prompts
from feedback.types import ImportReport, NewGeneration, PromptRef

log = logging.getLogger(__name__)

REFILL_CHUNK = 8  # prompts answered per generation call of a refill; each chunk is stored as soon as it is made


def chunk_sizes(n: int, left: int, chunk: int = REFILL_CHUNK) -> list[int]:
    """How a refill of `n` prompts is cut into generation calls when `left` items are still unrated: chunks of
    `chunk`, except that a pool with less than a chunk left starts with small chunks (2, then doubling), so the next item
    comes in seconds rather than after a whole chunk (a batch of 8 takes SmolLM2 about 15 s on 2 cores).

    >>> chunk_sizes(16, 8), chunk_sizes(16, 4), chunk_sizes(5, 0)
    ([8, 8], [2, 4, 8, 2], [2, 3])
    """
    sizes, size = [], chunk if left >= chunk else min(2, chunk)
    while n > 0:
        sizes.append(min(size, n))
        n -= sizes[-1]
        size = min(chunk, size * 2)
    return sizes


class Generator(Protocol):
    """What the pool asks for new items: responses of the policy version `version_id` to these prompts."""

    version_id: int

    def generate(self, prompts: Sequence[PromptRef]) -> list[NewGeneration]: ...


class PoolMixin:
    """Generations in, prompts out, and the refill (see `FeedbackService` for the settings it reads)."""

    Session: sessionmaker[Session]
    generator: Generator | None
    low_water: int
    refill_size: int
    last_refill_error: str | None
    _refill_lock: threading.Lock
    _refill_stop: threading.Event

    def add_generations(self, version_id: int, gens: Sequence[NewGeneration]) -> list[int]:
        rows = [
            {
                "prompt_id": g.prompt_id,
                "policy_version_id": version_id,
                "query_text": g.query_text,
                "response": g.response,
                "query_ids": list(g.query_ids),
                "response_ids": list(g.response_ids),
                "logprobs": [float(x) for x in g.logprobs],
                "model_score": g.model_score,
                "model_logit": g.model_logit,
                "scorer": g.scorer,
            }
            for g in gens
        ]
        with self.Session.begin() as s:
            return q.add_generations(rows, session=s)

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

    def import_prompt_file(self, path: Path, **options) -> ImportReport:
        """`feedback.io.import_prompts` into this store: every prompt of the file in one transaction, or none."""
        return import_prompts(self.Session, path, **options)

    def unrated_count(self) -> int:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            return 0 if cur is None else q.count_unrated(cur.id, session=s)

    refill_progress: tuple[int, int] | None = None  # (prompts answered, of all) while a refill runs

    @property
    def refilling(self) -> bool:
        """A refill is generating items now."""
        return self._refill_lock.locked()

    def refill_if_low(self, pairs: bool = False, size: int | None = None) -> int:
        """Ask the generator for `size` (default `refill_size`) new items when fewer than `low_water` unrated ones
        remain.

        With `pairs`, instead give a second response to prompts that have only one from the current version,
        so pairwise raters have something to compare (asked for when someone finds no pair left).
        Returns how many were added (0 when not low, when another refill is running, or with no generator).
        Generation runs outside any transaction: labeling goes on while the policy works.
        """
        if self.generator is None or not self._refill_lock.acquire(blocking=False):
            return 0
        try:
            with self.Session.begin() as s:
                cur = q.current_version(session=s)
                if cur is None or cur.id != self.generator.version_id:
                    return 0  # the policy still holds another version; the app swaps it first
                if pairs:
                    chosen = q.prompts_with_one_generation(cur.id, max(1, (size or self.refill_size) // 2), session=s)
                elif (left := q.count_unrated(cur.id, session=s)) < self.low_water:
                    chosen = q.prompts_for_generation(cur.id, size or self.refill_size, session=s)
                else:
                    return 0
                prompts = [PromptRef(p.id, p.text, p.reference_summary) for p in chosen]
                version_id = cur.id
            if not prompts:
                return 0
            added = 0
            # in chunks, each stored as soon as it is made: the first items are rateable before the last exist
            i = 0
            for n in chunk_sizes(len(prompts), REFILL_CHUNK if pairs else left):
                if self._refill_stop.is_set() or self.generator.version_id != version_id:
                    break  # the generator is being moved to another version (`hand_over`): its items would be
                    # stored under this one
                self.refill_progress = (i, len(prompts))
                added += len(self.add_generations(version_id, self.generator.generate(prompts[i : i + n])))
                i += n
            self.last_refill_error = None
            return added
        except Exception as err:  # noqa: BLE001 - a failed refill is reported, labeling goes on
            log.exception("refilling the pool failed")
            self.last_refill_error = f"{type(err).__name__}: {err}"
            return 0
        finally:
            self.refill_progress = None
            self._refill_lock.release()

    def hand_over(self, version_id: int, serve: Callable[[], None], first: int = 0) -> int:
        """Move the pool's generator to `version_id` before it becomes current, so annotators never meet an empty
        pool at the switch: a running refill stops after its chunk (its items stay with the version that made them),
        `serve()` loads the version into the generator, and `first` items of it are stored. The caller then makes
        the version current (`finish_round`, `set_current`). Returns how many items were stored; a failed
        generation is reported in `last_refill_error` and leaves the rest to the next refill."""
        self._refill_stop.set()
        try:
            with self._refill_lock:
                self._refill_stop.clear()
                serve()
                if first <= 0 or self.generator is None:
                    return 0
                with self.Session.begin() as s:
                    chosen = q.prompts_for_generation(version_id, first, session=s)
                    prompts = [PromptRef(p.id, p.text, p.reference_summary) for p in chosen]
                if not prompts:
                    return 0
                try:
                    return len(self.add_generations(version_id, self.generator.generate(prompts)))
                except Exception as err:  # noqa: BLE001 - the version still becomes current; the refill follows
                    log.exception("the first items of version %s failed", version_id)
                    self.last_refill_error = f"{type(err).__name__}: {err}"
                    return 0
        finally:
            self._refill_stop.clear()

    def refill_in_background(self, pairs: bool = False) -> threading.Thread | None:
        """`refill_if_low` in a daemon thread (None when a refill is already running)."""
        if self.generator is None or self._refill_lock.locked():
            return None
        t = threading.Thread(target=self.refill_if_low, kwargs={"pairs": pairs}, name="pool-refill", daemon=True)
        t.start()
        return t
