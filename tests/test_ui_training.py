"""The Reward & training tab's views: the reward preview and its histogram, round settings from the page's
fields, the round status line; and the rollback callback's updates of both version dropdowns."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest

from feedback.types import PreviewRow
from ui import training
from ui.common import UserState
from ui.training import PREVIEW_COLUMNS, histogram, preview_frame, round_settings, round_status_text, round_steps


def test_histogram_bins_over_zero_to_one_unless_the_values_leave_it():
    table = histogram([0.05, 0.15, 0.12, 0.95, 1.0, None])
    assert table["items"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the last bin; None is left out
    assert table["reward"].tolist()[:2] == ["0.00 to 0.10", "0.10 to 0.20"] and table["reward"].iloc[-1] == (
        "0.90 to 1.00"
    )
    margins = histogram([-3.0, 1.0, 2.0], n_bins=5)  # the classifier's margin: the range grows to [-3, 2]
    assert margins["reward"].tolist() == [
        "-3.00 to -2.00",
        "-2.00 to -1.00",
        "-1.00 to 0.00",
        "0.00 to 1.00",
        "1.00 to 2.00",
    ]
    assert margins["items"].tolist() == [1, 0, 0, 0, 2]
    assert histogram([])["items"].sum() == 0 and len(histogram([], n_bins=4)) == 4


def test_preview_shows_the_chosen_modes_reward_rounded_and_a_short_response():
    rows = [
        PreviewRow(5, "p", "r" * 200, 2, 0.123456, 0.75, 1.98766, 0.75, 0.555555),
        PreviewRow(6, "p", "short", 0, 0.9, None, 2.5, None, 0.9),
    ]
    blend = preview_frame(rows, "blend")
    assert list(blend.columns) == PREVIEW_COLUMNS
    first, second = blend.to_dict("records")
    assert first == {
        "id": 5,
        "reward": 0.5556,
        "P(not offensive)": 0.1235,
        "human": 0.75,
        "ratings": 2,
        "response": "r" * 120,
    }
    assert pd.isna(second["human"]) and second["reward"] == 0.9  # a missing human score stays empty
    assert preview_frame(rows, "model")["reward"].tolist() == [1.9877, 2.5]
    assert list(preview_frame([], "human").columns) == PREVIEW_COLUMNS


def test_round_settings_take_the_fields_and_a_mini_batch_that_divides_the_batch():
    s = round_settings("Blend", "0.25", 3.0, 12, "5e-5", 0.1, 8.0, mini_batch_size=8)
    assert (s.mode, s.weight, s.steps, s.batch_size, s.mini_batch_size) == ("blend", 0.25, 3, 12, 4)
    assert (s.learning_rate, s.init_kl_coef, s.eval_prompts) == (5e-5, 0.1, 8)
    assert round_settings("Model", 0.5, 1, 7, 1e-4, 0.2, 0, mini_batch_size=4).mini_batch_size == 1
    assert round_settings("Human", 0.5, 1, 16, 1e-4, 0.2, 0, mini_batch_size=4).mini_batch_size == 4


def _round(**kw):
    base = dict(
        id=3, status="running", reward_mode="blend", metrics=[{}, {}], config={"settings": {"steps": 5}}, error=None
    )
    return SimpleNamespace(**{**base, **kw})


def test_round_status_counts_steps_and_gives_a_failures_first_line_as_text():
    assert round_status_text(None) == "No round yet. Choose a reward mode and press **Start round**."
    assert round_steps(None) == (0, 0) and round_steps(_round()) == (2, 5)
    assert round_steps(_round(config={})) == (2, 1)  # an old round without settings counts as one step
    assert round_status_text(_round()) == "Round 3: **running** · 2/5 steps · blend reward"
    assert round_status_text(_round(), cancelling=True).endswith(" · **cancelling** after the current step")
    failed = round_status_text(_round(status="failed", error="CUDA <b>out</b> of memory\nTraceback ..."))
    assert failed == (
        "Round 3: **failed** · 2/5 steps · blend reward\n\n"
        "CUDA &#60;b&#62;out&#60;&#47;b&#62; of memory. The previous policy version stays current."
    )
    assert "\n\n" not in round_status_text(_round(status="done", error="ignored"))


# ---- callbacks against a stub studio -----------------------------------------------------------------------------------
def _studio():
    from feedback.rounds import RoundSettings

    versions = [
        SimpleNamespace(id=2, name="v1", is_current=False),
        SimpleNamespace(id=1, name="v0 (base)", is_current=True),
    ]
    rolled = []

    def rollback(vid):
        rolled.append(vid)
        return SimpleNamespace(name=f"v{vid - 1}")

    svc = SimpleNamespace(rounds=lambda: [], versions=lambda: versions)
    return SimpleNamespace(
        svc=svc, runner=None, rollback=rollback, rolled=rolled, round_defaults=lambda: RoundSettings(mini_batch_size=4)
    )


def test_rollback_needs_an_admin_and_then_both_dropdowns_follow():
    studio = _studio()
    with gr.Blocks():
        tab = training.build_training_tab(studio, gr.State(UserState()))
        other = gr.Dropdown()
    dropdowns = [tab.version_pick, other]
    annotator = UserState(annotator_id=1, name="bob", role="annotator")
    with pytest.warns(UserWarning, match="bob is an annotator&#59; only an admin may do this"):
        assert training.rollback(annotator, "1: v0", studio=studio, tab=tab, dropdowns=dropdowns) == gr.skip()
    admin = UserState(annotator_id=2, name="ann", role="admin")
    out = training.rollback(admin, "1: v0 (base) (current)", studio=studio, tab=tab, dropdowns=dropdowns)
    assert studio.rolled == [1]
    assert set(out) == {*tab.round_outputs, *dropdowns}
    assert out[other] == {
        "__type__": "update",
        "choices": ["2: v1", "1: v0 (base) (current)"],
        "value": "1: v0 (base) (current)",
    }
    assert out[tab.round_status].startswith("No round yet")
    assert out[tab.reward_plot].visible is False and out[tab.kl_plot].visible is False  # no empty axes


def test_the_round_timer_redraws_only_when_a_round_moved_on():
    studio = _studio()
    with gr.Blocks():
        tab = training.build_training_tab(studio, gr.State(UserState()))
        seen = gr.State(None)
    first = training.round_tick(None, studio=studio, tab=tab, seen_state=seen)
    assert set(first) == {seen, *tab.round_outputs} and first[seen] == (0, None)  # no rounds, no phase
    assert training.round_tick(first[seen], studio=studio, tab=tab, seen_state=seen) == gr.skip()
    studio.svc.rounds = lambda: [SimpleNamespace(id=1, status="running", metrics=[{}], **_ROUND_REST)]
    moved = training.round_tick(first[seen], studio=studio, tab=tab, seen_state=seen)
    assert moved[seen] == ((1, "running", 1), 1, None) and moved[tab.round_status].startswith("Round 1: **running**")


_ROUND_REST = dict(
    reward_mode="model",
    reward_weight=0.0,
    config={"settings": {"steps": 4}},
    error=None,
    evaluation=None,
    input_version_id=1,
    output_version_id=None,
)


def test_agreement_frame_and_auto_weight_text_are_plain_figures():
    from feedback.human_reward import AgreementRow, AutoWeight
    from ui.training import agreement_frame, auto_weight_text

    frame = agreement_frame(
        [
            AgreementRow("reward classifier vs annotators", "AUROC", 0.81234, 12),
            AgreementRow("annotators vs each other", "Krippendorff's alpha (interval)", None, 0),
        ]
    )
    assert frame.to_dict("records") == [
        {"between": "reward classifier vs annotators", "measure": "AUROC", "value": "0.812", "items": 12},
        {
            "between": "annotators vs each other",
            "measure": "Krippendorff's alpha (interval)",
            "value": "too few items yet",
            "items": 0,
        },
    ]
    text = auto_weight_text(AutoWeight(0.7, 0.4, 1.0, 0.912, "AUROC", 30))
    assert text.startswith("Human weight 0.70 (95% bootstrap interval 0.40 to 1.00, 30 rated items)")
    assert "cross-validated AUROC 0.912" in text
