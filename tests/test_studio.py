"""The app's services without the browser: start-up, PPO rounds (done, failed, cancelled), rollback, compare."""

from __future__ import annotations

import doctest
import os
import statistics
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import func, select

import feedback.human_reward
import feedback.model
import feedback.pool
import feedback.rounds
from db.models import Generation, Rating
from feedback.rounds import RoundSettings
from feedback.studio import Studio
from rlhf.judge import DAVIDSON_CSV


@pytest.fixture
def studio(tiny_studio_options):
    options = tiny_studio_options()
    s = Studio(options, log_fn=lambda _: None)
    s.start(background=False)
    assert s.ready.is_set(), s.error
    _wait_for_refill(s)  # ready after the first items; the rest of the pool follows in the background
    yield s
    s.close()


def _wait_for_refill(studio, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while studio.svc.refilling and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not studio.svc.refilling, "the refill did not finish"


def _lora(studio) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in studio.model.policy.named_parameters() if "lora_" in n}


def _rate_some(studio, n: int) -> None:
    ann = studio.svc.annotator("rater")
    for k in range(n):
        item = studio.svc.next_item(ann.id)
        studio.svc.submit(ann.id, item.generation_id, "binary", k % 2)


def test_start_up_imports_prompts_and_fills_a_first_pool(studio):
    counts = studio.svc.prompt_counts()
    assert counts["heldout"] == 4 and counts["train"] > 100
    assert studio.svc.current_version().name == "v0 (base)"
    # ready after the first few items; the rest of the pool (pool_size 8) followed in the background
    assert studio.svc.unrated_count() == studio.options.first_items + 8  # fewer than 8 were left: one refill
    # the pool comes from its own copy of the policy, in a process of its own, so a round training the policy never
    # stalls labeling and generation never holds the page's interpreter
    pool = studio.model.pool_generator._process
    assert pool.is_alive() and pool.pid != os.getpid()


def test_a_pool_process_that_died_is_replaced_at_the_next_refill(studio):
    pool = studio.model.pool_generator
    before = pool._process.pid
    pool._process.kill()
    pool._process.join(10)
    (prompt,) = studio.svc.training_prompts(1)
    (gen,) = pool.generate([prompt])
    assert gen.prompt_id == prompt.id and gen.response_ids
    assert pool._process.is_alive() and pool._process.pid != before
    # a request that fails comes back as the child's own error, and the process goes on serving
    from feedback.pool_worker import WorkerError

    held = pool.version_id
    with pytest.raises(WorkerError, match=r"failed serve: ValueError: .*adapter_model.safetensors is missing"):
        pool.serve(999, "/nonexistent/adapter")
    assert pool.version_id == held and pool.generate([prompt])[0].prompt_id == prompt.id


def test_a_round_makes_a_new_current_version_and_new_items_come_from_it(studio):
    before = _lora(studio)
    info = studio.start_round(RoundSettings(mode="model", steps=2, batch_size=4, mini_batch_size=2, eval_prompts=4))
    studio.runner.wait(120)
    (done,) = studio.svc.rounds()
    assert done.id == info.id and done.status == "done", done.error
    assert len(done.metrics) == 2 and done.evaluation["n_prompts"] == 4
    assert done.config["note"] == "mini-batch size 2 instead of the run config's 4"  # said, not silent
    assert 0.0 <= done.evaluation["after_toxicity"] <= 1.0
    if DAVIDSON_CSV.is_file():  # the second judge needs the labelled tweets beside the checkout
        assert 0.0 <= done.evaluation["after_judge_toxicity"] <= 1.0 and done.evaluation["judge"]["cv_auroc"] > 0.9
    current = studio.svc.current_version()
    assert current.id == done.output_version_id and current.parent_id == done.input_version_id
    assert any(not torch.equal(p, before[n]) for n, p in _lora(studio).items())
    assert studio.svc.unrated_count() > 0  # the round refilled the pool from the new version
    ann = studio.svc.annotator("after")
    assert studio.svc.next_item(ann.id).policy_version_id == current.id

    # roll back to the base version: its weights come back and it is current again
    base = studio.svc.versions()[0]
    studio.rollback(base.id)
    assert studio.svc.current_version().id == base.id
    assert all(torch.equal(p, before[n]) for n, p in _lora(studio).items())


def test_annotators_move_to_a_new_version_with_its_first_items_waiting(studio, monkeypatch):
    """A round's new version becomes current only once the pool process serves it and its first items are stored,
    so nobody meets an empty pool at the switch (bench.labeling_pace met one such click per round before)."""
    from feedback.service import FeedbackService

    seen = []
    real = FeedbackService.finish_round

    def spy(svc, round_id, version_id, metrics, evaluation):
        with svc.Session.begin() as s:
            made = s.scalar(select(func.count(Generation.id)).where(Generation.policy_version_id == version_id))
        seen.append((made, studio.model.pool_generator.version_id == version_id))
        return real(svc, round_id, version_id, metrics, evaluation)

    monkeypatch.setattr(FeedbackService, "finish_round", spy)
    studio.start_round(RoundSettings(mode="model", steps=1, batch_size=4, mini_batch_size=2, eval_prompts=0))
    studio.runner.wait(120)
    assert studio.svc.rounds()[0].status == "done"
    assert seen == [(studio.options.first_items, True)]


def test_a_version_made_current_by_another_app_process_is_served_here(studio):
    """Two app processes on one database: a round or a rollback in the other makes a version current; this one's
    pool follows it (the app checks every FOLLOW_S seconds; here the check is called directly)."""
    from db.session import make_engine, make_session_factory
    from feedback.service import FeedbackService

    studio.start_round(RoundSettings(mode="model", steps=1, batch_size=4, mini_batch_size=2, eval_prompts=0))
    studio.runner.wait(120)
    base, trained = studio.svc.versions()[0], studio.svc.current_version()
    assert trained.id != base.id and studio.model.pool_generator.version_id == trained.id
    assert not studio.follow_current()  # nothing changed
    other_engine = make_engine(studio.options.database_url)
    try:
        FeedbackService(make_session_factory(other_engine)).set_current(base.id)  # a rollback over there
    finally:
        other_engine.dispose()
    assert studio.follow_current()
    assert studio.model.pool_generator.version_id == base.id
    _wait_for_refill(studio)
    fresh = studio.svc.next_item(studio.svc.annotator("rater").id)
    assert fresh is not None and fresh.policy_version_id == base.id


def test_a_failed_round_leaves_the_previous_version_and_every_rating(studio, monkeypatch):
    _rate_some(studio, 8)
    before = _lora(studio)
    version = studio.svc.current_version()

    def broken_step(*args, **kwargs):
        # train a little first, so the restore has something to undo
        for p in studio.model.policy.parameters():
            if p.requires_grad:
                p.data.add_(0.5)
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("feedback.rounds.step_on_samples", broken_step)
    studio.start_round(
        RoundSettings(mode="blend", weight=0.5, steps=1, batch_size=4, mini_batch_size=2, eval_prompts=0)
    )
    studio.runner.wait(60)
    (failed,) = studio.svc.rounds()
    assert failed.status == "failed" and "out of memory" in failed.error
    assert studio.svc.current_version().id == version.id
    assert all(torch.equal(p, before[n]) for n, p in _lora(studio).items())
    with studio.svc.Session.begin() as s:
        assert s.scalar(select(func.count(Rating.id))) == 8


def test_a_cancelled_round_is_interrupted_and_changes_nothing(studio):
    version = studio.svc.current_version()
    studio.start_round(RoundSettings(mode="model", steps=50, batch_size=4, mini_batch_size=2, eval_prompts=0))
    assert studio.cancel_round()
    assert studio.runner.cancelling  # the page says so at once, before the current step ends
    studio.runner.wait(120)
    assert not studio.runner.cancelling
    (cancelled,) = studio.svc.rounds()
    assert cancelled.status == "interrupted" and len(cancelled.metrics) < 50
    assert studio.svc.current_version().id == version.id


def test_human_mode_needs_enough_rated_items(studio):
    _rate_some(studio, 2)
    with pytest.raises(ValueError, match="2 rated items .* are too few: rate at least 4"):
        studio.start_round(RoundSettings(mode="human", steps=1, batch_size=4, mini_batch_size=2))
    _rate_some(studio, 6)  # 8 rated: enough for the learned reward, too few stored items to replay a batch of 16
    with pytest.raises(ValueError, match="replay in human mode has 8 usable stored items"):
        studio.start_round(RoundSettings(mode="human", steps=1, batch_size=16, mini_batch_size=2, replay=True))
    with pytest.raises(ValueError, match="multiple of the mini-batch"):
        studio.start_round(RoundSettings(mode="model", batch_size=5, mini_batch_size=2))


def _answer_from_the_saved_adapter(studio, version, prompt: str, seed: int = 0) -> str:
    """`version`'s answer from its saved adapter folder loaded onto a fresh copy of the base model, outside the app."""
    import dataclasses

    from rlhf.models import load_policy
    from rlhf.ppo import generate
    from rlhf.prompts import encode_prompt

    policy = load_policy(dataclasses.replace(studio.cfg.policy, adapter_path=version.adapter_path), "cpu")
    query = encode_prompt(policy.tokenizer, prompt, studio.cfg.data.template, studio.cfg.policy.chat_template)
    torch.manual_seed(seed)
    (response,) = generate(policy, [query], studio.cfg.generation)
    return policy.tokenizer.decode(response, skip_special_tokens=True).strip()


def test_compare_answers_with_the_reference_and_the_trained_weights_of_the_chosen_version(studio):
    """Compare on a trained version answers with that version's weights, whichever version the policy holds: not
    v0's answer, and exactly what its saved adapter gives when loaded on its own; the reference side is the
    untrained model throughout, and the weights the policy held come back afterwards."""
    prompt = studio.svc.heldout_prompts(1)[0].text
    base = studio.svc.current_version()
    ref0, pol0 = studio.compare(base.id, prompt)
    assert ref0 == pol0  # v0 is the reference itself; same seed, same sample
    assert 0.0 <= ref0.p_not_offensive <= 1.0
    assert ref0.reward == pytest.approx(_cli_rewards(studio, [ref0.text])[0], abs=1e-5)
    with pytest.raises(ValueError, match="type a prompt"):
        studio.compare(base.id, "  ")

    studio.start_round(
        RoundSettings(mode="model", steps=2, batch_size=4, mini_batch_size=2, learning_rate=1e-1, eval_prompts=0)
    )
    studio.runner.wait(120)
    trained = studio.svc.current_version()
    assert trained.id != base.id and trained.adapter_path is not None, studio.svc.rounds()[0].error

    # the policy holds the trained version: Compare on it, then on v0, which swaps v0 in and the trained weights back
    held = _lora(studio)
    ref1, pol1 = studio.compare(trained.id, prompt)
    assert ref1 == ref0, "the reference does not train"
    # the trained weights answer differently from the reference at some seed (two small steps of a tiny model may
    # leave one given sample as it was), and exactly as the saved adapter does on its own
    seed = next((s for s in range(16) if len({a.text for a in studio.compare(trained.id, prompt, seed=s)}) == 2), None)
    assert seed is not None, "the trained version answers every seed as the reference does"
    assert studio.compare(trained.id, prompt, seed=seed)[1].text == _answer_from_the_saved_adapter(
        studio, trained, prompt, seed
    )
    assert pol1.text == _answer_from_the_saved_adapter(studio, trained, prompt)
    assert pol1.reward == pytest.approx(_cli_rewards(studio, [pol1.text])[0], abs=1e-5)
    assert studio.compare(base.id, prompt) == (ref0, pol0)
    assert all(torch.equal(p, held[n]) for n, p in _lora(studio).items())
    assert studio.model.generator.version_id == trained.id  # the pool still refills from the current version

    # the policy holds v0 after a rollback: Compare loads the trained adapter from its folder, then v0 back
    studio.rollback(base.id)
    held = _lora(studio)
    assert studio.compare(trained.id, prompt) == (ref1, pol1)
    assert all(torch.equal(p, held[n]) for n, p in _lora(studio).items())
    assert studio.model.generator.version_id == base.id


def test_a_missing_model_is_reported_and_the_store_stays_usable(tmp_path, tiny_studio_options):
    options = tiny_studio_options(policy=str(tmp_path / "no-such-model"))
    s = Studio(options, log_fn=lambda _: None)
    s.start(background=False)
    assert not s.ready.is_set()
    assert "does not exist" in s.error and "--policy" in s.error
    assert s._pool is None  # the pool process that could not load is stopped
    with pytest.raises(ValueError, match="does not exist"):
        s.require_model()
    assert s.svc.annotator("still-works").name == "still-works"
    s.close()


def test_evaluations_sample_the_reference_once_per_prompt_set(studio, monkeypatch):
    import rlhf.evaluate

    calls = []
    real = rlhf.evaluate.sample_reference

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(rlhf.evaluate, "sample_reference", counting)
    base = studio.svc.current_version()
    first = studio.evaluate(base.id, 4)
    studio.start_round(RoundSettings(mode="model", steps=1, batch_size=4, mini_batch_size=2, eval_prompts=4))
    studio.runner.wait(120)
    trained = studio.svc.current_version()
    assert trained.id != base.id
    after = studio.evaluate(trained.id, 4)
    fewer = studio.evaluate(trained.id, 3)
    assert calls == [4, 3], "the reference is sampled once per prompt set, by every evaluation after the first too"
    assert after.reference == first.reference  # the same samples, the same figures
    assert first.policy == first.reference  # the base version is the reference
    assert fewer.n_prompts == 3


def _cli_rewards(studio, texts: list[str]) -> list[float]:
    """What `python -m rlhf train` optimises for these texts, with its own scorer loaded from the config."""
    from rlhf.scorers import load_scorer, reward_fn

    return reward_fn(load_scorer(studio.cfg.reward, "cpu"), studio.cfg.reward.use_logit)(texts)


def test_the_app_trains_shows_and_evaluates_the_reward_the_cli_optimises(studio):
    assert studio.cfg.reward.use_logit  # the offline preset rewards with the classifier's margin, not P
    # model-mode rounds: the rewards of a fresh batch
    settings = RoundSettings(mode="model", steps=1, batch_size=4, mini_batch_size=2)
    batch = next(studio.runner._batches(settings, 4, seed=0))
    tok = studio.model.policy.tokenizer
    texts = [t.strip() for t in tok.batch_decode([s.response_ids for s in batch], skip_special_tokens=True)]
    cli = _cli_rewards(studio, texts)
    assert [s.reward for s in batch] == pytest.approx(cli, abs=1e-5)
    probabilities = studio.model.scorer.score(texts)
    assert [s.reward for s in batch] != pytest.approx(probabilities, abs=1e-3)

    # stored items: the preview's model-mode reward and replayed model-mode samples
    _rate_some(studio, 4)
    rows = studio.svc.preview("model")
    assert rows and [r.model for r in rows] == pytest.approx(_cli_rewards(studio, [r.response for r in rows]), abs=1e-5)
    assert [r.model_score for r in rows] == pytest.approx(studio.model.scorer.score([r.response for r in rows]))
    replay = {s.generation_id: s.reward for s in studio.svc.ppo_samples("model")}
    assert [replay[r.generation_id] for r in rows] == pytest.approx([r.model for r in rows])

    # evaluation (the round history's before / after): the mean of the same function over the policy's answers
    ev = studio.evaluate(studio.svc.current_version().id, 4)
    answers = [s["policy"] for s in ev.samples]
    assert ev.policy.reward_mean == pytest.approx(sum(_cli_rewards(studio, answers)) / len(answers), abs=1e-5)


def test_the_next_round_may_start_while_the_last_one_refills_the_pool(studio, monkeypatch):
    import threading

    refilling, release = threading.Event(), threading.Event()
    real = studio.svc.refill_if_low

    def slow_refill(*args, **kwargs):
        refilling.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(studio.svc, "refill_if_low", slow_refill)
    settings = RoundSettings(mode="model", steps=1, batch_size=4, mini_batch_size=2, eval_prompts=0)
    first = studio.start_round(settings)
    assert refilling.wait(120)  # the round is stored as done and its thread now refills the pool
    assert studio.svc.rounds()[0].status == "done" and not studio.runner.running
    thread = studio.runner._thread
    second = studio.start_round(settings)  # refused with "still running" before
    assert second.id == first.id + 1
    release.set()
    thread.join(60)
    studio.runner.wait(120)
    assert [r.status for r in studio.svc.rounds()] == ["done", "done"]


def test_a_round_reports_its_phases_with_an_estimate(studio, monkeypatch):
    from feedback.rounds import RoundRunner

    seen = []
    real = RoundRunner._enter

    def spy(self, name, done, total, eta_s):
        real(self, name, done, total, eta_s)
        seen.append((self.phase.name, self.phase.done, self.phase.total, self.phase.eta_s is not None))
        nice.add(os.getpriority(os.PRIO_PROCESS, 0) if sys.platform == "linux" else None)

    nice = set()
    monkeypatch.setattr(RoundRunner, "_enter", spy)
    studio.runner.nice = 7  # --round-nice 7
    studio.start_round(RoundSettings(mode="model", steps=2, batch_size=4, mini_batch_size=2, eval_prompts=4))
    studio.runner.wait(120)
    assert seen == [
        ("evaluating the input version", 0, 2, False),
        ("PPO step 1/2", 0, 2, False),
        ("PPO step 2/2", 1, 2, True),  # timed from the first step and the first evaluation
        ("evaluating the new version", 2, 2, True),
        ("saving the new version", 2, 2, False),
        ("handing the new version to labeling", 2, 2, False),
    ]
    assert studio.runner.phase is None  # nothing runs any more
    if sys.platform == "linux":  # every phase ran at the round's lower CPU priority, and the test's thread kept its own
        assert nice == {min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)}


def test_rounds_doctests():
    """`fit_mini_batch` and `mini_batch_note`: the size a round uses when the config's does not divide the batch,
    and what it says about it; `split_threads`, the cores a round and a pool refill side by side each take."""
    assert doctest.testmod(feedback.rounds).failed == 0
    assert doctest.testmod(feedback.model).failed == 0
    assert doctest.testmod(feedback.pool).failed == 0  # chunk_sizes: small chunks first when the pool runs dry
    assert doctest.testmod(feedback.human_reward).failed == 0  # Calibration: the learned reward on the model's scale


def test_labeling_starts_after_the_first_items_and_the_pool_fills_behind_it(tiny_studio_options):
    """Launch to first item: the page is ready once `first_items` exist, not after the whole pool."""
    seen, pool_loading = [], []
    holder = {}

    def log(message):
        if message.startswith("imported"):  # the pool process loads its copy while the prompts import
            pool_loading.append(holder["studio"]._pool._process.is_alive())
        if message.startswith("ready"):
            seen.append((holder["studio"].svc.unrated_count(), holder["studio"].model))

    s = Studio(tiny_studio_options(first_items=2), log_fn=log)
    holder["studio"] = s
    s.start(background=False)
    try:
        # ready as soon as the first two items were stored, from the pool process, before the app's own copy loaded
        assert seen == [(2, None)]
        assert pool_loading == [True]
        assert s.model is not None
        _wait_for_refill(s)
        assert s.svc.unrated_count() == 2 + 8
    finally:
        s.close()


# ---- a round gives way to labeling ----------------------------------------------------------------------------
class _Pool:
    """The pool side of FeedbackService as the round sees it: a count of unrated items and a refill thread."""

    def __init__(self, left: int, adds: int, low_water: int = 8):
        self.left, self.adds, self.low_water, self.refills = left, adds, low_water, 0
        self._busy = threading.Event()

    def unrated_count(self) -> int:
        return self.left

    @property
    def refilling(self) -> bool:
        return self._busy.is_set()

    def refill_in_background(self):
        if self._busy.is_set():
            return None
        self.refills += 1
        self._busy.set()

        def work():
            time.sleep(0.1)
            self.left += self.adds
            self._busy.clear()

        t = threading.Thread(target=work)
        t.start()
        return t


def _runner(pool, tmp_path, copy=True):
    from feedback.rounds import RoundRunner

    gen = object()
    model = SimpleNamespace(generator=gen, pool_generator=object() if copy else gen)
    return RoundRunner(pool, model, tmp_path)


def test_a_round_waits_for_a_refill_while_fewer_than_half_the_pool_is_left(tmp_path):
    pool = _Pool(left=2, adds=8)
    runner = _runner(pool, tmp_path)
    runner._give_way(1, 4, 30.0)
    assert pool.refills == 1 and pool.left == 10
    assert runner._phase.name == "waiting for the pool refill (2 items left to rate)"
    assert (runner._phase.done, runner._phase.total) == (1, 4)
    pool = _Pool(left=4, adds=8)  # half the pool is left: the round goes on at once
    _runner(pool, tmp_path)._give_way(0, 4, None)
    assert pool.refills == 0


def test_a_round_does_not_wait_for_a_refill_that_adds_nothing_or_cannot_run(tmp_path):
    pool = _Pool(left=0, adds=0)  # no prompts left to answer
    t0 = time.monotonic()
    _runner(pool, tmp_path)._give_way(0, 4, None)
    assert pool.refills == 1 and time.monotonic() - t0 < 5
    pool = _Pool(left=0, adds=8)  # without the inference copy the refill needs the round's policy
    _runner(pool, tmp_path, copy=False)._give_way(0, 4, None)
    assert pool.refills == 0


def test_cpu_threads_is_per_python_thread_and_restored():
    from feedback.model import cpu_threads

    before = torch.get_num_threads()
    inside, hold, release = [], threading.Event(), threading.Event()

    def worker():
        with cpu_threads(1):
            inside.append(torch.get_num_threads())
            hold.set()
            release.wait(10)
        inside.append(torch.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    hold.wait(10)
    assert torch.get_num_threads() == before  # the worker's setting is its own
    release.set()
    t.join()
    assert inside == [1, before]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_lower_priority_is_per_thread_and_inherited_by_the_threads_it_starts():
    from feedback.model import lower_priority

    def nice(tid=0):
        return os.getpriority(os.PRIO_PROCESS, tid)

    main = nice()
    seen = {}

    def child():
        seen["child"] = nice(threading.get_native_id())

    def round_thread():
        seen["returned"] = lower_priority(5)
        seen["self"] = nice(threading.get_native_id())
        t = threading.Thread(target=child)
        t.start()
        t.join()

    t = threading.Thread(target=round_thread)
    t.start()
    t.join()
    assert seen == {"returned": min(19, main + 5), "self": min(19, main + 5), "child": min(19, main + 5)}
    assert nice() == main  # the process and its other threads keep theirs


def test_the_pages_round_defaults_are_the_cli_recipe(tiny_studio_options):
    from rlhf.cli import build_config, make_parser

    cli = build_config(make_parser().parse_args(["train", "--preset", "offline", "--out", "unused"]))
    s = Studio(tiny_studio_options(), log_fn=lambda _: None)
    d = s.round_defaults()
    assert (d.steps, d.batch_size, d.mini_batch_size, d.learning_rate, d.init_kl_coef) == (
        cli.steps,
        cli.ppo.batch_size,
        cli.ppo.mini_batch_size,
        cli.ppo.learning_rate,
        cli.ppo.init_kl_coef,
    )
    s.close()


def test_human_and_blend_rounds_train_on_fresh_samples_scored_by_the_learned_reward(studio):
    """Issue 11: every mode samples the policy afresh; Human scores the samples with the reward learned from the
    ratings, put on the classifier's scale, and Blend mixes the two on that one scale (weight 0 = model mode)."""
    _rate_some(studio, 8)
    human = studio.human_reward.current()
    texts, labels, model = studio.svc.rated_items()
    assert (human.n, human.kind, labels) == (8, "binary", [float(k % 2) for k in range(8)])
    on_rated = human.human(texts)  # calibrated: the classifier reward's mean and spread over the rated items
    assert sum(on_rated) / 8 == pytest.approx(sum(model) / 8, abs=1e-6)
    assert statistics.stdev(on_rated) == pytest.approx(statistics.stdev(model), rel=1e-6)

    def batch(mode, weight=0.5):
        settings = RoundSettings(mode=mode, weight=weight, steps=1, batch_size=4, mini_batch_size=2)
        return next(studio.runner._batches(settings, 4, seed=7, human=human))

    tok = studio.model.policy.tokenizer

    def texts_of(samples):
        return [t.strip() for t in tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)]

    for mode, weight in (("model", 0.5), ("blend", 0.0), ("human", 0.5), ("blend", 0.25)):
        samples = batch(mode, weight)
        assert all(s.generation_id == -1 for s in samples)  # fresh samples, not stored ones
        texts = texts_of(samples)
        cli, learned = _cli_rewards(studio, texts), human.human(texts)
        expected = {"model": cli, "human": learned}.get(
            mode, [weight * h + (1 - weight) * m for h, m in zip(learned, cli, strict=True)]
        )
        assert [s.reward for s in samples] == pytest.approx(expected, abs=1e-5), (mode, weight)

    studio.start_round(RoundSettings(mode="human", steps=1, batch_size=4, mini_batch_size=2, eval_prompts=0))
    studio.runner.wait(120)
    (done,) = studio.svc.rounds()
    assert done.status == "done", done.error
    assert done.config["human_reward"]["rated_items"] == 8 and done.config["settings"]["replay"] is False


def test_a_replayed_round_trains_on_the_stored_rated_samples(studio):
    _rate_some(studio, 8)
    settings = RoundSettings(mode="human", steps=1, batch_size=4, mini_batch_size=2, replay=True)
    rated = {s.generation_id for s in studio.svc.ppo_samples("human", human=studio.human_reward.current())}
    batch = next(studio.runner._batches(settings, 4, seed=0, human=studio.human_reward.current()))
    assert len(rated) == 8 and {s.generation_id for s in batch} <= rated
