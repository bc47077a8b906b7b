"""The human reward: a reward model fitted on the store's ratings (`rlhf.reward_model`), put on the classifier's
reward scale, so that Human and Blend rounds can score fresh samples the annotators never saw.

Why the human reward is calibrated to the classifier's scale rather than both being standardised: model mode trains
on the classifier's reward exactly as `rlhf train` does, and the KL coefficient is tuned for that scale. Mapping the
learned reward onto it (the same mean and spread over the rated items) keeps every mode on one scale: Blend at
weight 0 is model mode exactly, weight 1 is the human reward with the spread the KL penalty expects, and in between
the weight means what it says, since neither side can dominate by its units.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feedback.periodic import every
from feedback.rewards import blend

log = logging.getLogger(__name__)

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

    kind = "binary" if _binary(labels) else "scale"
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

    def refit_in_background(self, interval: float = 5.0, stop: threading.Event | None = None) -> threading.Thread:
        """Keep the reward fitted as ratings arrive: every `interval` s, refit when the ratings have changed, in a
        daemon thread (until `stop` is set), so a round or the Reward tab finds it ready. Each refit costs the
        features of the newly rated texts and the head's fit (`HumanReward.fit_s`)."""

        def refit() -> None:
            try:
                self.current()
            except ValueError:
                pass  # too few ratings yet

        return every(interval, refit, stop or threading.Event(), "refitting the human reward")

    def current(self) -> HumanReward:
        """The reward fitted on the ratings as they are now (ValueError, saying what to do, when too few)."""
        texts, labels, model = self._rated()
        key = (len(texts), hash(tuple(texts)), hash(tuple(labels)))
        with self._lock:
            if self._fitted is None or self._fitted[0] != key:
                self._fitted = (key, fit_human_reward(texts, labels, model, self.features))
                log.info("human reward refitted on %d items in %.2f s", self._fitted[1].n, self._fitted[1].fit_s)
            return self._fitted[1]


# ---- agreement and the Auto weight ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgreementRow:
    """One line of the Reward tab's agreement table."""

    what: str
    measure: str
    value: float | None
    n: int  # items the figure is computed over


def _binary(labels: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in labels)


def agreement_with(labels: Sequence[float], scores: Sequence[float]) -> tuple[str, float | None]:
    """How well `scores` order the items as the annotators did: AUROC when every mean score is 0 or 1, else
    Spearman's rho against the mean scores; None when undefined (one class only, or no spread).

    >>> agreement_with([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    ('AUROC', 0.75)
    >>> agreement_with([0, 0.5, 1], [3.0, 2.0, 1.0])
    ('Spearman', -1.0)
    """
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    if _binary(labels):
        if len(set(labels)) < 2:
            return "AUROC", None
        return "AUROC", float(roc_auc_score(np.asarray(labels), np.asarray(scores)))
    if len(set(labels)) < 2 or len(set(scores)) < 2:
        return "Spearman", None
    return "Spearman", float(spearmanr(labels, scores).statistic)


def heldout_logits(
    texts: Sequence[str], labels: Sequence[float], features: Callable, folds: int = 5, seed: int = 0
) -> list[float]:
    """Each rated text's learned-reward logit from a head fitted without it (k-fold): what a fresh text gets."""
    import numpy as np
    from sklearn.model_selection import KFold

    from rlhf.reward_model import fit_head

    check_enough(labels)
    n = len(texts)
    x = features(list(texts))
    out = np.zeros(n)
    for train, test in KFold(max(2, min(folds, n // 2)), shuffle=True, random_state=seed).split(np.zeros(n)):
        ratings = _ratings([texts[i] for i in train], [labels[i] for i in train])
        if len({v > 0.5 for v in ratings.labels}) < 2:  # a fold with one class: nothing to fit, no opinion
            out[test] = 0.0
            continue
        head = fit_head(lambda t, _train=train: x[_train], ratings)
        out[test] = head.logits(x[test])
    return [float(v) for v in out]


def best_weight(
    labels: Sequence[float], human: Sequence[float], model: Sequence[float], grid: int = 11
) -> tuple[float, float | None]:
    """The blend weight (of `grid` steps in [0, 1]) whose blend of `human` and `model` (on one scale) best agrees
    with the labels, and that agreement; the lowest weight wins a tie.

    >>> best_weight([0, 0, 1, 1], human=[0.0, 1.0, 2.0, 3.0], model=[3.0, 0.0, 1.0, 2.0], grid=3)
    (1.0, 1.0)
    """
    best = (0.0, None)
    for k in range(grid):
        w = k / (grid - 1)
        _, value = agreement_with(labels, [w * h + (1 - w) * m for h, m in zip(human, model, strict=True)])
        if value is not None and (best[1] is None or value > best[1] + 1e-12):
            best = (w, value)
    return best


@dataclass(frozen=True)
class AutoWeight:
    weight: float
    low: float  # 95% bootstrap interval over the rated items
    high: float
    agreement: float | None  # of the chosen blend with the annotators, cross-validated
    measure: str
    n: int


def auto_weight(
    texts: Sequence[str],
    labels: Sequence[float],
    model_rewards: Sequence[float],
    features: Callable,
    resamples: int = 200,
    seed: int = 0,
) -> AutoWeight:
    """The Blend weight that best predicts held-out human labels: the learned reward scored cross-validated (each
    text by a head that never saw its rating), calibrated to the classifier's scale, blended at each weight and
    compared with the labels; the interval is the spread of the best weight over bootstrap resamples of the items."""
    import random

    logits = heldout_logits(texts, labels, features)
    human = Calibration.of(logits, model_rewards).human(logits)
    weight, value = best_weight(labels, human, model_rewards)
    rng, picks = random.Random(seed), []
    n = len(labels)
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        w, v = best_weight([labels[i] for i in idx], [human[i] for i in idx], [model_rewards[i] for i in idx])
        if v is not None:
            picks.append(w)
    picks.sort()
    low, high = (picks[int(0.025 * len(picks))], picks[int(0.975 * (len(picks) - 1))]) if picks else (0.0, 1.0)
    return AutoWeight(weight, low, high, value, agreement_with(labels, human)[0], n)


def agreement_table(
    texts: Sequence[str],
    labels: Sequence[float],
    model_rewards: Sequence[float],
    features: Callable,
    alpha: float | None,
    alpha_items: int,
) -> list[AgreementRow]:
    """The classifier against the annotators, the learned reward against them (cross-validated) and the
    annotators against each other, each with the number of items behind it."""
    measure, classifier = agreement_with(labels, model_rewards) if labels else ("AUROC", None)
    rows = [AgreementRow("reward classifier vs annotators", measure, classifier, len(labels))]
    try:
        learned = agreement_with(labels, heldout_logits(texts, labels, features))
    except ValueError:  # too few ratings to fit one
        learned = (measure, None)
    rows.append(AgreementRow("learned reward vs annotators (cross-validated)", learned[0], learned[1], len(labels)))
    rows.append(AgreementRow("annotators vs each other", "Krippendorff's alpha (interval)", alpha, alpha_items))
    return rows
