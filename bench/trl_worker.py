"""trl 0.11.4's side of the benchmark, run as a worker process inside the trl 0.11.4 venv (see bench/trl_env.py).

It imports trl 0.11.4 and, for the round's reward, only `rlhf.offline` (whose module level is the standard library),
never the parts of rlhf that need trl 1.16. Models come from the same folders our side loads.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.protocol import serve

STATE: dict[str, Any] = {}


def compat_folder(model: str) -> Path:
    """The model folder as transformers 4.46 reads it: same weights (linked), config and tokenizer translated.

    Folders written by transformers 5 keep RoPE's base in `rope_parameters` and name their tokenizer class
    `TokenizersBackend`; transformers 4.46 knows neither and would fall back to rope_theta=10000 (a different
    model) or fail, so both are translated here.
    """
    src = Path(model)
    out = Path(tempfile.mkdtemp(prefix="trl0114-model-"))
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            os.symlink(f.resolve(), out / f.name)
    config = json.loads((src / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    (out / "config.json").write_text(json.dumps(config))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only", "extra_special_tokens"):
        tok_cfg.pop(key, None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return out


def load(model: str, data: str, ref: str, seed: int = 0) -> dict:
    """A trl 0.11.4 PPOTrainer on the LoRA policy with the settings our run uses.

    ref "none": ref_model=None, so trl uses the policy with its adapter disabled as reference.
    ref "copy": ref_model=create_reference_model(model), a frozen deep copy, as trl's examples do.
    """
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
        PPOConfig,
        PPOTrainer,
        create_reference_model,
    )

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    plan = torch.load(Path(data) / "plan.pt")
    folder = compat_folder(model)
    lora, ppo, enc_dec = plan["lora"], plan["ppo"], plan["is_encoder_decoder"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        bias="none",
        task_type="SEQ_2_SEQ_LM" if enc_dec else "CAUSAL_LM",
    )
    cls = AutoModelForSeq2SeqLMWithValueHead if enc_dec else AutoModelForCausalLMWithValueHead
    torch.manual_seed(seed)
    model_vh = cls.from_pretrained(str(folder), peft_config=peft_config, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:
        tok.pad_token_id = plan["pad_token_id"]
    ref_model = create_reference_model(model_vh) if ref == "copy" else None
    config = PPOConfig(
        learning_rate=ppo["learning_rate"],
        batch_size=ppo["batch_size"],
        mini_batch_size=ppo["mini_batch_size"],
        ppo_epochs=ppo["ppo_epochs"],
        init_kl_coef=ppo["init_kl_coef"],
        adap_kl_ctrl=ppo["adaptive_kl"],
        target=ppo["target_kl"],
        horizon=ppo["horizon"],
        kl_penalty=ppo["kl_penalty"],
        gamma=ppo["gamma"],
        lam=ppo["lam"],
        cliprange=ppo["cliprange"],
        cliprange_value=ppo["cliprange_value"],
        vf_coef=ppo["vf_coef"],
        max_grad_norm=ppo["max_grad_norm"],
        whiten_rewards=ppo["whiten_rewards"],
        ratio_threshold=ppo["ratio_threshold"],
        use_score_scaling=ppo.get("use_score_scaling", False),
        use_score_norm=ppo.get("use_score_norm", False),
        score_clip=ppo.get("score_clip"),
        seed=seed,
    )
    trainer = PPOTrainer(config, model_vh, ref_model, tok)
    STATE.update(trainer=trainer, tok=tok, plan=plan, triplets=torch.load(Path(data) / "triplets.pt"))
    return {"load_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(), "trl_folder": str(folder)}


def step() -> dict:
    import torch

    t = STATE["triplets"]
    scores = [torch.tensor(float(s)) for s in t["scores"]]
    t0 = time.perf_counter()
    stats = STATE["trainer"].step(list(t["queries"]), list(t["responses"]), scores)
    return {
        "seconds": time.perf_counter() - t0,
        "rollout_forward_s": float(stats["time/ppo/forward_pass"]),
        "kl": float(stats["objective/kl"]),
    }


def _sampling(plan: dict) -> dict:
    """The sampling settings of our round, as keyword arguments to trl's `generate`."""
    gen = plan["generation"]
    return {
        "do_sample": True,
        "temperature": gen["temperature"],
        "top_k": gen["top_k"],
        "top_p": gen["top_p"],
        "pad_token_id": plan["pad_token_id"],
        "eos_token_id": plan["eos_token_ids"],
    }


def round_(steps: int, save_adapter: str | None = None) -> dict:
    """trl 0.11.4's own loop: `generate` then score then `step`, on our round's prompts and lengths.

    `save_adapter`: a folder to save the trained LoRA adapter to (peft's format), so our evaluation can judge it.
    """
    import torch

    from rlhf import offline

    trainer, tok, plan = STATE["trainer"], STATE["tok"], STATE["plan"]
    gen_kwargs = _sampling(plan)
    offline.profanity_logits(["warm-up"])  # load the classifier outside the timed loop, as our scorer does
    times = {"generate_s": 0.0, "score_s": 0.0, "update_s": 0.0}
    rewards = []
    t_round = time.perf_counter()
    for queries, max_new in plan["plan"][:steps]:
        t0 = time.perf_counter()
        responses = trainer.generate(
            list(queries), batch_size=len(queries), return_prompt=False, max_new_tokens=max_new, **gen_kwargs
        )
        t1 = time.perf_counter()
        texts = [s.strip() for s in tok.batch_decode(responses, skip_special_tokens=True)]
        # The offline preset's reward: the classifier's margin of "not offensive" (use_logit).
        scores = [torch.tensor(-x) for x in offline.profanity_logits(texts)]
        t2 = time.perf_counter()
        trainer.step(list(queries), responses, scores)
        t3 = time.perf_counter()
        times["generate_s"] += t1 - t0
        times["score_s"] += t2 - t1
        times["update_s"] += t3 - t2
        rewards.append(statistics.mean(float(s) for s in scores))
    train_s = time.perf_counter() - t_round
    if save_adapter:
        trainer.model.pretrained_model.save_pretrained(save_adapter)
    return {
        "steps": steps,
        "train_s": train_s,
        **times,
        "train_reward_first": rewards[0],
        "train_reward_last": rewards[-1],
    }


def gen_batch(index: int) -> dict:
    """trl 0.11.4's `PPOTrainer.generate` on batch `index` of the round's plan, as `round_` calls it."""
    import torch

    trainer, plan = STATE["trainer"], STATE["plan"]
    queries, max_new = plan["plan"][index]
    torch.manual_seed(index)
    t0 = time.perf_counter()
    responses = trainer.generate(
        list(queries), batch_size=len(queries), return_prompt=False, max_new_tokens=max_new, **_sampling(plan)
    )
    return {"seconds": time.perf_counter() - t0, "new_tokens": sum(len(r) for r in responses)}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("trl", "transformers", "peft", "torch", "accelerate")} | {
        "python": sys.version.split()[0]
    }


if __name__ == "__main__":
    serve({"load": load, "step": step, "round": round_, "gen_batch": gen_batch, "versions": versions})
