"""The app's models and the bridge to the learning side: fill the pool with the current policy's responses, and
drive PPO steps with stored, rated generations.

Everything that uses the training policy takes `StudioModel.lock`: evaluation and training share one queue of heavy
work. The pool is filled from a second, inference-only copy of the current version in a process of its own
(`feedback.pool_worker`), so labeling never waits for a round and generation never holds the page's interpreter
(unless the copy is turned off to save memory). (The name is not "engine": that word is
SQLAlchemy's, for the database connection.)
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from feedback.types import NewGeneration, PPOSample, PromptRef, VersionInfo


@functools.cache
def default_threads() -> int:
    """Torch's intra-op threads as the process started (the cores it may use)."""
    import torch

    return torch.get_num_threads()


def split_threads(total: int) -> tuple[int, int]:
    """(round, pool) threads when a round trains beside a pool refill: half each, at least one.

    >>> split_threads(2), split_threads(16), split_threads(1)
    ((1, 1), (8, 8), (1, 1))
    """
    pool = max(1, total // 2)
    return max(1, total - pool), pool


@contextmanager
def cpu_threads(n: int | None):
    """Torch's intra-op threads for this Python thread only (OpenMP keeps the setting per thread), restored after.
    Two threads that both run torch with every core each oversubscribe the CPU: on 2 cores a round and a pool
    refill side by side were each slower than one after the other."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# "Labeling first": a round on what the labeling side leaves (the highest nice). Not the default: measured with a
# labeler rating every 2 s on 2 cores, SmolLM2's refill never idled and a 2-step round sat at 0/2 steps for 7 minutes,
# while click-to-next stayed at p50 ~0.7 s: the cores, which the refill, the round and the browser share, are what
# holds the page (moving the refill into its own process, `feedback.pool_worker`, measured no different).
ROUND_NICE = 19


def lower_priority(nice: int = ROUND_NICE) -> int | None:
    """Give the calling thread a lower CPU priority (a higher nice), and return its nice value now.

    Linux keeps the nice value per thread, and the threads this one starts afterwards (torch's OpenMP workers
    among them) inherit it, so a round's training and evaluation yield the cores to the threads that answer
    labelers and refill the pool whenever those have work, and use every core when they do not. None where the
    platform has no per-thread priority, or when it cannot be set; nothing else changes then."""
    if sys.platform != "linux":
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as err:
        logging.getLogger(__name__).warning("could not lower the round's CPU priority: %s", err)
        return None


class PolicyGenerator:
    """Produces pool items with a loaded policy and scores them with the reward classifier.

    Args:
        policy: a loaded `rlhf.models.Policy` (the current version's adapter).
        scorer: an `rlhf.scorers` scorer.
        cfg: the run config (prompt template, chat template, generation settings).
        version_id: the policy version `policy` holds; the pool only refills for the current one.
        lock: held while generating, shared with training (None: no lock).
    """

    def __init__(
        self,
        policy,
        scorer,
        cfg,
        version_id: int,
        lock: threading.Lock | None = None,
    ):
        self.policy = policy
        self.scorer = scorer
        self.cfg = cfg
        self.version_id = version_id
        self.lock = lock

    def generate(self, prompts: Sequence[PromptRef]) -> list[NewGeneration]:
        from rlhf.ppo import rollout
        from rlhf.prompts import decode_responses, encode_prompt, format_prompt

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
            sampled = rollout(self.policy, queries, cfg.generation)
        responses, logprobs = sampled.responses, [lp.tolist() for lp in sampled.logprobs]
        texts = decode_responses(tok, responses)
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
    """Endless shuffled batches of `batch_size` samples, the batch plan of `python -m rlhf train`
    (`rlhf.train.batches`): each pass over the samples is a new shuffle and drops the remainder."""
    from rlhf.train import batches

    if len(samples) < batch_size:
        raise ValueError(
            f"{len(samples)} usable samples are fewer than the PPO batch size {batch_size}; rate more items, "
            "switch the reward mode to model or blend, or lower the batch size"
        )
    for batch, _ in batches(samples, [s.query_ids for s in samples], batch_size, seed):
        yield batch


def step_on_samples(trainer, batch: Sequence[PPOSample]) -> dict:
    """One `PPOTrainer.step` on stored samples, with the log-probs recorded when they were generated."""
    import torch

    queries = [torch.tensor(s.query_ids, dtype=torch.long) for s in batch]
    responses = [torch.tensor(s.response_ids, dtype=torch.long) for s in batch]
    old = [torch.tensor(s.logprobs, dtype=torch.float32) for s in batch]
    return trainer.step(queries, responses, [s.reward for s in batch], old_logprobs=old)


@dataclass(frozen=True)
class Answer:
    """One model's answer in Compare: the text, the reward PPO optimises, and the classifier's P(not offensive)."""

    text: str
    reward: float
    p_not_offensive: float


REFERENCE_CACHE_SIZE = 4  # prompt sets whose reference samples StudioModel.evaluate keeps


class StudioModel:
    """The loaded policy and reward classifier of the app, and the policy version the policy holds now.

    Versions share one network: switching loads a version's LoRA and value-head weights into it (the base
    version restores the weights the adapter had when loaded, an identity adapter). Everything that uses the
    policy holds `lock`, so generation, evaluation and training never overlap.

    Args:
        cfg: the run config (policy, reward, generation, prompt template, PPO defaults).
        policy: a loaded `rlhf.models.Policy`.
        scorer: an `rlhf.scorers` scorer.
        version_id: the version the policy holds as loaded (the base version, with a fresh adapter).
    """

    def __init__(self, cfg, policy, scorer, version_id: int, pool_generator=None):
        from peft import get_peft_model_state_dict

        self.cfg = cfg
        self.policy = policy
        self.scorer = scorer
        self.lock = threading.RLock()
        self._base_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}
        self._base_value_head = {k: v.detach().clone() for k, v in policy.value_head.state_dict().items()}
        self.generator = PolicyGenerator(policy, scorer, cfg, version_id, self.lock)
        # set while a round computes (not while it waits for the pool): the pool process then takes half the cores
        self.training = threading.Event()
        # What fills the pool: an inference copy of the policy in a process of its own (`feedback.pool_worker`), so
        # items keep coming while a round trains and generation never holds the page's interpreter (memory: one
        # more copy of the model and a Python runtime); or, without it, the training policy itself, which then
        # waits for the round.
        self.pool_generator = pool_generator if pool_generator is not None else self.generator
        if pool_generator is not None:
            pool_generator.share = self._pool_threads
        self._held_adapter: str | None = None  # the adapter folder of the version the policy holds (None: base)
        self._reference_samples: dict[tuple, list] = {}  # see evaluate
        self._judge = None  # the second toxicity judge, loaded at the first evaluation (see judge)
        self._judge_loaded = False

    def _pool_threads(self) -> int | None:
        return split_threads(default_threads())[1] if self.training.is_set() else None

    @contextmanager
    def computing(self):
        """A round's heavy work: with the pool copy refilling beside it, each takes half the cores."""
        if self.pool_generator is self.generator:  # no copy: nothing runs beside the round
            yield
            return
        self.training.set()
        try:
            with cpu_threads(split_threads(default_threads())[0]):
                yield
        finally:
            self.training.clear()

    @classmethod
    def load(cls, cfg, version_id: int, log=print, pool_generator=None) -> StudioModel:
        """The app's models (`pool_generator`: the pool process, already started; None: the pool uses these)."""
        from rlhf.models import load_policy
        from rlhf.scorers import load_scorer

        log(f"loading policy {cfg.policy.name_or_path} ...")
        policy = load_policy(cfg.policy, cfg.device, log=log)
        log(f"loading reward model {cfg.reward.name_or_path} ...")
        scorer = load_scorer(cfg.reward, cfg.device)
        return cls(cfg, policy, scorer, version_id, pool_generator)

    def _load_weights(self, policy, version_id: int, adapter_path: str | None) -> None:
        """A version's LoRA and value-head weights into `policy` (None: the base version's)."""
        from pathlib import Path

        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from rlhf.models import VALUE_HEAD_FILE

        if adapter_path is None:
            adapter, head = self._base_adapter, self._base_value_head
        else:
            folder = Path(adapter_path)
            weights = folder / "adapter_model.safetensors"
            if not weights.is_file():
                raise ValueError(f"policy version {version_id}: {weights} is missing; roll back to another version")
            adapter = load_file(str(weights))
            vh = folder.parent / VALUE_HEAD_FILE
            head = load_file(str(vh)) if vh.is_file() else self._base_value_head
        result = set_peft_model_state_dict(policy.model, adapter)
        missing_lora = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing_lora:
            raise ValueError(
                f"the adapter of version {version_id} does not fit this policy (missing {missing_lora[:3]})"
            )
        policy.value_head.load_state_dict(head)

    def use_version(self, version_id: int, adapter_path: str | None) -> None:
        """Load a version's weights into the training policy (None: the base version)."""
        with self.lock:
            self._load_weights(self.policy, version_id, adapter_path)
            self.holds(version_id, adapter_path)

    def serve(self, version_id: int, adapter_path: str | None) -> None:
        """Fill the pool from this version from now on (the current one: at start, after a round, a rollback)."""
        if self.pool_generator is self.generator:
            return  # no copy: the pool follows the training policy, which holds the current version between rounds
        self.pool_generator.serve(version_id, adapter_path)

    def hand_over(self, svc, version_id: int, adapter_path: str | None, first: int = 0) -> int:
        """Move the pool to this version before it becomes current (`FeedbackService.hand_over`): a running refill
        stops after its chunk, the pool copy loads the version and stores `first` of its items. Without a copy the
        pool follows the training policy, which holds the version already (and whose lock the caller may hold, so
        no refill is waited for). Returns how many items were stored."""
        if self.pool_generator is self.generator:
            return 0
        return svc.hand_over(version_id, lambda: self.serve(version_id, adapter_path), first)

    def holds(self, version_id: int, adapter_path: str | None) -> None:
        """Record which version the policy's weights are now: `use_version` does, and so does a round, which
        trains the weights in place and saves them as a new version."""
        self.generator.version_id = version_id
        self._held_adapter = adapter_path

    @contextmanager
    def using(self, version: VersionInfo) -> Iterator[StudioModel]:
        """The policy with `version`'s weights for the block, holding the lock; afterwards, also when the block
        raises, the version it held before is loaded back (Compare and Evaluate look at any version)."""
        with self.lock:
            before = self.generator.version_id, self._held_adapter
            self.use_version(version.id, version.adapter_path)
            try:
                yield self
            finally:
                self.use_version(*before)

    def encode(self, text: str):
        from rlhf.prompts import encode_prompt

        return encode_prompt(self.policy.tokenizer, text, self.cfg.data.template, self.cfg.policy.chat_template)

    def answer(self, text: str, seed: int = 0) -> tuple[Answer, Answer]:
        """The reference's and the policy's answers to one prompt, with the same sampling seed."""

        from rlhf.ppo import generate
        from rlhf.prompts import decode_responses
        from rlhf.scorers import rewards

        query = [self.encode(text)]
        with self.lock:
            with self.policy.reference():
                ref = generate(self.policy, query, self.cfg.generation, seed=seed)
            pol = generate(self.policy, query, self.cfg.generation, seed=seed)
        texts = decode_responses(self.policy.tokenizer, ref + pol)
        scored = self.scorer.score_batch(texts)
        rewards_ = rewards(scored, self.cfg.reward.use_logit, self.scorer.name)
        ref_answer, pol_answer = (Answer(texts[i], rewards_[i], scored.scores[i]) for i in (0, 1))
        return ref_answer, pol_answer

    @property
    def judge(self):
        """`rlhf.judge.load_judge` (None where `eval_judge` is off or its labelled tweets are missing), loaded
        at the first evaluation rather than at start-up, which it would slow down."""
        if not self._judge_loaded:
            from rlhf.judge import load_judge

            self._judge = load_judge(self.cfg.judge_data) if self.cfg.eval_judge else None
            self._judge_loaded = True
        return self._judge

    def evaluate(self, prompts: Sequence[PromptRef], seed: int = 1234):
        """`rlhf.evaluate.evaluate` of the policy as it is now against the reference, on these prompts.

        The reference (the base weights, adapter off) never changes, so its samples for the same prompts, seed
        and sampling settings are kept and reused: a round's before and after evaluations sample it once.
        """
        from rlhf.evaluate import evaluate, sample_reference
        from rlhf.prompts import Prompt

        if not prompts:
            raise ValueError("no held-out prompts to evaluate on; import some with split 'heldout'")
        rows = [Prompt(str(p.id), p.text, p.summary, "store") for p in prompts]
        queries = [self.encode(p.text) for p in prompts]
        gen = self.cfg.generation
        key = (seed, tuple(sorted(vars(gen).items())), tuple(tuple(q.tolist()) for q in queries))
        with self.lock:
            reference = self._reference_samples.get(key)
            if reference is None:
                reference = sample_reference(self.policy, queries, gen, seed)
                while len(self._reference_samples) >= REFERENCE_CACHE_SIZE:
                    self._reference_samples.pop(next(iter(self._reference_samples)))
                self._reference_samples[key] = reference
            return evaluate(
                self.policy,
                self.scorer,
                self.cfg.reward.use_logit,
                rows,
                queries,
                gen,
                seed=seed,
                keep_samples=len(rows),
                reference_responses=reference,
                judge=self.judge,
            )
