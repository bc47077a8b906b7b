"""The Reward & training tab: reward mode and its preview, PPO round settings, progress, history, rollback."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from feedback.rounds import RoundSettings, fit_mini_batch, mini_batch_note
from feedback.types import PreviewRow
from ui.common import bind, errors_to_page, info, require_admin, version_id, version_updates
from ui.rounds import KL_LOSS_SERIES, REWARD_SERIES, history_frame, metric_frame, progress_html
from ui.text import counted, plain

MODES = {"Model": "model", "Human": "human", "Blend": "blend"}
PREVIEW_LABEL = "Labeled items and the reward a round would give them"
PREVIEW_COLUMNS = ["id", "reward", "P(not offensive)", "human", "ratings", "response"]


# ---- pure views --------------------------------------------------------------------------------------------------
def _round4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def preview_frame(rows: Sequence[PreviewRow], mode: str) -> pd.DataFrame:
    """One row per labeled item with the reward `mode` gives it (4 decimals) and a response of 120 characters."""
    return pd.DataFrame(
        [
            {
                "id": r.generation_id,
                "reward": _round4(getattr(r, mode)),
                "P(not offensive)": _round4(r.model_score),
                "human": _round4(r.human_score),
                "ratings": r.n_human,
                "response": r.response[:120],
            }
            for r in rows
        ],
        columns=PREVIEW_COLUMNS,
    )


AGREEMENT_COLUMNS = ["between", "measure", "value", "items"]


def agreement_frame(rows) -> pd.DataFrame:
    """The agreement table (`feedback.human_reward.AgreementRow`s), values as text with 3 decimals, or why not."""
    return pd.DataFrame(
        [
            {
                "between": r.what,
                "measure": r.measure,
                "value": "too few items yet" if r.value is None else f"{r.value:.3f}",
                "items": r.n,
            }
            for r in rows
        ],
        columns=AGREEMENT_COLUMNS,
    )


def auto_weight_text(a) -> str:
    """One line on the fitted Blend weight (`feedback.human_reward.AutoWeight`), as plain text."""
    agreement = "" if a.agreement is None else f"; its blend's cross-validated {a.measure} {a.agreement:.3f}"
    return (
        f"Human weight {a.weight:.2f} (95% bootstrap interval {a.low:.2f} to {a.high:.2f}, {a.n} rated items)"
        f"{agreement}. Set on the slider, with reward mode Blend."
    )


def histogram(values: Sequence[float | None], n_bins: int = 10) -> pd.DataFrame:
    """Counts in `n_bins` equal bins over the values' range ([0, 1] when they fit in it: probabilities and
    blends; the classifier's margin in model mode is unbounded). None values are left out."""
    vals = [v for v in values if v is not None]
    lo, hi = (min(vals + [0.0]), max(vals + [1.0])) if vals else (0.0, 1.0)
    width = (hi - lo) / n_bins or 1.0
    counts = [0] * n_bins
    for v in vals:
        counts[min(int((v - lo) / width), n_bins - 1)] += 1
    labels = [f"{lo + k * width:.2f} to {lo + (k + 1) * width:.2f}" for k in range(n_bins)]
    return pd.DataFrame({"reward": labels, "items": counts})


def round_settings(
    mode_label: str, weight, steps, batch_size, learning_rate, kl_coef, eval_prompts, mini_batch_size: int, replay=False
) -> RoundSettings:
    """The page's fields as settings; the mini-batch is the largest divisor of the batch that the default
    mini-batch size also divides into, so any batch size the person types divides exactly."""
    return RoundSettings(
        mode=MODES[mode_label],
        weight=float(weight),
        steps=int(steps),
        batch_size=int(batch_size),
        mini_batch_size=fit_mini_batch(int(batch_size), mini_batch_size),
        learning_rate=float(learning_rate),
        init_kl_coef=float(kl_coef),
        eval_prompts=int(eval_prompts),
        replay=bool(replay),
    )


def round_steps(latest) -> tuple[int, int]:
    """(steps done, steps asked for) of the latest round; (0, 0) when there is none."""
    if latest is None:
        return 0, 0
    return len(latest.metrics), int(latest.config.get("settings", {}).get("steps", 1)) or 1


def round_status_text(latest, cancelling: bool = False) -> str:
    """The status line of the latest round (None: no round yet); a failed round's first error line as text."""
    if latest is None:
        return "No round yet. Choose a reward mode and press **Start round**."
    done, total = round_steps(latest)
    text = f"Round {latest.id}: **{latest.status}** · {done}/{total} steps · {plain(latest.reward_mode)} reward"
    if cancelling:
        text += " · **cancelling** after the current step"
    if latest.status in ("failed", "interrupted") and latest.error:
        text += f"\n\n{plain(latest.error.splitlines()[0])}. The previous policy version stays current."
    return text


# ---- layout ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrainingTab:
    mode: gr.Radio
    weight: gr.Slider
    auto: gr.Button
    auto_note: gr.Textbox
    agreement: gr.Dataframe
    preview_table: gr.Dataframe
    histogram: gr.BarPlot
    steps: gr.Number
    batch: gr.Number
    lr: gr.Number
    kl: gr.Number
    n_eval: gr.Number
    replay: gr.Checkbox
    start: gr.Button
    cancel: gr.Button
    round_status: gr.Markdown
    round_progress: gr.HTML
    reward_plot: gr.LinePlot
    kl_plot: gr.LinePlot
    history: gr.Dataframe
    version_pick: gr.Dropdown
    rollback: gr.Button

    @property
    def round_outputs(self) -> list:
        return [self.round_status, self.round_progress, self.reward_plot, self.kl_plot, self.history]


def build_training_tab(studio, state: gr.State) -> TrainingTab:
    defaults = studio.round_defaults()
    with gr.Tab("Reward & training", id="train") as tab_page:
        with gr.Row():
            mode = gr.Radio(list(MODES), value="Model", label="Reward mode", elem_id="mode")
            weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Human weight (Blend)", elem_id="weight")
        with gr.Row():
            b_auto = gr.Button("Auto weight from the ratings", size="sm", elem_id="auto-weight")
            auto_note = gr.Textbox(label="Auto weight", interactive=False, lines=1, elem_id="auto-weight-note")
        agreement = gr.Dataframe(
            label="Agreement with the annotators", interactive=False, headers=AGREEMENT_COLUMNS, elem_id="agreement"
        )
        preview_table = gr.Dataframe(label=PREVIEW_LABEL, interactive=False, max_height=300, elem_id="preview")
        hist = gr.BarPlot(x="reward", y="items", title="Reward histogram (labeled items)", height=220, visible=False)
        with gr.Row():
            steps = gr.Number(value=defaults.steps, label="PPO steps", precision=0, minimum=1, elem_id="steps")
            batch = gr.Number(value=defaults.batch_size, label="Batch size", precision=0, minimum=1, elem_id="batch")
            lr = gr.Number(value=defaults.learning_rate, label="Learning rate", elem_id="lr")
            kl = gr.Number(value=defaults.init_kl_coef, label="KL coefficient", elem_id="kl")
            n_eval = gr.Number(
                value=defaults.eval_prompts,
                label="Held-out prompts for before/after",
                precision=0,
                minimum=0,
                elem_id="n-eval",
            )
            replay = gr.Checkbox(
                value=defaults.replay,
                label="Replay stored rated samples (off-policy; default: fresh samples every step)",
                elem_id="replay",
            )
        with gr.Row():
            b_start = gr.Button("Start round", variant="primary", elem_id="start-round")
            b_cancel = gr.Button("Cancel round", variant="stop", elem_id="cancel-round")
        round_status = gr.Markdown(elem_id="round-status")
        round_progress = gr.HTML(progress_html(0, 0), elem_id="round-progress")
        with gr.Row():
            reward_plot = gr.LinePlot(
                x="step", y="value", color="metric", title="Mean reward per step", height=240, visible=False
            )
            kl_plot = gr.LinePlot(
                x="step", y="value", color="metric", title="KL and loss per step", height=240, visible=False
            )
        history = gr.Dataframe(label="Rounds", interactive=False, elem_id="history")
        with gr.Row():
            version_pick = gr.Dropdown(label="Policy version", choices=[], elem_id="version-pick")
            b_rollback = gr.Button("Make this version current", elem_id="rollback")

    tab = TrainingTab(
        mode=mode, weight=weight, auto=b_auto, auto_note=auto_note, agreement=agreement, preview_table=preview_table, histogram=hist, steps=steps, batch=batch, lr=lr,
        kl=kl, n_eval=n_eval, replay=replay, start=b_start, cancel=b_cancel, round_status=round_status,
        round_progress=round_progress, reward_plot=reward_plot, kl_plot=kl_plot, history=history,
        version_pick=version_pick, rollback=b_rollback,
    )  # fmt: skip
    on_preview = bind(preview, studio=studio, tab=tab)
    tab.mode.change(on_preview, [tab.mode, tab.weight], [tab.preview_table, tab.histogram])
    tab.weight.change(on_preview, [tab.mode, tab.weight], [tab.preview_table, tab.histogram])  # mouse and keys
    # ratings arrive while the page is open: opening the tab shows the items rated since it was last drawn
    tab_page.select(on_preview, [tab.mode, tab.weight], [tab.preview_table, tab.histogram])
    tab_page.select(bind(agreement_view, studio=studio, tab=tab), None, [tab.agreement])
    tab.auto.click(bind(fit_auto_weight, studio=studio, tab=tab), None, [tab.weight, tab.mode, tab.auto_note])
    tab.start.click(
        bind(start_round, studio=studio, tab=tab, mini_batch_size=defaults.mini_batch_size),
        [state, tab.mode, tab.weight, tab.steps, tab.batch, tab.lr, tab.kl, tab.n_eval, tab.replay],
        tab.round_outputs,
    )
    tab.cancel.click(bind(cancel_round, studio=studio, tab=tab), [state], tab.round_outputs)
    return tab


# ---- callbacks -------------------------------------------------------------------------------------------------------
@errors_to_page
def preview(mode_label: str, w: float, *, studio, tab: TrainingTab):
    mode = MODES[mode_label]
    rows, note = studio.preview(mode, float(w))
    label = PREVIEW_LABEL if note is None or mode == "model" else f"{PREVIEW_LABEL}. {note}"
    return {
        tab.preview_table: gr.Dataframe(value=preview_frame(rows, mode), label=label),
        tab.histogram: gr.BarPlot(
            histogram([getattr(r, mode) for r in rows]), visible=any(getattr(r, mode) is not None for r in rows)
        ),
    }


@errors_to_page
def agreement_view(*, studio, tab: TrainingTab):
    return {tab.agreement: agreement_frame(studio.agreement_table())}


@errors_to_page
def fit_auto_weight(*, studio, tab: TrainingTab):
    a = studio.auto_weight()
    return {tab.weight: a.weight, tab.mode: "Blend", tab.auto_note: auto_weight_text(a)}


def phase_of(studio, latest):
    """The running round's phase, when `latest` is the round running now."""
    runner = studio.runner
    if runner is None or latest is None or runner.round_id != latest.id:
        return None
    return runner.phase


def round_view(studio, tab: TrainingTab) -> dict:
    rounds = studio.svc.rounds()
    latest = rounds[0] if rounds else None
    runner = studio.runner
    cancelling = latest is not None and runner is not None and runner.cancelling and runner.round_id == latest.id
    names = {v.id: v.name for v in studio.svc.versions()}
    metrics = latest.metrics if latest is not None else []
    phase = phase_of(studio, latest)
    bar = (
        progress_html(phase.done, phase.total, phase.name, phase.eta_s)
        if phase
        else progress_html(*round_steps(latest))
    )
    return {
        tab.round_status: round_status_text(latest, cancelling),
        tab.round_progress: bar,
        # no axes without data: an empty plot reads as a broken one
        tab.reward_plot: gr.LinePlot(metric_frame(metrics, REWARD_SERIES), visible=bool(metrics)),
        tab.kl_plot: gr.LinePlot(metric_frame(metrics, KL_LOSS_SERIES), visible=bool(metrics)),
        tab.history: history_frame(rounds, names),
    }


@errors_to_page
def start_round(
    st, mode_label, w, n_steps, n_batch, rate_lr, kl_coef, n_eval_prompts, replay=False, *, studio, tab, mini_batch_size
):
    require_admin(st)
    settings = round_settings(
        mode_label, w, n_steps, n_batch, rate_lr, kl_coef, n_eval_prompts, mini_batch_size, replay
    )
    started = studio.start_round(settings)
    note = mini_batch_note(settings.batch_size, settings.mini_batch_size, mini_batch_size)
    info(
        f"Round {started.id} started ({settings.mode} reward, {counted(settings.steps, 'step')})."
        + (f" Note: {note}." if note else "")
    )
    return round_view(studio, tab)


@errors_to_page
def cancel_round(st, *, studio, tab):
    require_admin(st)
    if not studio.cancel_round():
        info("No round is running.")
    else:
        info("Cancelling: the round stops after its current step, and the previous version stays current.")
    return round_view(studio, tab)


@errors_to_page
def rollback(st, choice, *, studio, tab, dropdowns):
    """Make the chosen version current; every version dropdown (`dropdowns`, of any tab) follows."""
    require_admin(st)
    if not choice:
        raise ValueError("pick a policy version first")
    v = studio.rollback(version_id(choice))
    info(f"{v.name} is now current; new items come from it.")
    return {**round_view(studio, tab), **version_updates(studio, dropdowns)}


def round_tick(seen, *, studio, tab, seen_state):
    """Redraw only when a round moved on: re-sending the same plot every second makes it flicker."""
    rounds = studio.svc.rounds()
    phase = phase_of(studio, rounds[0] if rounds else None)
    key = tuple((r.id, r.status, len(r.metrics)) for r in rounds[:1]) + (len(rounds), phase)
    if key == seen:
        return gr.skip()
    return {seen_state: key, **round_view(studio, tab)}
