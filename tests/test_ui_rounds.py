"""The round views: reward apart from KL and loss, and a history with toxicity by both judges."""

from __future__ import annotations

from types import SimpleNamespace

from ui.rounds import HISTORY_COLUMNS, KL_LOSS_SERIES, REWARD_SERIES, before_after, history_frame, metric_frame


def test_reward_and_kl_loss_are_separate_series():
    metrics = [
        {"step": 1, "env/reward_mean": 2.5, "objective/kl": 0.01, "loss/total": -0.3},
        {"step": 2, "env/reward_mean": 3.0, "objective/kl": 0.02},
    ]
    reward = metric_frame(metrics, REWARD_SERIES)
    assert reward.to_dict("records") == [
        {"step": 1, "metric": "reward", "value": 2.5},
        {"step": 2, "metric": "reward", "value": 3.0},
    ]
    kl = metric_frame(metrics, KL_LOSS_SERIES)
    assert sorted(kl["metric"]) == ["KL", "KL", "loss"] and metric_frame([], REWARD_SERIES) is None


def test_history_names_versions_and_gives_toxicity_with_its_interval():
    ev = {
        "before_mean": 1.0,
        "after_mean": 1.5,
        "before_toxicity": 0.0587,
        "after_toxicity": 0.0453,
        "toxicity_change_vs_reference": -0.228,
        "toxicity_change_ci95": [-0.497, 0.243],
        "before_judge_toxicity": 0.1,
        "after_judge_toxicity": 0.08,
        "judge_toxicity_change_vs_reference": -0.2,
        "judge_toxicity_change_ci95": [-0.3, -0.1],
    }
    done = SimpleNamespace(
        id=2,
        status="done",
        reward_mode="blend",
        reward_weight=0.5,
        metrics=[{}, {}],
        evaluation=ev,
        input_version_id=1,
        output_version_id=3,
    )
    failed = SimpleNamespace(
        id=1,
        status="failed",
        reward_mode="model",
        reward_weight=0.0,
        metrics=[],
        evaluation=None,
        input_version_id=1,
        output_version_id=None,
    )
    table = history_frame([done, failed], {1: "v0 (base)", 3: "v1"})
    assert list(table.columns) == HISTORY_COLUMNS
    row, other = table.to_dict("records")
    assert row["toxicity, reward classifier"] == "0.0587 → 0.0453 (-22.8%, CI -49.7% to +24.3% vs reference)"
    assert row["toxicity, second judge"] == "0.1000 → 0.0800 (-20.0%, CI -30.0% to -10.0% vs reference)"
    assert (row["from"], row["to"], row["reward mode"], row["steps"]) == ("v0 (base)", "v1", "blend (w=0.50)", 2)
    assert (other["to"], other["toxicity, second judge"]) == ("", "")
    assert before_after({"before_mean": 1.0, "after_mean": 2.0}, "before_mean", "after_mean", "", "") == (
        "1.0000 → 2.0000"
    )


def test_round_progress_is_a_progress_bar_not_an_input():
    from ui.rounds import progress_html

    assert progress_html(3, 10).startswith('<progress max="10" value="3"') and "3/10 PPO steps" in progress_html(3, 10)
    assert 'value="10"' in progress_html(12, 10) and "<input" not in progress_html(3, 10)
    assert "no round yet" in progress_html(0, 0)


def test_round_progress_names_the_phase_and_the_time_left():
    from ui.rounds import progress_html

    text = progress_html(1, 4, "PPO step 2/4", 200.0)
    assert "PPO step 2/4 · 1/4 PPO steps · about 3 min left" in text
    assert "about 45 s left" in progress_html(4, 4, "evaluating the new version", 45.0)
    assert "&lt;b&gt;" in progress_html(1, 2, "<b>")
