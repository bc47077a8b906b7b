"""Markdown for BENCHMARKS.md, computed from the results dict the driver collects (no figure is typed in here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STEP_TARGET = 0.8  # our step time / trl 0.11.4's, SmolLM2 + LoRA
MEMORY_TARGET = 0.7  # our peak RSS / trl 0.11.4's with a reference copy


def mfu(results: dict) -> dict | None:
    """Model FLOPs of one PPO step (generation + 2 no-grad forwards + forward/backward) over its measured time.

    Forward FLOPs per token come from trl 1.16's `compute_flops_per_token` (a third of its training figure).
    Two counts of the update: trl's convention (backward = 2x forward: 5 forwards' worth in all), and a LoRA-aware
    one (the frozen weights get no weight gradient, so backward ~ 1x forward: 4 forwards' worth; and where the
    worker reports it, the lm_head only over response tokens, as `Policy.forward` computes it).
    """
    raw, peak = results.get("mfu_raw"), results.get("peak")
    if not raw or not peak or raw.get("forward_flops_per_token") is None:
        return None
    fwd = raw["forward_flops_per_token"]
    gen_flops = fwd * (raw["query_tokens"] + raw["generated_tokens"])
    step_trl = 5 * fwd * raw["step_tokens"]
    step_lora = 4 * fwd * raw["step_tokens"]
    if raw.get("lm_head_flops_per_token"):
        step_lora -= 4 * raw["lm_head_flops_per_token"] * (raw["step_tokens"] - raw["response_tokens"])
    gen_s, step_s = raw["generate_s"], raw["step_s"]

    def phase(flops: float, seconds: float) -> dict:
        return {"flops": flops, "seconds": seconds, "mfu": flops / seconds / peak["flops"]}

    return {
        "model": raw["model"],
        "peak_flops": peak["flops"],
        "lm_head_split": bool(raw.get("lm_head_flops_per_token")),
        "rows": [
            ("generate", phase(gen_flops, gen_s)),
            ("update (trl convention)", phase(step_trl, step_s)),
            ("update (LoRA-aware)", phase(step_lora, step_s)),
            ("whole step (trl convention)", phase(gen_flops + step_trl, gen_s + step_s)),
            ("whole step (LoRA-aware)", phase(gen_flops + step_lora, gen_s + step_s)),
        ],
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def _get(d: dict, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; a target whose figures were not measured says so."""
    rows = []
    step = _get(results, "step", "smollm2")
    if step and "trl_none" in step:
        ours = step["ours"]["median_s"]
        trl_best = min(step["trl_none"]["median_s"], step["trl_copy"]["median_s"])
        r = ours / trl_best
        rows.append(
            (
                f"PPO step, SmolLM2 + LoRA: ours <= {STEP_TARGET}x trl 0.11.4",
                f"{ours:.2f} s vs {trl_best:.2f} s = {r:.2f}x",
                "met" if r <= STEP_TARGET else "missed",
            )
        )
        mem = step["ours"]["peak_rss_mb"] / step["trl_copy"]["peak_rss_mb"]
        rows.append(
            (
                f"Peak memory, SmolLM2 + LoRA: ours <= {MEMORY_TARGET}x trl 0.11.4 with a reference copy",
                f"{step['ours']['peak_rss_mb']:.0f} MB vs {step['trl_copy']['peak_rss_mb']:.0f} MB = {mem:.2f}x",
                "met" if mem <= MEMORY_TARGET else "missed",
            )
        )
    else:
        rows.append(("PPO step and memory vs trl 0.11.4, SmolLM2 + LoRA", "not measured in this run", "n/a"))
    det = _get(results, "detox", "model")
    if det and results["suite"]["round_model"] == "smollm2":  # tiny random models have no toxicity to lower
        ev = det["eval"]
        lo, hi = ev["toxicity_change_ci95"]
        rows.append(
            (
                "Detox (model reward): mean toxicity falls, 95% bootstrap CI excludes zero",
                f"{ev['toxicity_change']:+.1%} (CI {lo:+.1%} to {hi:+.1%})",
                "met" if hi < 0 else "missed",
            )
        )
    return rows


def render(results: dict) -> str:
    m = results["machine"]
    suite = results["suite"]
    out = ["# Benchmarks", ""]
    if not results.get("complete"):
        out += ["**Partial run: the benchmark was still running or stopped before the end.**", ""]
    out += [
        f"Suite `{suite['name']}`, written by `{results['command']}` on {m['date']}, "
        f"{results.get('elapsed_s', 0) / 60:.1f} min in all.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {_threads(results)}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}. "
        + (
            f"trl side: trl {results['trl_versions']['trl']}, transformers {results['trl_versions']['transformers']}, "
            f"peft {results['trl_versions']['peft']}, torch {results['trl_versions']['torch']}. "
            if results.get("trl_versions")
            else ""
        )
        + f"Load average at start {_load(m['loadavg_start'])}, at end {_load(m.get('loadavg_end'))}.",
        "",
    ]
    if results["load_notes"]:
        out += ["**The machine was loaded by other processes during part of this run; timings there are skewed:**", ""]
        out += [f"- {n}" for n in results["load_notes"]] + [""]
    else:
        out += ["No other process used more than 20% of a core at any section boundary.", ""]
    out += [
        "Reproduce: `.venv/bin/python -m bench` (the default suite: tiny T5, tiny causal and SmolLM2-135M; "
        "writes BENCHMARKS.md), `--quick` (tiny models only, 3-step round), `--long` (50-step rounds and detox "
        "runs). The first run creates the trl 0.11.4 venv under ~/.cache/rlhf-studio/bench (pip, about a minute; "
        "`--trl-venv PATH` to place it, `--no-trl` for our side only). Raw figures: `results.json` in the workdir; "
        "`--rerender` rewrites the report from it without measuring.",
        "",
    ]
    rows = targets(results)
    if rows:
        out += ["## Targets", "", "| target | measured (same run) | verdict |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]
    out += _step(results) + _round(results) + _rollout(results) + _detox(results) + _mfu(results)
    out += _included() + _notes(results)
    return "\n".join(out) + "\n"


RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _included() -> list[str]:
    """Runs made apart from this suite (on other machines, or too long for it), kept in bench/results/ as their
    scripts wrote them (each file says which command and machine), and carried into every report as they are."""
    files = sorted(RESULTS_DIR.glob("*.md"))
    if not files:
        return []
    out = ["## 5. Runs kept in bench/results/", ""]
    for f in files:
        out += [f"### {f.stem}", "", f.read_text().strip(), ""]
    return out


def _threads(results: dict) -> str:
    seen = set()
    for res in (results.get("step") or {}).values():
        for side in res.values():
            if isinstance(side, dict) and "threads" in side:
                seen.add(side["threads"])
    if results.get("peak"):
        seen.add(results["peak"]["torch_threads"])
    return "/".join(str(t) for t in sorted(seen)) or "n/a"


def _load(x: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in x) if x else "n/a"


def _step(results: dict) -> list[str]:
    step = results.get("step")
    if not step:
        return []
    reps = results["suite"]["reps"]
    out = [
        "## 1. PPO step: ours vs trl 0.11.4",
        "",
        f"Same policy folder, same LoRA (r 32, alpha 32, dropout 0.05), same (query, response, reward) batch, "
        f"batch 16 / mini-batch 4 / 1 epoch, lr 1e-4. Median of {reps} timed steps after one warm-up step; "
        "the three workers' steps alternate (rotating order). Peak RSS is each worker process's own `ru_maxrss` "
        "(its high-water mark, including loading); `after load` is the same figure before the first step. "
        "trl `ref=None` uses the PEFT model with its adapter disabled as reference; trl `copy` passes "
        "`create_reference_model(model)` (a frozen deep copy).",
        "",
        _execution(step),
        "",
        "| model | ours s/step | trl ref=None s/step | trl copy s/step | ours / trl ref=None | ours / trl copy "
        "| ours peak MB (after load) | trl ref=None peak MB (after load) | trl copy peak MB (after load) "
        "| mem ours / trl copy | mem ours / trl ref=None |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, res in step.items():
        o = res["ours"]
        tn, tc = res.get("trl_none"), res.get("trl_copy")

        def cell(x: dict | None, key: str, fmt: str) -> str:
            return format(x[key], fmt) if x else "n/a"

        def mem(x: dict | None) -> str:
            return f"{x['peak_rss_mb']:.0f} ({x['rss_after_load_mb']:.0f})" if x else "n/a"

        out.append(
            f"| {model} | {o['median_s']:.3f} | {cell(tn, 'median_s', '.3f')} | {cell(tc, 'median_s', '.3f')} "
            f"| {_ratio(o['median_s'], tn and tn['median_s'])} | {_ratio(o['median_s'], tc and tc['median_s'])} "
            f"| {mem(o)} | {mem(tn)} | {mem(tc)} "
            f"| {_ratio(o['peak_rss_mb'], tc and tc['peak_rss_mb'])} | {_ratio(o['peak_rss_mb'], tn and tn['peak_rss_mb'])} |"
        )
    out += ["", "Every timed step (seconds):", ""]
    for model, res in step.items():
        for side, r in res.items():
            out.append(f"- {model} {side}: " + ", ".join(f"{t:.3f}" for t in r["times"]))
    out.append("")
    for model, res in step.items():
        parts = [
            f"{side} {r['median_s']:.3f} s of which {r['rollout_forward_median_s']:.3f} s rollout forward"
            for side, r in res.items()
        ]
        out.append(f"- {model}: " + "; ".join(parts) + ".")
    out += [
        "",
        "Rollout forward = the no-grad passes of policy and reference over the batch (trl: its "
        "`time/ppo/forward_pass`); the rest of a step is mainly the 4 mini-batch forward/backward updates.",
    ]
    return out + [""]


def _execution(step: dict) -> str:
    """How each side runs a step's passes: the settings that differ in execution but not in the update."""
    ours = next((r["ours"].get("ppo") for r in step.values() if r["ours"].get("ppo")), None)
    if not ours:
        return "Ours ran with the engine's default execution settings."
    micro = ours.get("micro_batch_size") or ours["mini_batch_size"]
    return (
        f"Execution (not the update): ours splits each mini-batch of {ours['mini_batch_size']} into micro-batches "
        f"of {micro} (`ppo.micro_batch_size`) whose token-weighted gradients add up to the mini-batch's own "
        "(tests/test_ppo.py checks the weights agree), and runs the no-grad rollout passes "
        f"{ours['forward_batch_size']} samples at a time, grouped by length (`ppo.forward_batch_size`). trl 0.11.4 "
        f"runs its mini-batch of {ours['mini_batch_size']} in one pass (`gradient_accumulation_steps` 1) and its "
        f"rollout passes {ours['mini_batch_size']} samples at a time in batch order (`batched_forward_pass` uses "
        "`mini_batch_size`)."
    )


def _round(results: dict) -> list[str]:
    trl, ours = results.get("round_trl"), _get(results, "detox", "model")
    if not trl and not ours:
        return []
    model = results["suite"]["round_model"]
    out = [
        "## 1b. Whole round: generate, score, update",
        "",
        f"{results['suite']['round_steps']} PPO steps of {model} on the offline preset's prompts (the same batches "
        "and per-batch response lengths on both sides, drawn as `rlhf.train` draws them: by default each batch "
        "holds prompts of similar length, `data.group_by_length`), reward = the alt-profanity-check margin, sampling with "
        "temperature 1 and no top-k/top-p. Ours is `rlhf.train.train` (the detox run's training in section 3); "
        "trl's is its own `generate` + `step` loop with `ref_model=None` on the PEFT model. One round each "
        f"(its total is a sum of {results['suite']['round_steps']} step measurements). Ours keeps the log-probs "
        "and values the policy computed while sampling (`rlhf.ppo.rollout`), so its update runs only the "
        "reference's no-grad pass before the mini-batches; trl 0.11.4's `step` recomputes both.",
        "",
        "| side | round wall s | generate s | score s | update s | train reward first -> last step |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("ours", ours), ("trl 0.11.4", trl)):
        if r:
            out.append(
                f"| {name} | {r['train_s']:.1f} | {r['generate_s']:.1f} | {r['score_s']:.2f} | {r['update_s']:.1f} "
                f"| {r['train_reward_first']:.3f} -> {r['train_reward_last']:.3f} |"
            )
    if trl and ours:
        out += ["", f"Round time ours / trl 0.11.4: {_ratio(ours['train_s'], trl['train_s'])}."]
    return out + [""]


def _rollout(results: dict) -> list[str]:
    ro = results.get("rollout")
    if not ro:
        return []
    any_r = next(iter(ro.values()))
    out = [
        "## 2. Rollout throughput",
        "",
        f"Generation with the LoRA policy (sampling, exactly {results['suite']['new_tokens']} new tokens per prompt, "
        f"offline-preset prompts), median of {any_r['generation']['1']['reps']} timed calls after a warm-up; "
        "scoring a batch of 32 generated texts.",
        "",
        "| model | gen tok/s batch 1 | gen tok/s batch 16 | scorer | texts/s at batch 32 |",
        "|---|---|---|---|---|",
    ]
    for model, r in ro.items():
        g = r["generation"]
        out.append(
            f"| {model} | {g['1']['tokens_per_s']:.1f} | {g['16']['tokens_per_s']:.1f} | {r['scoring']['scorer']} "
            f"| {r['scoring']['texts_per_s']:.0f} |"
        )
    return out + [""]


def _detox(results: dict) -> list[str]:
    det = results.get("detox")
    if not det:
        return []
    s = results["suite"]
    out = [
        "## 3. Detox effect",
        "",
        f"The offline preset on {s['round_model']}, {s['round_steps']} PPO steps, then `rlhf.evaluate` on "
        f"{s['eval_prompts']} held-out prompts: the reference (adapter off) and the trained policy sample the same "
        "prompts with the same seed; toxicity = the classifier's P(offensive); relative change with a paired "
        "bootstrap 95% interval (2000 resamples). `human` trains on a simulated annotator instead of the model "
        "reward: 1-5 stars = round(1 + 4 * clip(P(not offensive) + N(0, 0.15), 0, 1)), mapped to [0, 1]; "
        "it is evaluated with the classifier like `model`.",
        "",
        "| mode | reward before (mean ± std) | reward after | toxicity before (mean ± std) | toxicity after "
        "| toxicity change [95% CI] | reward change [95% CI] | KL (nats) | train s | eval s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in det.items():
        ev = r["eval"]
        ref, pol = ev["reference"], ev["policy"]
        tlo, thi = ev["toxicity_change_ci95"]
        rlo, rhi = ev["relative_change_ci95"]
        out.append(
            f"| {mode} | {ref['reward_mean']:.3f} ± {ref['reward_std']:.3f} | {pol['reward_mean']:.3f} ± "
            f"{pol['reward_std']:.3f} | {ref['toxicity_mean']:.4f} ± {ref['toxicity_std']:.4f} | "
            f"{pol['toxicity_mean']:.4f} ± {pol['toxicity_std']:.4f} | {ev['toxicity_change']:+.1%} "
            f"[{tlo:+.1%}, {thi:+.1%}] | {ev['relative_change']:+.1%} [{rlo:+.1%}, {rhi:+.1%}] "
            f"| {ev['kl_to_reference']:.3f} | {r['train_s']:.0f} | {r['eval_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    out += ["", "Reward = the classifier margin of 'not offensive' (higher = less toxic) in both rows."]
    shared = [mode for mode, r in det.items() if r.get("reference_shared")]
    if shared:
        out.append(
            f"The reference's held-out responses were sampled once, by the first run, and read by {', '.join(shared)} "
            "(the reference is the untrained network, with the same prompts and seed): its eval s leaves them out."
        )
    return out + [""]


def _mfu(results: dict) -> list[str]:
    f = mfu(results)
    if not f:
        return []
    raw, peak = results["mfu_raw"], results["peak"]
    lm_head = (
        "the lm_head counted only over response tokens"
        if f["lm_head_split"]
        else "the lm_head still counted over prompt tokens too, so still an overestimate"
    )
    return (
        [
            "## 4. FLOP utilisation",
            "",
            f"Machine peak: float32 `torch.mm` of {peak['n']}x{peak['n']} matrices, median of 5: "
            f"{peak['flops'] / 1e9:.1f} GFLOP/s. One PPO step of {f['model']} at batch 16: generating the batch "
            f"({raw['query_tokens']} prompt tokens, {raw['generated_tokens']:.0f} new tokens, median of "
            f"{results['suite']['rollout_reps']} timed generations) plus our `step` (median from section 1; "
            f"{raw['step_tokens']} prompt+response tokens through two no-grad forwards and one forward+backward). "
            "FLOPs per token from trl 1.16's `compute_flops_per_token` (forward = a third of its figure). "
            "The trl convention counts backward as 2x forward, which overstates a LoRA step: the frozen weights get "
            f"no weight gradient, so the LoRA-aware row counts backward as 1x forward ({lm_head}).",
            "",
            "| phase | GFLOP | seconds | GFLOP/s | share of measured peak (MFU) |",
            "|---|---|---|---|---|",
        ]
        + [
            f"| {name} | {x['flops'] / 1e9:.1f} | {x['seconds']:.2f} | {x['flops'] / x['seconds'] / 1e9:.1f} "
            f"| {x['mfu']:.1%} |"
            for name, x in f["rows"]
        ]
        + _mfu_caveat(f["rows"])
        + [""]
    )


def _mfu_caveat(rows: list) -> list[str]:
    over = [name for name, x in rows if x["mfu"] > 1.0]
    if not over:
        return []
    return [
        "",
        f"A share above 100% ({', '.join(over)}) cannot be: the peak is one `torch.mm` measured at the start of the "
        "run, which varies from run to run on this shared 2-core machine (it can read 20% apart), and the FLOP "
        "count is an estimate (trl's per-token formula at the batch's longest sequence, for every token). Read "
        "these shares as rough (+-20% at best); "
        "the LoRA-aware rows are the fairer count for this step.",
    ]


def _notes(results: dict) -> list[str]:
    out: list[str] = []
    rows = targets(results)
    missed = [r for r in rows if r[2] == "missed"]
    out += ["## Closing note", ""]
    if not rows or all(r[2] == "n/a" for r in rows):
        out.append("This run did not measure the targets (they need the default suite with trl).")
    elif missed:
        out.append("Missed targets, with the figures: " + "; ".join(f"{a}: {b}" for a, b, _ in missed) + ".")
        step = _get(results, "step", "smollm2")
        if step and "trl_copy" in step and any("memory" in a.lower() for a, _, _ in missed):
            o, c, n = step["ours"], step["trl_copy"], step["trl_none"]
            out += [
                "",
                f"Where the memory goes (SmolLM2): ours holds {o['rss_after_load_mb']:.0f} MB after loading and "
                f"{o['peak_rss_mb'] - o['rss_after_load_mb']:.0f} MB more at its peak during the step; trl with a "
                f"copy holds {c['rss_after_load_mb']:.0f} MB after loading (without: {n['rss_after_load_mb']:.0f} MB) "
                f"and {c['peak_rss_mb'] - c['rss_after_load_mb']:.0f} MB more during the step (without: "
                f"{n['peak_rss_mb'] - n['rss_after_load_mb']:.0f} MB). Our step-time peak, not the model, is what "
                "keeps the ratio above the target.",
            ]
    else:
        out.append("All measured targets are met in this run.")
    return out + [""]
