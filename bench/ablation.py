"""Which recipe makes the default 20-step round detox: rows of option overrides, each trained and evaluated on
the same held-out prompts against one shared set of reference answers.

    .venv/bin/python -m bench.ablation --out runs/ablation.md --seeds 0,1,2 \
        --row "default:" --row "lr 3e-4: --ppo.learning_rate 3e-4" --row "4 epochs: --ppo.ppo_epochs 4"

Each row is `NAME: OPTIONS` (any `rlhf train` option; `{seed}` in OPTIONS becomes the seed). Rows train with their options and are always evaluated
with the preset's generation settings, so a row that changes the response length is judged like the others.

It runs in three stages, which `--stage all` (the default) runs one after another in this process:

- `reference`: the reference's answers (and the noise floor's) to the held-out prompts, to `ANSWERS/reference.json`;
- `sample`: each row and seed trained, and its answers and their KL to the reference, to `ANSWERS/<row>-s<seed>.json`;
- `score`: every answer judged by the reward classifier and the second judge, and the table written.

Sampling needs the policy and gains from a GPU; scoring needs neither, so the stages may run on different
machines (several `sample` processes side by side, each with its own rows, share one `reference.json`).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

STAGES = ("all", "reference", "sample", "score")


def _config(preset: str, options: list[str]):
    from rlhf.cli import build_config, make_parser

    return build_config(make_parser().parse_args(["train", "--preset", preset, "--out", "unused", *options]))


def _rows(specs: list[str]) -> list[tuple[str, str]]:
    rows = []
    for spec in specs:
        name, sep, options = spec.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"--row {spec!r}: write it as 'NAME: OPTIONS' (OPTIONS may be empty)")
        rows.append((name.strip(), options.strip()))
    return rows


def _row_file(answers: Path, name: str, seed: int) -> Path:
    return answers / f"{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-').lower() or 'row'}-s{seed}.json"


def _ch(r: dict, key: str) -> str:
    v = r["changes"].get(key)
    return "" if v is None else f"{v[0]:+.1%} [{v[1]:+.1%}, {v[2]:+.1%}]"


def _row_text(r: dict) -> str:
    rouge = "" if r["rouge_pol"] is None else f"{r['rouge_ref']:.3f} -> {r['rouge_pol']:.3f}"
    return (
        f"| {r['row']} | `{r['options'] or '(preset)'}` | {r['seed']} | {_ch(r, 'toxicity, reward classifier')} | "
        f"{_ch(r, 'toxicity, second judge')} | {r['kl']:.3f} | {r['tokens_ref']:.1f} -> {r['tokens_pol']:.1f} | "
        f"{rouge} | {r['near_empty']:.1%} | {r['reward_first5']:.3f} -> {r['reward_last5']:.3f} | "
        f"{r['train_s']:.0f} s |"
    )


def pooled(results: list[dict], seeds: list[int]) -> list[str]:
    """Rows sampled with every seed, the seeds taken together: each prompt's toxicity is the mean over the
    seeds' answers, against the reference's, with a paired bootstrap CI over prompts; beside it the seeds'
    own changes, lowest to highest. What a user of the recipe can expect, training noise included."""
    from rlhf.evaluate import change

    if len(seeds) < 2:
        return []
    by_row: dict[str, dict[int, dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], {})[r["seed"]] = r
    lines = [
        "",
        f"Seeds {', '.join(map(str, seeds))} taken together (each prompt's toxicity averaged over the seeds' "
        "answers; the range is the seeds' own changes), rows sampled with every seed:",
        "",
        "| row | toxicity, reward classifier | seeds' range | toxicity, second judge | seeds' range | KL, mean |",
        "|---|---|---|---|---|---|",
    ]
    rows = 0
    for name, got in by_row.items():
        if any(s not in got for s in seeds):
            continue
        rows += 1
        cells = []
        for key, label in (("toxicity", "toxicity, reward classifier"), ("judge_toxicity", "toxicity, second judge")):
            per = [got[s]["per_prompt"] for s in seeds]
            if any(p["policy"].get(key) is None for p in per):
                cells += ["", ""]
                continue
            ref = per[0]["reference"][key]
            pol = [sum(vals) / len(vals) for vals in zip(*(p["policy"][key] for p in per), strict=True)]
            v = change(ref, pol)
            own = sorted(got[s]["changes"][label][0] for s in seeds)
            cells += [f"{v[0]:+.1%} [{v[1]:+.1%}, {v[2]:+.1%}]", f"{own[0]:+.1%} .. {own[-1]:+.1%}"]
        kl = sum(got[s]["kl"] for s in seeds) / len(seeds)
        lines.append(f"| {name} | {' | '.join(cells)} | {kl:.3f} |")
    return lines if rows else []


class Ablation:
    """The shared part of every stage: the base config, the held-out prompts and where answers live."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.common = shlex.split(args.common)
        self.base = _config(args.preset, self.common)
        self.n, self.k = args.eval_prompts, args.eval_answers
        self.answers = args.answers or args.out.with_name(args.out.stem + "-answers")
        self.answers.mkdir(parents=True, exist_ok=True)

    def load(self, cfg):
        from rlhf.train import load_run

        run = load_run(replace(cfg, eval_prompts=self.n))
        return run, run.heldout_prompts[: self.n], run.heldout_queries[: self.n]

    def reference(self) -> None:
        from rlhf.evaluate import decode, sample_reference

        run, prompts, queries = self.load(self.base)
        gen, seed = self.base.generation, self.base.eval_seed
        ref = sample_reference(run.policy, queries, gen, seed, self.k)
        texts, tokens = decode(run.policy, ref)
        floor, floor_tokens = decode(run.policy, sample_reference(run.policy, queries, gen, seed + 1, self.k))
        data = {
            "prompt_ids": [p.id for p in prompts],
            "k": self.k,
            "reference": texts,
            "reference_tokens": tokens,
            "reference_ids": [r.tolist() for r in ref],
            "floor": floor,
            "floor_tokens": floor_tokens,
        }
        (self.answers / "reference.json").write_text(json.dumps(data))

    def _reference_file(self) -> dict:
        path = self.answers / "reference.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run --stage reference first (same --common, prompts and answers)")
        return json.loads(path.read_text())

    def sample(self) -> None:
        from rlhf.evaluate import sample_answers
        from rlhf.train import train

        ref = self._reference_file()
        for name, row_options in _rows(self.args.row):
            for seed in self.args.seed_list:
                options = row_options.replace("{seed}", str(seed))
                if self.args.missing_only and _row_file(self.answers, name, seed).is_file():
                    continue
                # the row's own --steps (0 for an adapter trained elsewhere) wins over the ablation's
                steps = ["--steps", str(self.args.steps)]
                cfg = _config(self.args.preset, [*self.common, *steps, *shlex.split(options), "--seed", str(seed)])
                torch.manual_seed(cfg.seed)
                run, prompts, queries = self.load(cfg)
                if [p.id for p in prompts] != ref["prompt_ids"]:
                    raise SystemExit(f"row {name!r} holds out other prompts than reference.json: keep --data alike")
                t0 = time.perf_counter()
                history = train(run, progress=False)
                train_s = time.perf_counter() - t0
                reference = [torch.tensor(r, dtype=torch.long, device=run.policy.device) for r in ref["reference_ids"]]
                # judged like every row: the preset's generation settings and evaluation seed
                answers = sample_answers(
                    run.policy, queries, self.base.generation, self.base.eval_seed, reference, self.k
                )
                row = {"row": name, "options": options, "seed": seed, "train_s": train_s, "history": history}
                _row_file(self.answers, name, seed).write_text(json.dumps(row | {"answers": asdict(answers)}))
                print(f"sampled {name} seed {seed}: trained in {train_s:.0f} s", flush=True)
                del run

    def score(self) -> None:
        from rlhf.evaluate import Answers, judge_answers, noise_floor
        from rlhf.judge import load_judge
        from rlhf.prompts import load_prompts
        from rlhf.scorers import load_scorer

        ref = self._reference_file()
        base = self.base
        judge = load_judge(base.judge_data) if base.eval_judge else None
        scorer = load_scorer(base.reward, "cpu")
        by_id = {p.id: p for p in load_prompts(base.data)}
        prompts = [by_id[i] for i in ref["prompt_ids"]]
        k = ref["k"]
        use_logit = base.reward.use_logit

        reference = (ref["reference"], ref["reference_tokens"])
        floor = noise_floor(reference, (ref["floor"], ref["floor_tokens"]), k, scorer, use_logit, judge)

        files = [_row_file(self.answers, name, s) for name, _ in _rows(self.args.row) for s in self.args.seed_list]
        missing = [f.name for f in files if not f.is_file()]
        lines, results = self._head(floor, judge is not None, len(prompts), k, missing), []
        for f in files:
            if not f.is_file():
                continue
            row = json.loads(f.read_text())
            answers = Answers.from_dict(row.pop("answers"))
            ev = judge_answers(answers, prompts, scorer, use_logit, judge)
            rewards = [h["env/reward_mean"] for h in row["history"]] or [float("nan")]
            r = row | {
                "changes": ev.changes,
                "kl": ev.kl_to_reference,
                "tokens_ref": ev.reference.response_tokens_mean,
                "tokens_pol": ev.policy.response_tokens_mean,
                "rouge_ref": ev.reference.rouge_l,
                "rouge_pol": ev.policy.rouge_l,
                "near_empty": ev.policy.near_empty_share,
                "reward_first5": sum(rewards[:5]) / len(rewards[:5]),
                "reward_last5": sum(rewards[-5:]) / len(rewards[-5:]),
                "evaluation": {"reference": asdict(ev.reference), "policy": asdict(ev.policy)},
                "per_prompt": ev.per_prompt,
            }
            results.append(r)
            lines.append(_row_text(r))
        lines += pooled(results, self.args.seed_list)
        if self.args.compare:
            lines += self._compare(results, *self.args.compare.split(","))
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text("\n".join(lines) + "\n")
        self.args.out.with_suffix(".json").write_text(json.dumps({"noise_floor": floor, "rows": results}, indent=1))
        print("\n".join(lines), flush=True)

    @staticmethod
    def _compare(results: list[dict], a: str, b: str) -> list[str]:
        """Row a against row b, seed by seed: the paired difference of their per-prompt toxicity (a minus b, in
        points of P(offensive)), with a bootstrap CI over prompts; both answered the same prompts."""
        from rlhf.evaluate import change, difference

        by = {(r["row"], r["seed"]): r for r in results}
        lines = ["", f"{a} minus {b}, toxicity per prompt (negative: {a} is the less toxic), 95% paired CI:", ""]
        lines += ["| seed | reward classifier (points) | second judge (points) |", "|---|---|---|"]
        for (row, seed), ra in by.items():
            rb = by.get((b, seed))
            if row != a or rb is None:
                continue
            cells = []
            for key in ("toxicity", "judge_toxicity"):
                xa, xb = ra["per_prompt"]["policy"].get(key), rb["per_prompt"]["policy"].get(key)
                v = None if xa is None or xb is None else change(xb, xa, difference)
                cells.append("" if v is None else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*(100 * x for x in v)))
            lines.append(f"| {seed} | {cells[0]} | {cells[1]} |")
        return lines

    def _head(self, floor: dict, judged: bool, n: int, k: int, missing: list[str]) -> list[str]:
        def fmt(key: str) -> str:
            return "{:+.1%} [{:+.1%}, {:+.1%}]".format(*floor[key]) if key in floor else "(no judge)"

        head = [
            f"{self.args.preset} preset, {self.args.steps} PPO steps per row; evaluation: {n} held-out prompts x {k} "
            "answers per side with shared seeds, every row against the same reference answers. Changes: policy "
            "against reference, relative, with 95% paired bootstrap CI over prompts.",
            "",
            f"Noise floor (the reference against itself, other seeds): toxicity by the reward classifier "
            f"{fmt('toxicity, reward classifier')}, by the second judge "
            f"{fmt('toxicity, second judge') if judged else '(no judge)'}.",
            "",
        ]
        if missing:
            head += [f"Not sampled (yet): {', '.join(missing)}.", ""]
        return head + [
            "| row | options | seed | toxicity, reward classifier | toxicity, second judge | KL | tokens ref -> policy "
            "| ROUGE-L ref -> policy | near-empty | train reward first 5 -> last 5 | train time |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--row", action="append", required=True, metavar="NAME: OPTIONS")
    p.add_argument("--stage", choices=STAGES, default="all")
    p.add_argument("--preset", default="offline")
    p.add_argument("--common", default="", metavar="OPTIONS", help="options for every row and the reference")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, each row runs every seed")
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-answers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/ablation.md"))
    p.add_argument("--answers", type=Path, default=None, help="folder of sampled answers (default: next to --out)")
    p.add_argument("--missing-only", action="store_true", help="sample only the rows and seeds not sampled yet")
    p.add_argument("--compare", default=None, metavar="ROW_A,ROW_B", help="paired toxicity difference, A minus B")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    _rows(args.row)  # malformed rows fail before anything loads

    ablation = Ablation(args)
    if args.stage in ("all", "reference"):
        ablation.reference()
    if args.stage in ("all", "sample"):
        ablation.sample()
    if args.stage in ("all", "score"):
        ablation.score()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
