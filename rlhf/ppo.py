"""The stateful PPO trainer: rollout (generate), then `step(queries, responses, scores)`.

`step` takes externally scored samples too (human ratings), so anything that can put a number on a response
can drive an update. The maths lives in `rlhf.core`.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from rlhf import core
from rlhf.config import GenerationConfig, PPOConfig, exact_div
from rlhf.distributed import SINGLE, Group, broadcast_parameters, sum_gradients
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


# Every logits processor `generate` can add on its own (transformers 5.x, generation/utils.py
# `_get_logits_processor`), at the value that adds none, and plain one-sample ancestral sampling: the tokens are
# drawn from softmax(logits / temperature) (top_k / top_p as configured), the distribution PPO's ratio divides by.
# A model's generation_config.json would otherwise put its own repetition_penalty, bad_words_ids, ... in.
NEUTRAL_SAMPLING = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,  # 0 would still set min_length to the prompt's length
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": None,
    "top_h": None,
    "guidance_scale": None,
    "sequence_bias": None,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "dola_layers": None,
    "token_healing": None,
}


@contextlib.contextmanager
def _sampling_settings_only(policy: Policy, hf_gen) -> Iterator[None]:
    """Let `generate` see `hf_gen` as the model's own generation config for the call.

    `generate` fills every field left None in the config it is given from `model.generation_config` (the model's
    generation_config.json), and None is the neutral value of many processors (bad_words_ids, suppress_tokens,
    forced_eos_token_id, ...): no value we pass keeps those out. With `hf_gen` standing in for the model's config
    the only fallback left is transformers' global defaults, which add no processor (top_k aside: we set it).
    The policy serves one caller at a time (the app holds its lock while generating).
    """
    model = policy.model.get_base_model()
    own = model.generation_config
    model.generation_config = hf_gen
    try:
        yield
    finally:
        model.generation_config = own


@dataclass
class Rollout:
    """Sampled responses with what the policy computed while sampling them.

    logprobs[i][t] is the log-prob of response_i[t] under the distribution it was drawn from (`generate`'s
    processed scores: the policy at the sampling temperature, after top_k / top_p when those are on) and values[i][t]
    the value head on the hidden state that predicted that token. With top_k and top_p off (the defaults) this is
    exactly what `PPOTrainer.step` would otherwise recompute with a second forward pass (`old_logprobs`,
    `old_values`); tests/test_ppo.py checks it on models whose own generation config asks for other processors.
    """

    responses: list[torch.Tensor]
    logprobs: list[torch.Tensor]
    values: list[torch.Tensor]


@torch.no_grad()
def generate(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    gen: GenerationConfig,
    max_new_tokens: int | None = None,
    do_sample: bool = True,
    seed: int | None = None,
) -> list[torch.Tensor]:
    """Sample one response per query (batched); returns response token ids truncated after the first EOS.

    `seed`: sample from a private random stream started at `seed` (see `SAMPLING`), the draws that
    `torch.manual_seed(seed)` and then this call would make in a single thread, whatever other threads sample.

    Seq2seq outputs start with the decoder start token, which is not part of the response.
    """
    return _generate(policy, queries, gen, max_new_tokens, do_sample, with_stats=False, seed=seed).responses


@torch.no_grad()
def rollout(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    gen: GenerationConfig,
    max_new_tokens: int | None = None,
    seed: int | None = None,
) -> Rollout:
    """`generate` (sampling), keeping each response token's log-prob and value from the sampling passes."""
    return _generate(policy, queries, gen, max_new_tokens, do_sample=True, with_stats=True, seed=seed)


# torch's random generators are global to the process. Threads that sample at once (the app's pool refill beside a
# round's evaluation) take this lock for each draw (one token of a batch): a seeded call swaps its own stream in for
# the draw and out again, so its draws never depend on what other threads sampled in between, and the forward
# passes of two threads still run side by side (a lock around whole generation calls made them take turns).
SAMPLING = threading.RLock()
_DRAWING = threading.local()  # .draw: the draw context of the generation call this thread is in (see _multinomial)
_torch_multinomial = torch.multinomial


def _multinomial(*args, **kwargs):
    """`torch.multinomial`, as transformers' sampling calls it, one draw at a time under `SAMPLING`: inside one of
    our generation calls from that call's stream, elsewhere from the global one.

    One sample per row (what sampling a token asks) is drawn by inverting the row's cumulative distribution with
    one uniform number per row: the same distribution as `torch.multinomial`, which draws an exponential number
    for every vocabulary entry instead (24.6 ms against 3.8 ms a draw beside a 217 ms SmolLM2 decode pass at
    batch 16 on 2 cores; `python -m bench.generation`). Anything else goes to `torch.multinomial` itself."""
    if kwargs.get("generator") is not None:
        return _torch_multinomial(*args, **kwargs)
    draw = getattr(_DRAWING, "draw", None)
    one = _one_per_row(*args, **kwargs)
    if one is None:
        with draw() if draw is not None else SAMPLING:
            return _torch_multinomial(*args, **kwargs)
    cdf = one.cumsum(-1, dtype=torch.float64)
    with draw() if draw is not None else SAMPLING:
        u = torch.rand(cdf.shape[:-1] + (1,), dtype=torch.float64, device=cdf.device)
    # the first index whose cumulative mass exceeds u * total: entry i with mass p_i is hit with probability
    # p_i / total, and an entry with no mass never (its cumulative value equals its predecessor's)
    return torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_(max=one.shape[-1] - 1)


def _one_per_row(probs=None, num_samples=None, replacement=False, *, out=None, input=None) -> torch.Tensor | None:
    """The probabilities of a `torch.multinomial` call that asks one sample per row of valid weights, else None
    (torch.multinomial then draws, or raises its own error on negative, infinite or NaN weights)."""
    probs = probs if probs is not None else input
    if num_samples != 1 or out is not None or probs is None or probs.dim() not in (1, 2) or probs.shape[-1] == 0:
        return None
    total = probs.sum(-1)  # NaN or infinite when any weight is
    if not (torch.isfinite(total).all() and (total > 0).all() and probs.min() >= 0):
        return None
    return probs


torch.multinomial = _multinomial  # installed once, for the whole process: every caller's draws become atomic


@contextlib.contextmanager
def _drawing(draw: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """Route this thread's draws through `draw` for one generation call."""
    outer = getattr(_DRAWING, "draw", None)
    _DRAWING.draw = draw
    try:
        yield
    finally:
        _DRAWING.draw = outer


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@contextlib.contextmanager
def _stream(seed: int | None) -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
    """`with _stream(seed) as draw:`, then `with draw():` around each draw (see `_multinomial`). Unseeded: the
    global stream, under the lock. Seeded: a private stream that starts where `torch.manual_seed(seed)` would and carries on from
    call to call, swapped in and out under the lock."""
    if seed is None:
        yield lambda: SAMPLING
        return
    with SAMPLING:
        outside = _rng_state()
        torch.manual_seed(seed)
        mine = [_rng_state()]
        _set_rng_state(outside)

    @contextlib.contextmanager
    def draw() -> Iterator[None]:
        with SAMPLING:
            outside = _rng_state()
            _set_rng_state(mine[0])
            try:
                yield
            finally:
                mine[0] = _rng_state()
                _set_rng_state(outside)

    yield draw


def _generate(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    gen: GenerationConfig,
    max_new_tokens: int | None,
    do_sample: bool,
    with_stats: bool,
    seed: int | None = None,
) -> Rollout:
    from transformers import GenerationConfig as HFGenerationConfig

    eos = eos_token_ids(policy)
    hf_gen = HFGenerationConfig(
        **NEUTRAL_SAMPLING,
        do_sample=do_sample,
        temperature=gen.temperature if do_sample else None,
        top_k=gen.top_k if do_sample else None,
        top_p=gen.top_p if do_sample else None,
        max_new_tokens=max_new_tokens or gen.max_new_tokens,
        pad_token_id=policy.pad_token_id,
        eos_token_id=sorted(eos),
        decoder_start_token_id=getattr(policy.model.config, "decoder_start_token_id", None),
        return_dict_in_generate=with_stats,
        output_scores=with_stats,
        output_hidden_states=with_stats,
    )
    out = Rollout([], [], [])
    # more prompts than one batch: batch them by length (less padding), hand the results back in input order
    order = sorted(range(len(queries)), key=lambda i: len(queries[i])) if len(queries) > gen.batch_size else None
    if order is not None:
        queries = [queries[i] for i in order]
    with _stream(seed) as draw:
        for start in range(0, len(queries), gen.batch_size):
            _generate_chunk(policy, queries[start : start + gen.batch_size], hf_gen, eos, with_stats, out, draw)
    if order is not None:
        back = sorted(range(len(order)), key=order.__getitem__)

        def restore(rows: list[torch.Tensor]) -> list[torch.Tensor]:
            return [rows[i] for i in back] if rows else rows

        out = Rollout(restore(out.responses), restore(out.logprobs), restore(out.values))
    return out


def _generate_chunk(policy: Policy, chunk, hf_gen, eos, with_stats: bool, out: Rollout, draw) -> None:
    """One generation call (one batch of queries), appended to `out`."""
    from trl.trainer.utils import pad

    chunk = [q.to(policy.device) for q in chunk]
    side = "right" if policy.is_encoder_decoder else "left"
    ids = pad(chunk, padding_value=policy.pad_token_id, padding_side=side)
    mask = pad([torch.ones_like(q) for q in chunk], padding_value=0, padding_side=side)
    with _drawing(draw), _sampling_settings_only(policy, hf_gen):
        result = policy.model.generate(input_ids=ids, attention_mask=mask, generation_config=hf_gen)
    seqs = result.sequences if with_stats else result
    seqs = seqs[:, 1:] if policy.is_encoder_decoder else seqs[:, ids.shape[1] :]
    responses = [truncate_after_eos(row, eos) for row in seqs]
    out.responses += [r.cpu() for r in responses]
    if with_stats:
        # step k's scores (logits / temperature, after top_k / top_p) are what new token k was drawn from;
        # its last hidden state (decoder side) at the last position made them, which is where the value head reads.
        lps = torch.stack(
            [
                core.logprobs_from_logits(step_scores[:, None].float(), seqs[:, k, None])[:, 0]
                for k, step_scores in enumerate(result.scores)
            ],
            dim=1,
        )  # (B, steps), one step's vocabulary at a time
        steps = result.decoder_hidden_states if policy.is_encoder_decoder else result.hidden_states
        hidden = torch.stack([layers[-1][:, -1] for layers in steps], dim=1)  # (B, steps, H)
        values = policy.value_head(hidden)
        for i, r in enumerate(responses):
            out.logprobs.append(lps[i, : len(r)].cpu())
            out.values.append(values[i, : len(r)].cpu())


@torch.no_grad()
def response_logprobs(
    policy: Policy,
    queries: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    temperature: float,
    batch_size: int = 16,
) -> list[list[float]]:
    """Log-prob of each response token under the policy as it is now (inside `policy.reference()`: the
    reference), one list per sample, by a forward pass; `rollout` records the same figures while sampling."""
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
        group: the data-parallel processes this trainer is one of (`rlhf.distributed`); each `step` then takes
            this process's shard of the batch, and every process takes the step one process would take on the
            whole batch.
    """

    def __init__(self, policy: Policy, cfg: PPOConfig, temperature: float = 1.0, seed: int = 0, group: Group = SINGLE):
        self.policy = policy
        self.cfg = cfg
        self.temperature = temperature
        self.group = group
        self.shard_size = exact_div(cfg.batch_size, group.world, "ppo.batch_size / number of processes")
        broadcast_parameters(group, policy.trainable_parameters())
        self.n_minibatches = exact_div(cfg.batch_size, cfg.mini_batch_size, "ppo.batch_size / ppo.mini_batch_size")
        if cfg.micro_batch_size is not None and cfg.micro_batch_size < 1:
            raise ValueError(
                f"ppo.micro_batch_size must be at least 1 (or none for the whole mini-batch), got {cfg.micro_batch_size}"
            )
        self.micro_batch_size = min(cfg.micro_batch_size or cfg.mini_batch_size, cfg.mini_batch_size)
        self.optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.learning_rate)
        self.kl_ctl = (
            core.AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon)
            if cfg.adaptive_kl
            else core.FixedKLController(cfg.init_kl_coef)
        )
        self.running = core.RunningMoments()
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0

    # ---- resuming ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the next step depends on besides the weights: Adam's state, the KL coefficient, the running score
        moments, the step count and the mini-batch shuffling generator."""
        r = self.running
        return {
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_ctl.value,
            "score_moments": {"mean": r.mean, "var": r.var, "count": r.count},
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        moments = state["score_moments"]
        self.running.mean, self.running.var, self.running.count = moments["mean"], moments["var"], moments["count"]
        self.step_count = state["step_count"]
        self.generator.set_state(state["generator"])

    # ---- rollout-time forward passes (no grad) ----------------------------------------------------------
    @torch.no_grad()
    def _rollout_forward(
        self, batch: Batch, policy_pass: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> policy log-probs, values, reference log-probs; each (B, T) (the first two zeros without
        `policy_pass`, when the caller has them from sampling).

        Samples go through in chunks of `forward_batch_size`, grouped by length so a chunk pads little.
        """
        B, T = batch.responses.shape
        logps = torch.zeros(B, T, device=batch.responses.device)
        values, ref_logps = torch.zeros_like(logps), torch.zeros_like(logps)
        order = torch.argsort(batch.attention_mask.sum(-1) + batch.response_mask.sum(-1), stable=True)
        for idx in order.split(self.cfg.forward_batch_size):
            sub = batch.select(idx)
            t = sub.responses.shape[1]
            if policy_pass:
                logits, v = self.policy(sub, self.temperature)
                logps[idx, :t] = core.logprobs_from_logits(logits, sub.responses)
                values[idx, :t] = v
                del logits
            with self.policy.reference():
                ref_logits, _ = self.policy(sub, self.temperature, with_values=False)
            ref_logps[idx, :t] = core.logprobs_from_logits(ref_logits, sub.responses)
        return logps, values, ref_logps

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
        old_values: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One PPO step on `batch_size` scored samples; returns the step's statistics.

        In a data-parallel group each process passes its own `batch_size / world` samples (its shard, in rank
        order: the batch is the shards concatenated).

        Args:
            queries: prompt token ids, one 1-D tensor each.
            responses: response token ids (as sampled from the current policy), one 1-D tensor each.
            scores: one scalar reward per sample (classifier, human or blended).
            old_logprobs: log-probs recorded when the responses were sampled; recomputed when not given.
            old_values: the value head's outputs recorded then (see `rollout`); with both given, the policy's
                rollout-time forward pass is skipped and only the reference runs.
        """
        t0 = time.perf_counter()
        B, n = self.cfg.batch_size, self.shard_size
        if not len(queries) == len(responses) == len(scores) == n:
            shard = f" (this process's share of ppo.batch_size={B})" if self.group.world > 1 else ""
            raise ValueError(
                f"step needs exactly {'' if shard else 'ppo.batch_size='}{n} samples{shard}, got {len(queries)} "
                f"queries, {len(responses)} responses and {len(scores)} scores"
            )
        dev = self.policy.device
        scores_t = torch.as_tensor(scores, dtype=torch.float32, device=dev)
        if not torch.isfinite(scores_t).all():
            raise ValueError(f"scores must be finite numbers, got {scores_t.tolist()}")
        batch = self.policy.collate(queries, responses)

        # ---- rollout statistics: fixed for the whole step -----------------------------------------------
        logprobs, values, ref_logprobs = self._rollout_forward(
            batch, policy_pass=old_logprobs is None or old_values is None
        )
        if old_logprobs is not None:
            logprobs = _recorded(old_logprobs, logprobs, "old_logprobs")
        if old_values is not None:
            values = _recorded(old_values, values, "old_values")
        if self.group.world > 1:  # every process now holds the whole batch, in rank order
            batch, scores_t, logprobs, values, ref_logprobs = self._gather(
                queries, responses, scores_t, batch.response_mask, logprobs, values, ref_logprobs
            )
        mask = batch.response_mask
        raw_scores = scores_t
        scores_t = self._process_scores(scores_t)
        rewards, non_score, kl = core.compute_rewards(
            scores_t, logprobs, ref_logprobs, mask, self.kl_ctl.value, self.cfg.kl_penalty
        )
        values, advantages, returns = core.gae(
            values, rewards, mask, self.cfg.gamma, self.cfg.lam, self.cfg.whiten_rewards
        )
        t_rollout = time.perf_counter() - t0

        # ---- optimisation: epochs over shuffled mini-batches ---------------------------------------------
        mb_stats: list[dict[str, float]] = []
        skipped = 0
        for _ in range(self.cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator)
            for k in range(self.n_minibatches):
                idx = perm[k * self.cfg.mini_batch_size : (k + 1) * self.cfg.mini_batch_size].to(dev)
                self.optimizer.zero_grad(set_to_none=True)
                own = idx[self.group.rank :: self.group.world]  # this process's part of the mini-batch
                stats = self._accumulate_gradients(batch, idx, own, logprobs, values, advantages, returns)
                sum_gradients(self.group, self.policy.trainable_parameters())
                stats = self._combine_processes(stats)
                stats["returns/var"] = core.masked_var(returns[idx], mask[idx]).item() if mask[idx].sum() > 1 else 0.0
                if not self._apply_gradients(stats):
                    skipped += 1
                mb_stats.append(stats)

        # ---- bookkeeping ------------------------------------------------------------------------------
        mean_kl = (kl * mask).sum(-1).mean().item()
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, B)
        self.step_count += 1
        stats = _combine_minibatches(mb_stats)
        stats.update(
            {
                "step": self.step_count,
                "ppo/skipped_minibatches": skipped,
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

    def _gather(self, queries, responses, scores, response_mask, logprobs, values, ref_logprobs) -> tuple:
        """Every process's rollout rows -> the whole batch, its scores and its (B, T) log-probs, values and
        reference log-probs, identical in every process."""
        lengths = response_mask.sum(-1).long().tolist()
        rows = [
            (q, r, s, lp[:n], v[:n], ref[:n])
            for q, r, s, lp, v, ref, n in zip(
                queries, responses, scores, logprobs, values, ref_logprobs, lengths, strict=True
            )
        ]
        q, r, s, lp, v, ref = zip(*self.group.gather(rows), strict=True)
        batch = self.policy.collate(list(q), list(r))
        like = batch.response_mask
        scores_t = torch.stack(list(s)).to(like.device)
        return (
            batch,
            scores_t,
            *(_recorded(x, like, name) for x, name in ((lp, "logprobs"), (v, "values"), (ref, "ref"))),
        )

    def _combine_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """One mini-batch's statistics over the processes' parts: each part's are already weighted by its share of
        the mini-batch's tokens, so they add up; the ratio's extremes are the parts' extremes."""
        if self.group.world == 1:
            return stats
        parts = [p for p in self.group.gather([stats]) if p]
        out = {k: sum(p[k] for p in parts) for k in parts[0] if k not in EXTREMES}
        out.update({k: pick(p[k] for p in parts) for k, pick in EXTREMES.items()})
        return out

    def _apply_gradients(self, stats: dict[str, float]) -> bool:
        """Clip and apply one mini-batch's gradients, unless the ratio guard fires; False when it skipped them.

        The guard judges the mini-batch as a whole (its token-mean ratio). A guarded mini-batch skips the optimiser
        step: weights, Adam's moments and its step count stay as they were. trl 0.11.4 multiplies the loss by zero
        and steps anyway, and Adam then still moves every weight on its moments from earlier mini-batches.
        """
        lora = [p for p in self.policy.model.parameters() if p.requires_grad]
        head = [p for p in self.policy.value_head.parameters() if p.requires_grad]
        stats["policy/grad_norm"], stats["val/grad_norm"] = _grad_norm(lora), _grad_norm(head)  # before clipping
        if stats["policy/ratio_mean"] > self.cfg.ratio_threshold:
            self.optimizer.zero_grad(set_to_none=True)
            stats.update({"loss/policy": 0.0, "loss/value": 0.0, "loss/total": 0.0})
            return False
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(lora + head, self.cfg.max_grad_norm)
        self.optimizer.step()
        return True

    def _accumulate_gradients(
        self,
        batch: Batch,
        idx: torch.Tensor,
        own: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float]:
        """Gradients of this process's part `own` of mini-batch `idx`'s PPO loss, summed over micro-batches;
        returns the part's stats (empty when it holds no sample).

        The loss is a masked mean over the mini-batch's response tokens, so each micro-batch's loss is weighted
        by its share of those tokens: the summed gradient equals the whole mini-batch's, in less memory, and the
        processes' sums add up to it too. The stats combine the same way (all are token means except the
        ratio's extremes, the extremes of the micro-batches'). The ratio guard is not applied here but on the
        summed result, so it judges the mini-batch as a whole (see `_apply_gradients`).
        """
        mask = batch.response_mask
        n_tokens = mask[idx].sum().item()
        stats: dict[str, float] = {}
        for micro in own.split(self.micro_batch_size) if len(own) else ():  # an empty split is one empty part
            sub = batch.select(micro)
            T = sub.responses.shape[1]
            logits, vpreds = self.policy(sub, self.temperature)
            new_logprobs = core.logprobs_from_logits(logits, sub.responses)
            out = core.ppo_loss(
                logprobs[micro, :T],
                values[micro, :T],
                logits,
                vpreds,
                new_logprobs,
                sub.response_mask,
                advantages[micro, :T],
                returns[micro, :T],
                cliprange=self.cfg.cliprange,
                cliprange_value=self.cfg.cliprange_value,
                vf_coef=self.cfg.vf_coef,
                ratio_threshold=math.inf,
            )
            share = sub.response_mask.sum().item() / n_tokens
            (out.loss * share).backward()
            for key, value in out.stats.items():
                if key in EXTREMES:
                    stats[key] = EXTREMES[key](stats.get(key, value), value)
                else:
                    stats[key] = stats.get(key, 0.0) + value * share
        stats.pop("returns/var", None)  # over the whole mini-batch: the caller takes it
        return stats


# Statistics that combine by their extreme, over micro-batches and over a step's mini-batches; all others by mean.
EXTREMES = {"policy/ratio_max": max, "policy/ratio_min": min}


def _combine_minibatches(mb_stats: list[dict[str, float]]) -> dict[str, float]:
    out = {k: sum(s[k] for s in mb_stats) / len(mb_stats) for k in mb_stats[0]}
    out.update({k: pick(s[k] for s in mb_stats) for k, pick in EXTREMES.items()})
    return out


def _grad_norm(params: Sequence[torch.Tensor]) -> float:
    """L2 norm of the parameters' gradients taken together (0 when none has one)."""
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


def _recorded(rows: Sequence[torch.Tensor], like: torch.Tensor, name: str) -> torch.Tensor:
    """Per-token figures recorded at sampling time, right-padded to the batch's (B, T) like `like`."""
    from trl.trainer.utils import pad

    given = pad([torch.as_tensor(r).to(like.device).float() for r in rows], padding_value=0.0, padding_side="right")
    if given.shape != like.shape:
        raise ValueError(f"{name} shape {tuple(given.shape)} != responses {tuple(like.shape)}")
    return given
