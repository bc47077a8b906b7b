"""Reward scorers: `score(texts) -> list[float]`, higher = less hateful, in [0, 1].

Two backends share one interface: any Hugging Face sequence classifier (label picked by name), and the
alt-profanity-check model shipped on PyPI (works with no network).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rlhf.config import EMBEDDED_PROFANITY, RewardConfig


@dataclass(frozen=True)
class Scores:
    """Scores of a batch: `scores` in [0, 1] (higher = less hateful) and the label's raw logit if any."""

    scores: list[float]
    logits: list[float] | None


class RewardScorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> list[float]: ...

    def score_batch(self, texts: Sequence[str]) -> Scores: ...


class ClassifierScorer:
    """Any `AutoModelForSequenceClassification`; the score is the softmax probability of `label`.

    Args:
        name_or_path: hub id or local folder.
        label: the label meaning "not hateful" (matched case-insensitively against the model's id2label).
    """

    def __init__(
        self,
        name_or_path: str,
        label: str = "nothate",
        batch_size: int = 32,
        max_length: int = 512,
        device: str = "auto",
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlhf.models import load_error, resolve_device

        self.name = name_or_path
        self.batch_size = batch_size
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch.float32)
        except Exception as err:  # noqa: BLE001
            raise load_error("reward model", name_or_path, err, "--reward.name_or_path") from err
        labels = {str(v): int(k) for k, v in self.model.config.id2label.items()}
        match = [name for name in labels if name.lower() == label.lower()]
        if not match:
            raise ValueError(
                f"reward model {name_or_path!r} has no label named {label!r}; its labels are {sorted(labels)}; "
                "pass --reward.label with the one that means 'not hateful'"
            )
        self.label_index = labels[match[0]]
        self.device = resolve_device(device)
        self.model.to(self.device).eval()

    def score_batch(self, texts: Sequence[str]) -> Scores:
        import torch

        scores: list[float] = []
        logits: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                out = self.model(**enc.to(self.device)).logits.float()
            scores += out.softmax(-1)[:, self.label_index].tolist()
            logits += out[:, self.label_index].tolist()
        return Scores(scores, logits)

    def score(self, texts: Sequence[str]) -> list[float]:
        return self.score_batch(texts).scores


class ProfanityScorer:
    """alt-profanity-check's packaged linear model: score = 1 - P(offensive)."""

    name = EMBEDDED_PROFANITY

    def __init__(self) -> None:
        from rlhf import offline

        self._offline = offline
        offline.profanity_probabilities(["warm-up"])  # load the model now, not on the first request

    def score_batch(self, texts: Sequence[str]) -> Scores:
        if not texts:
            return Scores([], [])
        probs = self._offline.profanity_probabilities(list(texts))
        logits = self._offline.profanity_logits(list(texts))
        return Scores([1.0 - p for p in probs], [-x for x in logits])

    def score(self, texts: Sequence[str]) -> list[float]:
        return self.score_batch(texts).scores


def load_scorer(cfg: RewardConfig, device: str = "auto") -> RewardScorer:
    if cfg.name_or_path == EMBEDDED_PROFANITY:
        return ProfanityScorer()
    from rlhf.reward_model import LearnedRewardScorer, is_reward_model

    if is_reward_model(cfg.name_or_path):  # a folder written by `python -m rlhf reward fit`
        return LearnedRewardScorer(cfg.name_or_path)
    return ClassifierScorer(cfg.name_or_path, cfg.label, cfg.batch_size, cfg.max_length, device)


def reward_of(score: float, logit: float | None, use_logit: bool, name: str = "the scorer") -> float:
    """The one number PPO optimises for one scored text: the label's probability, or its raw logit (margin) with
    `reward.use_logit`. Everything that trains, shows, previews or evaluates a reward goes through here: the
    CLI's `reward_fn`, the app's rounds, its stored items and previews, and `rlhf.evaluate`."""
    if not use_logit:
        return score
    if logit is None:
        raise ValueError(f"{name} has no logits; drop --reward.use_logit")
    return logit


def rewards(scored: Scores, use_logit: bool, name: str = "the scorer") -> list[float]:
    """`reward_of` for a batch."""
    logits = scored.logits if scored.logits is not None else [None] * len(scored.scores)
    return [reward_of(s, x, use_logit, name) for s, x in zip(scored.scores, logits, strict=True)]


def reward_fn(scorer: RewardScorer, use_logit: bool) -> Callable[[Sequence[str]], list[float]]:
    """texts -> the rewards PPO optimises (see `reward_of`)."""

    def fn(texts: Sequence[str]) -> list[float]:
        return rewards(scorer.score_batch(texts), use_logit, f"scorer {scorer.name!r}")

    return fn
