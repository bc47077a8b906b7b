"""The bridge to the learning side: fill the pool with the current policy's responses, and drive PPO steps
with stored, rated generations.

Both use the policy, so both take the same lock: generation and training share one queue of heavy work.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

from feedback.types import NewGeneration, PPOSample, PromptRef


class EngineGenerator:
    """Produces pool items with a loaded policy and scores them with the reward classifier.

    Args:
        policy: a loaded `rlhf.models.Policy` (the current version's adapter).
        scorer: an `rlhf.scorers` scorer.
        cfg: the run config (prompt template, chat template, generation settings).
        version_id: the policy version `policy` holds; the pool only refills for the current one.
        lock: held while generating, shared with training (None: no lock).
    """

    def __init__(self, policy, scorer, cfg, version_id: int, lock: threading.Lock | None = None):
        self.policy = policy
        self.scorer = scorer
        self.cfg = cfg
        self.version_id = version_id
        self.lock = lock

    def generate(self, prompts: Sequence[PromptRef]) -> list[NewGeneration]:
        from rlhf.ppo import generate, response_logprobs
        from rlhf.prompts import encode_prompt, format_prompt

        cfg = self.cfg
        tok = self.policy.tokenizer
        kept = []
        for p in prompts:
            ids = encode_prompt(tok, p.text, cfg.data.template, cfg.policy.chat_template)
            if len(ids) <= cfg.policy.max_query_tokens:
                kept.append((p, ids))
        if not kept:
            return []
        queries = [ids for _, ids in kept]
        with self.lock or nullcontext():
            responses = generate(self.policy, queries, cfg.generation)
            logprobs = response_logprobs(self.policy, queries, responses, cfg.generation.temperature)
        texts = [t.strip() for t in tok.batch_decode(responses, skip_special_tokens=True)]
        scored = self.scorer.score_batch(texts)
        return [
            NewGeneration(
                prompt_id=p.id,
                query_text=format_prompt(p.text, cfg.data.template),
                response=text,
                query_ids=q.tolist(),
                response_ids=r.tolist(),
                logprobs=lp,
                model_score=scored.scores[i],
                model_logit=scored.logits[i] if scored.logits is not None else None,
                scorer=self.scorer.name,
            )
            for i, ((p, q), r, lp, text) in enumerate(zip(kept, responses, logprobs, texts, strict=True))
        ]


def sample_batches(samples: Sequence[PPOSample], batch_size: int, seed: int = 0) -> Iterator[list[PPOSample]]:
    """Endless shuffled batches of `batch_size` samples; each pass over the samples is a new shuffle."""
    if len(samples) < batch_size:
        raise ValueError(
            f"{len(samples)} usable samples are fewer than the PPO batch size {batch_size}; rate more items, "
            "switch the reward mode to model or blend, or lower the batch size"
        )
    rng = random.Random(seed)
    order = list(range(len(samples)))
    while True:
        rng.shuffle(order)
        for k in range(0, len(order) - batch_size + 1, batch_size):
            yield [samples[i] for i in order[k : k + batch_size]]


def step_on_samples(trainer, batch: Sequence[PPOSample], lock: threading.Lock | None = None) -> dict:
    """One `PPOTrainer.step` on stored samples, with the log-probs recorded when they were generated."""
    import torch

    queries = [torch.tensor(s.query_ids, dtype=torch.long) for s in batch]
    responses = [torch.tensor(s.response_ids, dtype=torch.long) for s in batch]
    old = [torch.tensor(s.logprobs, dtype=torch.float32) for s in batch]
    with lock or nullcontext():
        return trainer.step(queries, responses, [s.reward for s in batch], old_logprobs=old)
