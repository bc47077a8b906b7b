"""Ours against trl 0.11.4 on the same round: same batch plan (prompts and response lengths, drawn as
`rlhf.train` draws them), same settings, same reward; trl's adapter is saved and judged by our evaluation, on the
same held-out prompts against the same reference answers as our run.

    .venv/bin/python -m bench.head_to_head --seeds 0 --out runs/h2h.md

trl 0.11.4 runs in its own venv (bench/trl_env.py, created on first use). Both sides are rows of `bench.ablation`
("ours" and "trl 0.11.4"), so the table, the noise floor and the paired difference (ours minus trl, per prompt,
with a bootstrap CI) come from the one evaluation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import ablation, trl_env
from bench.protocol import Worker

REPO = Path(__file__).resolve().parent.parent
OURS, TRL = "ours", "trl 0.11.4"


def train_trl(model: str, workdir: Path, seed: int, steps: int, venv: Path) -> Path:
    """trl 0.11.4's round on our plan for `seed`; returns the folder of its saved adapter."""
    from rlhf.config import offline_preset

    plan, adapter = workdir / f"plan-s{seed}", workdir / f"trl-s{seed}"
    if (adapter / "adapter_config.json").exists():
        return adapter
    targets = offline_preset().policy.lora.target_modules
    with Worker([sys.executable, "-m", "bench.ours_worker"], f"plan-s{seed}", cwd=str(REPO)) as w:
        w.call("prepare", model=model, lora_targets=targets, out=str(plan), steps=steps, seed=seed)
    python = trl_env.ensure_trl_venv(venv)
    with Worker([str(python), "-m", "bench.trl_worker"], f"trl-s{seed}", cwd=str(REPO)) as w:
        w.call("load", model=model, data=str(plan), ref="none", seed=seed)
        r = w.call("round", steps=steps, save_adapter=str(adapter))
    print(f"trl 0.11.4 seed {seed}: {steps} steps in {r['train_s']:.0f} s", flush=True)
    return adapter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.head_to_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-answers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/head-to-head.md"))
    p.add_argument("--answers", type=Path, default=None, help="answers folder (reuse an ablation's reference)")
    p.add_argument("--workdir", type=Path, default=Path("runs/head-to-head-work"))
    p.add_argument("--trl-venv", type=Path, default=None)
    p.add_argument("--common", default="", metavar="OPTIONS", help="options for both sides and the reference")
    args = p.parse_args(argv)

    from rlhf.offline import ensure_smollm2

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = str(ensure_smollm2())
    venv = args.trl_venv or trl_env.default_venv()
    for seed in [int(s) for s in args.seeds.split(",")]:
        train_trl(model, args.workdir.resolve(), seed, args.steps, venv)
    common = [
        "--seeds", args.seeds, "--steps", str(args.steps), "--out", str(args.out),
        "--eval-prompts", str(args.eval_prompts), "--eval-answers", str(args.eval_answers),
        "--common", args.common,
    ]  # fmt: skip
    if args.answers is not None:
        common += ["--answers", str(args.answers)]
    rows = [
        "--row",
        f"{OURS}:",
        "--row",
        f"{TRL}: --steps 0 --policy.adapter_path {args.workdir.resolve()}/trl-s{{seed}}",
    ]
    answers = args.answers or args.out.with_name(args.out.stem + "-answers")
    if not (answers / "reference.json").exists():
        ablation.main([*common, "--stage", "reference", *rows])
    ablation.main([*common, "--stage", "sample", "--missing-only", *rows])
    return ablation.main([*common, "--stage", "score", "--compare", f"{OURS},{TRL}", *rows])


if __name__ == "__main__":
    raise SystemExit(main())
