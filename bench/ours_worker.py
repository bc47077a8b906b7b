"""Our side of the benchmark, run as a worker process (`python -m bench.ours_worker`) in the app's venv.

One process per measured configuration, so `ru_maxrss` (a high-water mark) belongs to that configuration alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.protocol import peak_rss_mb, serve

REPO = Path(__file__).resolve().parent.parent

# Set by load_step; one trainer per worker process.
STATE: dict[str, Any] = {}


def run_config(model: str, lora_targets: list[str], steps: int = 20, eval_prompts: int = 64, seed: int = 0):
    """The offline preset with another policy folder swapped in: same reward, prompts and PPO settings."""
    from rlhf.config import offline_preset

    cfg = offline_preset()
    cfg.policy.name_or_path = model
    cfg.policy.lora.target_modules = list(lora_targets)
    cfg.steps = steps
    cfg.eval_prompts = eval_prompts
    cfg.seed = seed
    return cfg


def build_tiny(kind: str, path: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models

    builder = {"tiny-t5": tiny_models.build_tiny_t5, "tiny-causal": tiny_models.build_tiny_llama}[kind]
    builder(Path(path))
    if kind == "tiny-causal":
        tiny_models.build_tiny_roberta_classifier(Path(path).parent / "tiny-roberta")
    return {"path": path}


def prepare(model: str, lora_targets: list[str], out: str, steps: int, seed: int = 0) -> dict:
    """Write the shared inputs: one scored batch (query, response, reward) and the whole round's plan.

    The triplets are sampled from our policy once, so both implementations update on identical data. The plan
    holds the queries and the response length of each of `steps` batches, drawn exactly as `rlhf.train.train`
    draws them, so trl's round sees the same prompts and lengths as ours.
    """
    import torch

    from rlhf.ppo import LengthSampler, eos_token_ids, generate
    from rlhf.train import batches, load_run

    cfg = run_config(model, lora_targets, steps=steps, seed=seed)
    run = load_run(cfg, log=lambda m: print(m, file=sys.stderr))
    data = batches(run.train_prompts, run.train_queries, cfg.ppo.batch_size, cfg.seed, cfg.data.group_by_length)
    lengths = LengthSampler(cfg.generation.min_new_tokens, cfg.generation.max_new_tokens, seed=cfg.seed)
    plan = [(list(q), lengths()) for _, q in (next(data) for _ in range(steps))]
    queries, max_new = plan[0]
    torch.manual_seed(seed)
    responses = generate(run.policy, queries, cfg.generation, max_new_tokens=max_new)
    scores = run.score_fn(run.decode(responses))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"queries": queries, "responses": responses, "scores": scores}, out_dir / "triplets.pt")
    torch.save(
        {
            "plan": plan,
            "eos_token_ids": sorted(eos_token_ids(run.policy)),
            "pad_token_id": run.policy.pad_token_id,
            "generation": vars(cfg.generation),
            "ppo": vars(cfg.ppo),
            "lora": vars(cfg.policy.lora),
            "is_encoder_decoder": run.policy.is_encoder_decoder,
        },
        out_dir / "plan.pt",
    )
    return {
        "query_tokens_mean": sum(len(q) for q in queries) / len(queries),
        "response_tokens_mean": sum(len(r) for r in responses) / len(responses),
        "score_mean": sum(scores) / len(scores),
    }


def load_step(model: str, lora_targets: list[str], data: str, seed: int = 0) -> dict:
    import torch

    from rlhf.models import load_policy
    from rlhf.ppo import PPOTrainer

    t0 = time.perf_counter()
    cfg = run_config(model, lora_targets, seed=seed)
    torch.manual_seed(seed)
    policy = load_policy(cfg.policy, "cpu", log=lambda m: print(m, file=sys.stderr))
    STATE.update(
        cfg=cfg,
        policy=policy,
        trainer=PPOTrainer(policy, cfg.ppo, cfg.generation.temperature, seed=seed),
        triplets=torch.load(Path(data) / "triplets.pt"),
    )
    return {"load_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(), "ppo": vars(cfg.ppo)}


def step() -> dict:
    t = STATE["triplets"]
    t0 = time.perf_counter()
    stats = STATE["trainer"].step(t["queries"], t["responses"], t["scores"])
    return {
        "seconds": time.perf_counter() - t0,
        "rollout_forward_s": stats["time/rollout_forward_s"],
        "kl": stats["objective/kl"],
    }


def mfu(reps: int) -> dict:
    """Time generating the triplets' responses (batch 16, the round's length), for the FLOPs of a whole step."""
    import torch

    from rlhf.ppo import generate

    policy, cfg, t = STATE["policy"], STATE["cfg"], STATE["triplets"]
    max_new = max(len(r) for r in t["responses"])
    times, new_tokens = [], []
    for rep in range(reps + 1):
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        out = generate(policy, t["queries"], cfg.generation, max_new_tokens=max_new)
        if rep:  # the first call is a warm-up
            times.append(time.perf_counter() - t0)
            new_tokens.append(sum(len(r) for r in out))
    config = policy.model.config
    seq = [len(q) + len(r) for q, r in zip(t["queries"], t["responses"], strict=True)]
    fwd_per_token = lm_head_per_token = None
    if not getattr(config, "is_encoder_decoder", False):
        from trl.trainer.utils import compute_flops_per_token

        # compute_flops_per_token counts training (forward + 2x backward); a forward pass is a third of it.
        fwd_per_token = compute_flops_per_token(config, max(seq)) / 3
        lm_head_per_token = 2 * config.vocab_size * config.hidden_size
    return {
        "generate_s": statistics.median(times),
        "generated_tokens": statistics.median(new_tokens),
        "query_tokens": sum(len(q) for q in t["queries"]),
        "step_tokens": sum(seq),
        "forward_flops_per_token": fwd_per_token,
        "lm_head_flops_per_token": lm_head_per_token,
        "response_tokens": sum(len(r) for r in t["responses"]),
    }


def peak_matmul(n: int, reps: int) -> dict:
    """Measured float32 matmul peak of this machine: 2 n^3 FLOPs per (n x n) @ (n x n), median of `reps`."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"n": n, "seconds": t, "flops": 2 * n**3 / t, "torch_threads": torch.get_num_threads()}


def rollout(
    model: str, lora_targets: list[str], reward: str | None, new_tokens: int, batch_sizes: list[int], reps: int
) -> dict:
    """Generation tokens/s at each batch size with exactly `new_tokens` new tokens; scoring texts/s at batch 32."""
    import torch
    from trl.trainer.utils import pad

    from rlhf.config import RewardConfig
    from rlhf.scorers import load_scorer
    from rlhf.train import load_run

    cfg = run_config(model, lora_targets)
    if reward is not None:
        cfg.reward = RewardConfig(name_or_path=reward, label="nothate")
    run = load_run(cfg, log=lambda m: print(m, file=sys.stderr))
    policy = run.policy
    side = "right" if policy.is_encoder_decoder else "left"
    gen_kw = dict(do_sample=True, top_k=0, top_p=1.0, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    gen_kw["pad_token_id"] = policy.pad_token_id
    out: dict[str, Any] = {"generation": {}}
    texts: list[str] = []
    cursor = 0
    for bs in batch_sizes:
        times = []
        for rep in range(reps + 1):
            chunk = [run.train_queries[(cursor + i) % len(run.train_queries)] for i in range(bs)]
            cursor += bs
            ids = pad(chunk, padding_value=policy.pad_token_id, padding_side=side)
            mask = pad([torch.ones_like(q) for q in chunk], padding_value=0, padding_side=side)
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            with torch.no_grad():
                seqs = policy.model.generate(input_ids=ids, attention_mask=mask, **gen_kw)
            if rep:  # the first call is a warm-up
                times.append(time.perf_counter() - t0)
            new = seqs[:, 1:] if policy.is_encoder_decoder else seqs[:, ids.shape[1] :]
            texts += run.decode(list(new))
        t = statistics.median(times)
        out["generation"][str(bs)] = {"seconds": t, "tokens_per_s": bs * new_tokens / t, "reps": reps}
    scorer = load_scorer(cfg.reward, "cpu") if reward is not None else run.scorer
    batch = (texts * 32)[:32]
    times = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        scorer.score_batch(batch)
        if rep:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    out["scoring"] = {"scorer": scorer.name, "seconds": t, "texts_per_s": len(batch) / t, "reps": reps}
    out["torch_threads"] = torch.get_num_threads()
    return out


def detox(
    model: str,
    lora_targets: list[str],
    mode: str,
    steps: int,
    eval_prompts: int,
    seed: int = 0,
    noise: float = 0.15,
    reference_file: str | None = None,
) -> dict:
    """A whole round (generate, score, update) for `steps` steps, then the held-out evaluation.

    mode "model" rewards with the classifier's margin (the offline preset); mode "human" with a simulated
    annotator's 1-5 star ratings, mapped to [0, 1]. Evaluation always uses the classifier, so the two tables
    measure the same thing. `reference_file` holds the reference's held-out responses: read when it exists
    (same model, prompts and seed: the reference is the untrained network), else sampled and written.
    """
    import dataclasses

    import torch

    from bench.annotator import SimulatedAnnotator
    from rlhf.evaluate import sample_reference
    from rlhf.train import evaluate_run, load_run, train

    t_load = time.perf_counter()
    cfg = run_config(model, lora_targets, steps=steps, eval_prompts=eval_prompts, seed=seed)
    run = load_run(cfg, log=lambda m: print(m, file=sys.stderr))
    load_s = time.perf_counter() - t_load
    train_run = run
    if mode == "human":
        train_cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, use_logit=False))
        train_run = dataclasses.replace(
            run, cfg=train_cfg, scorer=SimulatedAnnotator(run.scorer, noise=noise, seed=seed)
        )
    elif mode != "model":
        raise ValueError(f"mode must be model or human, got {mode!r}")
    t0 = time.perf_counter()
    history = train(train_run, steps=steps, progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_path = Path(reference_file) if reference_file else None
    reference_shared = ref_path is not None and ref_path.exists()
    if reference_shared:
        reference = torch.load(ref_path)
    else:
        n = cfg.eval_prompts
        reference = sample_reference(
            run.policy, run.heldout_queries[:n], cfg.generation, cfg.eval_seed, k=cfg.eval_answers
        )
        if ref_path is not None:
            torch.save(reference, ref_path)
    ev = evaluate_run(run, reference_responses=reference)
    eval_s = time.perf_counter() - t0

    def phase(key: str) -> float:
        return sum(h[key] for h in history)

    return {
        "mode": mode,
        "steps": steps,
        "load_s": load_s,
        "train_s": train_s,
        "generate_s": phase("time/generate_s"),
        "score_s": phase("time/score_s"),
        "update_s": phase("time/step_s"),
        "eval_s": eval_s,
        "reference_shared": reference_shared,
        "train_reward_first": history[0]["env/reward_mean"],
        "train_reward_last": history[-1]["env/reward_mean"],
        "train_kl_last": history[-1]["objective/kl"],
        "eval": dataclasses.asdict(ev) | {"samples": []},
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def load_gen(model: str, lora_targets: list[str], data: str, seed: int = 0) -> dict:
    """The LoRA policy and the round's batch plan (written by `prepare`), for `gen_batch`."""
    import torch

    from rlhf.models import load_policy

    t0 = time.perf_counter()
    cfg = run_config(model, lora_targets, seed=seed)
    torch.manual_seed(seed)
    policy = load_policy(cfg.policy, "cpu", log=lambda m: print(m, file=sys.stderr))
    STATE.update(cfg=cfg, policy=policy, plan=torch.load(Path(data) / "plan.pt")["plan"])
    return {"load_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}


def gen_batch(index: int, draw: str = "cdf", seed: int = 0) -> dict:
    """`rlhf.ppo.rollout` (the round's own call) on batch `index` of the plan, split into its parts: the prompt pass
    (prefill), the one-token decode passes, the token draws, and the rest (logits processing, bookkeeping).

    draw "cdf": the draw as the app makes it; "torch": `torch.multinomial`'s own (an exponential number per entry).
    """
    import torch

    import rlhf.ppo as ppo

    policy, cfg = STATE["policy"], STATE["cfg"]
    queries, max_new = STATE["plan"][index]
    base = policy.model.get_base_model()
    passes: list[tuple[int, float]] = []
    draws: list[float] = []
    forward, one_per_row, multinomial = base.forward, ppo._one_per_row, torch.multinomial

    def timed_forward(*args, **kwargs):
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        passes.append((kwargs["input_ids"].shape[1], time.perf_counter() - t))
        return out

    def timed_draw(*args, **kwargs):
        t = time.perf_counter()
        out = multinomial(*args, **kwargs)
        draws.append(time.perf_counter() - t)
        return out

    base.forward, torch.multinomial = timed_forward, timed_draw
    if draw == "torch":
        ppo._one_per_row = lambda *a, **k: None
    try:
        t0 = time.perf_counter()
        out = ppo.rollout(policy, queries, cfg.generation, max_new_tokens=max_new, seed=seed)
        seconds = time.perf_counter() - t0
    finally:
        base.forward, torch.multinomial, ppo._one_per_row = forward, multinomial, one_per_row
    prefill = sum(d for n, d in passes if n > 1)
    decode = [d for n, d in passes if n == 1]
    return {
        "seconds": seconds,
        "prefill_s": prefill,
        "decode_s": sum(decode),
        "decode_steps": len(decode),
        "draw_s": sum(draws),
        "prompt_tokens": sum(len(q) for q in queries),
        "padded_prompt_tokens": len(queries) * max(len(q) for q in queries),
        "new_tokens": sum(len(r) for r in out.responses),
    }


if __name__ == "__main__":
    serve(
        {
            "load_gen": load_gen,
            "gen_batch": gen_batch,
            "build_tiny": build_tiny,
            "prepare": prepare,
            "load_step": load_step,
            "step": step,
            "mfu": mfu,
            "peak_matmul": peak_matmul,
            "rollout": rollout,
            "detox": detox,
        }
    )
