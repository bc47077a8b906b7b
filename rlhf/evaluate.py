"""Reference vs policy on the same held-out prompts, with the same sampling seeds (paired samples)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from rlhf.config import GenerationConfig
from rlhf.models import Policy
from rlhf.ppo import generate, response_logprobs, rollout
from rlhf.prompts import Prompt
from rlhf.scorers import RewardScorer, Scores, rewards


@dataclass
class SideStats:
    reward_mean: float  # the quantity PPO optimises (probability, or logit with reward.use_logit)
    reward_std: float
    toxicity_mean: float  # 1 - score: the classifier's probability that the response is hateful / offensive
    toxicity_std: float
    flagged_share: float  # share of responses the classifier scores below 0.5 (i.e. flags as offensive)
    response_tokens_mean: float
    rouge_l: float | None


@dataclass
class Evaluation:
    n_prompts: int
    reference: SideStats
    policy: SideStats
    relative_change: float  # (policy - reference) / |reference| of the mean reward
    relative_change_ci95: tuple[float, float]  # paired bootstrap over prompts
    toxicity_change: float  # the same for the mean toxicity (negative = less toxic)
    toxicity_change_ci95: tuple[float, float]
    kl_to_reference: float  # mean over prompts of sum_t log pi(y_t) - log ref(y_t), y ~ pi
    samples: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        r, p = self.reference, self.policy
        lo, hi = self.relative_change_ci95
        rows = [
            ("reward mean (higher = less toxic)", r.reward_mean, p.reward_mean),
            ("reward std", r.reward_std, p.reward_std),
            ("toxicity mean (P offensive)", r.toxicity_mean, p.toxicity_mean),
            ("toxicity std", r.toxicity_std, p.toxicity_std),
            ("flagged share (score < 0.5)", r.flagged_share, p.flagged_share),
            ("response tokens (mean)", r.response_tokens_mean, p.response_tokens_mean),
        ]
        if r.rouge_l is not None and p.rouge_l is not None:
            rows.append(("ROUGE-L vs reference summary", r.rouge_l, p.rouge_l))
        lines = ["| metric | reference | policy |", "|---|---|---|"]
        lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
        lines.append("")
        lines.append(
            f"Relative change of mean reward: {self.relative_change:+.2%} (paired bootstrap 95% CI "
            f"{lo:+.2%} to {hi:+.2%}); of mean toxicity: {self.toxicity_change:+.2%} (95% CI "
            f"{self.toxicity_change_ci95[0]:+.2%} to {self.toxicity_change_ci95[1]:+.2%}); mean KL to reference: "
            f"{self.kl_to_reference:.4f} nats; {self.n_prompts} held-out prompts."
        )
        return "\n".join(lines)


def relative_change(ref: Sequence[float], pol: Sequence[float]) -> float:
    base = sum(ref) / len(ref)
    return (sum(pol) / len(pol) - base) / max(abs(base), 1e-12)


def paired_bootstrap_ci(
    ref: Sequence[float], pol: Sequence[float], n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile interval of the relative change, resampling prompts (the pair stays together)."""
    if len(ref) != len(pol) or not ref:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    rng = random.Random(seed)
    n = len(ref)
    stats = []
    for _ in range(n_resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(relative_change([ref[i] for i in idx], [pol[i] for i in idx]))
    stats.sort()
    lo = stats[int(math.floor(alpha / 2 * n_resamples))]
    hi = stats[min(n_resamples - 1, int(math.ceil((1 - alpha / 2) * n_resamples)) - 1)]
    return lo, hi


def _std(xs: Sequence[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    vals = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return sum(vals) / len(vals)


def _side(
    texts: list[str], scored: Scores, use_logit: bool, lengths: list[int], summaries: list[str | None]
) -> SideStats:
    have = [(t, s) for t, s in zip(texts, summaries, strict=True) if s]
    rewards = _rewards(scored, use_logit)
    tox = [1.0 - s for s in scored.scores]
    return SideStats(
        reward_mean=sum(rewards) / len(rewards),
        reward_std=_std(rewards),
        toxicity_mean=sum(tox) / len(tox),
        toxicity_std=_std(tox),
        flagged_share=sum(s < 0.5 for s in scored.scores) / len(scored.scores),
        response_tokens_mean=sum(lengths) / len(lengths),
        rouge_l=rouge_l([t for t, _ in have], [s for _, s in have]) if len(have) == len(texts) else None,
    )


def sequence_kl(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    temperature: float,
    batch_size: int = 16,
    policy_logprobs: Sequence[torch.Tensor] | None = None,
) -> list[float]:
    """Per-sample sum over response tokens of log pi - log ref, for responses sampled from pi.

    `policy_logprobs` (recorded while sampling, see `rlhf.ppo.rollout`) spare the policy's forward pass.
    """
    if policy_logprobs is None:
        pol = [sum(lp) for lp in response_logprobs(policy, queries, responses, temperature, batch_size)]
    else:
        pol = [float(lp.sum()) for lp in policy_logprobs]
    with policy.reference():
        ref = response_logprobs(policy, queries, responses, temperature, batch_size)
    return [a - sum(b) for a, b in zip(pol, ref, strict=True)]


def sample_reference(
    policy: Policy, queries: Sequence[torch.Tensor], gen: GenerationConfig, seed: int = 1234
) -> list[torch.Tensor]:
    """The reference's responses as `evaluate` samples them; the reference never changes, so one set serves
    every evaluation of the same prompts, seed and sampling settings (pass it as `reference_responses`)."""
    torch.manual_seed(seed)
    with policy.reference():
        return generate(policy, queries, gen)


def _rewards(scored: Scores, use_logit: bool) -> list[float]:
    return rewards(scored, use_logit)


def evaluate(
    policy: Policy,
    scorer: RewardScorer,
    use_logit: bool,
    prompts: Sequence[Prompt],
    queries: Sequence[torch.Tensor],
    gen: GenerationConfig,
    seed: int = 1234,
    keep_samples: int = 8,
    reference_responses: Sequence[torch.Tensor] | None = None,
) -> Evaluation:
    """Sample the reference and the policy on the same prompts with the same seed, score responses alone.

    `reference_responses`: what `sample_reference` returned for these prompts, seed and settings (sampled here
    when not given).
    """
    if reference_responses is None:
        reference_responses = sample_reference(policy, queries, gen, seed)
    elif len(reference_responses) != len(queries):
        raise ValueError(f"{len(reference_responses)} reference responses for {len(queries)} prompts")
    torch.manual_seed(seed)
    sampled = rollout(policy, queries, gen)
    sides = {}
    for name, responses in (("reference", list(reference_responses)), ("policy", sampled.responses)):
        texts = policy.tokenizer.batch_decode(responses, skip_special_tokens=True)
        sides[name] = (responses, [t.strip() for t in texts])
    summaries = [p.summary for p in prompts]
    scored = {name: scorer.score_batch(texts) for name, (_, texts) in sides.items()}
    stats = {
        name: _side(texts, scored[name], use_logit, [len(r) for r in resp], summaries)
        for name, (resp, texts) in sides.items()
    }
    ref_r, pol_r = (_rewards(scored[k], use_logit) for k in ("reference", "policy"))
    ref_t, pol_t = ([1.0 - x for x in scored[k].scores] for k in ("reference", "policy"))
    kls = sequence_kl(policy, queries, sampled.responses, gen.temperature, policy_logprobs=sampled.logprobs)
    samples = [
        {
            "prompt_id": p.id,
            "dialogue": p.dialogue,
            "reference": sides["reference"][1][i],
            "reference_score": scored["reference"].scores[i],
            "policy": sides["policy"][1][i],
            "policy_score": scored["policy"].scores[i],
        }
        for i, p in enumerate(prompts[:keep_samples])
    ]
    return Evaluation(
        n_prompts=len(prompts),
        reference=stats["reference"],
        policy=stats["policy"],
        relative_change=relative_change(ref_r, pol_r),
        relative_change_ci95=paired_bootstrap_ci(ref_r, pol_r),
        toxicity_change=relative_change(ref_t, pol_t),
        toxicity_change_ci95=paired_bootstrap_ci(ref_t, pol_t),
        kl_to_reference=sum(kls) / len(kls),
        samples=samples,
    )
