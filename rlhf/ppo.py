"""The stateful PPO trainer: rollout (generate), then `step(queries, responses, scores)`.

`step` takes externally scored samples too (human ratings), so anything that can put a number on a response
can drive an update. The maths lives in `rlhf.core`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch

from rlhf import core
from rlhf.config import GenerationConfig, PPOConfig, exact_div
from rlhf.models import Batch, Policy


def truncate_after_eos(tokens: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """Cut a generated sequence after its first EOS (kept), dropping the padding that follows."""
    for i, t in enumerate(tokens.tolist()):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens


def eos_token_ids(policy: Policy) -> set[int]:
    ids: set[int] = set()
    for source in (policy.model.generation_config.eos_token_id, policy.tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update(source if isinstance(source, (list, tuple)) else [source])
    return ids


@torch.no_grad()
def generate(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    gen: GenerationConfig,
    max_new_tokens: int | None = None,
    do_sample: bool = True,
) -> list[torch.Tensor]:
    """Sample one response per query (batched); returns response token ids truncated after the first EOS.

    Seq2seq outputs start with the decoder start token, which is not part of the response.
    """
    from transformers import GenerationConfig as HFGenerationConfig
    from trl.trainer.utils import pad

    eos = eos_token_ids(policy)
    hf_gen = HFGenerationConfig(
        do_sample=do_sample,
        temperature=gen.temperature if do_sample else None,
        top_k=gen.top_k if do_sample else None,
        top_p=gen.top_p if do_sample else None,
        max_new_tokens=max_new_tokens or gen.max_new_tokens,
        pad_token_id=policy.pad_token_id,
        eos_token_id=sorted(eos),
        decoder_start_token_id=getattr(policy.model.config, "decoder_start_token_id", None),
    )
    out: list[torch.Tensor] = []
    dev = policy.device
    for start in range(0, len(queries), gen.batch_size):
        chunk = [q.to(dev) for q in queries[start : start + gen.batch_size]]
        side = "right" if policy.is_encoder_decoder else "left"
        ids = pad(chunk, padding_value=policy.pad_token_id, padding_side=side)
        mask = pad([torch.ones_like(q) for q in chunk], padding_value=0, padding_side=side)
        seqs = policy.model.generate(input_ids=ids, attention_mask=mask, generation_config=hf_gen)
        seqs = seqs[:, 1:] if policy.is_encoder_decoder else seqs[:, ids.shape[1] :]
        for row in seqs:
            out.append(truncate_after_eos(row, eos).cpu())
    return out


@torch.no_grad()
def response_logprobs(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    temperature: float,
    batch_size: int = 16,
) -> list[list[float]]:
    """Log-prob of each response token under the policy as it is now (inside `policy.reference()`: the
    reference), one list per sample; what `PPOTrainer.step` takes as `old_logprobs` for stored samples."""
    out: list[list[float]] = []
    for start in range(0, len(queries), batch_size):
        batch = policy.collate(queries[start : start + batch_size], responses[start : start + batch_size])
        logits, _ = policy(batch, temperature, with_values=False)
        lp = core.logprobs_from_logits(logits, batch.responses)
        out += [row[: int(n)].tolist() for row, n in zip(lp, batch.response_mask.sum(-1), strict=True)]
    return out


class LengthSampler:
    """Draws the response length of each batch uniformly from [min, max] (the recipe's LengthSampler)."""

    def __init__(self, lo: int, hi: int, seed: int = 0):
        self.lo, self.hi = lo, hi
        self.rng = random.Random(seed)

    def __call__(self) -> int:
        return self.rng.randint(self.lo, self.hi)


class PPOTrainer:
    """PPO on a `Policy` with the LoRA-disabled network as reference.

    Args:
        policy: the LoRA policy with value head (see `rlhf.models.load_policy`).
        cfg: PPO hyper-parameters.
        temperature: the sampling temperature; log-probs use the same one.
    """

    def __init__(self, policy: Policy, cfg: PPOConfig, temperature: float = 1.0, seed: int = 0):
        self.policy = policy
        self.cfg = cfg
        self.temperature = temperature
        self.n_minibatches = exact_div(cfg.batch_size, cfg.mini_batch_size, "ppo.batch_size / ppo.mini_batch_size")
        self.optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.learning_rate)
        self.kl_ctl = (
            core.AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon)
            if cfg.adaptive_kl
            else core.FixedKLController(cfg.init_kl_coef)
        )
        self.running = core.RunningMoments()
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0

    # ---- rollout-time forward passes (no grad) ----------------------------------------------------------
    @torch.no_grad()
    def _rollout_forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> policy log-probs, values, reference log-probs; each (B, T)."""
        n = batch.responses.shape[0]
        logps, values, ref_logps = [], [], []
        for start in range(0, n, self.cfg.forward_batch_size):
            idx = torch.arange(start, min(n, start + self.cfg.forward_batch_size))
            sub = batch.select(idx)
            T = batch.responses.shape[1]
            logits, v = self.policy(sub, self.temperature)
            with self.policy.reference():
                ref_logits, _ = self.policy(sub, self.temperature, with_values=False)
            pad_to = T - sub.responses.shape[1]
            logps.append(_pad_right(core.logprobs_from_logits(logits, sub.responses), pad_to))
            ref_logps.append(_pad_right(core.logprobs_from_logits(ref_logits, sub.responses), pad_to))
            values.append(_pad_right(v, pad_to))
        return torch.cat(logps), torch.cat(values), torch.cat(ref_logps)

    def _process_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_score_scaling:
            self.running.update(scores)
            scale = self.running.std + torch.finfo(scores.dtype).eps
            scores = (scores - self.running.mean) / scale if self.cfg.use_score_norm else scores / scale
        if self.cfg.score_clip is not None:
            scores = scores.clamp(-self.cfg.score_clip, self.cfg.score_clip)
        return scores

    # ---- the update ------------------------------------------------------------------------------------
    def step(
        self,
        queries: Sequence[torch.Tensor],
        responses: Sequence[torch.Tensor],
        scores: Sequence[float] | torch.Tensor,
        old_logprobs: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One PPO step on `batch_size` scored samples; returns the step's statistics.

        Args:
            queries: prompt token ids, one 1-D tensor each.
            responses: response token ids (as sampled from the current policy), one 1-D tensor each.
            scores: one scalar reward per sample (classifier, human or blended).
            old_logprobs: log-probs recorded when the responses were sampled; recomputed when not given.
        """
        t0 = time.perf_counter()
        B = self.cfg.batch_size
        if not len(queries) == len(responses) == len(scores) == B:
            raise ValueError(
                f"step needs exactly ppo.batch_size={B} samples, got {len(queries)} queries, "
                f"{len(responses)} responses and {len(scores)} scores"
            )
        dev = self.policy.device
        scores_t = torch.as_tensor(scores, dtype=torch.float32, device=dev)
        if not torch.isfinite(scores_t).all():
            raise ValueError(f"scores must be finite numbers, got {scores_t.tolist()}")
        raw_scores = scores_t
        scores_t = self._process_scores(scores_t)
        batch = self.policy.collate(queries, responses)
        mask = batch.response_mask

        # ---- rollout statistics: fixed for the whole step -----------------------------------------------
        logprobs, values, ref_logprobs = self._rollout_forward(batch)
        if old_logprobs is not None:
            from trl.trainer.utils import pad

            given = pad([lp.to(dev).float() for lp in old_logprobs], padding_value=0.0, padding_side="right")
            if given.shape != logprobs.shape:
                raise ValueError(f"old_logprobs shape {tuple(given.shape)} != responses {tuple(logprobs.shape)}")
            logprobs = given
        rewards, non_score, kl = core.compute_rewards(
            scores_t, logprobs, ref_logprobs, mask, self.kl_ctl.value, self.cfg.kl_penalty
        )
        values, advantages, returns = core.gae(
            values, rewards, mask, self.cfg.gamma, self.cfg.lam, self.cfg.whiten_rewards
        )
        t_rollout = time.perf_counter() - t0

        # ---- optimisation: epochs over shuffled mini-batches ---------------------------------------------
        mb_stats: list[dict[str, float]] = []
        for _ in range(self.cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator)
            for k in range(self.n_minibatches):
                idx = perm[k * self.cfg.mini_batch_size : (k + 1) * self.cfg.mini_batch_size].to(dev)
                sub = batch.select(idx)
                T = sub.responses.shape[1]
                logits, vpreds = self.policy(sub, self.temperature)
                new_logprobs = core.logprobs_from_logits(logits, sub.responses)
                out = core.ppo_loss(
                    logprobs[idx, :T],
                    values[idx, :T],
                    logits,
                    vpreds,
                    new_logprobs,
                    sub.response_mask,
                    advantages[idx, :T],
                    returns[idx, :T],
                    cliprange=self.cfg.cliprange,
                    cliprange_value=self.cfg.cliprange_value,
                    vf_coef=self.cfg.vf_coef,
                    ratio_threshold=self.cfg.ratio_threshold,
                )
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if self.cfg.max_grad_norm is not None:
                    gn = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.cfg.max_grad_norm)
                    out.stats["policy/grad_norm"] = float(gn)
                self.optimizer.step()
                mb_stats.append(out.stats)

        # ---- bookkeeping ------------------------------------------------------------------------------
        mean_kl = (kl * mask).sum(-1).mean().item()
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, B)
        self.step_count += 1
        stats = {k: sum(s[k] for s in mb_stats) / len(mb_stats) for k in mb_stats[0]}
        stats.update(
            {
                "step": self.step_count,
                "env/reward_mean": raw_scores.mean().item(),
                "env/reward_std": raw_scores.std().item() if B > 1 else 0.0,
                "objective/kl": mean_kl,
                "objective/kl_coef": kl_coef,
                "objective/non_score_reward": (non_score * mask).sum(-1).mean().item(),
                "objective/ref_logprob": core.masked_mean(ref_logprobs, mask).item(),
                "tokens/response_len_mean": mask.sum(-1).mean().item(),
                "time/rollout_forward_s": t_rollout,
                "time/step_s": time.perf_counter() - t0,
            }
        )
        return stats


def _pad_right(x: torch.Tensor, n: int, value: float = 0.0) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, n), value=value) if n > 0 else x
