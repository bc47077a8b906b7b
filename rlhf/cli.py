"""`python -m rlhf train|evaluate`: every RunConfig field is an option (`--ppo.learning_rate 1e-4`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from rlhf.config import PRESETS, RunConfig, preset

# Fields with a short alias of their own; everything else is --section.field.
ALIASES = {
    "steps": "--steps",
    "seed": "--seed",
    "device": "--device",
    "eval_prompts": "--eval-prompts",
    "eval_answers": "--eval-answers",
    "eval_judge": "--eval-judge",
    "judge_data": "--judge-data",
}
SKIP = {"preset"}
# What `train --resume` lets change: the run's length and where it runs; anything else would be another run.
RESUME_OPTIONS = {"steps", "device", "threads"}


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(tp: Any):
    """argparse `type=` for a field annotation (None accepted as 'none' for optional fields)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if typing.get_origin(tp) is list or typing.get_origin(base) is list:
        return lambda s: [x for x in s.split(",") if x]
    inner = {bool: _parse_bool, int: int, float: float, str: str}.get(base, str)
    if not optional:
        return inner
    return lambda s: None if s.lower() in ("none", "null", "auto") and base is not str else inner(s)


def _fields(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        elif f.name not in SKIP:
            yield f"{prefix}{f.name}", tp, f.metadata.get("help", "")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run configuration (defaults come from --preset)")
    presets = {name: make() for name, make in PRESETS.items()}
    for dotted, tp, help_text in _fields(RunConfig):
        flags = list(dict.fromkeys([f"--{dotted}", ALIASES.get(dotted, f"--{dotted}")]))  # --steps once, not twice
        defaults = "; ".join(f"{name}: {_lookup(cfg, dotted)!r}" for name, cfg in presets.items())
        group.add_argument(
            *flags,
            dest=dotted,
            type=_converter(tp),
            default=argparse.SUPPRESS,
            metavar=_metavar(tp),
            help=f"{help_text} [{defaults}]".replace("%", "%%"),
        )


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _metavar(tp: Any) -> str:
    text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return {"bool": "BOOL", "int": "INT", "float": "FLOAT", "str": "TEXT"}.get(text, text.upper().replace(" ", ""))


def build_config(args: argparse.Namespace) -> RunConfig:
    return apply_overrides(preset(args.preset), args)


def _given_options(args: argparse.Namespace) -> list[str]:
    """The config options given on the command line (argparse leaves the others out of `args`)."""
    options = {dotted for dotted, _, _ in _fields(RunConfig)}
    return [key for key in vars(args) if key in options]


def apply_overrides(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Set every config option given on the command line (dotted names) on `cfg`."""
    for key in _given_options(args):
        *path, leaf = key.split(".")
        setattr(_lookup(cfg, ".".join(path)) if path else cfg, leaf, getattr(args, key))
    return cfg


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf",
        description="PPO fine-tuning of a LoRA policy against a hate-speech reward, and its evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run PPO, evaluate, save a checkpoint folder")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="offline",
        help="offline: embedded SmolLM2 + profanity-check + chitchat (no network); "
        "seed: FLAN-T5-base + RoBERTa hate-speech + DialogSum (needs the hub)",
    )
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint folder to write (with --resume, default: the resumed folder, replaced once the new one "
        "is complete)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run saved in DIR (the --out of an earlier `train`) as its run_config.json configures it, "
        "from its weights, optimiser state, KL coefficient, score moments, data position and random states; "
        "--steps is then the total, DIR's steps included, and metrics.jsonl is appended to; only --steps, "
        "--device and --threads may be given with it",
    )
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    add_config_options(train)

    ev = sub.add_parser("evaluate", help="compare a saved adapter with the reference on held-out prompts")
    ev.add_argument("--preset", choices=sorted(PRESETS), default="offline", help="preset the run was made with")
    ev.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a folder written by `train` (its run_config.json and adapter are used)",
    )
    ev.add_argument("--out", type=Path, default=None, help="write eval.json and eval.md here")
    add_config_options(ev)
    _add_reward_commands(sub)
    return parser


def _add_reward_commands(sub) -> None:
    reward = sub.add_parser("reward", help="fit a reward model on ratings, or score a file with one")
    rsub = reward.add_subparsers(dest="reward_command", required=True)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, required=True, help=".jsonl, .json, .csv, .parquet or a datasets folder")
        p.add_argument("--text-column", default=None, help="the rated text (default: completion; or chosen/rejected)")
        p.add_argument("--label-column", default=None, help="the rating (default: label): a bool, 0/1 or 1-5")
        p.add_argument("--good", default=None, help="comma-separated label values that mean good (e.g. 2)")

    fit = rsub.add_parser("fit", help="fit a head on frozen features, print its cross-validated agreement, save it")
    data_options(fit)
    fit.add_argument("--out", type=Path, required=True, help="folder to write; --reward.name_or_path loads it")
    fit.add_argument("--backbone", choices=["policy", "classifier"], default="classifier", help="frozen features")
    fit.add_argument("--source", default=None, help="model the backbone reads (default: the offline preset's)")
    fit.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    fit.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic head")

    score = rsub.add_parser("score", help="score every row of a file; print agreement where it has labels")
    data_options(score)
    score.add_argument("--model", type=Path, required=True, help="a folder written by `reward fit`")
    score.add_argument("--out", type=Path, required=True, help="JSONL to write: one line per input row, in order")


def _reward(args: argparse.Namespace) -> int:
    from rlhf import reward_model as rm

    rows = rm.read_rows(args.data)
    good = None if args.good is None else args.good.split(",")
    if args.reward_command == "fit":
        ratings = rm.ratings_from_rows(rows, args.text_column, args.label_column, good)
        report = rm.fit(ratings, args.out, args.backbone, args.source, args.c, args.folds)
        print(f"saved {args.out} (fit {report.fit_s:.1f} s, cross-validation {report.cv_s:.1f} s)")
        return 0
    if not rm.is_reward_model(args.model):
        raise ValueError(f"{args.model} is not a reward model folder (no {rm.MODEL_FILE}); pass the --out of `fit`")
    scorer = rm.LearnedRewardScorer(args.model)
    labelled = True
    try:
        ratings = rm.ratings_from_rows(rows, args.text_column, args.label_column, good)
    except ValueError:
        labelled = False  # no labels: score the text column alone
        column = args.text_column or "completion"
        if column not in rows[0]:
            raise ValueError(f"no {column!r} column; the file has {list(rows[0])}: pass --text-column") from None
        ratings = rm.Ratings("binary", [str(r[column]) for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        if ratings.kind == "pairs":
            a, b = scorer.score_batch(ratings.chosen), scorer.score_batch(ratings.rejected)
            for sa, sb, la, lb in zip(a.scores, b.scores, a.logits, b.logits, strict=True):
                f.write(json.dumps({"chosen_score": sa, "rejected_score": sb, "margin": la - lb}) + "\n")
            logits = [la - lb for la, lb in zip(a.logits, b.logits, strict=True)]
        else:
            s = scorer.score_batch(ratings.texts)
            for score, logit in zip(s.scores, s.logits, strict=True):
                f.write(json.dumps({"score": score, "logit": logit}) + "\n")
            logits = s.logits
    print(f"wrote {len(ratings)} scores to {args.out}")
    if labelled:
        truth = ratings.raw if ratings.kind == "scale" else ratings.labels
        metrics = rm.agreement_of(ratings.kind, truth, logits)
        print("agreement with the file's labels: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


def _load_checkpoint_config(args: argparse.Namespace) -> RunConfig:
    ckpt = args.checkpoint
    if ckpt is None:
        return build_config(args)
    cfg_file = ckpt / "run_config.json"
    if not cfg_file.exists():
        raise ValueError(f"{ckpt} is not a checkpoint folder (no run_config.json); pass the --out of `train`")
    cfg = apply_overrides(RunConfig.from_dict(json.loads(cfg_file.read_text())), args)
    cfg.policy.adapter_path = str(ckpt / "adapter")
    return cfg


def _resume_config(args: argparse.Namespace) -> RunConfig:
    given = sorted(key for key in _given_options(args) if key not in RESUME_OPTIONS)
    if given:
        raise ValueError(
            f"--resume continues the run as {args.resume / 'run_config.json'} configures it; only --steps, --device "
            f"and --threads can be given with it, not --{', --'.join(given)}"
        )
    cfg_file = args.resume / "run_config.json"
    if not cfg_file.exists():
        raise ValueError(f"{args.resume} is not a checkpoint folder (no run_config.json); pass the --out of `train`")
    return apply_overrides(RunConfig.from_dict(json.loads(cfg_file.read_text())), args)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.out is None and args.resume is None:
        parser.error("train needs --out (or --resume DIR)")
    try:
        return _run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from rlhf.train import evaluate_run, load_run

    if args.command == "train":
        return _train(args)
    if args.command == "reward":
        return _reward(args)

    cfg = _load_checkpoint_config(args)
    cfg.validate()
    run = load_run(cfg)
    torch.manual_seed(cfg.eval_seed)
    evaluation = evaluate_run(run)
    print(evaluation.to_markdown())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(evaluation.to_json())
        (args.out / "eval.md").write_text(evaluation.to_markdown() + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rlhf.distributed import join
    from rlhf.train import Checkpoint, TrainingLoop, evaluate_run, load_run, load_training_state, train

    resume = args.resume
    cfg = build_config(args) if resume is None else _resume_config(args)
    cfg.validate()
    group, device = join()  # one process, or one of those `accelerate launch` / `torchrun` started
    if group.world > 1:
        if resume is not None:
            raise ValueError(
                "--resume continues a run in one process (the sampling streams of the other processes are not "
                "saved); resume without accelerate launch / torchrun, or start a new run from the checkpoint's "
                f"weights with --policy.adapter_path {Path(resume) / 'adapter'}"
            )
        if cfg.device == "auto":
            cfg.device = str(device)
    state = None if resume is None else load_training_state(resume)
    if state is not None and state["steps"] >= cfg.steps:
        raise ValueError(
            f"{resume} already has {state['steps']} steps and --steps counts them all ({cfg.steps}); pass a larger "
            "--steps to train further"
        )
    # only the first process writes: the checkpoint, the metrics and the evaluation
    ckpt = Checkpoint(args.out or resume, overwrite=args.overwrite, resume_from=resume) if group.is_main else None
    t0 = time.perf_counter()
    run = load_run(cfg, resume_from=resume, group=group)
    loop = TrainingLoop(run)
    if state is not None:
        loop.load_state_dict(state)
    if ckpt is None:
        train(run, loop=loop, progress=False)
        return 0
    if group.world > 1:
        print(
            f"data-parallel over {group.world} processes ({cfg.device}): each step's {cfg.ppo.batch_size} samples "
            f"are {group.world} shards of {cfg.ppo.batch_size // group.world}"
        )
    ckpt.start()
    history = train(run, on_step=_printer(ckpt), loop=loop)
    state = loop.state_dict()  # before the evaluation draws from the same random streams
    evaluation = None if args.no_eval else evaluate_run(run)
    out = ckpt.commit(run, evaluation, state)
    if evaluation is not None:
        print(evaluation.to_markdown())
    print(f"saved {out} in {time.perf_counter() - t0:.0f} s ({len(history)} steps, {loop.steps_done} in all)")
    return 0


def _printer(ckpt) -> types.FunctionType:
    from tqdm.auto import tqdm

    def on_step(stats: dict) -> None:
        ckpt.log_step(stats)
        tqdm.write(
            f"step {stats['step']:>4}  reward {stats['env/reward_mean']:.4f}  kl {stats['objective/kl']:.4f}  "
            f"loss {stats['loss/total']:.4f}  ({stats['time/step_s'] + stats['time/generate_s']:.1f} s)"
        )

    return on_step
