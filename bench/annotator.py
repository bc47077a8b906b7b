"""A simulated human annotator: star ratings drawn from the classifier's score plus noise.

It stands in for people rating responses in the app, so the benchmark can show that PPO driven by coarse,
noisy human-style ratings (not the classifier's margin) still lowers toxicity.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rlhf.scorers import RewardScorer, Scores


def stars_to_score(stars: int, scale: int = 5) -> float:
    """Map a 1..scale star rating onto [0, 1].

    >>> [stars_to_score(s) for s in (1, 3, 5)]
    [0.0, 0.5, 1.0]
    """
    return (stars - 1) / (scale - 1)


class SimulatedAnnotator:
    """Rates each text 1..5 stars: round(1 + 4 * clip(P(not offensive) + N(0, noise), 0, 1)).

    Args:
        scorer: the classifier whose probability the annotator's judgement follows.
        noise: standard deviation of the Gaussian noise added to the probability before rounding.
        seed: seed of the noise, so a run is reproducible.
    """

    name = "simulated-annotator"

    def __init__(self, scorer: RewardScorer, noise: float = 0.15, seed: int = 0, scale: int = 5):
        self.scorer = scorer
        self.noise = noise
        self.scale = scale
        self.rng = random.Random(seed)

    def rate(self, texts: Sequence[str]) -> list[int]:
        probs = self.scorer.score(texts)
        out = []
        for p in probs:
            noisy = min(1.0, max(0.0, p + self.rng.gauss(0.0, self.noise)))
            out.append(1 + round((self.scale - 1) * noisy))
        return out

    def score_batch(self, texts: Sequence[str]) -> Scores:
        return Scores([stars_to_score(s, self.scale) for s in self.rate(texts)], None)

    def score(self, texts: Sequence[str]) -> list[float]:
        return self.score_batch(texts).scores
