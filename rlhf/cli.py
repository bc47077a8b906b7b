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
    return parser


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
    from rlhf.train import Checkpoint, TrainingLoop, evaluate_run, load_run, load_training_state, train

    resume = args.resume
    cfg = build_config(args) if resume is None else _resume_config(args)
    cfg.validate()
    state = None if resume is None else load_training_state(resume)
    if state is not None and state["steps"] >= cfg.steps:
        raise ValueError(
            f"{resume} already has {state['steps']} steps and --steps counts them all ({cfg.steps}); pass a larger "
            "--steps to train further"
        )
    ckpt = Checkpoint(args.out or resume, overwrite=args.overwrite, resume_from=resume)
    t0 = time.perf_counter()
    run = load_run(cfg, resume_from=resume)
    loop = TrainingLoop(run)
    if state is not None:
        loop.load_state_dict(state)
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
