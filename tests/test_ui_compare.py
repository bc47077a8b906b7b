"""The Compare tab's views: answer scores, held-out prompt choices, and the evaluation's table, summary and chart."""

from __future__ import annotations

from types import SimpleNamespace

from ui.compare import answer_scores, eval_chart, eval_summary, eval_table, heldout_choices, heldout_id


def _side(reward_mean, reward_std, toxicity_mean, flagged_share, tokens):
    return SimpleNamespace(
        reward_mean=reward_mean,
        reward_std=reward_std,
        toxicity_mean=toxicity_mean,
        flagged_share=flagged_share,
        response_tokens_mean=tokens,
    )


EV = SimpleNamespace(
    reference=_side(1.234567, 0.5, 0.0587, 0.125, 12.34567),
    policy=_side(1.5, 0.25, 0.04531, 0.0625, 10.0),
    relative_change=0.2150,
    relative_change_ci95=(-0.0512, 0.4),
    kl_to_reference=0.123456,
    n_prompts=16,
)


def test_answer_scores_sign_the_reward():
    assert (
        answer_scores(SimpleNamespace(reward=0.5, p_not_offensive=0.98765)) == "reward +0.500 · P(not offensive) 0.988"
    )
    assert answer_scores(SimpleNamespace(reward=-1.25, p_not_offensive=0.1)).startswith("reward -1.250")


def test_heldout_choices_cut_the_prompt_and_parse_back_to_its_id():
    prompts = [SimpleNamespace(id=12, text="x" * 100), SimpleNamespace(id=7, text="#Person1#: hi: there")]
    choices = heldout_choices(prompts)
    assert choices == ["#12: " + "x" * 70, "#7: #Person1#: hi: there"]
    assert [heldout_id(c) for c in choices] == [12, 7]


def test_evaluation_table_puts_reference_and_policy_side_by_side_rounded():
    table = eval_table(EV)
    assert table["metric"].tolist() == [
        "reward mean",
        "reward std",
        "toxicity mean",
        "flagged share",
        "response tokens",
    ]
    assert table["reference"].tolist() == [1.2346, 0.5, 0.0587, 0.125, 12.3457]
    assert table["policy"].tolist() == [1.5, 0.25, 0.0453, 0.0625, 10.0]


def test_evaluation_summary_and_chart():
    assert eval_summary(EV) == (
        "Relative change of the mean reward: **+21.50%** (95% CI -5.12% to +40.00%); "
        "mean KL to the reference: **0.1235** nats; 16 held-out prompts."
    )
    assert eval_chart(EV).to_dict("records") == [
        {"model": "reference", "mean reward": 1.234567},
        {"model": "policy", "mean reward": 1.5},
    ]
