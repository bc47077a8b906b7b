"""The whole page: a status line and the four tabs, plus the events that cross tabs (timers, page load, versions)."""

from __future__ import annotations

import time

import gradio as gr

from ui.common import UserState, bind, version_updates
from ui.compare import build_compare_tab, heldout_update
from ui.data import build_data_tab, data_view
from ui.label import LabelTab, build_label_tab, restore_name, show_next
from ui.text import plain
from ui.training import build_training_tab, preview, rollback, round_tick, round_view


def status_text(
    *,
    error: str | None,
    ready: bool,
    loading: str,
    version: str = "",
    policy: str = "",
    refill_error: str | None = None,
) -> str:
    """The line above the tabs: a failed start-up, loading progress, or the current policy. All of it may come from
    options, files or exceptions, so all of it goes in as `plain`."""
    if error:
        return f"**Start-up failed**: {plain(error)}. Fix the option and restart; ratings already stored are safe."
    if not ready:
        return f"Loading: {plain(loading)}"
    refill = f" · last refill failed: {plain(refill_error)}" if refill_error else ""
    return f"Ready · current policy: **{plain(version)}** · {plain(policy)}{refill}"


def studio_status(studio) -> str:
    if studio.error or not studio.ready.is_set():
        loading = studio.phase.text(time.perf_counter())
        return status_text(error=studio.error, ready=studio.ready.is_set(), loading=loading)
    return status_text(
        error=None,
        ready=True,
        loading=studio.status,
        version=studio.svc.current_version().name,
        policy=studio.cfg.policy.name_or_path,
        refill_error=studio.svc.last_refill_error,
    )


def tick(
    st: UserState,
    rev: bool,
    who_name: str,
    kind_label: str,
    shown_status: str | None,
    request: gr.Request,
    *,
    studio,
    auth,
    tab,
    status,
    status_seen,
):
    """Every second: the start-up status when it changed (an unchanged line is not sent: each update costs the
    browser a redraw), and (while a tab has nothing to rate) a first item as soon as the pool has one, or what
    the app is doing until then."""
    studio.downloads.sweep()  # expired export files go even when nobody exports again
    text = studio_status(studio)
    out = {status: text, status_seen: text} if text != shown_status else {}
    # nothing on screen: show the first item as soon as there is one, and until then what start-up is doing
    if st.annotator_id is not None and st.item is None and st.pair is None:
        shown = show_next(st, who_name, kind_label, rev, request, studio=studio, auth=auth, tab=tab)
        if shown != gr.skip():
            out.update(shown)
    return out or gr.skip()


def on_load(*, studio, training, compare, data) -> dict:
    """Fill what depends on the store: versions, held-out prompts, the reward preview, rounds and counts."""
    previewed = preview("Model", 0.5, studio=studio, tab=training)
    return {
        **version_updates(studio, [training.version_pick, compare.version]),
        compare.heldout_pick: heldout_update(studio),
        **(previewed if previewed != gr.skip() else {}),  # a refused preview leaves the table as it was
        **round_view(studio, training),
        **data_view(studio=studio, tab=data),
    }


def build_demo(studio, auth: bool = False) -> gr.Blocks:
    # uploaded files (Gradio's cache) are removed an hour after upload
    with gr.Blocks(title="rlhf-studio", delete_cache=(600, 3600)) as demo:
        state = gr.State(UserState())
        gr.Markdown("# rlhf-studio\nRate the model's answers, choose the reward, train, and compare.")
        status = gr.Markdown(elem_id="status")
        timer = gr.Timer(1.0)
        with gr.Tabs():
            label = build_label_tab(studio, auth, state)
            training = build_training_tab(studio, state)
            compare = build_compare_tab(studio)
            data = build_data_tab(studio, state)
        round_seen = gr.State(None)
        round_timer = gr.Timer(1.0)

        _wire_label_timers(demo, studio, auth, label, status, timer)
        dropdowns = [training.version_pick, compare.version]
        training.rollback.click(
            bind(rollback, studio=studio, tab=training, dropdowns=dropdowns),
            [state, training.version_pick],
            [*training.round_outputs, *dropdowns],
        )
        round_timer.tick(
            bind(round_tick, studio=studio, tab=training, seen_state=round_seen),
            [round_seen],
            [round_seen, *training.round_outputs],
            show_progress="hidden",
        )
        demo.load(
            bind(on_load, studio=studio, training=training, compare=compare, data=data),
            None,
            [
                *dropdowns,
                compare.heldout_pick,
                training.preview_table,
                training.histogram,
                *training.round_outputs,
                data.counts,
                data.agreement,
            ],
        ).then(
            # what the load drew may be older than a round started meanwhile: the round timer redraws next tick
            lambda: None,
            None,
            round_seen,
            show_progress="hidden",
        )
        training.history.change(bind(version_updates, studio=studio, dropdowns=dropdowns), None, dropdowns)
        # a new version: new items to preview
        training.history.change(
            bind(preview, studio=studio, tab=training),
            [training.mode, training.weight],
            [training.preview_table, training.histogram],
        )
    return demo


def _wire_label_timers(demo: gr.Blocks, studio, auth: bool, label: LabelTab, status, timer: gr.Timer) -> None:
    # the name typed last time in this browser comes back before the first item is fetched
    demo.load(restore_name, [label.saved_name], [label.name]).then(
        bind(show_next, studio=studio, auth=auth, tab=label), label.who_inputs, label.outputs
    )
    status_seen = gr.State(None)  # the status line as last sent to this page
    timer.tick(
        bind(tick, studio=studio, auth=auth, tab=label, status=status, status_seen=status_seen),
        [label.state, label.reveal, label.name, label.kind, status_seen],
        [status, status_seen, *label.outputs],
        show_progress="hidden",  # a once-a-second poll: no "queue 1/1" flicker over the page
    )
