"""The benchmark's smallest `--quick` case (tiny T5, our side only), so bench/ cannot rot unnoticed.

It never creates the trl 0.11.4 venv and downloads nothing; the full comparison is `python -m bench`.
"""

import json
import math
import random

import pytest

from bench.annotator import SimulatedAnnotator, stars_to_score
from bench.report import render
from bench.run import main
from rlhf.scorers import Scores


class FixedScorer:
    name = "fixed"

    def __init__(self, probs):
        self.probs = probs

    def score(self, texts):
        return self.probs[: len(texts)]

    def score_batch(self, texts):
        return Scores(self.score(texts), None)


def test_simulated_annotator_follows_the_classifier_with_noise():
    clean, toxic = FixedScorer([1.0] * 200), FixedScorer([0.0] * 200)
    texts = ["x"] * 200
    assert set(SimulatedAnnotator(clean, noise=0.0).rate(texts)) == {5}
    assert set(SimulatedAnnotator(toxic, noise=0.0).rate(texts)) == {1}
    noisy = SimulatedAnnotator(FixedScorer([0.5] * 200), noise=0.15, seed=3).score(texts)
    assert len(set(noisy)) > 1 and all(0.0 <= s <= 1.0 for s in noisy)
    assert abs(sum(noisy) / len(noisy) - 0.5) < 0.05
    assert noisy == SimulatedAnnotator(FixedScorer([0.5] * 200), noise=0.15, seed=3).score(texts)
    assert [stars_to_score(s) for s in (1, 2, 5)] == [0.0, 0.25, 1.0]


def test_quick_smallest_case_measures_a_real_step(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_STUDIO_CACHE", str(tmp_path / "cache"))  # nothing may land in the real cache
    out = tmp_path / "BENCH.md"
    argv = ["--quick", "--only", "step", "--models", "tiny-t5", "--no-trl", "--reps", "2"]
    assert main([*argv, "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0

    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["complete"]
    assert not (tmp_path / "cache" / "bench").exists()  # no trl venv was created
    ours = results["step"]["tiny-t5"]["ours"]
    assert set(results["step"]["tiny-t5"]) == {"ours"}
    assert len(ours["times"]) == 2
    assert all(math.isfinite(t) and t > 0 for t in ours["times"])
    assert ours["median_s"] == pytest.approx(sum(ours["times"]) / 2)  # the median of two is their mean
    assert 0 < ours["rss_after_load_mb"] <= ours["peak_rss_mb"] < 16_000
    assert results["peak"]["flops"] > 1e8
    assert ours["threads"] >= 1

    report = out.read_text()
    assert report == render(results)
    assert "| tiny-t5 | " in report
    assert f"{ours['median_s']:.3f}" in report
    assert results["machine"]["cpu"] in report and results["machine"]["date"] in report
    assert "## 1. PPO step: ours vs trl 0.11.4" in report
    assert "Partial run" not in report


def test_report_computes_targets_from_the_figures():
    rng = random.Random(0)
    side = {"times": [1.0], "threads": 2, "rss_after_load_mb": 100.0, "rollout_forward_median_s": 0.5}
    results = {
        "suite": {"name": "default", "reps": 5, "round_model": "smollm2", "round_steps": 20, "eval_prompts": 64},
        "command": "python -m bench",
        "machine": {"date": "d", "cpu": "c", "cores": 2, "python": "3", "torch": "t", "transformers": "x", "peft": "p"}
        | {"loadavg_start": [0.0, 0.0, 0.0]},
        "load_notes": [],
        "complete": True,
        "step": {
            "smollm2": {
                "ours": side | {"median_s": 6.0, "peak_rss_mb": 1000.0},
                "trl_none": side | {"median_s": 10.0, "peak_rss_mb": 1200.0},
                "trl_copy": side | {"median_s": 9.0, "peak_rss_mb": 1300.0 + rng.random()},
            }
        },
    }
    report = render(results)
    assert "6.00 s vs 9.00 s = 0.67x | met" in report  # compared with trl's faster variant
    assert "= 0.77x | missed" in report  # memory: 1000 / ~1300 > 0.7
    assert "Missed targets" in report


def test_ablation_rows_share_one_reference_and_write_a_table(tmp_path, tiny_llama, tiny_classifier, chitchat_jsonl):
    from bench.ablation import main as ablation

    common = (
        f"--policy.name_or_path {tiny_llama} --policy.lora.target_modules q_proj,v_proj --policy.lora.r 4 "
        f"--reward.name_or_path {tiny_classifier} --data.source {chitchat_jsonl} --data.heldout_size 6 "
        "--ppo.batch_size 4 --ppo.mini_batch_size 2 --generation.min_new_tokens 3 --generation.max_new_tokens 5 "
        "--eval-judge false"
    )
    out = tmp_path / "ablation.md"
    argv = ["--common", common, "--steps", "1", "--eval-prompts", "6", "--eval-answers", "2", "--out", str(out)]
    assert ablation([*argv, "--row", "default:", "--row", "lr 1e-2: --ppo.learning_rate 1e-2"]) == 0
    table = out.read_text()
    assert "| default | `(preset)` | 0 |" in table and "| lr 1e-2 | `--ppo.learning_rate 1e-2` | 0 |" in table
    assert "Noise floor" in table and "6 held-out prompts x 2 answers" in table
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["default", "lr 1e-2"]
    assert len(rows[0]["changes"]["toxicity, reward classifier"]) == 3 and all(math.isfinite(r["kl"]) for r in rows)
    assert len(rows[1]["history"]) == 1 and rows[1]["history"][0]["step"] == 1

    # the stages apart, as on two machines: sampling a second seed adds its row; scoring again re-reads them all
    again = [*argv, "--row", "default:", "--seeds", "0,1"]
    assert ablation([*again, "--stage", "score"]) == 0
    assert "Not sampled (yet): default-s1.json" in out.read_text()
    assert ablation([*again, "--stage", "sample"]) == 0 and ablation([*again, "--stage", "score"]) == 0
    rescored = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["row"], r["seed"]) for r in rescored] == [("default", 0), ("default", 1)]
    assert rescored[0]["changes"] == rows[0]["changes"]  # scoring the same answers again gives the same figures
    sampled = {f.name: f.stat().st_mtime_ns for f in out.with_name("ablation-answers").glob("*-s*.json")}
    assert ablation([*again, "--stage", "sample", "--missing-only"]) == 0  # nothing missing: nothing resampled
    assert {f.name: f.stat().st_mtime_ns for f in out.with_name("ablation-answers").glob("*-s*.json")} == sampled

    pair = [*argv, "--row", "default:", "--row", "lr 1e-2: --ppo.learning_rate 1e-2", "--compare", "default,lr 1e-2"]
    assert ablation([*pair, "--stage", "score"]) == 0
    table = out.read_text()
    assert "default minus lr 1e-2, toxicity per prompt" in table
    (seed_line,) = [line for line in table.splitlines() if line.startswith("| 0 | ")]
    scored = {r["row"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    a, b = (scored[name]["per_prompt"]["policy"]["toxicity"] for name in ("default", "lr 1e-2"))
    assert f"{100 * (sum(a) - sum(b)) / len(a):+.2f} [" in seed_line


def test_ablation_pools_a_rows_seeds_per_prompt_and_leaves_out_rows_missing_a_seed():
    from bench.ablation import pooled

    def row(name, seed, tox, change):
        per = {"reference": {"toxicity": [1.0, 1.0], "judge_toxicity": None}, "policy": {"toxicity": tox}}
        return {
            "row": name,
            "seed": seed,
            "kl": 0.5,
            "per_prompt": per,
            "changes": {"toxicity, reward classifier": [change]},
        }

    rows = [row("a", 0, [0.5, 0.5], -0.5), row("a", 1, [1.5, 0.5], 0.0), row("b", 0, [0.0, 0.0], -1.0)]
    lines = pooled(rows, [0, 1])
    table = [line for line in lines if line.startswith("| a") or line.startswith("| b")]
    # prompt means over the seeds: 1.0 and 0.5, against the reference's 1.0 and 1.0
    assert table == ["| a | -25.0% [-50.0%, +0.0%] | -50.0% .. +0.0% |  |  | 0.500 |"]
    assert pooled(rows, [0]) == [] and pooled(rows[2:], [0, 1]) == []


def test_compare_demo_runs_a_default_round_and_compares_through_the_studio(tiny_studio_options):
    from bench.compare_demo import run

    lines = run(tiny_studio_options(), prompts=3, seeds=2, steps=1, eval_prompts=2, shown=2)
    table = {line.split(" | ")[0]: line for line in lines if line.startswith("| all") or line.startswith("| ref")}
    assert table["| all"].startswith("| all | 6 | ")  # 3 held-out prompts x 2 seeds, each through Compare
    assert "| reference flagged" in table  # the flagged row is always there, even when empty
    assert "1 steps" in lines[0] and "KL coefficient 0.05" in lines[0]  # the page's defaults, steps overridden


def test_steering_runs_each_mode_from_the_base_version_and_judges_it_by_the_annotator(tiny_studio_options):
    """The small form of `bench.steering`: ratings through the store, the learned reward, a round per mode (Human,
    Model, Blend at the Auto weight), each judged by the annotator's taste against the reference."""
    import doctest

    import bench.steering
    from bench.steering import likes_no_you, likes_short, run_taste

    assert doctest.testmod(bench.steering).failed == 0  # the two tastes
    assert (likes_no_you("Thank you."), likes_short("a " * 30)) == (0.0, 0.0)

    def parity(text):  # a taste the tiny model's random answers split about evenly
        return float(len(text) % 2 == 0)

    rows = run_taste(tiny_studio_options(), "parity", ratings=12, steps=1, eval_prompts=2, k=2, taste=parity)
    assert [r.split(" | ")[1].split(" ")[0] for r in rows] == ["human", "model", "blend"]
    for r in rows:
        judgment = r.split(" | ")[4]  # "ref -> policy (change [low, high])", shares in [0, 1]
        ref, pol = (float(x) for x in judgment.split(" (")[0].split(" -> "))
        assert 0 <= ref <= 1 and 0 <= pol <= 1


def test_generation_benchmark_splits_a_rounds_generation_into_its_parts(tmp_path, tiny_llama, monkeypatch):
    from bench.generation import main as generation

    monkeypatch.setenv("RLHF_STUDIO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "generation.md"
    argv = ["--model", str(tiny_llama), "--steps", "2", "--no-trl", "--workdir", str(tmp_path / "work")]
    assert generation([*argv, "--out", str(out)]) == 0
    report = out.read_text()
    for part in (
        "| ours |",
        "| ours-torch-draw |",
        "| prefill (prompt pass) |",
        "| decode passes |",
        "| token draws |",
    ):
        assert part in report
    assert (tmp_path / "work" / f"plan-{tiny_llama.name}-2" / "plan.pt").exists()


def test_labeling_pace_rates_at_a_pace_before_and_during_a_round(
    tiny_studio_options, tiny_llama, tiny_classifier, chitchat_jsonl, tmp_path
):
    """bench.labeling_pace drives the app's service as the page does: every click is a stored rating, the round runs
    to its end beside the clicks, and the command line writes the table."""
    from bench.labeling_pace import main, measure

    r = measure(
        tiny_studio_options(pool_size=4, first_items=2),
        clicks=5,
        pace=0.05,
        round_steps=2,
        round_eval=2,
        timeout=300,
        say=lambda text: None,
    )
    assert r["first_item_s"] > 0
    assert len(r["quiet"].latencies) == 5
    assert r["round_status"] == "done"
    assert r["rated"] == 5 + len(r["during"].latencies)

    out = tmp_path / "pace.md"
    argv = ["--device", "cpu", "--pace", "0.05", "--clicks", "3", "--round-steps", "0", "--pool-size", "4"]
    argv += ["--policy", str(tiny_llama), "--lora-targets", "q_proj,v_proj", "--reward", str(tiny_classifier)]
    argv += ["--prompts", str(chitchat_jsonl), "--max-new-tokens", "5", "--heldout", "4", "--out", str(out)]
    assert main(argv) == 0
    table = out.read_text()
    assert "Launch to first item" in table
    assert "| quiet | 3 | " in table


def test_app_latency_times_each_line_of_the_apps_log(tmp_path):
    """The browser benchmark splits start-up by the times its reader gives the app's log lines as they come."""
    import doctest
    import subprocess
    import sys
    import time

    import bench.app_latency as app_latency

    assert doctest.testmod(app_latency).failed == 0
    script = "import time; print('importing', flush=True); time.sleep(0.5); print('ready', flush=True)"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lines: list = []
    app_latency._timed_log(proc.stdout, tmp_path / "app.log", t0, lines).join(30)
    assert proc.wait(30) == 0
    assert [text for _, text in lines] == ["importing", "ready"]
    assert lines[1][0] - lines[0][0] >= 0.4
    assert "s] ready" in (tmp_path / "app.log").read_text()
