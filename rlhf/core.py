"""Pure tensor functions of RLHF PPO, kept apart from the stateful trainer so each can be tested alone.

Shapes: B = batch, T = response tokens (right-padded), V = vocabulary. `mask` is 1.0 on response tokens.
The formulas follow trl 0.11.4's `PPOTrainer` (compute_rewards, compute_advantages, loss) and
"The N Implementation Details of RLHF with PPO" (Huang et al. 2024, https://arxiv.org/abs/2403.17031);
tests/test_core.py checks them against numbers produced by trl 0.11.4 itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked entries, with Bessel's correction by default (as trl 0.11.4)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(
                f"masked_var needs at least 2 unmasked entries, got {int(n.item())}; use a larger batch "
                "or longer responses"
            )
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise masked entries to unit variance (and zero mean if `shift_mean`)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) labels -> (B, T) log p(label)."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits, labels)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T) entropy in nats."""
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    return trl_entropy(logits)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-token KL estimate between the sampling policy and the reference, (B, T) -> (B, T).

    kl: k1 = log p - log q (unbiased); abs: |k1|; mse: 0.5 * k1^2 (k2). See http://joschu.net/blog/kl-approx.html
    """
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    raise ValueError(f"unknown kl_penalty {kind!r}; use kl, abs or mse")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last unmasked token of each row."""
    if (mask.sum(-1) == 0).any():
        raise ValueError("every response needs at least one token (a row of the mask is all zeros)")
    T = mask.shape[-1]
    return T - 1 - torch.flip(mask, dims=[-1]).argmax(-1)


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "kl",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL at every token, plus the score at the last response token.

    scores (B,), logprobs / ref_logprobs / mask (B, T) -> rewards, non_score_rewards, kl, each (B, T).
    (Ziegler et al. 2019, eq. 2; trl 0.11.4 PPOTrainer.compute_rewards.)
    """
    kl = kl_penalty(logprobs, ref_logprobs, kind)
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score, kl


def gae(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float, whiten_rewards: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2015, eq. 16).

    values / rewards / mask (B, T) -> masked values, whitened advantages, returns (each (B, T)).
    Masked positions contribute zero value and reward, so the bootstrap past the last token is zero.
    """
    values = values * mask
    rewards = rewards * mask
    if whiten_rewards:
        # Re-mask: trl 0.11.4 leaves (0 - mean) / std at padded positions, which then leaks into the advantages
        # of the last real tokens through the GAE recursion. tests/test_core.py documents the difference.
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    T = rewards.shape[-1]
    last = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t < T - 1 else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, mask).detach()
    return values, advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip surrogate (Schulman et al. 2017, eq. 7) -> loss, ratio (B, T), clip fraction."""
    ratio = torch.exp(logprobs - old_logprobs)
    losses = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(losses, clipped), mask)
    clipfrac = masked_mean(torch.gt(clipped, losses).float(), mask)
    return loss, ratio, clipfrac


def clipped_value_loss(
    vpreds: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2), masked mean -> loss, clip fraction."""
    vclipped = torch.clamp(vpreds, old_values - cliprange_value, old_values + cliprange_value)
    losses = (vpreds - returns) ** 2
    losses_clipped = (vclipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(losses, losses_clipped), mask)
    clipfrac = masked_mean(torch.gt(losses_clipped, losses).float(), mask)
    return loss, clipfrac


@dataclass
class PPOLoss:
    loss: torch.Tensor
    pg_loss: torch.Tensor
    vf_loss: torch.Tensor
    stats: dict[str, float]


def ppo_loss(
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    logits: torch.Tensor,
    vpreds: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    *,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    ratio_threshold: float,
) -> PPOLoss:
    """Policy + value loss of one mini-batch, with the stats trl 0.11.4 reports (PPOTrainer.loss)."""
    pg_loss, ratio, pg_clipfrac = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange)
    vf_loss, vf_clipfrac = clipped_value_loss(vpreds, old_values, returns, mask, cliprange_value)
    avg_ratio = masked_mean(ratio, mask).item()
    if avg_ratio > ratio_threshold:
        # The mini-batch drifted too far from the rollout policy: learn nothing from it.
        pg_loss = pg_loss * 0.0
        vf_loss = vf_loss * 0.0
    loss = pg_loss + vf_coef * vf_loss
    with torch.no_grad():
        diff = logprobs - old_logprobs
        stats = {
            "loss/policy": pg_loss.item(),
            "loss/value": vf_loss.item(),
            "loss/total": loss.item(),
            "policy/entropy": masked_mean(entropy_from_logits(logits), mask).item(),
            "policy/approxkl": 0.5 * masked_mean(diff**2, mask).item(),
            "policy/policykl": masked_mean(-diff, mask).item(),
            "policy/clipfrac": pg_clipfrac.item(),
            "policy/ratio_mean": avg_ratio,
            "policy/ratio_max": ratio[mask.bool()].max().item(),
            "policy/ratio_min": ratio[mask.bool()].min().item(),
            "policy/advantages_mean": masked_mean(advantages, mask).item(),
            "returns/mean": masked_mean(returns, mask).item(),
            "returns/var": masked_var(returns, mask).item() if mask.sum() > 1 else 0.0,
            "val/vpred": masked_mean(vpreds, mask).item(),
            "val/error": masked_mean((vpreds - returns) ** 2, mask).item(),
            "val/clipfrac": vf_clipfrac.item(),
            "val/mean": masked_mean(old_values, mask).item(),
        }
    return PPOLoss(loss=loss, pg_loss=pg_loss, vf_loss=vf_loss, stats=stats)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2): push the observed KL towards `target`."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, current / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        pass


class RunningMoments:
    """Running mean and std of scores across batches (Chan et al. parallel update), for score scaling."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 1e-24

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.double()
        n = xs.numel()
        batch_mean = xs.mean().item()
        batch_var = xs.var(unbiased=False).item() if n > 1 else 0.0
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var * self.count / max(self.count - 1, 1))
