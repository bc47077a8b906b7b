"""A training run: load everything a config names, loop rollout -> score -> PPO step, evaluate, checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import RunConfig
from rlhf.distributed import SINGLE, Group
from rlhf.evaluate import Evaluation, evaluate
from rlhf.models import Policy, load_policy
from rlhf.ppo import LengthSampler, PPOTrainer, generate, rollout
from rlhf.prompts import Prompt, decode_responses, encode_prompt, load_prompts, split_prompts
from rlhf.scorers import RewardScorer, load_scorer, reward_fn

TRAINING_STATE_FILE = "training_state.pt"


@dataclass
class Run:
    """Everything a run needs, loaded once: policy, scorer and the encoded train / held-out prompts."""

    cfg: RunConfig
    policy: Policy
    scorer: RewardScorer
    train_prompts: list[Prompt]
    heldout_prompts: list[Prompt]
    train_queries: list[torch.Tensor]
    heldout_queries: list[torch.Tensor]
    group: Group = SINGLE  # the data-parallel processes sharing each step's batch (rlhf.distributed)

    @property
    def score_fn(self) -> Callable[[Sequence[str]], list[float]]:
        return reward_fn(self.scorer, self.cfg.reward.use_logit)

    def decode(self, responses: Sequence[torch.Tensor]) -> list[str]:
        return decode_responses(self.policy.tokenizer, responses)


def load_run(
    cfg: RunConfig, log: Callable[[str], None] = print, resume_from: Path | None = None, group: Group = SINGLE
) -> Run:
    """Load what `cfg` names; with `resume_from` (a checkpoint folder), its adapter and value head. In a
    data-parallel `group` every process loads the same (seeded) weights and samples from its own stream."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    log(f"loading policy {cfg.policy.name_or_path} ...")
    policy_cfg = cfg.policy
    if resume_from is not None:
        # run.cfg keeps the adapter the run started from; the weights come from the checkpoint
        policy_cfg = dataclasses.replace(cfg.policy, adapter_path=str(Path(resume_from) / "adapter"))
    policy = load_policy(policy_cfg, cfg.device, log=log)
    log(f"loading reward model {cfg.reward.name_or_path} ...")
    scorer = load_scorer(cfg.reward, cfg.device)
    log(f"loading prompts from {cfg.data.source} ...")
    prompts = load_prompts(cfg.data)
    encoded = []
    for p in prompts:
        q = encode_prompt(policy.tokenizer, p.dialogue, cfg.data.template, cfg.policy.chat_template)
        if len(q) <= cfg.policy.max_query_tokens:
            encoded.append((p, q))
    if len(encoded) <= cfg.data.heldout_size:
        raise ValueError(
            f"only {len(encoded)} prompts fit policy.max_query_tokens={cfg.policy.max_query_tokens}, not more than "
            f"data.heldout_size={cfg.data.heldout_size}; lower --data.heldout_size or use a larger prompt set"
        )
    by_id = {p.id: q for p, q in encoded}
    train, heldout = split_prompts([p for p, _ in encoded], cfg.data.heldout_size, cfg.data.split_seed)
    log(f"{len(train)} training prompts, {len(heldout)} held out")
    run = Run(cfg, policy, scorer, train, heldout, [by_id[p.id] for p in train], [by_id[p.id] for p in heldout], group)
    if group.world > 1:
        torch.manual_seed(cfg.seed + group.rank)  # each process samples its own shard's answers
    if cfg.data.hard_prompts:  # deterministic (seeded), so a resumed run narrows to the same prompts
        keep_hardest(run, cfg.data.hard_prompts, log)
    return run


def keep_hardest(run: Run, n: int, log: Callable[[str], None] = print) -> None:
    """Narrow the training prompts to the n where one reference answer scored the lowest reward."""
    if n >= len(run.train_prompts):
        log(f"data.hard_prompts={n} keeps all {len(run.train_prompts)} training prompts")
        return
    start = time.perf_counter()
    torch.manual_seed(run.cfg.seed)
    with run.policy.reference():
        answers = generate(run.policy, run.train_queries, run.cfg.generation)
    scores = run.score_fn(run.decode(answers))
    order = sorted(range(len(scores)), key=lambda i: scores[i])[:n]
    kept = sorted(order)  # the batch plan shuffles them; keep the split's order here
    log(
        f"kept the {n} of {len(scores)} training prompts whose reference answer scored worst (reward "
        f"{max(scores[i] for i in order):.3f} at most, against a median of {sorted(scores)[len(scores) // 2]:.3f}) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    run.train_prompts = [run.train_prompts[i] for i in kept]
    run.train_queries = [run.train_queries[i] for i in kept]


class Checkpoint:
    """Writes a run folder atomically: everything goes to `<out>.partial`, renamed into place when complete.

    A crash leaves at most a `.partial` folder beside `out`, never a half-written `out`. A resumed run
    (`resume_from`) starts its metrics.jsonl from the resumed folder's and appends to it; `out` may be that folder
    itself, which stays as it was until the new one is complete.
    """

    def __init__(self, out: Path, overwrite: bool = False, resume_from: Path | None = None):
        self.out = Path(out)
        self.resume_from = None if resume_from is None else Path(resume_from)
        itself = self.resume_from is not None and self.out.resolve() == self.resume_from.resolve()
        if self.out.exists() and any(self.out.iterdir()) and not (overwrite or itself):
            raise ValueError(f"{self.out} already exists and is not empty; choose another --out or pass --overwrite")
        self.staging = self.out.with_name(self.out.name + ".partial")
        self.metrics = None

    def start(self) -> None:
        """Create the staging folder; called once loading has succeeded, so a bad config leaves nothing."""
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        if self.resume_from is not None:
            shutil.copyfile(self.resume_from / "metrics.jsonl", self.staging / "metrics.jsonl")
        self.metrics = (self.staging / "metrics.jsonl").open("a")

    def log_step(self, stats: dict) -> None:
        self.metrics.write(json.dumps(stats) + "\n")
        self.metrics.flush()

    def commit(self, run: Run, evaluation: Evaluation | None, state: dict) -> Path:
        """Write weights, config, training state (`TrainingLoop.state_dict`) and evaluation; move into place."""
        self.metrics.close()
        run.policy.save(self.staging)
        torch.save(state, self.staging / TRAINING_STATE_FILE)
        (self.staging / "run_config.json").write_text(run.cfg.to_json())
        if evaluation is not None:
            (self.staging / "eval.json").write_text(evaluation.to_json())
            (self.staging / "eval.md").write_text(evaluation.to_markdown() + "\n")
        old = None
        if self.out.exists():
            old = self.out.with_name(self.out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old)
        return self.out


def batches(
    prompts: Sequence[Prompt],
    queries: Sequence[torch.Tensor],
    size: int,
    seed: int,
    group_by_length: bool = False,
    group_batches: int = 8,
) -> Iterator[tuple[list[Prompt], list[torch.Tensor]]]:
    """Endless shuffled batches of (prompt, query); reshuffles each pass over the data.

    With `group_by_length`, each run of `group_batches` batches of the shuffled order is sorted by query length
    before it is cut into batches, and those batches are shuffled: a batch holds prompts of similar length (less
    padding in every pass over it), and each pass still uses every prompt once (the remainder is dropped).
    """
    if len(prompts) < size:
        raise ValueError(f"{len(prompts)} training prompts are fewer than ppo.batch_size={size}")
    rng = random.Random(seed)
    order = list(range(len(prompts)))
    while True:
        rng.shuffle(order)
        usable = order[: len(order) - len(order) % size]
        if not group_by_length:
            chunks = [usable[k : k + size] for k in range(0, len(usable), size)]
        else:
            chunks = []
            span = size * group_batches
            for start in range(0, len(usable), span):
                group = sorted(usable[start : start + span], key=lambda i: len(queries[i]))
                part = [group[k : k + size] for k in range(0, len(group), size)]
                rng.shuffle(part)
                chunks += part
        for idx in chunks:
            yield [prompts[i] for i in idx], [queries[i] for i in idx]


@contextmanager
def _timer(stats: dict, key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    stats[key] = time.perf_counter() - t0


class TrainingLoop:
    """A run's PPO trainer and every stream its steps draw from: the batch plan, response lengths, random numbers.

    `state_dict()` holds all of that (the weights are the checkpoint's adapter and value head), so a run saved after
    step n and resumed with `load_state_dict` takes step n + 1 as the run that never stopped would
    (tests/test_engine.py compares 4 steps with 2 + 2).
    """

    def __init__(self, run: Run):
        cfg = run.cfg
        self.run = run
        self.trainer = PPOTrainer(run.policy, cfg.ppo, cfg.generation.temperature, seed=cfg.seed, group=run.group)
        self.lengths = LengthSampler(cfg.generation.min_new_tokens, cfg.generation.max_new_tokens, seed=cfg.seed)
        self.data, self.batches_drawn = self._batch_plan(), 0

    def _batch_plan(self) -> Iterator[tuple[list[Prompt], list[torch.Tensor]]]:
        run, cfg = self.run, self.run.cfg
        return batches(run.train_prompts, run.train_queries, cfg.ppo.batch_size, cfg.seed, cfg.data.group_by_length)

    @property
    def steps_done(self) -> int:
        return self.trainer.step_count

    def step(self) -> dict:
        """Generate, score and update once; returns the step's statistics."""
        run, timing = self.run, {}
        _, queries = next(self.data)  # the whole batch, the same in every process
        queries = run.group.shard(queries)
        self.batches_drawn += 1
        with _timer(timing, "time/generate_s"):
            sampled = rollout(run.policy, queries, run.cfg.generation, max_new_tokens=self.lengths())
        texts = run.decode(sampled.responses)
        with _timer(timing, "time/score_s"):
            scores = run.score_fn(texts)
        stats = self.trainer.step(
            queries, sampled.responses, scores, old_logprobs=sampled.logprobs, old_values=sampled.values
        )
        return stats | timing

    def state_dict(self) -> dict:
        """Take it right after the last step: an evaluation draws from the same random streams."""
        return {
            "steps": self.steps_done,
            "trainer": copy.deepcopy(self.trainer.state_dict()),
            "batches_drawn": self.batches_drawn,
            "lengths_rng": self.lengths.rng.getstate(),
            "rng": _rng_states(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.lengths.rng.setstate(state["lengths_rng"])
        # the batch plan is a function of the seed alone: replay the batches already used
        self.data, self.batches_drawn = self._batch_plan(), state["batches_drawn"]
        for _ in range(self.batches_drawn):
            next(self.data)
        _set_rng_states(state["rng"])


def _rng_states() -> dict:
    """The global random streams: torch's (sampling) and python's."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_training_state(folder: Path) -> dict:
    """The `TrainingLoop.state_dict` a checkpoint folder holds."""
    file = Path(folder) / TRAINING_STATE_FILE
    if not file.is_file():
        raise ValueError(
            f"{folder} holds no {TRAINING_STATE_FILE} (not a checkpoint of `train`, or one written before checkpoints "
            f"kept the training state), so it cannot be resumed; start a new run from its weights with "
            f"--policy.adapter_path {Path(folder) / 'adapter'}"
        )
    return torch.load(file, map_location="cpu", weights_only=True)  # the loaders move tensors where they belong


def train(
    run: Run,
    steps: int | None = None,
    on_step: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    loop: TrainingLoop | None = None,
) -> list[dict]:
    """Generate, score and update until `steps` PPO steps are done in all (default `run.cfg.steps`; a resumed
    `loop` has some done already); returns the statistics of the steps taken now."""
    from tqdm.auto import tqdm

    loop = TrainingLoop(run) if loop is None else loop
    steps = run.cfg.steps if steps is None else steps
    history = []
    bar = tqdm(range(loop.steps_done, steps), desc="PPO", disable=not progress, initial=loop.steps_done, total=steps)
    for _ in bar:
        if should_stop is not None and should_stop():
            break
        stats = loop.step()
        history.append(stats)
        bar.set_postfix(
            reward=f"{stats['env/reward_mean']:.3f}",
            kl=f"{stats['objective/kl']:.3f}",
            loss=f"{stats['loss/total']:.3f}",
        )
        if on_step is not None:
            on_step(stats)
    return history


def evaluate_run(
    run: Run, n: int | None = None, reference_responses: Sequence[torch.Tensor] | None = None
) -> Evaluation:
    from rlhf.judge import load_judge

    cfg = run.cfg
    n = cfg.eval_prompts if n is None else n
    judge = load_judge(cfg.judge_data) if cfg.eval_judge else None
    return evaluate(
        run.policy,
        run.scorer,
        run.cfg.reward.use_logit,
        run.heldout_prompts[:n],
        run.heldout_queries[:n],
        run.cfg.generation,
        seed=run.cfg.eval_seed,
        reference_responses=reference_responses,
        k=cfg.eval_answers,
        judge=judge,
        noise_floor=cfg.eval_noise_floor,
    )
