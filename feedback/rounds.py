"""PPO rounds started from the app: one at a time, in a background thread, recorded in the store step by step.

A round trains the current policy version with rewards from the chosen mode:

- ``model``: each step generates a fresh batch from the policy being trained and scores it with the classifier
  (on-policy, as `python -m rlhf train` does);
- ``human`` / ``blend``: each step takes a batch of stored generations of the round's input version (rated ones
  first) with their blended rewards and the log-probs recorded when they were sampled, so the importance ratio
  is taken against the policy that really produced them.

When it finishes, the adapter is saved as a new policy version that becomes current; when it fails or is
cancelled, the weights go back to the input version, which stays current, and no rating is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from db.models import utcnow
from feedback.human_reward import HumanReward, HumanRewardSource
from feedback.model import StudioModel, lower_priority, sample_batches, step_on_samples
from feedback.periodic import every
from feedback.service import FeedbackService
from feedback.types import PPOSample, PromptRef, RoundInfo

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # how often a running round tells the database its process is alive (see versions.ROUND_LEASE)
GIVE_WAY_S = 120.0  # the longest a round waits for the pool before each phase (see RoundRunner._give_way)


@dataclass(frozen=True)
class RoundSettings:
    mode: str = "model"
    weight: float = 0.5
    steps: int = 4
    batch_size: int = 16
    mini_batch_size: int = 4
    learning_rate: float = 1e-4
    init_kl_coef: float = 0.2
    eval_prompts: int = 16  # held-out prompts for the before / after means (0: skip)
    replay: bool = False  # train on the stored, rated samples again (off-policy) instead of fresh ones

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError("a round needs at least 1 step")
        if self.batch_size < 1 or self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch size {self.batch_size} must be a positive multiple of the mini-batch size {self.mini_batch_size}"
            )
        if self.learning_rate <= 0:
            raise ValueError("the learning rate must be positive")
        if self.init_kl_coef < 0:
            raise ValueError("the KL coefficient must be zero or positive")


def fit_mini_batch(batch_size: int, preferred: int) -> int:
    """The mini-batch size for a round of `batch_size`: `preferred` (the run config's) when it divides the batch,
    else the largest size that divides both; `mini_batch_note` says why, on the page and in the log.

    >>> fit_mini_batch(16, 4), fit_mini_batch(6, 4)
    (4, 2)
    """
    return math.gcd(batch_size, preferred) or 1


def mini_batch_note(batch_size: int, mini_batch_size: int, preferred: int) -> str | None:
    """Why a round trains with another mini-batch size than the run config's (None when it does not).

    >>> mini_batch_note(6, 2, 4)
    "mini-batch size 2 instead of the run config's 4: the batch size 6 is not a multiple of 4"
    """
    if mini_batch_size == preferred:
        return None
    why = f": the batch size {batch_size} is not a multiple of {preferred}" if batch_size % preferred else ""
    return f"mini-batch size {mini_batch_size} instead of the run config's {preferred}{why}"


class RoundRunner:
    """Runs one PPO round at a time in a background thread.

    Args:
        svc: the feedback service (store of rounds, versions and samples).
        model: the loaded models.
        versions_dir: where each new version's adapter folder is written.
        nice: how far below the labeling side the round's CPU priority is (`lower_priority`; 0: not lowered).
        human: the store's learned human reward, which Human and Blend rounds train on (None: model mode only).
    """

    def __init__(
        self,
        svc: FeedbackService,
        model: StudioModel,
        versions_dir: Path,
        nice: int = 0,
        human: HumanRewardSource | None = None,
        first_items: int = 2,
    ):
        self.svc = svc
        self.nice = nice
        self.first_items = first_items  # items of a new version stored before annotators are moved to it
        self.human = human
        self.model = model
        self.versions_dir = Path(versions_dir)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._active = threading.Event()  # set from start until the round's outcome is stored
        self._beat_stop = threading.Event()  # set when the running round's heartbeat should stop
        self._phase = RoundPhase("", 0, 0, None)
        self._guard = threading.Lock()
        self.round_id: int | None = None

    @property
    def running(self) -> bool:
        """A round is training or evaluating. The pool refill that follows it does not count: the next round
        may start while it runs."""
        return self._active.is_set()

    @property
    def cancelling(self) -> bool:
        """Cancel was pressed and the round has not stopped yet (it stops after its current step)."""
        return self.running and self._cancel.is_set()

    def start(self, settings: RoundSettings) -> RoundInfo:
        """Queue a round and start it; refuses while another runs, or when the reward mode has too few samples."""
        settings.validate()
        with self._guard:
            if self.running:
                raise ValueError(f"round {self.round_id} is still running; wait for it or cancel it")
            human = self._human_reward(settings)
            ppo = dataclasses.replace(
                self.model.cfg.ppo,
                batch_size=settings.batch_size,
                mini_batch_size=settings.mini_batch_size,
                learning_rate=settings.learning_rate,
                init_kl_coef=settings.init_kl_coef,
            )
            config = {"settings": dataclasses.asdict(settings), "ppo": dataclasses.asdict(ppo)}
            if human is not None:  # the reward this round trains on, as fitted when it started
                config["human_reward"] = {
                    "rated_items": human.n,
                    "kind": human.kind,
                    "calibration": dataclasses.asdict(human.calibration),
                }
            note = mini_batch_note(settings.batch_size, settings.mini_batch_size, self.model.cfg.ppo.mini_batch_size)
            if note:
                config["note"] = note  # kept with the round, so its history says why
            info = self.svc.create_round(config, settings.mode, settings.weight)
            self.round_id = info.id
            if note:
                log.warning("round %s: %s", info.id, note)
            self._cancel.clear()
            self._active.set()
            # the round's heartbeat until it ends, so other app processes on the database know it is alive (a
            # missed beat is retried: the lease is four beats long)
            self._beat_stop = threading.Event()
            every(HEARTBEAT_S, lambda: self.svc.beat_round(info.id), self._beat_stop, f"round {info.id} heartbeat")
            self._thread = threading.Thread(
                target=self._run, args=(info, settings, ppo, human), name=f"round-{info.id}", daemon=True
            )
            self._thread.start()
            return info

    def _human_reward(self, settings: RoundSettings) -> HumanReward | None:
        """The learned reward a Human or Blend round trains on (None in model mode); refuses, saying what to do,
        when the ratings cannot fit one, or a replay has too few stored samples."""
        if settings.mode == "model" and not settings.replay:
            return None
        if settings.mode == "model":
            human = None
        elif self.human is None:
            raise ValueError(f"{settings.mode} mode needs a human reward, and this app has none: use model mode")
        else:
            human = self.human.current()
        if settings.replay:
            n = len(self.svc.ppo_samples(settings.mode, settings.weight, human=human))
            if n < settings.batch_size:
                raise ValueError(
                    f"replay in {settings.mode} mode has {n} usable stored items of the current version, fewer than "
                    f"the batch size {settings.batch_size}: rate more items, lower the batch size, or train on fresh "
                    "samples (replay off)"
                )
        return human

    def cancel(self) -> bool:
        """Ask the running round to stop after its current step; False when none runs."""
        if not self.running:
            return False
        self._cancel.set()
        return True

    @property
    def phase(self) -> RoundPhase | None:
        """What the running round is doing now, with an estimate of the time left; None when none runs."""
        return self._phase if self.running else None

    def _enter(self, name: str, done: int, total: int, eta_s: float | None) -> None:
        self._phase = RoundPhase(name, done, total, eta_s)
        log.info("round %s: %s (%s/%s steps) %s", self.round_id, name, done, total, eta_text(eta_s))

    def _give_way(self, done: int, total: int, eta_s: float | None) -> None:
        """Labeling first: before each phase, while fewer than half the pool's items are left to rate, wait (at most
        GIVE_WAY_S) for a refill, which then has every core. A round takes longer; nobody runs out of items."""
        svc, model = self.svc, self.model
        if model.pool_generator is model.generator:
            return  # no inference copy: the refill needs the policy this round holds
        deadline = time.monotonic() + GIVE_WAY_S
        while not self._cancel.is_set() and time.monotonic() < deadline:
            left = svc.unrated_count()
            if left >= max(1, svc.low_water // 2):
                return
            self._enter(f"waiting for the pool refill ({left} items left to rate)", done, total, eta_s)
            refill = svc.refill_in_background()
            if refill is None:
                if not svc.refilling:
                    return  # nothing can refill
                time.sleep(0.2)  # a refill started by a rating: wait for it
                continue
            refill.join(max(0.0, deadline - time.monotonic()))
            if svc.unrated_count() <= left:
                return  # the refill added nothing (no prompts left, or it failed): no point waiting

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the round itself ------------------------------------------------------------------------------------
    def _run(self, info: RoundInfo, settings: RoundSettings, ppo, human: HumanReward | None) -> None:
        from rlhf.ppo import PPOTrainer

        svc, model = self.svc, self.model
        if self.nice:
            lower_priority(self.nice)  # labeling first: the round runs on the CPU the labelers and the refill leave
        input_version = svc.version(info.input_version_id)
        metrics: list[dict] = []
        staging = None
        try:
            svc.update_round(info.id, status="running", started=utcnow())
            heldout = [PromptRef(p.id, p.text, p.summary) for p in svc.heldout_prompts(settings.eval_prompts)]
            n = settings.steps
            with model.lock:
                model.use_version(input_version.id, input_version.adapter_path)
                self._give_way(0, n, None)
                self._enter("evaluating the input version", 0, n, None)
                t0 = time.monotonic()
                with model.computing():
                    before = model.evaluate(heldout) if heldout else None
                eval_s = time.monotonic() - t0
                trainer = PPOTrainer(model.policy, ppo, model.cfg.generation.temperature, seed=info.id)
                batches = self._batches(settings, ppo.batch_size, info.id, human)
                step_s: list[float] = []  # time each step computed (waits for the pool left out)
                for step in range(n):
                    if self._cancel.is_set():
                        raise _Cancelled
                    eta = None if step == 0 else sum(step_s) / step * (n - step) + eval_s
                    self._give_way(step, n, eta)
                    self._enter(f"PPO step {step + 1}/{n}", step, n, eta)
                    t0 = time.monotonic()
                    with model.computing():
                        stats = step_on_samples(trainer, next(batches))
                    step_s.append(time.monotonic() - t0)
                    metrics.append({k: float(v) for k, v in stats.items()})
                    svc.update_round(info.id, metrics=list(metrics))
                    log.info("round %s step %s/%s: reward %.4f", info.id, step + 1, n, stats["env/reward_mean"])
                if self._cancel.is_set():
                    raise _Cancelled
                self._give_way(n, n, eval_s)
                self._enter("evaluating the new version", n, n, eval_s)
                with model.computing():
                    after = model.evaluate(heldout) if heldout else None
                self._enter("saving the new version", n, n, None)
                evaluation = _summary(before, after)
                number = len(svc.versions())
                staging = self.versions_dir / f"v{number}-round{info.id}.partial"
                final = self.versions_dir / f"v{number}-round{info.id}"
                if staging.exists():
                    shutil.rmtree(staging)
                model.policy.save(staging)
                os.replace(staging, final)
                staging = None
                version = svc.add_version(info.id, str(final / "adapter"), f"v{number}")
                model.holds(version.id, version.adapter_path)  # the trained weights are the new version
                self._enter("handing the new version to labeling", n, n, None)
                # the pool comes from it from now on, with its first items stored before annotators move to it
                model.hand_over(svc, version.id, version.adapter_path, first=self.first_items)
                version = svc.finish_round(info.id, version.id, metrics, evaluation)
        except _Cancelled:
            self._restore(input_version)
            svc.update_round(info.id, status="interrupted", error="cancelled by the user", finished=utcnow())
        except Exception as err:  # noqa: BLE001 - a failed round is recorded and the app goes on
            log.exception("round %s failed", info.id)
            self._restore(input_version)
            svc.update_round(
                info.id,
                status="failed",
                error=f"{type(err).__name__}: {err}\n\n{traceback.format_exc(limit=3)}",
                finished=utcnow(),
            )
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            self._beat_stop.set()
            self._active.clear()
        svc.refill_if_low()  # new items from whichever version is current now

    def _restore(self, version) -> None:
        try:
            self.model.use_version(version.id, version.adapter_path)
            if self.model.pool_generator.version_id != version.id:  # a failure after the hand-over
                self.model.hand_over(self.svc, version.id, version.adapter_path)
        except Exception:  # noqa: BLE001 - the store still names the right version; loading is retried on restart
            log.exception("could not reload version %s after a failed round", version.id)

    def _batches(self, settings: RoundSettings, batch_size: int, seed: int, human: HumanReward | None = None):
        if settings.replay:  # the stored samples again, scored as a fresh one would be; off-policy after step 1
            samples = self.svc.ppo_samples(settings.mode, settings.weight, human=human)
            yield from sample_batches(samples, batch_size, seed)
            return
        # Every mode: fresh samples from the policy being trained, scored by the classifier and, in Human and Blend,
        # by the reward learned from the ratings. Unlike `rlhf train` (`rlhf.train.batches`, passes over one encoded
        # prompt list) each step draws a new seeded sample from the store: it may hold far more prompts than a round
        # uses, and only the drawn ones are encoded.
        while True:
            prompts = self.svc.training_prompts(2 * batch_size, seed)  # spares for prompts too long to encode
            seed += 1
            gens = self.model.generator.generate(prompts)[:batch_size]
            if len(gens) < batch_size:
                raise ValueError(
                    f"only {len(gens)} training prompts fit the policy's max_query_tokens, fewer than the batch size "
                    f"{batch_size}; import more prompts or lower the batch size"
                )
            model = [self.svc.model_reward(g.model_score, g.model_logit) for g in gens]
            rewards = (
                model
                if human is None
                else human.rewards([g.response for g in gens], model, settings.mode, settings.weight)
            )
            yield [
                PPOSample(-1, g.query_ids, g.response_ids, g.logprobs, r) for g, r in zip(gens, rewards, strict=True)
            ]


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class RoundPhase:
    """Where a running round is: a phase name, steps done of all, and the estimated seconds left (None: unknown
    until a step or an evaluation has been timed)."""

    name: str
    done: int
    total: int
    eta_s: float | None


def eta_text(eta_s: float | None) -> str:
    """'about 3 min left' / 'about 45 s left', or '' when the time left is not known yet."""
    if eta_s is None:
        return ""
    return f"about {eta_s / 60:.0f} min left" if eta_s >= 90 else f"about {eta_s:.0f} s left"


def _summary(before, after) -> dict | None:
    """Before = the input version, after = the new one, each on the same held-out prompts and sampling seed;
    the relative change and KL are against the reference (the base model), as `rlhf.evaluate` reports them."""
    if before is None or after is None:
        return None
    return {
        "n_prompts": after.n_prompts,
        "before_mean": before.policy.reward_mean,
        "before_std": before.policy.reward_std,
        "after_mean": after.policy.reward_mean,
        "after_std": after.policy.reward_std,
        "reference_mean": after.reference.reward_mean,
        "before_toxicity": before.policy.toxicity_mean,
        "after_toxicity": after.policy.toxicity_mean,
        "reference_toxicity": after.reference.toxicity_mean,
        "toxicity_change_vs_reference": after.toxicity_change,
        "toxicity_change_ci95": list(after.toxicity_change_ci95),
        "before_judge_toxicity": before.policy.judge_toxicity_mean,
        "after_judge_toxicity": after.policy.judge_toxicity_mean,
        "judge_toxicity_change_vs_reference": after.changes.get("toxicity, second judge", [None])[0],
        "judge_toxicity_change_ci95": after.changes.get("toxicity, second judge", [None])[1:] or None,
        "judge": after.judge,
        "relative_change_vs_reference": after.relative_change,
        "relative_change_ci95": list(after.relative_change_ci95),
        "kl_to_reference": after.kl_to_reference,
    }
