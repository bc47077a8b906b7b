"""The benchmark driver: `python -m bench [--quick | --long] [--out BENCHMARKS.md]`.

Each measurement runs in worker processes (ours in this venv, trl 0.11.4 in its own), one per configuration, so
peak memory is per configuration; the driver alternates the workers' steps, prints figures as they come and
rewrites the markdown report after every section, so an interrupted run still leaves its figures behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import trl_env
from bench.protocol import Worker
from bench.report import render

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("step", "rollout", "detox", "round", "mfu")
LORA_TARGETS = {"tiny-t5": ["q", "v"], "tiny-causal": ["q_proj", "v_proj"], "smollm2": ["q_proj", "v_proj"]}


@dataclass
class Suite:
    """What one invocation measures; `--quick` and `--long` pick other sizes of the same measurements."""

    name: str = "default"
    step_models: list[str] = field(default_factory=lambda: ["tiny-t5", "tiny-causal", "smollm2"])
    reps: int = 5
    round_model: str = "smollm2"
    round_steps: int = 20
    eval_prompts: int = 64
    rollout_models: list[str] = field(default_factory=lambda: ["smollm2", "tiny-t5", "tiny-causal"])
    rollout_reps: int = 3
    new_tokens: int = 64
    matmul_n: int = 4096
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    trl: bool = True


def suite_from_args(args: argparse.Namespace) -> Suite:
    if args.quick:
        s = Suite(
            name="quick",
            step_models=["tiny-t5", "tiny-causal"],
            round_model="tiny-causal",
            round_steps=3,
            eval_prompts=16,
            rollout_models=["tiny-t5", "tiny-causal"],
            rollout_reps=2,
            matmul_n=2048,
        )
    else:
        s = Suite(name="long" if args.long else "default")
    if args.long:
        s.round_steps = 50
    if args.models:
        s.step_models = args.models.split(",")
        s.rollout_models = [m for m in s.rollout_models if m in s.step_models] or s.step_models[:1]
    if args.reps:
        s.reps = args.reps
    if args.only:
        s.sections = args.only.split(",")
    s.trl = not args.no_trl
    unknown = [m for m in s.step_models if m not in LORA_TARGETS]
    bad = [x for x in s.sections if x not in SECTIONS]
    if unknown or bad:
        raise SystemExit(
            f"unknown models {unknown} / sections {bad}; models: {list(LORA_TARGETS)}, sections: {SECTIONS}"
        )
    return s


# ---- machine -------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def foreign_load(interval: float = 1.0) -> list[str]:
    """Processes outside this benchmark using over 20% of a core: their timings would be skewed by them."""
    import psutil

    ours = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in ours]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(interval)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > 20:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:80]
            busy.append(f"pid {p.pid} at {pct:.0f}% CPU: {cmd}")
    return busy


def machine_info() -> dict:
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


# ---- helpers -------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class Bench:
    def __init__(self, suite: Suite, workdir: Path, out: Path, trl_venv: Path, argv: list[str]):
        self.suite = suite
        self.workdir = workdir
        self.out = out
        self.trl_venv = trl_venv
        self.trl_python: Path | None = None
        self.results: dict[str, Any] = {
            "suite": asdict(suite),
            "command": "python -m bench " + " ".join(argv),
            "machine": machine_info(),
            "load_notes": [],
            "complete": False,
        }
        self.t_start = time.perf_counter()
        self.env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }

    # ---- workers --------------------------------------------------------------------------------------------
    def ours(self, name: str) -> Worker:
        return Worker([sys.executable, "-m", "bench.ours_worker"], name, env=self.env, cwd=str(REPO))

    def trl(self, name: str) -> Worker:
        return Worker([str(self.trl_python), "-m", "bench.trl_worker"], name, env=self.env, cwd=str(REPO))

    def model_path(self, name: str) -> str:
        if name == "smollm2":
            from rlhf.offline import ensure_smollm2

            return str(ensure_smollm2(log=log))
        return str(self.workdir / "models" / name)

    def save(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.t_start
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        (self.workdir / "results.json").write_text(json.dumps(self.results, indent=2))
        self.out.write_text(render(self.results))

    def check_load(self, where: str) -> None:
        busy = foreign_load()
        if busy:
            note = f"{where}: other processes were busy: " + "; ".join(busy)
            log("WARNING " + note)
            self.results["load_notes"].append(note)

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.suite
        self.reference_file().unlink(missing_ok=True)  # sampled afresh by this run's first detox evaluation
        tiny = sorted({m for m in s.step_models + s.rollout_models + [s.round_model] if m.startswith("tiny")})
        need_data = [m for m in s.step_models if "step" in s.sections or "mfu" in s.sections]
        if "round" in s.sections and s.round_model not in need_data:
            need_data.append(s.round_model)
        with self.ours("setup") as w:
            for kind in tiny:
                if not (self.workdir / "models" / kind / "config.json").exists():
                    w.call("build_tiny", kind=kind, path=str(self.workdir / "models" / kind))
            if "mfu" in s.sections or "step" in s.sections:
                self.results["peak"] = w.call("peak_matmul", n=s.matmul_n, reps=5)
                log(f"float32 matmul peak ({s.matmul_n}^2): {self.results['peak']['flops'] / 1e9:.1f} GFLOP/s")
            self.results["data"] = {}
            for m in need_data:
                steps = s.round_steps if m == s.round_model else 1
                info = w.call(
                    "prepare", model=self.model_path(m), lora_targets=LORA_TARGETS[m], out=self.data(m), steps=steps
                )
                self.results["data"][m] = info
        if s.trl and any(x in s.sections for x in ("step", "round")):
            self.trl_python = trl_env.ensure_trl_venv(self.trl_venv, log=log)
            with self.trl("trl-versions") as w:
                self.results["trl_versions"] = w.call("versions")
            log(f"trl side: {self.results['trl_versions']}")

    def reference_file(self) -> Path:
        """The reference's held-out responses, shared by the detox runs (the reference never changes)."""
        return self.workdir / "detox-reference.pt"

    def data(self, model: str) -> str:
        return str(self.workdir / "data" / model)

    # ---- 1. PPO step, ours vs trl 0.11.4 ---------------------------------------------------------------------
    def step_section(self) -> None:
        s = self.suite
        self.results["step"] = {}
        for m in s.step_models:
            self.check_load(f"step {m}")
            workers: dict[str, Worker] = {"ours": self.ours(f"ours-{m}")}
            if self.trl_python is not None:
                workers["trl_none"] = self.trl(f"trl-none-{m}")
                workers["trl_copy"] = self.trl(f"trl-copy-{m}")
            try:
                res: dict[str, Any] = {k: {} for k in workers}
                path = self.model_path(m)
                for k, w in workers.items():
                    if k == "ours":
                        r = w.call("load_step", model=path, lora_targets=LORA_TARGETS[m], data=self.data(m))
                    else:
                        r = w.call("load", model=path, data=self.data(m), ref=k.split("_")[1])
                    res[k].update(load_s=r["load_s"], rss_after_load_mb=r["peak_rss_mb"], threads=r["torch_threads"])
                    if "ppo" in r:
                        res[k]["ppo"] = r["ppo"]
                for w in workers.values():  # warm-up step, not timed
                    w.call("step")
                times: dict[str, list[float]] = {k: [] for k in workers}
                names = list(workers)
                for rep in range(s.reps):
                    # rotate who goes first, so drift in the machine's speed does not favour one side
                    for k in names[rep % len(names) :] + names[: rep % len(names)]:
                        r = workers[k].call("step")
                        times[k].append(r["seconds"])
                        res[k].setdefault("rollout_forward_s", []).append(r["rollout_forward_s"])
                        res[k]["peak_rss_mb"] = r["peak_rss_mb"]
                for k in names:
                    res[k]["times"] = times[k]
                    res[k]["median_s"] = median(times[k])
                for k in names:
                    res[k]["rollout_forward_median_s"] = median(res[k].pop("rollout_forward_s"))
                if "mfu" in s.sections and m == self.mfu_model():
                    self.results["mfu_raw"] = workers["ours"].call("mfu", reps=s.rollout_reps) | {
                        "step_s": res["ours"]["median_s"],
                        "model": m,
                    }
            finally:
                for w in workers.values():
                    w.close()
            self.results["step"][m] = res
            line = f"step {m}: ours {res['ours']['median_s']:.3f} s, {res['ours']['peak_rss_mb']:.0f} MB"
            for k in names[1:]:
                line += f"; {k} {res[k]['median_s']:.3f} s, {res[k]['peak_rss_mb']:.0f} MB"
            log(line)
            self.save()

    def mfu_model(self) -> str:
        causal = [m for m in self.suite.step_models if m != "tiny-t5"]
        return "smollm2" if "smollm2" in causal else (causal[0] if causal else "")

    # ---- 2. rollout throughput -------------------------------------------------------------------------------
    def rollout_section(self) -> None:
        s = self.suite
        self.results["rollout"] = {}
        for m in s.rollout_models:
            self.check_load(f"rollout {m}")
            reward = str(self.workdir / "models" / "tiny-roberta") if m == "tiny-causal" else None
            with self.ours(f"rollout-{m}") as w:
                r = w.call(
                    "rollout",
                    model=self.model_path(m),
                    lora_targets=LORA_TARGETS[m],
                    reward=reward,
                    new_tokens=s.new_tokens,
                    batch_sizes=[1, 16],
                    reps=s.rollout_reps,
                )
            self.results["rollout"][m] = r
            g = r["generation"]
            log(
                f"rollout {m}: {g['1']['tokens_per_s']:.1f} tok/s at batch 1, {g['16']['tokens_per_s']:.1f} at 16; "
                f"scoring ({r['scoring']['scorer']}) {r['scoring']['texts_per_s']:.0f} texts/s at batch 32"
            )
            self.save()

    # ---- 3. detox effect (the model-reward run is also our whole round) ------------------------------------------
    def detox_section(self, mode: str) -> None:
        s = self.suite
        self.check_load(f"detox {mode}")
        with self.ours(f"detox-{mode}") as w:
            r = w.call(
                "detox",
                model=self.model_path(s.round_model),
                lora_targets=LORA_TARGETS[s.round_model],
                mode=mode,
                steps=s.round_steps,
                eval_prompts=s.eval_prompts,
                reference_file=str(self.reference_file()),
            )
        self.results.setdefault("detox", {})[mode] = r
        ev = r["eval"]
        log(
            f"detox {mode}: toxicity {ev['reference']['toxicity_mean']:.4f} -> {ev['policy']['toxicity_mean']:.4f} "
            f"({ev['toxicity_change']:+.1%}, CI {ev['toxicity_change_ci95'][0]:+.1%} .. "
            f"{ev['toxicity_change_ci95'][1]:+.1%}); round {r['train_s']:.0f} s"
        )
        self.save()

    # ---- 4. trl 0.11.4's whole round ----------------------------------------------------------------------------
    def round_section(self) -> None:
        s = self.suite
        if self.trl_python is None:
            return
        self.check_load("round trl")
        with self.trl("trl-round") as w:
            w.call("load", model=self.model_path(s.round_model), data=self.data(s.round_model), ref="none")
            r = w.call("round", steps=s.round_steps)
        self.results["round_trl"] = r | {"model": s.round_model}
        log(f"trl 0.11.4 round ({s.round_steps} steps, {s.round_model}): {r['train_s']:.0f} s")
        self.save()

    def run(self) -> None:
        self.check_load("start")
        self.setup()
        # Cheapest and most asked-for figures first; every section rewrites the report when it ends.
        sections = self.suite.sections
        if "step" in sections:
            self.step_section()
        if "rollout" in sections:
            self.rollout_section()
        if "detox" in sections:
            self.detox_section("model")
        if "round" in sections:
            self.round_section()
        if "detox" in sections:
            self.detox_section("human")
        self.check_load("end")
        self.results["complete"] = True
        self.save()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny models only, 3-step round: a few minutes")
    size.add_argument("--long", action="store_true", help="50-step round and detox runs instead of 20")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown report to (over)write")
    p.add_argument("--workdir", type=Path, default=None, help="models, shared inputs, results.json (default: cache)")
    p.add_argument("--trl-venv", type=Path, default=None, help="trl 0.11.4 venv; created there if missing")
    p.add_argument("--no-trl", action="store_true", help="measure our side only (never creates the trl venv)")
    p.add_argument("--only", default=None, help=f"comma-separated sections out of {','.join(SECTIONS)}")
    p.add_argument("--models", default=None, help=f"comma-separated step models out of {','.join(LORA_TARGETS)}")
    p.add_argument("--reps", type=int, default=None, help="timed PPO steps per side after the warm-up (default 5)")
    p.add_argument("--rerender", action="store_true", help="rewrite --out from the workdir's results.json, no runs")
    args = p.parse_args(argv)
    suite = suite_from_args(args)
    from rlhf.offline import default_cache_dir

    workdir = args.workdir or default_cache_dir() / "bench" / f"work-{suite.name}"
    if args.rerender:
        args.out.write_text(render(json.loads((workdir / "results.json").read_text())))
        log(f"report rewritten from {workdir / 'results.json'} to {args.out}")
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    trl_venv = args.trl_venv or trl_env.default_venv()
    bench = Bench(suite, workdir, args.out, trl_venv, argv)
    log(f"benchmark suite {suite.name!r}: {asdict(suite)}; workdir {workdir}")
    bench.run()
    log(f"done in {bench.results['elapsed_s'] / 60:.1f} min; report in {args.out}")
    return 0
