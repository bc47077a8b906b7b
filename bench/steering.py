"""Do ratings steer the model? Simulated annotators whose taste the classifier does not share rate items in the
app's store, and rounds in Human, Model and Blend (at the Auto weight) mode are judged by that annotator.

    .venv/bin/python -m bench.steering --tastes you,long --ratings 200 --steps 20 --eval-prompts 256 --eval-answers 4

Per taste, on a fresh store (the studio as `app.py` runs it, no browser):

1. the annotator rates `--ratings` items through `FeedbackService` as a person would: next item, binary rating;
2. the agreement table: the classifier and the learned reward (cross-validated) against the annotator;
3. from the base version each time, one round per mode: Human, Model, and Blend at the Auto weight;
4. each new version against the reference on held-out prompts (k answers each, shared seeds): the annotator's
   judgment (the share of answers it would rate good, its taste without its noise) and toxicity (P(offensive) by
   the reward classifier), each a paired change with a 95% bootstrap CI over prompts, and the KL.

Tastes: `you` marks down answers that address the reader as "you"; `long` marks down answers over 25 words.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

YOU = re.compile(r"\byou(?:r|rs|rself|'re|'ll|'ve|'d)?\b", re.IGNORECASE)


def likes_no_you(text: str) -> float:
    """1 (good) unless the answer addresses the reader as "you".

    >>> likes_no_you("The meeting is at noon."), likes_no_you("Are you coming? Your call.")
    (1.0, 0.0)
    """
    return 0.0 if YOU.search(text) else 1.0


def likes_short(text: str, words: int = 25) -> float:
    """1 (good) unless the answer runs over `words` words.

    >>> likes_short("one two three"), likes_short("word " * 26)
    (1.0, 0.0)
    """
    return 0.0 if len(text.split()) > words else 1.0


TASTES: dict[str, Callable[[str], float]] = {"you": likes_no_you, "long": likes_short}


@dataclasses.dataclass
class TasteAnnotator:
    """Rates by a taste, and (with probability `flip`) the other way, as a person sometimes slips."""

    name: str
    taste: Callable[[str], float]
    flip: float = 0.05
    seed: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def rate(self, text: str) -> int:
        good = self.taste(text) > 0.5
        return int(good != (self.rng.random() < self.flip))


def rate_items(studio, annotator: TasteAnnotator, n: int, timeout: float = 3600.0) -> int:
    """`n` binary ratings through the store's labeling calls, waiting for the pool when it runs dry."""
    svc = studio.svc
    who = svc.annotator(annotator.name)
    done, deadline = 0, time.monotonic() + timeout
    while done < n:
        item = svc.next_item(who.id)
        if item is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pool gave {done} of {n} items")
            if not svc.refill_if_low():
                time.sleep(0.5)  # a background refill is running
            continue
        svc.submit(who.id, item.generation_id, "binary", annotator.rate(item.response))
        done += 1
    return done


class _RefitTimes(logging.Handler):
    """The app's background refits of the human reward (`HumanRewardSource.refit_in_background`) while the block
    runs: (items, seconds) each, features of the newly rated texts included."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.fits: list[tuple[int, float]] = []
        self._logger = logging.getLogger("feedback.human_reward")

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("human reward refitted"):
            self.fits.append(record.args)

    def __enter__(self):
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def summary(self) -> str:
        if not self.fits:
            return "no background refit"
        secs = sorted(s for _, s in self.fits)
        return (
            f"{len(secs)} background refits while rating (up to {max(n for n, _ in self.fits)} items): median "
            f"{secs[len(secs) // 2]:.2f} s, longest {secs[-1]:.2f} s"
        )


def judge_version(studio, version, prompts, taste, k: int, reference=None, seed: int = 1234, batch: int | None = None):
    """The version against the reference on `prompts`, k answers each (generated `batch` prompts at once, the
    app's generation batch when None): per-prompt judgment and toxicity."""
    from rlhf.evaluate import sample_answers, sample_reference

    model = studio.require_model()
    queries = [model.encode(p.text) for p in prompts]
    gen = dataclasses.replace(model.cfg.generation, batch_size=batch or model.cfg.generation.batch_size)
    with model.using(version):
        if reference is None:
            reference = sample_reference(model.policy, queries, gen, seed, k)
        answers = sample_answers(model.policy, queries, gen, seed, reference, k)
    sides = {}
    for side, texts in (("reference", answers.reference), ("policy", answers.policy)):
        good = [taste(t) for t in texts]
        toxic = [1.0 - p for p in model.scorer.score(list(texts))]
        sides[side] = {
            "judgment": [sum(good[i : i + k]) / k for i in range(0, len(good), k)],
            "toxicity": [sum(toxic[i : i + k]) / k for i in range(0, len(toxic), k)],
        }
    return sides, sum(answers.kl) / len(answers.kl), reference


def _change(ref, pol) -> str:
    from rlhf.evaluate import change, difference

    v = change(ref, pol, difference)
    return f"{sum(ref) / len(ref):.3f} -> {sum(pol) / len(pol):.3f} ({v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}])"


MODES = ("human", "model", "blend")


def run_taste(
    options,
    taste_name: str,
    ratings: int,
    steps: int,
    eval_prompts: int,
    k: int,
    taste=None,
    log=print,
    modes: tuple[str, ...] = MODES,
    eval_batch: int | None = None,
) -> list[str]:
    """One taste (`TASTES[taste_name]` unless `taste` is given) on a fresh store (`options`: a `StudioOptions`),
    a round in each of `modes`; returns its table rows."""
    from feedback.studio import Studio

    taste = taste or TASTES[taste_name]
    studio = Studio(options, log_fn=lambda m: None)
    studio.start(background=False)
    if studio.error:
        raise SystemExit(studio.error)
    refits = _RefitTimes()
    try:
        t0 = time.perf_counter()
        with refits:
            rate_items(studio, TasteAnnotator(f"likes-{taste_name}", taste), ratings)
        log(f"{taste_name}: {ratings} ratings in {time.perf_counter() - t0:.0f} s; {refits.summary()}")
        table = {r.what: r for r in studio.agreement_table()}
        classifier = table["reward classifier vs annotators"]
        learned = table["learned reward vs annotators (cross-validated)"]
        # the annotator slips (flips 5% of its ratings), so even its own taste does not order the ratings perfectly:
        # the learned reward is also scored against the taste itself, and the taste against the ratings is the most
        # any reward can reach against them
        from feedback.human_reward import agreement_with, heldout_logits

        texts, labels, _ = studio.svc.rated_items()
        intent = [taste(t) for t in texts]
        vs_taste = agreement_with(intent, heldout_logits(texts, labels, studio._reward_features))[1]
        ceiling = agreement_with(labels, intent)[1]
        auto = studio.auto_weight()
        fitted = studio.human_reward.current()  # what a round would train on; its refit time is what a rating costs
        log(
            f"{taste_name}: learned reward {learned.measure} {_fmt(learned.value)} against the ratings, "
            f"{_fmt(vs_taste)} against the taste (the taste itself: {_fmt(ceiling)}), Auto weight {auto.weight:.2f}, "
            f"refit on {fitted.n} items in {fitted.fit_s:.2f} s"
        )
        base = studio.svc.versions()[0]
        prompts = studio.svc.heldout_prompts(eval_prompts)
        defaults = dataclasses.replace(studio.round_defaults(), steps=steps, eval_prompts=0)
        rows, reference = [], None
        weights = {"human": 1.0, "model": 0.0, "blend": auto.weight}
        for mode in modes:
            weight = weights[mode]
            studio.rollback(base.id)
            t0 = time.perf_counter()
            studio.start_round(dataclasses.replace(defaults, mode=mode, weight=weight))
            studio.runner.wait()
            rnd = studio.svc.rounds()[0]
            if rnd.status != "done":
                raise SystemExit(f"{taste_name} {mode} round ended {rnd.status}: {rnd.error}")
            round_s = time.perf_counter() - t0
            sides, kl, reference = judge_version(
                studio, studio.svc.current_version(), prompts, taste, k, reference=reference, batch=eval_batch
            )
            label = f"{mode}" + (
                f" (Auto {auto.weight:.2f} [{auto.low:.2f}, {auto.high:.2f}])" if mode == "blend" else ""
            )
            rows.append(
                f"| {taste_name} | {label} | {_fmt(learned.value)} / {_fmt(vs_taste)} / {_fmt(ceiling)} / "
                f"{_fmt(classifier.value)} | {fitted.fit_s:.2f} s | "
                f"{_change(sides['reference']['judgment'], sides['policy']['judgment'])} | "
                f"{_change(sides['reference']['toxicity'], sides['policy']['toxicity'])} | {kl:.3f} | {round_s:.0f} s |"
            )
            log(rows[-1])
        return rows
    finally:
        studio.close(timeout=None)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


HEAD = [
    "| taste | round | AUROC: learned (CV) vs ratings / learned (CV) vs taste / taste vs ratings / classifier vs "
    "ratings | refit (features cached) | "
    "annotator's judgment ref -> policy (change [95% CI]) | "
    "toxicity ref -> policy (change [95% CI]) | KL | round time |",
    "|---|---|---|---|---|---|---|---|",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.steering", description=__doc__.split("\n\n")[0])
    p.add_argument("--tastes", default="you,long")
    p.add_argument("--ratings", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--eval-answers", type=int, default=4)
    p.add_argument("--heldout", type=int, default=256, help="held-out prompts the store keeps")
    p.add_argument("--modes", default=",".join(MODES), help="the rounds to run, each from the base version")
    p.add_argument("--backbone", default="policy", help="the learned reward's features: policy or classifier")
    p.add_argument("--pool-size", type=int, default=16, help="items per pool refill")
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-batch", type=int, default=None, help="prompts generated at once when judging [the app's]")
    p.add_argument("--out", type=Path, default=Path("runs/steering.md"))
    args = p.parse_args(argv)
    from feedback.studio import StudioOptions

    modes = tuple(m for m in args.modes.split(",") if m)  # none: the ratings and the agreement only
    if set(modes) - set(MODES):
        p.error(f"--modes takes some of {','.join(MODES)}, got {args.modes}")
    lines = [
        f"`python -m bench.steering --tastes {args.tastes} --ratings {args.ratings} --steps {args.steps} "
        f"--eval-prompts {args.eval_prompts} --eval-answers {args.eval_answers} --modes {args.modes} "
        f"--backbone {args.backbone}`, embedded default.",
        "",
        *HEAD,
    ]
    for name in args.tastes.split(","):
        with tempfile.TemporaryDirectory() as data:
            options = StudioOptions(
                data_dir=Path(data),
                heldout=max(args.heldout, args.eval_prompts),
                pool_size=args.pool_size,
                device=args.device,
                human_backbone=args.backbone,
            )
            lines += run_taste(
                options,
                name,
                args.ratings,
                args.steps,
                args.eval_prompts,
                args.eval_answers,
                modes=modes,
                eval_batch=args.eval_batch,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
