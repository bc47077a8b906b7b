"""What the app runs on: the store, the labeling service, the loaded models and the round runner, started in the
background so the page is up (and says what it is doing) while the models load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from db.session import database_url, default_data_dir, make_engine, make_session_factory, upgrade
from feedback.downloads import Downloads
from feedback.human_reward import HumanRewardSource, agreement_table, auto_weight
from feedback.io import add_prompt_texts
from feedback.periodic import every
from feedback.rounds import RoundRunner, RoundSettings, eta_text
from feedback.service import FeedbackService
from feedback.types import RoundInfo, VersionInfo

log = logging.getLogger(__name__)


@dataclass
class StudioOptions:
    """Everything the app can be told (CLI flags and environment)."""

    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None  # default: $DATABASE_URL, else <data_dir>/studio.db
    preset: str = "offline"
    policy: str | None = None  # overrides the preset's policy (hub id or folder)
    lora_targets: list[str] | None = None
    reward: str | None = None  # overrides the preset's reward classifier
    reward_label: str | None = None
    prompts: str | None = None  # overrides the preset's prompt source
    heldout: int = 64  # prompts of the default set kept for evaluation
    pool_size: int = 16  # generations made at start-up and per refill; a refill starts when fewer are left
    first_items: int = 2  # generated first at start-up, so labeling starts before the rest of the pool is made
    round_nice: int = 0  # a round's CPU priority below labeling's (Linux nice; ROUND_NICE: labeling first)
    pool_copy: bool = True  # fill the pool from an inference copy of the policy, so rounds never stall labeling
    max_prompt_chars: int = 20_000  # imported prompts longer than this are refused
    min_new_tokens: int | None = None
    max_new_tokens: int | None = None
    device: str = "auto"
    human_backbone: str = "policy"  # the learned human reward's frozen features: "policy" (base) or "classifier"

    def run_config(self):
        from rlhf.config import preset

        cfg = preset(self.preset)
        if self.policy:
            cfg.policy.name_or_path = self.policy
        if self.lora_targets:
            cfg.policy.lora.target_modules = list(self.lora_targets)
        if self.reward:
            cfg.reward.name_or_path = self.reward
        if self.reward_label:
            cfg.reward.label = self.reward_label
        if self.prompts:
            cfg.data.source = self.prompts
        if self.min_new_tokens:
            cfg.generation.min_new_tokens = self.min_new_tokens
        if self.max_new_tokens:
            cfg.generation.max_new_tokens = self.max_new_tokens
        cfg.generation.min_new_tokens = min(cfg.generation.min_new_tokens, cfg.generation.max_new_tokens)
        cfg.data.heldout_size = self.heldout
        cfg.eval_prompts = min(cfg.eval_prompts, self.heldout)
        cfg.device = self.device
        cfg.validate()
        return cfg


FOLLOW_S = 5.0  # how often the app checks whether another process on its database changed the current version


@dataclass(frozen=True)
class StartPhase:
    """What start-up is doing: a phase, when it began (perf_counter), and done of total where it counts."""

    name: str
    started: float
    done: int = 0
    total: int = 0

    def text(self, now: float) -> str:
        """'generating the first items 2/4 · 12 s · about 12 s left' (the ETA once something was counted)."""
        elapsed = now - self.started
        out = self.name + (f" {self.done}/{self.total}" if self.total else "") + f" · {elapsed:.0f} s"
        if self.total and self.done:
            out += " · " + eta_text(elapsed / self.done * (self.total - self.done))
        return out


class Studio:
    """The app's services. `start()` loads the models in a background thread; `status` says how far it got."""

    def __init__(self, options: StudioOptions, log_fn: Callable[[str], None] = print):
        self.options = options
        self.cfg = options.run_config()
        self._log_fn = log_fn
        self.data_dir = Path(options.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = options.database_url or database_url(self.data_dir)
        self.downloads = Downloads(self.data_dir / "exports")  # emptied here: a restart ends every link
        self.db_engine = make_engine(url)
        upgrade(self.db_engine)
        self.svc = FeedbackService(
            make_session_factory(self.db_engine),
            low_water=options.pool_size,
            refill_size=options.pool_size,
            use_logit=self.cfg.reward.use_logit,
        )
        interrupted = self.svc.mark_interrupted_rounds()
        if interrupted:
            self.log(f"{interrupted} training round(s) were cut off when the app last stopped; marked interrupted")
        self.svc.ensure_base_version()
        self.human_reward = HumanRewardSource(self.svc.rated_items, self._reward_features)
        self.model = None  # the loaded `StudioModel`, once start-up has got that far
        self._pool = None  # the pool process (`feedback.pool_worker.ProcessGenerator`), once started
        self._stopping = threading.Event()  # set by close: background work ends
        self.runner: RoundRunner | None = None
        self.status = "starting"
        self.phase = StartPhase("starting", time.perf_counter())
        self.error: str | None = None
        self.ready = threading.Event()
        self.started_at = time.perf_counter()
        self._thread: threading.Thread | None = None

    def close(self, timeout: float | None = 60) -> None:
        """Wait (at most `timeout` s) for a running round, stop the pool process and release the database."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.runner is not None:
            self.runner.wait(timeout)
        if self._pool is not None:
            self._pool.close()
        self.db_engine.dispose()

    def log(self, message: str) -> None:
        self.status = message
        self._log_fn(message)

    def _enter(self, name: str, done: int = 0, total: int = 0) -> None:
        """A start-up phase begins (or moves on: done of total); the page shows it with its time and an ETA."""
        now = time.perf_counter()
        started = self.phase.started if name == self.phase.name else now
        self.phase = StartPhase(name, started, done, total)
        self.log(name + (f" {done}/{total}" if total else "") + " ...")

    # ---- start-up -----------------------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        if background:
            self._thread = threading.Thread(target=self._start, name="studio-start", daemon=True)
            self._thread.start()
        else:
            self._start()

    def _start(self) -> None:
        """The pool process first (it loads its copy of the policy while this process imports the prompts and the
        page), then the first items from it, so labeling starts before the app's own copy loads for rounds and
        Compare; without the pool process, the prompts, the models and then the first items."""
        from feedback.model import StudioModel

        try:
            current = self.svc.current_version()
            base_id = self.svc.versions()[0].id
            if self.options.pool_copy:
                from feedback.pool_worker import ProcessGenerator

                self._pool = ProcessGenerator(self.cfg, base_id)
            try:
                self._import_default_prompts()
                if self._pool is not None:
                    self._first_from_pool(self._pool, current)
            except BaseException:
                if self._pool is not None and self.svc.generator is not self._pool:
                    self._pool.close()  # it never served: nothing uses it
                    self._pool = None
                raise
            self._enter(
                "loading the policy and the reward model"
                + ("" if self._pool else " (a first start converts the model once)")
            )
            model = StudioModel.load(self.cfg, base_id, log=self.log, pool_generator=self._pool)
            if current.adapter_path is not None:
                self._enter(f"loading policy version {current.name}")
                model.use_version(current.id, current.adapter_path)
            self.model = model
            self.svc.generator = model.pool_generator
            self.runner = RoundRunner(
                self.svc,
                model,
                self.data_dir / "versions",
                nice=self.options.round_nice,
                human=self.human_reward,
                first_items=self.options.first_items,
            )
            if self._pool is None:
                self._first_items()
            self.human_reward.refit_in_background(stop=self._stopping)
            every(FOLLOW_S, self.follow_current, self._stopping, "following the current policy version")
            self.log(f"models loaded in {time.perf_counter() - self.started_at:.0f} s")
        except Exception as err:  # noqa: BLE001 - shown on the page; the store stays usable
            log.exception("start-up failed")
            self.error = f"{type(err).__name__}: {err}"
            self.status = f"start-up failed: {self.error}"
            self._log_fn(self.status)

    def follow_current(self) -> bool:
        """Serve the store's current version when another app process on the database made it current (a round
        ended there, or a rollback), so new items come from it; returns whether the version changed."""
        model = self.model
        if model is None or (self.runner is not None and self.runner.running):
            return False  # a round here makes its own version current and serves it
        cur = self.svc.current_version()
        if cur is None or model.pool_generator.version_id == cur.id:
            return False
        self.log(f"policy version {cur.name} is current (set by another app process); new items come from it")
        if model.pool_generator is model.generator:
            model.use_version(cur.id, cur.adapter_path)
        else:
            model.hand_over(self.svc, cur.id, cur.adapter_path)
        self.svc.refill_in_background()
        return True

    def _first_from_pool(self, pool, current) -> None:
        """Wait for the pool process to load, have it hold the current version, and make the first items from it;
        labeling starts here."""
        self._enter("loading the policy for labeling (a first start converts the model once)")
        pool.wait_ready()
        if current.adapter_path is not None:
            pool.serve(current.id, current.adapter_path)
        self.svc.generator = pool
        self._first_items()

    def _first_items(self) -> None:
        """A few items first, so labeling starts now; the rest of the pool follows in the background."""
        first = min(self.options.first_items, self.options.pool_size)
        if self.svc.unrated_count() < first:
            self._enter("generating the first items", 0, first)
            self.svc.refill_if_low(size=first)
            if self.svc.last_refill_error:
                raise RuntimeError(self.svc.last_refill_error)
        self.log(f"ready in {time.perf_counter() - self.started_at:.0f} s")
        self.ready.set()
        self.svc.refill_in_background()

    def _import_default_prompts(self) -> None:
        counts = self.svc.prompt_counts()
        if counts["train"] and counts["heldout"]:
            return
        from rlhf.prompts import load_prompts, split_prompts

        self._enter(f"importing prompts from {self.cfg.data.source}")
        prompts = load_prompts(self.cfg.data)
        heldout = min(self.cfg.data.heldout_size, max(1, len(prompts) // 4))
        train, held = split_prompts(prompts, heldout, self.cfg.data.split_seed)
        source = self.cfg.data.source
        add_prompt_texts(self.svc.Session, [(p.dialogue, p.summary) for p in train], source, "train")
        add_prompt_texts(self.svc.Session, [(p.dialogue, p.summary) for p in held], source, "heldout")
        self.log(f"imported {len(train)} training and {len(held)} held-out prompts")

    def _reward_features(self, texts):
        """The human reward's backbone (`--human-backbone`): frozen features of the policy's base model (adapter off,
        `rlhf reward fit`'s default) or of the reward classifier, on the device the models use."""
        from rlhf.models import resolve_device
        from rlhf.reward_model import load_features

        backbone = self.options.human_backbone
        source = self.cfg.policy.name_or_path if backbone == "policy" else self.cfg.reward.name_or_path
        return load_features(backbone, source, device=str(resolve_device(self.cfg.device)))(texts)

    # ---- what the pages call ---------------------------------------------------------------------------------
    def agreement_table(self):
        """`feedback.human_reward.agreement_table` of the store's ratings."""
        return agreement_table(*self.svc.rated_items(), self._reward_features, *self.svc.agreement_detail())

    def auto_weight(self):
        """`feedback.human_reward.auto_weight` of the store's ratings (ValueError, saying what to do, when too few)."""
        return auto_weight(*self.svc.rated_items(), self._reward_features)

    def preview(self, mode: str, weight: float):
        """The labeled items and each mode's reward for them, as a round computes it, and a note when Human and
        Blend have no learned reward yet (None otherwise)."""
        try:
            human, note = self.human_reward.current(), None
        except ValueError as err:
            human, note = None, str(err)
        return self.svc.preview(mode, weight, human=human), note

    def require_model(self):
        if self.model is None:
            raise ValueError(self.error or f"the models are still loading ({self.status}); try again in a moment")
        return self.model

    def _require_idle(self, what: str) -> None:
        if self.runner is not None and self.runner.running:
            raise ValueError(f"a training round is running; {what} when it has finished (or cancel it)")

    def compare(self, version_id: int, text: str, seed: int = 0):
        """Reference and `version_id` answers to one prompt, with their rewards (`StudioModel.answer`)."""
        model = self.require_model()
        if not text or not text.strip():
            raise ValueError("type a prompt or pick a held-out one")
        self._require_idle("compare")
        with model.using(self.svc.version(version_id)):
            return model.answer(text.strip(), seed)

    def evaluate(self, version_id: int, n: int):
        """`rlhf.evaluate` of `version_id` against the reference on the first `n` held-out prompts."""
        model = self.require_model()
        self._require_idle("evaluate")
        prompts = self.svc.heldout_prompts(int(n))
        with model.using(self.svc.version(version_id)):
            return model.evaluate(prompts)

    def start_round(self, settings: RoundSettings) -> RoundInfo:
        self.require_model()
        return self.runner.start(settings)

    def cancel_round(self) -> bool:
        return self.runner is not None and self.runner.cancel()

    def rollback(self, version_id: int) -> VersionInfo:
        """Make an earlier (or any) version current; new items then come from it."""
        model = self.require_model()
        self._require_idle("roll back")
        with model.lock:
            target = self.svc.version(version_id)
            model.use_version(target.id, target.adapter_path)
            model.hand_over(self.svc, target.id, target.adapter_path)
            version = self.svc.set_current(target.id)
        self.svc.refill_in_background()
        return version

    def round_defaults(self) -> RoundSettings:
        """The page's round settings start as `rlhf train`'s: one recipe, whichever way a round is started."""
        ppo = self.cfg.ppo
        return RoundSettings(
            steps=self.cfg.steps,
            batch_size=ppo.batch_size,
            mini_batch_size=ppo.mini_batch_size,
            learning_rate=ppo.learning_rate,
            init_kl_coef=ppo.init_kl_coef,
        )
