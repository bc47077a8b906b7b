"""One PPO round in one process against the same round over N data-parallel processes (torchrun), on this machine.

Both train the offline preset (SmolLM2 by default) for `--steps` steps without evaluation, with the machine's cores
split evenly: the single process uses all of them, each of the N processes its share. A step's time is its
generation plus its update (`time/generate_s + time/step_s` in metrics.jsonl), the first step left out as warm-up.

    .venv/bin/python -m bench.data_parallel --steps 3                  # 1 against 2 processes
    .venv/bin/python -m bench.data_parallel --steps 2 -- --policy.name_or_path DIR ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import REPO, cpu_model


def train(processes: int, steps: int, extra: list[str], out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes)
    args = ["train", "--out", str(out), "--steps", str(steps), "--no-eval", "--threads", str(threads), *extra]
    launcher = [sys.executable, "-m", "rlhf"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        launcher += ["-m", "rlhf"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run([*launcher, *args], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["time/generate_s"] + r["time/step_s"] for r in rows]
    return {
        "processes": processes,
        "threads": threads,
        "wall_s": wall,
        "step_s": statistics.median(per_step[1:] or per_step),
        "generate_s": statistics.median([r["time/generate_s"] for r in rows][1:] or [rows[0]["time/generate_s"]]),
        "steps": per_step,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.data_parallel", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="PPO steps per run; the first is left out [3]")
    p.add_argument("--processes", type=int, default=2, help="processes of the data-parallel run [2]")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = p.parse_args(own)
    with tempfile.TemporaryDirectory(prefix="data-parallel-") as tmp:
        runs = [train(n, args.steps, extra, Path(tmp) / f"run-{n}") for n in (1, args.processes)]
    one = runs[0]
    lines = [
        f"`python -m bench.data_parallel {' '.join(argv)}`; {cpu_model()}, {os.cpu_count()} cores; "
        f"{args.steps} steps each, median step after the first.",
        "",
        "| processes | torch threads each | step s (generate + update) | of which generate s | whole run s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['processes']} | {r['threads']} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['wall_s']:.0f} | "
            f"{one['step_s'] / r['step_s']:.2f}x |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
