"""The evaluation's statistics and its second judge (MiniLM features + logistic regression on labelled tweets)."""

from __future__ import annotations

import pytest
import torch

from rlhf.evaluate import difference, evaluate, per_prompt, sample_reference, top_quartile
from rlhf.judge import DAVIDSON_CSV, clean_tweet, fit_judge, read_davidson


def test_per_prompt_means_top_quartile_and_difference():
    assert per_prompt([1, 3, 0, 0, 5, 7], 2) == [2, 0, 6]
    assert top_quartile([0.1, 0.9, 0.3, 0.8, 0.2, 0.0, 0.7, 0.4]) == [1, 3]
    assert top_quartile([0.5, 0.2]) == [0]  # at least one prompt
    assert difference([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.25)


def test_tweets_are_cleaned_of_handles_links_and_entities():
    assert clean_tweet("RT @bob: you &amp;amp; me http://t.co/x  ok") == "you & me ok"


@pytest.fixture(scope="module")
def judge():
    if not DAVIDSON_CSV.is_file():
        pytest.skip(f"{DAVIDSON_CSV} not found (the shared data folder sits beside the project checkout)")
    return fit_judge(DAVIDSON_CSV, limit=400)


def test_the_judge_agrees_with_held_out_human_labels(judge):
    assert judge.report.n == 400 and judge.report.folds == 5
    assert judge.report.cv_auroc > 0.8, judge.report  # measured on folds the head never saw
    texts, labels = read_davidson(DAVIDSON_CSV, limit=400, seed=1)
    p = judge.p_offensive(texts)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, p) > 0.8  # another random 400, mostly unseen
    calm, rude = judge.p_offensive(["Thank you, see you at the meeting tomorrow.", "shut up you stupid bitch"])
    assert calm < 0.5 < rude


def test_evaluate_answers_k_times_and_measures_its_noise_floor(judge, tiny_llama, tiny_classifier):
    from rlhf.config import GenerationConfig, LoRAConfig, PolicyConfig
    from rlhf.models import load_policy
    from rlhf.prompts import Prompt
    from rlhf.scorers import ClassifierScorer

    policy = load_policy(
        PolicyConfig(name_or_path=str(tiny_llama), lora=LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])), "cpu"
    )
    scorer = ClassifierScorer(str(tiny_classifier), label="nothate", device="cpu")
    texts = [f"#Person1#: hello number {i}.\n#Person2#: hi {i}!" for i in range(8)]
    prompts = [Prompt(str(i), t, None, "test") for i, t in enumerate(texts)]
    queries = [torch.tensor(policy.tokenizer(t).input_ids) for t in texts]
    gen = GenerationConfig(min_new_tokens=3, max_new_tokens=5, batch_size=16)
    reference = sample_reference(policy, queries, gen, seed=7, k=3)
    assert len(reference) == 24
    ev = evaluate(
        policy,
        scorer,
        True,
        prompts,
        queries,
        gen,
        seed=7,
        reference_responses=reference,
        k=3,
        judge=judge,
        noise_floor=True,
    )
    # an untrained adapter is the reference itself: same seeds, same answers, no change at all
    assert ev.answers_per_prompt == 3 and ev.policy == ev.reference
    assert all(v == pytest.approx([0.0, 0.0, 0.0], abs=1e-9) for v in ev.changes.values())
    # the noise floor samples the reference with other seeds: other answers, a change centred near zero
    assert set(ev.noise_floor) == set(ev.changes) and ev.noise_floor["reward"] != [0.0, 0.0, 0.0]
    lo, hi = ev.noise_floor["toxicity, second judge"][1:]
    assert lo <= 0.0 <= hi
    assert ev.judge["cv_auroc"] == judge.report.cv_auroc and 0.0 <= ev.policy.judge_toxicity_mean <= 1.0
    assert (
        0.0 <= ev.policy.near_empty_share <= 1.0 and ev.policy.top_quartile_toxicity >= ev.policy.toxicity_mean - 1e-9
    )
    assert "second judge" in ev.to_markdown() and "noise floor" in ev.to_markdown()
    with pytest.raises(ValueError, match="3 answers"):
        evaluate(policy, scorer, True, prompts, queries, gen, reference_responses=reference[:5], k=3)
