"""Which recipe makes the default 20-step round detox: rows of option overrides, each trained and evaluated on
the same held-out prompts against one shared set of reference answers.

    .venv/bin/python -m bench.ablation --out runs/ablation.md \
        --row "default:" --row "lr 3e-4: --ppo.learning_rate 3e-4" --row "4 epochs: --ppo.ppo_epochs 4"

Each row is `NAME: OPTIONS` (any `rlhf train` option). Rows train with their options and are always evaluated
with the preset's generation settings, so a row that changes the response length is judged like the others.
Screening sizes (`--eval-prompts 128 --eval-answers 2`) are printed with the table; a chosen default is confirmed
on the full evaluation. Rows run one after another in this process; the table is rewritten after each row.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import replace
from pathlib import Path

import torch


def _config(preset: str, options: list[str]):
    from rlhf.cli import build_config, make_parser

    return build_config(make_parser().parse_args(["train", "--preset", preset, "--out", "unused", *options]))


def _row_text(name: str, options: str, r: dict) -> str:
    def ch(key: str) -> str:
        v = r["changes"].get(key)
        return "" if v is None else f"{v[0]:+.1%} [{v[1]:+.1%}, {v[2]:+.1%}]"

    return (
        f"| {name} | `{options or '(preset)'}` | {r['seed']} | {ch('toxicity, reward classifier')} | "
        f"{ch('toxicity, second judge')} | {r['kl']:.3f} | {r['tokens_ref']:.1f} -> {r['tokens_pol']:.1f} | "
        f"{r['near_empty']:.1%} | {r['reward_first5']:.3f} -> {r['reward_last5']:.3f} | {r['train_s']:.0f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--row", action="append", required=True, metavar="NAME: OPTIONS")
    p.add_argument("--preset", default="offline")
    p.add_argument("--common", default="", metavar="OPTIONS", help="options for every row and the reference")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, each row runs every seed")
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-answers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/ablation.md"))
    args = p.parse_args(argv)

    from rlhf.evaluate import evaluate, sample_reference
    from rlhf.judge import load_judge
    from rlhf.train import load_run, train

    common = shlex.split(args.common)
    base = _config(args.preset, common)
    judge = load_judge(base.judge_data) if base.eval_judge else None
    run = load_run(replace(base, eval_prompts=args.eval_prompts))
    n, k = args.eval_prompts, args.eval_answers
    prompts, queries = run.heldout_prompts[:n], run.heldout_queries[:n]
    reference = sample_reference(run.policy, queries, base.generation, base.eval_seed, k)

    def against_reference(policy, scorer, noise_floor: bool = False):
        """Every row is judged alike: the preset's generation settings, reward and seed, the shared answers."""
        return evaluate(
            policy,
            scorer,
            base.reward.use_logit,
            prompts,
            queries,
            base.generation,
            base.eval_seed,
            reference_responses=reference,
            k=k,
            judge=judge,
            noise_floor=noise_floor,
        )

    floor = against_reference(run.policy, run.scorer, noise_floor=True).noise_floor
    head = [
        f"{args.preset} preset, {args.steps} PPO steps per row; evaluation: {n} held-out prompts x {k} answers per "
        "side with shared seeds, every row against the same reference answers. Changes: policy against reference, "
        "relative, with 95% paired bootstrap CI over prompts.",
        "",
        "Noise floor (the reference against itself, other seeds): toxicity by the reward classifier "
        + "{:+.1%} [{:+.1%}, {:+.1%}]".format(*floor["toxicity, reward classifier"])
        + ", by the second judge "
        + ("{:+.1%} [{:+.1%}, {:+.1%}]".format(*floor["toxicity, second judge"]) if judge else "(no judge)")
        + ".",
        "",
        "| row | options | seed | toxicity, reward classifier | toxicity, second judge | KL | tokens ref -> policy "
        "| near-empty | train reward first 5 -> last 5 | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines, results = list(head), []
    for spec in args.row:
        name, _, options = spec.partition(":")
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = _config(args.preset, [*common, *shlex.split(options), "--seed", str(seed)])
            torch.manual_seed(cfg.seed)
            row_run = load_run(replace(cfg, eval_prompts=n))
            t0 = time.perf_counter()
            history = train(row_run, steps=args.steps, progress=False)
            train_s = time.perf_counter() - t0
            ev = against_reference(row_run.policy, row_run.scorer)
            rewards = [h["env/reward_mean"] for h in history]
            r = {
                "row": name.strip(),
                "options": options.strip(),
                "seed": seed,
                "changes": ev.changes,
                "kl": ev.kl_to_reference,
                "tokens_ref": ev.reference.response_tokens_mean,
                "tokens_pol": ev.policy.response_tokens_mean,
                "near_empty": ev.policy.near_empty_share,
                "reward_first5": sum(rewards[:5]) / len(rewards[:5]),
                "reward_last5": sum(rewards[-5:]) / len(rewards[-5:]),
                "train_s": train_s,
                "history": history,
            }
            results.append(r)
            lines.append(_row_text(r["row"], r["options"], r))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(lines) + "\n")
            args.out.with_suffix(".json").write_text(json.dumps({"noise_floor": floor, "rows": results}, indent=1))
            print(lines[-1], flush=True)
            del row_run
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
