"""The human reward: a reward model fitted on the store's ratings (`rlhf.reward_model`), put on the classifier's
reward scale, so that Human and Blend rounds can score fresh samples the annotators never saw.

Why the human reward is calibrated to the classifier's scale rather than both being standardised: model mode trains
on the classifier's reward exactly as `rlhf train` does, and the KL coefficient is tuned for that scale. Mapping the
learned reward onto it (the same mean and spread over the rated items) keeps every mode on one scale: Blend at
weight 0 is model mode exactly, weight 1 is the human reward with the spread the KL penalty expects, and in between
the weight means what it says, since neither side can dominate by its units.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feedback.rewards import blend

MIN_RATED = 4  # rated items before a human reward is fitted (and 2 on each side of 0.5)


@dataclass(frozen=True)
class Calibration:
    """Means and spreads over the rated items: the learned reward's logit and the classifier's reward."""

    human_mean: float
    human_std: float
    model_mean: float
    model_std: float

    def human(self, logits: Sequence[float]) -> list[float]:
        """Learned logits on the classifier's reward scale.

        >>> Calibration(1.0, 2.0, 5.0, 0.5).human([1.0, 3.0, -1.0])
        [5.0, 5.5, 4.5]
        """
        return [self.model_mean + self.model_std * (x - self.human_mean) / self.human_std for x in logits]

    @classmethod
    def of(cls, logits: Sequence[float], model_rewards: Sequence[float]) -> Calibration:
        def moments(xs: Sequence[float]) -> tuple[float, float]:
            m = sum(xs) / len(xs)
            return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))

        (hm, hs), (mm, ms) = moments(logits), moments(model_rewards)
        # a constant side (every rated text scored alike) has no spread to match: keep its units
        return cls(hm, hs if hs > 1e-9 else 1.0, mm, ms if ms > 1e-9 else 1.0)


@dataclass
class HumanReward:
    """A learned reward fitted on `n` rated texts, with what a page shows about it."""

    features: Callable
    head: object  # rlhf.reward_model.LinearHead
    calibration: Calibration
    n: int
    kind: str  # binary (every item rated 0 or 1) or scale (mean scores in between)
    fit_s: float

    def human(self, texts: Sequence[str]) -> list[float]:
        """The learned reward of each text on the classifier's reward scale."""
        if not texts:
            return []
        return self.calibration.human([float(x) for x in self.head.logits(self.features(list(texts)))])

    def rewards(
        self, texts: Sequence[str], model_rewards: Sequence[float | None], mode: str, weight: float
    ) -> list[float | None]:
        """What a round in `mode` trains on for each text: `feedback.rewards.blend` of the classifier's reward and
        the calibrated learned reward (model mode does not call the learned reward)."""
        human = self.human(texts) if mode != "model" else [None] * len(texts)
        return blend(list(model_rewards), human, mode, weight)


def _ratings(texts: Sequence[str], labels: Sequence[float]):
    from rlhf.reward_model import Ratings

    kind = "binary" if all(v in (0.0, 1.0) for v in labels) else "scale"
    return Ratings(kind, list(texts), [float(v) for v in labels], [float(v) for v in labels])


def check_enough(labels: Sequence[float]) -> None:
    """Refuse, saying what to do, when the ratings cannot fit a reward model yet."""
    good, bad = sum(v > 0.5 for v in labels), sum(v < 0.5 for v in labels)
    if len(labels) < MIN_RATED or good < 2 or bad < 2:
        raise ValueError(
            f"the human reward is learned from the ratings, and {len(labels)} rated items ({good} rated good, {bad} "
            f"bad) are too few: rate at least {MIN_RATED}, with 2 or more on each side, or use model mode"
        )


def fit_human_reward(
    texts: Sequence[str], labels: Sequence[float], model_rewards: Sequence[float], features: Callable, c: float = 1.0
) -> HumanReward:
    """Fit the head on (text, mean human score in [0, 1]) and calibrate it on the same rated texts."""
    from rlhf.reward_model import fit_head

    check_enough(labels)
    t0 = time.perf_counter()
    ratings = _ratings(texts, labels)
    head = fit_head(features, ratings, c)
    logits = [float(x) for x in head.logits(features(list(texts)))]
    return HumanReward(
        features, head, Calibration.of(logits, model_rewards), len(texts), ratings.kind, time.perf_counter() - t0
    )


def cross_validated_agreement(texts: Sequence[str], labels: Sequence[float], features: Callable, c: float = 1.0):
    """`rlhf.reward_model.cross_validate` of the learned reward against the annotators (an `Agreement`)."""
    from rlhf.reward_model import cross_validate

    check_enough(labels)
    return cross_validate(features, _ratings(texts, labels), c=c)


class HumanRewardSource:
    """The current human reward of a store, refitted when its ratings have changed since the last fit.

    Args:
        rated: returns the rated items now, as (texts, mean human scores, classifier rewards).
        features: `rlhf.reward_model.load_features` of the backbone (the reward classifier's, by default).
    """

    def __init__(self, rated: Callable[[], tuple[list[str], list[float], list[float]]], features: Callable):
        self._rated = rated
        self.features = features
        self._lock = threading.Lock()
        self._fitted: tuple[tuple, HumanReward] | None = None

    def current(self) -> HumanReward:
        """The reward fitted on the ratings as they are now (ValueError, saying what to do, when too few)."""
        texts, labels, model = self._rated()
        key = (len(texts), hash(tuple(texts)), hash(tuple(labels)))
        with self._lock:
            if self._fitted is None or self._fitted[0] != key:
                self._fitted = (key, fit_human_reward(texts, labels, model, self.features))
            return self._fitted[1]

    def agreement(self):
        texts, labels, _ = self._rated()
        return cross_validated_agreement(texts, labels, self.features)
