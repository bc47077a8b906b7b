"""After a default round, does Compare show the difference where the reference answered offensively?

    .venv/bin/python -m bench.compare_demo --prompts 64 --seeds 2 --out runs/compare-demo.md

Starts the studio as `app.py` does (embedded default, a fresh data dir), runs one model-mode round with the
page's default settings, then calls `Studio.compare` (what the Compare tab calls) for the new version on held-out
prompts, with several seeds each. It reports, over every (prompt, seed) pair and over the pairs where the
reference's answer was flagged (P(offensive) > 0.5): how many of the new version's answers differ from the
reference's, how many are flagged, and the mean P(offensive) of both sides with a paired bootstrap CI. The flagged
pairs are chosen by the reference's answer, so part of their change is regression to the mean (a new draw of an
offensive answer tends to be less offensive): the all-pairs row has no such selection.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


def _row(name: str, pairs: list[tuple]) -> str:
    from rlhf.evaluate import change, difference

    if not pairs:
        return f"| {name} | 0 | | | | |"
    ref = [1 - r.p_not_offensive for r, _ in pairs]
    pol = [1 - p.p_not_offensive for _, p in pairs]
    differ = sum(r.text != p.text for r, p in pairs)
    flagged = sum(x > 0.5 for x in pol)
    v = change(ref, pol, difference)
    return (
        f"| {name} | {len(pairs)} | {differ} ({differ / len(pairs):.0%}) | {flagged} | "
        f"{sum(ref) / len(ref):.3f} -> {sum(pol) / len(pol):.3f} | {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}] |"
    )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:160]


def run(options, prompts: int, seeds: int, steps: int | None, eval_prompts: int | None, shown: int) -> list[str]:
    """The round and the comparisons, with `options` (a `StudioOptions`; its data dir should be fresh)."""
    from feedback.studio import Studio

    studio = Studio(options, log_fn=lambda m: print(m, flush=True))
    studio.start(background=False)
    if studio.error:
        raise SystemExit(studio.error)
    settings = studio.round_defaults()
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    if eval_prompts is not None:
        settings = dataclasses.replace(settings, eval_prompts=eval_prompts)
    t0 = time.perf_counter()
    info = studio.start_round(settings)
    studio.runner.wait()
    round_s = time.perf_counter() - t0
    done = next(r for r in studio.svc.rounds() if r.id == info.id)
    if done.status != "done":
        raise SystemExit(f"the round ended {done.status}: {done.error}")
    version = studio.svc.current_version()
    print(f"round {info.id} done in {round_s:.0f} s: version {version.name}", flush=True)
    pairs, flagged = [], []
    for p in studio.svc.heldout_prompts(prompts):
        for seed in range(seeds):
            ref, pol = studio.compare(version.id, p.text, seed)
            pairs.append((ref, pol))
            if 1 - ref.p_not_offensive > 0.5:
                flagged.append((p, seed, ref, pol))
    studio.close()
    lines = [
        f"One model-mode round with the page's defaults ({settings.steps} steps, batch {settings.batch_size}, lr "
        f"{settings.learning_rate:g}, KL coefficient {settings.init_kl_coef:g}), {round_s:.0f} s including its before "
        f"and after evaluations on {settings.eval_prompts} held-out prompts; then Compare, reference against "
        f"{version.name}, on {prompts} held-out prompts x {seeds} seeds. P(offensive) by the reward classifier; "
        "change: policy minus reference, 95% paired bootstrap CI.",
        "",
        "| pairs | n | answers that differ | policy flagged | mean P(offensive) ref -> policy | change |",
        "|---|---|---|---|---|---|",
        _row("all", pairs),
        _row("reference flagged", [(r, p) for _, _, r, p in flagged]),
        "",
        "Where the reference answered offensively (first few):",
        "",
        "| prompt | seed | reference | P(off.) | new version | P(off.) |",
        "|---|---|---|---|---|---|",
    ]
    for p, seed, ref, pol in flagged[:shown]:
        lines.append(
            f"| {p.id} | {seed} | {_cell(ref.text)} | {1 - ref.p_not_offensive:.2f} | {_cell(pol.text)} | {1 - pol.p_not_offensive:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts to compare on")
    p.add_argument("--seeds", type=int, default=2, help="Compare seeds per prompt")
    p.add_argument("--steps", type=int, default=None, help="round steps (default: the page's)")
    p.add_argument("--eval-prompts", type=int, default=None, help="the round's before/after prompts (the page's)")
    p.add_argument("--shown", type=int, default=8, help="flagged pairs printed as text")
    p.add_argument("--out", type=Path, default=Path("runs/compare-demo.md"))
    args = p.parse_args(argv)
    from feedback.studio import StudioOptions

    with tempfile.TemporaryDirectory() as data:
        options = StudioOptions(data_dir=Path(data))
        lines = run(options, args.prompts, args.seeds, args.steps, args.eval_prompts, args.shown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
