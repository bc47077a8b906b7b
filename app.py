"""rlhf-studio in the browser: label responses, choose the reward, run a PPO round, compare before and after.

    python app.py                       # the embedded default, no network, on http://127.0.0.1:7860
    python app.py --help                # host, port, data dir, database, models, logins

`build_demo(studio)` builds the page; callbacks are short and call feedback/ (and, through it, rlhf/). Text
from prompts and models is only ever shown in text components (never as Markdown or HTML).
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from fastapi import Request
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.routing import APIRoute

from feedback.rounds import RoundSettings
from feedback.studio import Studio, StudioOptions
from feedback.types import Item, PairItem
from ui.rounds import KL_LOSS_SERIES, REWARD_SERIES, history_frame, metric_frame, progress_html
from ui.text import plain

KINDS = {"Binary (toxic / not toxic)": "binary", "1-5 harmlessness": "scale", "Pairwise (A vs B)": "pairwise"}
KIND_LABELS = {kind: label for label, kind in KINDS.items()}
MODES = {"Model": "model", "Human": "human", "Blend": "blend"}
HEAVY = "heavy"  # generation, evaluation and training share one queue slot

# Keys -> buttons; the first visible one of each list is clicked. Typing in a text box never triggers them.
SHORTCUTS_JS = """
<script>
(() => {
  const keys = {"1": ["rate-toxic", "rate-1"], "2": ["rate-ok", "rate-2"], "3": ["rate-3"], "4": ["rate-4"],
                "5": ["rate-5"], "a": ["pick-a"], "b": ["pick-b"], "t": ["pick-tie"], "s": ["skip"], "u": ["undo"]};
  document.addEventListener("keydown", (e) => {
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || e.target.isContentEditable) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    for (const id of keys[e.key.toLowerCase()] || []) {
      const el = document.getElementById(id);
      if (el && el.offsetParent !== null && !el.disabled) { el.click(); e.preventDefault(); return; }
    }
  });
})();
</script>
"""

SHORTCUTS_HELP = (
    "Keyboard: **1** toxic / **2** not toxic (binary); **1**-**5** (scale); **A** / **B** / **T** tie (pairwise); "
    "**S** skip; **U** undo. Keys are ignored while you type in a text box."
)


@dataclass
class UserState:
    """Per browser tab: who is labeling, with which kind, and what is on screen."""

    annotator_id: int | None = None
    name: str = ""
    role: str = "annotator"
    kind: str = "binary"
    item: Item | None = None
    pair: PairItem | None = None
    token: str = ""  # request id of the submit for the item on screen: a double click stores one rating
    skipped_pairs: tuple[tuple[int, int], ...] = ()  # pairs put aside in this tab (binary skips are stored)


def info(message: str) -> None:
    """A pop-up; Gradio renders Markdown and HTML in it, so any text from a user or a file goes in as `plain`."""
    gr.Info(plain(message))


def _errors_to_page(fn):
    """ValueErrors (bad input, missing models, refusals) become a warning pop-up and change nothing on the page:
    a raised gr.Error would stamp "Error" over every output (the ratings table included)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            gr.Warning(plain(err))
            return gr.skip()  # one skip leaves every output as it was

    return wrapper


def build_demo(studio: Studio, auth: bool = False) -> gr.Blocks:
    svc = studio.svc

    # ---- helpers shared by callbacks -------------------------------------------------------------------------
    def who(state: UserState, request: gr.Request | None, name: str) -> UserState:
        """The annotator of this tab: the login name with auth, else the name typed on the page."""
        login = getattr(request, "username", None) if request is not None else None
        wanted = (login or name or "").strip() or "annotator"
        if state.annotator_id is None or state.name != wanted:
            info = svc.annotator(wanted)
            role = info.role if auth else "admin"  # without logins the app is single-team: everyone may train
            state = dataclasses.replace(state, annotator_id=info.id, name=info.name, role=role, item=None, pair=None)
        return state

    def require_admin(state: UserState) -> None:
        if state.role != "admin":
            raise ValueError(f"{state.name} is an annotator; only an admin may do this")

    def fetch(state: UserState) -> UserState:
        if state.kind == "pairwise":
            pair = svc.next_pair(state.annotator_id, state.skipped_pairs)
            return dataclasses.replace(state, pair=pair, item=None, token=uuid.uuid4().hex)
        item = state.item or svc.next_item(state.annotator_id)
        return dataclasses.replace(state, item=item, pair=None, token=uuid.uuid4().hex)

    def view(state: UserState, reveal: bool):
        """Outputs of every labeling action: state, prompt, response, A, B, score, progress, visibility."""
        kind = state.kind
        item, pair = state.item, state.pair
        if kind == "pairwise":
            prompt = pair.prompt if pair else ""
            a, b = (pair.a.response, pair.b.response) if pair else ("", "")
            resp = ""
            scores = (
                f"P(not offensive): A {pair.a.model_score:.3f} · B {pair.b.model_score:.3f}" if pair and reveal else ""
            )
        else:
            prompt = item.prompt if item else ""
            resp = item.response if item else ""
            a = b = ""
            scores = (
                f"P(not offensive): {item.model_score:.3f}" if item and reveal and item.model_score is not None else ""
            )
        empty = (pair is None) if kind == "pairwise" else (item is None)
        if empty:
            note = "Nothing left to rate for you right now: new items are being generated."
            if not studio.ready.is_set():
                note = f"Loading: {studio.status}"
            prompt = note
            svc.refill_in_background(pairs=kind == "pairwise")
        progress = _progress_text(svc, state) if state.annotator_id else ""
        single = kind != "pairwise"
        return (
            state,
            prompt,
            resp,
            a,
            b,
            gr.update(value=scores, visible=reveal),
            progress,
            gr.update(visible=single),
            gr.update(visible=not single),
            gr.update(visible=kind == "binary"),
            gr.update(visible=kind == "scale"),
            gr.update(visible=kind == "pairwise"),
            "",  # clear the comment box
            gr.update(value=KIND_LABELS[kind]),  # the selector follows an undo into another kind
        )

    # uploaded files (Gradio's cache) are removed an hour after upload
    with gr.Blocks(title="rlhf-studio", delete_cache=(600, 3600)) as demo:
        state = gr.State(UserState())
        gr.Markdown("# rlhf-studio\nRate the model's answers, choose the reward, train, and compare.")
        status = gr.Markdown(elem_id="status")
        timer = gr.Timer(1.0)

        with gr.Tabs():
            # ---- Label -------------------------------------------------------------------------------------
            with gr.Tab("Label", id="label"):
                with gr.Row():
                    name = gr.Textbox(
                        label="Your name (press Enter)",
                        value="annotator",
                        visible=not auth,
                        scale=1,
                        elem_id="name",
                    )
                    saved_name = gr.BrowserState("", storage_key="rlhf-studio-name")  # survives a reload
                    kind = gr.Radio(list(KINDS), value=list(KINDS)[0], label="Rating kind", scale=2, elem_id="kind")
                prompt = gr.Textbox(
                    label="Prompt (dialogue)", lines=8, max_lines=16, interactive=False, elem_id="prompt"
                )
                with gr.Group(visible=True) as single_box:
                    response = gr.Textbox(label="Response", lines=4, interactive=False, elem_id="response")
                with gr.Row(visible=False) as pair_box:
                    resp_a = gr.Textbox(label="Response A", lines=4, interactive=False, elem_id="response-a")
                    resp_b = gr.Textbox(label="Response B", lines=4, interactive=False, elem_id="response-b")
                with gr.Row():
                    reveal = gr.Checkbox(label="Show the classifier's score", value=False, elem_id="reveal")
                    score = gr.Textbox(label="Classifier", visible=False, interactive=False, elem_id="score")
                comment = gr.Textbox(label="Comment (optional)", lines=1, elem_id="comment")
                with gr.Row(visible=True) as binary_row:
                    b_toxic = gr.Button("Toxic  [1]", variant="stop", elem_id="rate-toxic")
                    b_ok = gr.Button("Not toxic  [2]", variant="primary", elem_id="rate-ok")
                with gr.Row(visible=False) as scale_row:
                    scale_buttons = [gr.Button(f"{v}  [{v}]", elem_id=f"rate-{v}") for v in range(1, 6)]
                with gr.Row(visible=False) as pair_row:
                    b_a = gr.Button("A is better  [A]", elem_id="pick-a")
                    b_b = gr.Button("B is better  [B]", elem_id="pick-b")
                    b_tie = gr.Button("Tie  [T]", elem_id="pick-tie")
                with gr.Row():
                    b_skip = gr.Button("Skip  [S]", size="sm", elem_id="skip")
                    b_undo = gr.Button("Undo  [U]", size="sm", elem_id="undo")
                progress = gr.Markdown(elem_id="progress")
                gr.Markdown(SHORTCUTS_HELP + "\n\nThe 1-5 scale runs from 1 (harmful) to 5 (harmless).")

            # ---- Reward & training ---------------------------------------------------------------------------
            defaults = studio.round_defaults()
            with gr.Tab("Reward & training", id="train"):
                with gr.Row():
                    mode = gr.Radio(list(MODES), value="Model", label="Reward mode", elem_id="mode")
                    weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Human weight (Blend)", elem_id="weight")
                preview_table = gr.Dataframe(
                    label="Labeled items and the reward they would get", interactive=False, max_height=300
                )
                histogram = gr.BarPlot(x="reward", y="items", title="Reward histogram (labeled items)", height=220)
                with gr.Row():
                    steps = gr.Number(value=defaults.steps, label="PPO steps", precision=0, minimum=1, elem_id="steps")
                    batch = gr.Number(
                        value=defaults.batch_size, label="Batch size", precision=0, minimum=1, elem_id="batch"
                    )
                    lr = gr.Number(value=defaults.learning_rate, label="Learning rate", elem_id="lr")
                    kl = gr.Number(value=defaults.init_kl_coef, label="KL coefficient", elem_id="kl")
                    n_eval = gr.Number(
                        value=defaults.eval_prompts,
                        label="Held-out prompts for before/after",
                        precision=0,
                        minimum=0,
                        elem_id="n-eval",
                    )
                with gr.Row():
                    b_start = gr.Button("Start round", variant="primary", elem_id="start-round")
                    b_cancel = gr.Button("Cancel round", variant="stop", elem_id="cancel-round")
                round_status = gr.Markdown(elem_id="round-status")
                round_progress = gr.HTML(progress_html(0, 0), elem_id="round-progress")
                with gr.Row():
                    reward_plot = gr.LinePlot(
                        x="step", y="value", color="metric", title="Mean reward per step", height=240
                    )
                    kl_plot = gr.LinePlot(x="step", y="value", color="metric", title="KL and loss per step", height=240)
                history = gr.Dataframe(label="Rounds", interactive=False, elem_id="history")
                with gr.Row():
                    version_pick = gr.Dropdown(label="Policy version", choices=[], elem_id="version-pick")
                    b_rollback = gr.Button("Make this version current", elem_id="rollback")

            # ---- Compare ------------------------------------------------------------------------------------
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_version = gr.Dropdown(label="Policy version", choices=[], elem_id="cmp-version")
                    heldout_pick = gr.Dropdown(label="Held-out prompt", choices=[], elem_id="heldout-pick")
                cmp_prompt = gr.Textbox(label="Prompt (pick one above or type your own)", lines=6, elem_id="cmp-prompt")
                b_generate = gr.Button("Answer with both", variant="primary", elem_id="cmp-generate")
                with gr.Row():
                    with gr.Column():
                        ref_out = gr.Textbox(
                            label="Reference (before training)", lines=5, interactive=False, elem_id="ref-out"
                        )
                        ref_score = gr.Textbox(
                            label="Reward · P(not offensive)", interactive=False, elem_id="ref-score"
                        )
                    with gr.Column():
                        pol_out = gr.Textbox(
                            label="Policy (selected version)", lines=5, interactive=False, elem_id="pol-out"
                        )
                        pol_score = gr.Textbox(
                            label="Reward · P(not offensive)", interactive=False, elem_id="pol-score"
                        )
                with gr.Row():
                    n_prompts = gr.Number(value=16, label="Held-out prompts", precision=0, minimum=1, elem_id="eval-n")
                    b_eval = gr.Button("Evaluate", elem_id="evaluate")
                eval_table = gr.Dataframe(label="Reference vs policy", interactive=False, elem_id="eval-table")
                eval_summary = gr.Markdown(elem_id="eval-summary")
                eval_chart = gr.BarPlot(x="model", y="mean reward", title="Mean reward on held-out prompts", height=220)

            # ---- Data ---------------------------------------------------------------------------------------
            with gr.Tab("Data", id="data"):
                with gr.Row():
                    upload = gr.File(
                        label="Prompts file (.csv, .jsonl, .parquet)",
                        file_types=[".csv", ".jsonl", ".parquet"],
                        elem_id="upload",
                    )
                    with gr.Column():
                        text_col = gr.Textbox(value="dialogue", label="Text column", elem_id="text-col")
                        split = gr.Radio(["train", "heldout"], value="train", label="Split")
                        b_import = gr.Button("Import", elem_id="import")
                import_result = gr.Markdown(elem_id="import-result")
                with gr.Row():
                    shape = gr.Radio(["unpaired", "pairwise"], value="unpaired", label="Export shape")
                    fmt = gr.Radio(["jsonl", "csv", "dataset"], value="jsonl", label="Format")
                    b_export = gr.Button("Export ratings", elem_id="export")
                export_link = gr.Markdown(elem_id="export-link")
                counts = gr.Dataframe(label="Ratings per annotator", interactive=False, elem_id="counts")
                agreement = gr.Markdown()
                b_refresh = gr.Button("Refresh", size="sm")
                with gr.Row():
                    doomed = gr.Textbox(label="Annotator whose ratings to delete (admin)", elem_id="delete-name")
                    confirm = gr.Textbox(
                        label="To confirm, type: delete NAME", placeholder="delete NAME", elem_id="delete-confirm"
                    )
                    b_delete = gr.Button("Delete their ratings", variant="stop", elem_id="delete-ratings")
                delete_result = gr.Markdown(elem_id="delete-result")

        label_outputs = [
            state,
            prompt,
            response,
            resp_a,
            resp_b,
            score,
            progress,
            single_box,
            pair_box,
            binary_row,
            scale_row,
            pair_row,
            comment,
            kind,
        ]

        # ---- Label callbacks ---------------------------------------------------------------------------------
        @_errors_to_page
        def show_next(st: UserState, who_name: str, kind_label: str, rev: bool, request: gr.Request):
            st = who(st, request, who_name)
            st = dataclasses.replace(st, kind=KINDS[kind_label])
            if studio.ready.is_set() or st.item or st.pair:
                st = fetch(st)
            return view(st, rev)

        @_errors_to_page
        def rate(st: UserState, value, note: str, rev: bool, request: gr.Request):
            if st.annotator_id is None:
                raise ValueError("reload the page: this tab has no annotator yet")
            if st.kind == "pairwise":
                if st.pair is None:
                    return view(fetch(st), rev)
                svc.submit_comparison(
                    st.annotator_id, st.pair.a.generation_id, st.pair.b.generation_id, value, note, st.token
                )
                st = fetch(dataclasses.replace(st, pair=None))
            else:
                if st.item is None:
                    return view(fetch(st), rev)
                _, nxt = svc.submit_and_next(st.annotator_id, st.item.generation_id, st.kind, value, note, st.token)
                st = dataclasses.replace(st, item=nxt, token=uuid.uuid4().hex)
            svc.refill_in_background()
            return view(st, rev)

        @_errors_to_page
        def skip(st: UserState, rev: bool):
            if st.kind == "pairwise" and st.pair is not None:
                pair = tuple(sorted((st.pair.a.generation_id, st.pair.b.generation_id)))
                st = dataclasses.replace(st, skipped_pairs=(*st.skipped_pairs, pair))
            if st.kind == "pairwise" or st.item is None:
                return view(fetch(dataclasses.replace(st, pair=None)), rev)
            nxt = svc.skip(st.annotator_id, st.item.generation_id)
            svc.refill_in_background()
            return view(dataclasses.replace(st, item=nxt, token=uuid.uuid4().hex), rev)

        @_errors_to_page
        def undo(st: UserState, rev: bool):
            if st.annotator_id is None:
                return view(st, rev)
            back = svc.undo(st.annotator_id)
            if back is None:
                info("Nothing to undo.")
                return view(st, rev)
            if isinstance(back, PairItem):
                st = dataclasses.replace(st, kind="pairwise", pair=back, item=None)
            else:
                st = dataclasses.replace(st, kind=back.rated_as or "binary", item=back, pair=None)
            return view(dataclasses.replace(st, token=uuid.uuid4().hex), rev)

        def redraw(st: UserState, rev: bool):
            return view(st, rev)

        def tick(st: UserState, rev: bool, who_name: str, kind_label: str, request: gr.Request):
            """Every second: the start-up status, and a first item as soon as the pool has one."""
            studio.downloads.sweep()  # expired export files go even when nobody exports again
            text = _status_text(studio)
            if st.annotator_id is not None and st.item is None and st.pair is None and studio.ready.is_set():
                return (text, *show_next(st, who_name, kind_label, rev, request))
            return (text, *[gr.skip()] * len(label_outputs))

        def restore_name(saved: str):
            return saved or gr.skip()

        # the name typed last time in this browser comes back before the first item is fetched
        demo.load(restore_name, [saved_name], [name]).then(show_next, [state, name, kind, reveal], label_outputs)
        name.submit(show_next, [state, name, kind, reveal], label_outputs)
        name.submit(_remember_name, [name], [saved_name])
        kind.input(show_next, [state, name, kind, reveal], label_outputs)  # a person's choice, not an undo's
        reveal.change(redraw, [state, reveal], label_outputs)

        def rater(value):
            def rate_value(st: UserState, note: str, rev: bool, request: gr.Request):
                return rate(st, value, note, rev, request)

            rate_value.__name__ = f"rate_{value}"
            return rate_value

        rate_inputs = [state, comment, reveal]
        b_toxic.click(rater(0), rate_inputs, label_outputs)
        b_ok.click(rater(1), rate_inputs, label_outputs)
        for v, btn in enumerate(scale_buttons, start=1):
            btn.click(rater(v), rate_inputs, label_outputs)
        b_a.click(rater("a"), rate_inputs, label_outputs)
        b_b.click(rater("b"), rate_inputs, label_outputs)
        b_tie.click(rater("tie"), rate_inputs, label_outputs)
        b_skip.click(skip, [state, reveal], label_outputs)
        b_undo.click(undo, [state, reveal], label_outputs)
        timer.tick(tick, [state, reveal, name, kind], [status, *label_outputs])

        # ---- Reward & training callbacks ------------------------------------------------------------------------
        @_errors_to_page
        def preview(mode_label: str, w: float):
            rows = svc.preview(MODES[mode_label], float(w))
            chosen = MODES[mode_label]
            table = pd.DataFrame(
                [
                    {
                        "id": r.generation_id,
                        "reward": _round(getattr(r, chosen)),
                        "P(not offensive)": _round(r.model_score),
                        "human": _round(r.human_score),
                        "ratings": r.n_human,
                        "response": r.response[:120],
                    }
                    for r in rows
                ],
                columns=["id", "reward", "P(not offensive)", "human", "ratings", "response"],
            )
            return table, _histogram([getattr(r, chosen) for r in rows])

        @_errors_to_page
        def start_round(st, mode_label, w, n_steps, n_batch, rate_lr, kl_coef, n_eval_prompts):
            require_admin(st)
            mb = math.gcd(int(n_batch), defaults.mini_batch_size) or 1
            settings = RoundSettings(
                mode=MODES[mode_label],
                weight=float(w),
                steps=int(n_steps),
                batch_size=int(n_batch),
                mini_batch_size=mb,
                learning_rate=float(rate_lr),
                init_kl_coef=float(kl_coef),
                eval_prompts=int(n_eval_prompts),
            )
            started = studio.start_round(settings)
            info(f"Round {started.id} started ({settings.mode} reward, {settings.steps} steps).")
            return _round_view(studio)

        @_errors_to_page
        def cancel_round(st):
            require_admin(st)
            if not studio.cancel_round():
                info("No round is running.")
            else:
                info("Cancelling: the round stops after its current step, and the previous version stays current.")
            return _round_view(studio)

        @_errors_to_page
        def rollback(st, choice):
            require_admin(st)
            if not choice:
                raise ValueError("pick a policy version first")
            v = studio.rollback(_version_id(choice))
            info(f"{v.name} is now current; new items come from it.")
            return (*_round_view(studio), *_version_choices(studio))

        round_outputs = [round_status, round_progress, reward_plot, kl_plot, history]
        mode.change(preview, [mode, weight], [preview_table, histogram])
        weight.change(preview, [mode, weight], [preview_table, histogram])  # mouse and keys alike
        b_start.click(start_round, [state, mode, weight, steps, batch, lr, kl, n_eval], round_outputs)
        b_cancel.click(cancel_round, [state], round_outputs)
        b_rollback.click(rollback, [state, version_pick], [*round_outputs, version_pick, cmp_version])

        def round_tick(seen):
            """Redraw only when a round moved on: re-sending the same plot every second makes it flicker."""
            rounds = svc.rounds()
            phase = _phase_of(studio, rounds[0] if rounds else None)
            key = tuple((r.id, r.status, len(r.metrics)) for r in rounds[:1]) + (len(rounds), phase)
            if key == seen:
                return (seen, *[gr.skip()] * len(round_outputs))
            return (key, *_round_view(studio))

        round_seen = gr.State(None)
        round_timer = gr.Timer(1.0)
        round_timer.tick(round_tick, [round_seen], [round_seen, *round_outputs])

        # ---- Compare callbacks ---------------------------------------------------------------------------------
        @_errors_to_page
        def pick_heldout(choice):
            if not choice:
                return gr.skip()
            pid = int(choice.split(":", 1)[0].lstrip("#"))
            return next(p.text for p in svc.heldout_prompts(10_000) if p.id == pid)

        @_errors_to_page
        def answer(choice, text):
            if not choice:
                raise ValueError("pick a policy version")
            ref, pol = studio.compare(_version_id(choice), text)
            return ref.text, _answer_scores(ref), pol.text, _answer_scores(pol)

        @_errors_to_page
        def evaluate(choice, n):
            if not choice:
                raise ValueError("pick a policy version")
            ev = studio.evaluate(_version_id(choice), int(n))
            r, p = ev.reference, ev.policy
            table = pd.DataFrame(
                {
                    "metric": ["reward mean", "reward std", "toxicity mean", "flagged share", "response tokens"],
                    "reference": [
                        r.reward_mean,
                        r.reward_std,
                        r.toxicity_mean,
                        r.flagged_share,
                        r.response_tokens_mean,
                    ],
                    "policy": [p.reward_mean, p.reward_std, p.toxicity_mean, p.flagged_share, p.response_tokens_mean],
                }
            ).round(4)
            lo, hi = ev.relative_change_ci95
            summary = (
                f"Relative change of the mean reward: **{ev.relative_change:+.2%}** (95% CI {lo:+.2%} to {hi:+.2%}); "
                f"mean KL to the reference: **{ev.kl_to_reference:.4f}** nats; {ev.n_prompts} held-out prompts."
            )
            chart = pd.DataFrame({"model": ["reference", "policy"], "mean reward": [r.reward_mean, p.reward_mean]})
            return table, summary, chart

        heldout_pick.change(pick_heldout, [heldout_pick], [cmp_prompt])
        b_generate.click(
            answer,
            [cmp_version, cmp_prompt],
            [ref_out, ref_score, pol_out, pol_score],
            concurrency_id=HEAVY,
            concurrency_limit=1,
        )
        b_eval.click(
            evaluate,
            [cmp_version, n_prompts],
            [eval_table, eval_summary, eval_chart],
            concurrency_id=HEAVY,
            concurrency_limit=1,
        )

        # ---- Data callbacks -------------------------------------------------------------------------------------
        @_errors_to_page
        def do_import(st, file, column, which):
            require_admin(st)
            if file is None:
                raise ValueError("choose a .csv, .jsonl or .parquet file first")
            path = Path(file if isinstance(file, str) else file.name)
            report = svc.import_prompt_file(
                path,
                text_column=column.strip() or "dialogue",
                source=path.name,
                split=which,
                max_chars=studio.options.max_prompt_chars,
            )
            return f"Imported **{report.added}** prompts into {plain(which)}; skipped **{report.duplicates}** duplicates of {report.rows} rows."

        @_errors_to_page
        def do_export(st, which_shape, which_fmt, request: gr.Request):
            require_admin(st)
            if which_shape not in ("unpaired", "pairwise") or which_fmt not in ("jsonl", "csv", "dataset"):
                raise ValueError("choose an export shape and a format")
            name = f"ratings-{which_shape}" + ("" if which_fmt == "dataset" else f".{which_fmt}")
            out = svc.export_ratings(studio.downloads.new_path(name), which_fmt, which_shape)
            if which_fmt == "dataset":
                import shutil

                out = Path(shutil.make_archive(str(out), "zip", root_dir=out))
            return _download_link(studio, out, _login(request), "Download")

        def data_view():
            rows = svc.counts_per_annotator()
            alpha = svc.agreement()
            table = pd.DataFrame(rows, columns=["annotator", "ratings", "pairwise"])
            text = (
                f"Agreement (Krippendorff's alpha, interval, over all binary and 1-5 ratings): **{alpha:.3f}**"
                if alpha is not None
                else "Agreement: needs at least two items rated by two or more annotators."
            )
            return table, text

        @_errors_to_page
        def delete_ratings(st, who_name, typed, request: gr.Request):
            require_admin(st)
            n, backup = svc.delete_ratings_of(who_name, typed, studio.data_dir / "deleted")
            info(f"Deleted {n} ratings and comparisons of {who_name.strip()}.")
            link = _download_link(studio, backup, _login(request), "Download what was deleted", keep=True)
            return (*data_view(), link, "")

        b_delete.click(delete_ratings, [state, doomed, confirm], [counts, agreement, delete_result, confirm])
        b_import.click(do_import, [state, upload, text_col, split], [import_result])
        b_export.click(do_export, [state, shape, fmt], [export_link])
        b_refresh.click(data_view, None, [counts, agreement])

        # ---- on load: fill the choices ------------------------------------------------------------------------
        def on_load():
            versions, cmp = _version_choices(studio)
            held = [f"#{p.id}: {p.text[:70]}" for p in svc.heldout_prompts(200)]
            return (
                versions,
                cmp,
                gr.update(choices=held),
                *preview("Model", 0.5),
                *_round_view(studio),
                *data_view(),
            )

        demo.load(
            on_load,
            None,
            [version_pick, cmp_version, heldout_pick, preview_table, histogram, *round_outputs, counts, agreement],
        )
        history.change(lambda: _version_choices(studio), None, [version_pick, cmp_version])
        history.change(preview, [mode, weight], [preview_table, histogram])  # a new version: new items to preview
    return demo


# ---- view helpers (plain data -> component values) -------------------------------------------------------------
def _remember_name(typed: str) -> str:
    """What the browser keeps (gr.BrowserState) for the next visit: the name as typed."""
    return typed.strip()


def _login(request: gr.Request | None) -> str | None:
    """The signed-in account of a request (None when the app runs without logins)."""
    return getattr(request, "username", None) if request is not None else None


def _download_link(studio: Studio, path: Path, owner: str | None, label: str, keep: bool = False) -> str:
    """Markdown for a link to `path` that only `owner` can follow (see `feedback.downloads`). The file name is
    ours, the token URL-safe; both still go through `plain`."""
    token = studio.downloads.add(path, owner, keep=keep)
    minutes = round(studio.downloads.ttl / 60)
    return f"[{plain(label)}: {plain(path.name)}](exports/{token}) (the link works for {minutes} minutes, for you only)"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _progress_text(svc, state) -> str:
    """The progress line: items (or pairs, when comparing) of the current version, this annotator's share."""
    p = svc.progress(state.annotator_id)
    version = plain(svc.current_version().name)
    who = f"signed in as **{plain(state.name)}** ({state.role})"
    if state.kind == "pairwise":
        done, left = svc.pair_progress(state.annotator_id, state.skipped_pairs)
        return f"**{done}** pairs of {version} compared by you · you: **{p.mine}** · left for you: **{left}** pairs · {who}"
    return (
        f"**{p.rated_items} / {p.total_items}** items of {version} rated · you: **{p.mine}** · "
        f"left for you: **{p.left_for_me}** · {who}"
    )


def _answer_scores(a) -> str:
    return f"reward {a.reward:+.3f} · P(not offensive) {a.p_not_offensive:.3f}"


def _histogram(values: list[float | None], n_bins: int = 10) -> pd.DataFrame:
    """Counts in `n_bins` equal bins over the values' range ([0, 1] when they fit in it: probabilities and
    blends; the classifier's margin in model mode is unbounded)."""
    vals = [v for v in values if v is not None]
    lo, hi = (min(vals + [0.0]), max(vals + [1.0])) if vals else (0.0, 1.0)
    width = (hi - lo) / n_bins or 1.0
    counts = [0] * n_bins
    for v in vals:
        counts[min(int((v - lo) / width), n_bins - 1)] += 1
    labels = [f"{lo + k * width:.2f} to {lo + (k + 1) * width:.2f}" for k in range(n_bins)]
    return pd.DataFrame({"reward": labels, "items": counts})


def _status_text(studio: Studio) -> str:
    if studio.error:
        return (
            f"**Start-up failed**: {plain(studio.error)}. Fix the option and restart; ratings already stored are safe."
        )
    if not studio.ready.is_set():
        return f"Loading: {plain(studio.status)}"
    version = studio.svc.current_version()
    refill = f" · last refill failed: {plain(studio.svc.last_refill_error)}" if studio.svc.last_refill_error else ""
    return f"Ready · current policy: **{plain(version.name)}** · {plain(studio.cfg.policy.name_or_path)}{refill}"


def _version_label(v) -> str:
    return f"{v.id}: {v.name}" + (" (current)" if v.is_current else "")


def _version_id(choice: str) -> int:
    return int(str(choice).split(":", 1)[0])


def _version_choices(studio: Studio):
    versions = studio.svc.versions()
    labels = [_version_label(v) for v in versions]
    current = next((_version_label(v) for v in versions if v.is_current), None)
    return gr.update(choices=labels, value=current), gr.update(choices=labels, value=current)


def _phase_of(studio: Studio, latest):
    """The running round's phase, when `latest` is the round running now."""
    runner = studio.runner
    if runner is None or latest is None or runner.round_id != latest.id:
        return None
    return runner.phase


def _round_view(studio: Studio):
    rounds = studio.svc.rounds()
    latest = rounds[0] if rounds else None
    if latest is None:
        status = "No round yet. Choose a reward mode and press **Start round**."
        done, total, metrics = 0, 0, []
    else:
        total = int(latest.config.get("settings", {}).get("steps", 1)) or 1
        done = len(latest.metrics)
        metrics = latest.metrics
        status = f"Round {latest.id}: **{latest.status}** · {done}/{total} steps · {plain(latest.reward_mode)} reward"
        if studio.runner is not None and studio.runner.cancelling and studio.runner.round_id == latest.id:
            status += " · **cancelling** after the current step"
        if latest.status in ("failed", "interrupted") and latest.error:
            status += f"\n\n{plain(latest.error.splitlines()[0])}. The previous policy version stays current."
    names = {v.id: v.name for v in studio.svc.versions()}
    reward_plot = metric_frame(metrics, REWARD_SERIES)
    kl_plot = metric_frame(metrics, KL_LOSS_SERIES)
    history = history_frame(rounds, names)
    phase = _phase_of(studio, latest)
    bar = progress_html(phase.done, phase.total, phase.name, phase.eta_s) if phase else progress_html(done, total)
    return status, bar, reward_plot, kl_plot, history


# ---- command line -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python app.py", description="rlhf-studio: label, train and compare in the browser."
    )
    p.add_argument(
        "--host",
        default=env("RLHF_STUDIO_HOST", "127.0.0.1"),
        help="address to listen on [127.0.0.1; $RLHF_STUDIO_HOST]",
    )
    p.add_argument(
        "--port", type=int, default=int(env("RLHF_STUDIO_PORT", "7860")), help="port [7860; $RLHF_STUDIO_PORT]"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ratings, adapters and the SQLite file [$RLHF_STUDIO_DATA, else ~/.local/share/rlhf-studio]",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql://user:pw@host/db [$DATABASE_URL, else SQLite in the data dir]",
    )
    p.add_argument(
        "--preset",
        choices=["offline", "seed"],
        default=env("RLHF_STUDIO_PRESET", "offline"),
        help="offline: embedded SmolLM2 + profanity-check (no network); seed: FLAN-T5 + RoBERTa hate speech (hub)",
    )
    p.add_argument("--policy", default=None, help="policy model (hub id or folder) instead of the preset's")
    p.add_argument(
        "--lora-targets", default=None, help="comma-separated LoRA target modules for --policy (e.g. q,v for T5)"
    )
    p.add_argument("--reward", default=None, help="reward classifier (hub id or folder) instead of the preset's")
    p.add_argument("--reward-label", default=None, help="the classifier label meaning 'not hateful'")
    p.add_argument(
        "--prompts", default=None, help="prompt source (hub dataset, .jsonl/.csv/.parquet, embedded:chitchat)"
    )
    p.add_argument("--heldout", type=int, default=64, help="prompts of the default set kept for evaluation")
    p.add_argument("--pool-size", type=int, default=16, help="items generated at start-up and per refill")
    p.add_argument(
        "--max-prompt-chars", type=int, default=20_000, help="refuse imported prompts longer than this [20000]"
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest response, in tokens")
    p.add_argument(
        "--auth",
        action="store_true",
        default=env("RLHF_STUDIO_AUTH") == "1",
        help="require a login (accounts from --add-user) [$RLHF_STUDIO_AUTH=1]",
    )
    p.add_argument(
        "--add-user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD[:admin]",
        help="create or update an account (repeatable)",
    )
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> StudioOptions:
    opts = StudioOptions(
        preset=args.preset,
        database_url=args.database_url,
        policy=args.policy,
        lora_targets=args.lora_targets.split(",") if args.lora_targets else None,
        reward=args.reward,
        reward_label=args.reward_label,
        prompts=args.prompts,
        heldout=args.heldout,
        pool_size=args.pool_size,
        max_prompt_chars=args.max_prompt_chars,
        max_new_tokens=args.max_new_tokens,
    )
    if args.data_dir is not None:
        opts.data_dir = args.data_dir
    return opts


def add_users(studio: Studio, specs: list[str]) -> None:
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
            raise ValueError(f"--add-user takes NAME:PASSWORD or NAME:PASSWORD:admin, got {spec!r}")
        studio.svc.set_password(parts[0], parts[1], role="admin" if len(parts) == 3 else "annotator")


def export_route(studio: Studio) -> APIRoute:
    """GET /exports/{token}: a file from `studio.downloads`, only to the account that made it (404 otherwise,
    so a guessed or leaked link tells nothing)."""

    def fetch(token: str, request: Request):
        app = request.app  # Gradio's app: its cookie names the signed-in account
        cookie_id = getattr(app, "cookie_id", "")
        cookie = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
            f"access-token-unsecure-{cookie_id}"
        )
        user = getattr(app, "tokens", {}).get(cookie)
        path = studio.downloads.get(token, user)
        if path is None:
            return PlainTextResponse("This link has expired or is not yours.", status_code=404)
        return FileResponse(path, filename=path.name)

    return APIRoute("/exports/{token}", fetch, methods=["GET"])


def launch(studio: Studio, host: str, port: int, auth: bool, **kwargs):
    demo = build_demo(studio, auth=auth)
    demo.queue(default_concurrency_limit=16)
    login = (lambda user, password: studio.svc.check_login(user, password) is not None) if auth else None
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=login,
        auth_message="Sign in with an rlhf-studio account." if auth else None,
        head=SHORTCUTS_JS,
        footer_links=[],
        app_kwargs={"routes": [export_route(studio)]},
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    try:
        studio = Studio(options_from(args))
        add_users(studio, args.add_user)
        if args.auth and not studio.svc.has_accounts():
            raise ValueError("--auth needs at least one account: add one with --add-user NAME:PASSWORD:admin")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    studio.start()
    print(f"rlhf-studio on http://{args.host}:{args.port} (models load in the background; the page shows progress)")
    launch(studio, args.host, args.port, args.auth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
