"""Human scores and reward blending, as pure functions.

Every human judgement becomes a score in [0, 1] (1 = harmless), comparable with the classifier's score
(its probability of "not hateful"). The reward PPO sees is then one of three modes:

- ``model``: the classifier's score alone;
- ``human``: the mean human score alone; items nobody has rated are left out (``None``);
- ``blend``: ``w * human + (1 - w) * model``, falling back to the model score where no human has rated.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("model", "human", "blend")
WINNERS = ("a", "b", "tie")


def rating_score(kind: str, value: int) -> float:
    """Map a rating to a human score in [0, 1].

    binary: 0 = toxic, 1 = not toxic; scale: 1 (harmful) .. 5 (harmless), linearly.

    >>> rating_score("binary", 0), rating_score("binary", 1)
    (0.0, 1.0)
    >>> [rating_score("scale", v) for v in range(1, 6)]
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if kind == "binary":
        if value not in (0, 1):
            raise ValueError(f"a binary rating is 0 (toxic) or 1 (not toxic), got {value!r}")
        return float(value)
    if kind == "scale":
        if value not in (1, 2, 3, 4, 5):
            raise ValueError(f"a harmlessness rating is 1 to 5, got {value!r}")
        return (value - 1) / 4
    raise ValueError(f"unknown rating kind {kind!r}; use binary or scale (pairwise has its own submit)")


def comparison_scores(winner: str) -> tuple[float, float]:
    """Scores of (a, b) from one pairwise preference.

    >>> comparison_scores("a"), comparison_scores("tie")
    ((1.0, 0.0), (0.5, 0.5))
    """
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {WINNERS}, got {winner!r}")
    return {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}[winner]


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean human score of one item, None when nobody rated it.

    >>> mean_or_none([1.0, 0.0, 1.0]), mean_or_none([])
    (0.6666666666666666, None)
    """
    return sum(values) / len(values) if values else None


def blend(
    model_scores: Sequence[float | None],
    human_scores: Sequence[float | None],
    mode: str = "blend",
    weight: float = 0.5,
) -> list[float | None]:
    """The reward of each item under `mode`; ``None`` marks an item that mode leaves out.

    Args:
        model_scores: the classifier's score per item (``None`` where it was not scored).
        human_scores: the mean human score per item (``None`` where nobody rated it).
        mode: ``model``, ``human`` or ``blend``.
        weight: the human share in ``blend`` mode, in [0, 1].

    >>> blend([0.2, 0.9, 0.4], [1.0, None, 0.0], "model")
    [0.2, 0.9, 0.4]
    >>> blend([0.2, 0.9, 0.4], [1.0, None, 0.0], "human")
    [1.0, None, 0.0]
    >>> blend([0.2, 0.9, 0.4], [1.0, None, 0.0], "blend", 0.5)
    [0.6, 0.9, 0.2]
    >>> blend([0.2, 0.9, 0.4], [1.0, None, 0.0], "blend", 0.0)
    [0.2, 0.9, 0.4]
    """
    if len(model_scores) != len(human_scores):
        raise ValueError(f"{len(model_scores)} model scores but {len(human_scores)} human scores")
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must be within [0, 1], got {weight!r}")
    if mode == "model":
        return list(model_scores)
    if mode == "human":
        return list(human_scores)
    out: list[float | None] = []
    for m, h in zip(model_scores, human_scores, strict=True):
        if h is None:
            out.append(m)
        elif m is None:
            out.append(h)
        else:
            out.append(weight * h + (1.0 - weight) * m)
    return out


def krippendorff_alpha(ratings: Sequence[tuple[int, int, float]]) -> float | None:
    """Krippendorff's alpha (interval) of (item, annotator, score) triples; None when it is undefined
    (fewer than two items with two or more ratings, or no variation at all)."""
    import numpy as np

    items = sorted({i for i, _, _ in ratings})
    coders = sorted({a for _, a, _ in ratings})
    per_item: dict[int, int] = {}
    for i, _, _ in ratings:
        per_item[i] = per_item.get(i, 0) + 1
    if sum(1 for n in per_item.values() if n >= 2) < 2:
        return None
    col = {i: k for k, i in enumerate(items)}
    row = {a: k for k, a in enumerate(coders)}
    data = np.full((len(coders), len(items)), np.nan)
    for i, a, s in ratings:
        data[row[a], col[i]] = s
    paired = data[:, [col[i] for i, n in per_item.items() if n >= 2]]
    values = paired[~np.isnan(paired)]
    if np.allclose(values, values[0]):
        return None
    import krippendorff

    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
