"""The reward-backbone benchmark on a few labelled tweets with the tiny llama, trl's RewardTrainer included.

Every figure in the table is checked against what sklearn computes from the scores the JSON saves.
"""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench.reward_backbones import DATA, load_tweets, main, pairs_of, render, split


def test_pairs_use_every_rating_and_cycle_the_smaller_side():
    chosen, rejected = pairs_of(["g1", "b1", "b2", "b3"], [1, 0, 0, 0], seed=0)
    assert chosen == ["g1", "g1", "g1"]
    assert sorted(rejected) == ["b1", "b2", "b3"]
    with pytest.raises(ValueError, match="one good and one bad"):
        pairs_of(["a", "b"], [1, 1], seed=0)


def test_samples_nest_and_never_touch_the_heldout_tweets():
    held, pool = split(100, [10, 30], heldout=20, seed=1)
    assert len(held) == 20 and len(pool) == 30
    assert not set(held) & set(pool)
    assert (held, pool) == split(100, [10, 30], heldout=20, seed=1)
    with pytest.raises(ValueError, match="exceed"):
        split(40, [30], heldout=20, seed=0)


@pytest.mark.slow  # the classifier head and the baseline load the packaged profanity model; trl trains
def test_bench_table_matches_the_saved_scores(tmp_path, tiny_llama):
    if not DATA.exists():
        pytest.skip(f"{DATA} not found (the shared data folder sits beside the project checkout)")
    out = tmp_path / "rb.md"
    argv = ["--out", str(out), "--sizes", "30,60", "--heldout", "60", "--folds", "3", "--policy", str(tiny_llama)]
    assert main([*argv, "--trl-max-steps", "2", "--trl-batch", "4", "--max-length", "64"]) == 0

    results = json.loads(out.with_suffix(".json").read_text())
    report = out.read_text()
    assert report == render(results)
    held_labels = results["heldout"]["labels"]
    texts, labels = load_tweets(DATA)
    held_idx, pool = split(len(texts), [30, 60], 60, 0)
    assert held_labels == [labels[i] for i in held_idx]
    assert [s["n"] for s in results["sizes"]] == [30, 60]
    assert [s["good"] for s in results["sizes"]] == [sum(labels[i] for i in pool[:n]) for n in (30, 60)]

    for size in results["sizes"]:
        rows = {r["method"]: r for r in size["rows"]}
        assert set(rows) == {"head/policy", "head/classifier", "trl/lora", "packaged"}
        for method, r in rows.items():
            scores = np.asarray(r["heldout_scores"])
            assert len(scores) == 60 and np.isfinite(scores).all()
            auroc = roc_auc_score(held_labels, scores)
            assert r["heldout"]["auroc"] == pytest.approx(auroc)
            line = next(x for x in report.splitlines() if x.startswith(f"| {size['n']} (") and f"| {method}" in x)
            assert f"| {auroc:.3f} |" in line
        for method in ("head/policy", "head/classifier"):
            r = rows[method]
            assert r["heldout"]["accuracy"] == pytest.approx(
                np.mean((np.asarray(r["heldout_scores"]) > 0) == held_labels)
            )
            assert r["cv"]["folds"] == 3 and 0.0 <= r["cv"]["auroc"] <= 1.0
            assert (
                0 < r["refit_s"] and 0 < r["features_s"] and r["fit_s"] == pytest.approx(r["features_s"] + r["head_s"])
            )
        trl = rows["trl/lora"]
        assert trl["steps"] == 2 and math.isfinite(trl["train_loss"])
        assert trl["pairs"] == max(size["good"], size["n"] - size["good"])
        assert len(set(trl["heldout_scores"])) > 1  # the score head reads the text, not a constant

    # the packaged classifier's own features separate these tweets from 60 ratings, and it is the same baseline
    # at every N
    last = {r["method"]: r for r in results["sizes"][-1]["rows"]}
    assert last["head/classifier"]["heldout"]["auroc"] > 0.7
    assert results["sizes"][0]["rows"][-1]["heldout_scores"] == last["packaged"]["heldout_scores"]
    assert f"{results['machine']['cores']} cores" in report
