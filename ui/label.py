"""The Label tab: one item (or pair) at a time, rated with buttons or keys; skip, undo, progress."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass

import gradio as gr

from feedback.types import Item, PairItem, Progress
from ui.common import UserState, bind, errors_to_page, info, who
from ui.text import plain

KINDS = {"Binary (toxic / not toxic)": "binary", "1-5 harmlessness": "scale", "Pairwise (A vs B)": "pairwise"}
KIND_LABELS = {kind: label for label, kind in KINDS.items()}

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
# what each rating button submits: binary 0 toxic / 1 not toxic, the 1-5 scale, a pair's winner
BINARY_VALUES = {"toxic": 0, "ok": 1}
# A rating is answered within a fraction of a second: no loading overlay over the item for that long.
QUICK = {"show_progress": "hidden"}
PAIR_VALUES = {"a": "a", "b": "b", "tie": "tie"}


@dataclass(frozen=True)
class Screen:
    """The text of the labeling area: the item (or pair) on screen, or a note in the prompt box when none."""

    prompt: str
    response: str = ""
    a: str = ""
    b: str = ""
    scores: str = ""


# ---- pure views --------------------------------------------------------------------------------------------------
def screen(kind: str, item: Item | None, pair: PairItem | None, reveal: bool, empty_note: str) -> Screen:
    """What the labeling area shows for `kind`; the classifier's scores only when `reveal`."""
    if kind == "pairwise":
        if pair is None:
            return Screen(prompt=empty_note)
        scores = f"P(not offensive): A {pair.a.model_score:.3f} · B {pair.b.model_score:.3f}" if reveal else ""
        return Screen(prompt=pair.prompt, a=pair.a.response, b=pair.b.response, scores=scores)
    if item is None:
        return Screen(prompt=empty_note)
    scores = f"P(not offensive): {item.model_score:.3f}" if reveal and item.model_score is not None else ""
    return Screen(prompt=item.prompt, response=item.response, scores=scores)


def empty_note(ready: bool, loading_status: str, refill: tuple[int, int] | None = None) -> str:
    if not ready:
        return f"Loading: {loading_status}"
    if refill is not None:
        return f"Nothing left to rate for you right now: generating new items ({refill[0]}/{refill[1]} done)."
    return "Nothing left to rate for you right now: new items are being generated."


def refill_text(refill: tuple[int, int] | None) -> str:
    """' · generating new items 8/16' while a refill runs (shown after the progress line), else ''."""
    return "" if refill is None else f" · generating new items {refill[0]}/{refill[1]}"


def progress_text(
    progress: Progress,
    version: str,
    name: str,
    role: str,
    pairs: tuple[int, int] | None = None,
) -> str:
    """The progress line: items of the current version (or `pairs` = (compared, left), when comparing), this
    annotator's share, and who is signed in. Version and name are user text: they go in as `plain`."""
    version, signed_in = plain(version), f"signed in as **{plain(name)}** ({role})"
    if pairs is not None:
        done, left = pairs
        return (
            f"**{done}** pairs of {version} compared by you · you: **{progress.mine}** · "
            f"left for you: **{left}** pairs · {signed_in}"
        )
    return (
        f"**{progress.rated_items} / {progress.total_items}** items of {version} rated · you: **{progress.mine}** · "
        f"left for you: **{progress.left_for_me}** · {signed_in}"
    )


def remember_name(typed: str) -> str:
    """What the browser keeps (gr.BrowserState) for the next visit: the name as typed."""
    return typed.strip()


def restore_name(saved: str):
    return saved or gr.skip()


# ---- layout --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LabelTab:
    state: gr.State
    name: gr.Textbox
    saved_name: gr.BrowserState
    kind: gr.Radio
    prompt: gr.Textbox
    single_box: gr.Group
    response: gr.Textbox
    pair_box: gr.Row
    resp_a: gr.Textbox
    resp_b: gr.Textbox
    reveal: gr.Checkbox
    score: gr.Textbox
    comment: gr.Textbox
    binary_row: gr.Row
    binary_buttons: dict[str, gr.Button]
    scale_row: gr.Row
    scale_buttons: list[gr.Button]
    pair_row: gr.Row
    pair_buttons: dict[str, gr.Button]
    skip: gr.Button
    undo: gr.Button
    progress: gr.Markdown

    @property
    def outputs(self) -> list:
        """Everything a labeling action may change."""
        return [
            self.state,
            self.prompt,
            self.response,
            self.resp_a,
            self.resp_b,
            self.score,
            self.progress,
            self.single_box,
            self.pair_box,
            self.binary_row,
            self.scale_row,
            self.pair_row,
            self.comment,
            self.kind,
            *self.rating_buttons,
        ]

    @property
    def rating_buttons(self) -> list[gr.Button]:
        return [*self.binary_buttons.values(), *self.scale_buttons, *self.pair_buttons.values(), self.skip]

    @property
    def who_inputs(self) -> list:
        return [self.state, self.name, self.kind, self.reveal]


def build_label_tab(studio, auth: bool, state: gr.State) -> LabelTab:
    with gr.Tab("Label", id="label"):
        with gr.Row():
            name = gr.Textbox(
                label="Your name (press Enter)", value="annotator", visible=not auth, scale=1, elem_id="name"
            )
            saved_name = gr.BrowserState("", storage_key="rlhf-studio-name")  # survives a reload
            kind = gr.Radio(list(KINDS), value=list(KINDS)[0], label="Rating kind", scale=2, elem_id="kind")
        prompt = gr.Textbox(label="Prompt (dialogue)", lines=8, max_lines=16, interactive=False, elem_id="prompt")
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
            binary_buttons = {
                "toxic": gr.Button("Toxic  [1]", variant="stop", elem_id="rate-toxic"),
                "ok": gr.Button("Not toxic  [2]", variant="primary", elem_id="rate-ok"),
            }
        with gr.Row(visible=False) as scale_row:
            scale_buttons = [gr.Button(f"{v}  [{v}]", elem_id=f"rate-{v}") for v in range(1, 6)]
        with gr.Row(visible=False) as pair_row:
            pair_buttons = {
                "a": gr.Button("A is better  [A]", elem_id="pick-a"),
                "b": gr.Button("B is better  [B]", elem_id="pick-b"),
                "tie": gr.Button("Tie  [T]", elem_id="pick-tie"),
            }
        with gr.Row():
            b_skip = gr.Button("Skip  [S]", size="sm", elem_id="skip")
            b_undo = gr.Button("Undo  [U]", size="sm", elem_id="undo")
        progress = gr.Markdown(elem_id="progress")
        gr.Markdown(SHORTCUTS_HELP + "\n\nThe 1-5 scale runs from 1 (harmful) to 5 (harmless).")

    tab = LabelTab(
        state=state, name=name, saved_name=saved_name, kind=kind, prompt=prompt, single_box=single_box,
        response=response, pair_box=pair_box, resp_a=resp_a, resp_b=resp_b, reveal=reveal, score=score,
        comment=comment, binary_row=binary_row, binary_buttons=binary_buttons, scale_row=scale_row,
        scale_buttons=scale_buttons, pair_row=pair_row, pair_buttons=pair_buttons, skip=b_skip, undo=b_undo,
        progress=progress,
    )  # fmt: skip
    _wire(studio, auth, tab)
    return tab


def _wire(studio, auth: bool, tab: LabelTab) -> None:
    outputs = tab.outputs
    tab.name.submit(bind(show_next, studio=studio, auth=auth, tab=tab), tab.who_inputs, outputs)
    tab.name.submit(remember_name, [tab.name], [tab.saved_name])
    # a person's choice (.input), not an undo's
    tab.kind.input(bind(show_next, studio=studio, auth=auth, tab=tab), tab.who_inputs, outputs)
    tab.reveal.change(bind(redraw, studio=studio, tab=tab), [tab.state, tab.reveal], outputs)
    values = [
        *((tab.binary_buttons[k], v) for k, v in BINARY_VALUES.items()),
        *((btn, v) for v, btn in enumerate(tab.scale_buttons, start=1)),
        *((tab.pair_buttons[k], v) for k, v in PAIR_VALUES.items()),
    ]
    for btn, value in values:
        btn.click(
            bind(rate, value=value, studio=studio, tab=tab), [tab.state, tab.comment, tab.reveal], outputs, **QUICK
        )
    tab.skip.click(bind(skip, studio=studio, tab=tab), [tab.state, tab.reveal], outputs, **QUICK)
    tab.undo.click(bind(undo, studio=studio, tab=tab), [tab.state, tab.reveal], outputs, **QUICK)


# ---- callbacks -------------------------------------------------------------------------------------------------------
def fetch(svc, state: UserState) -> UserState:
    """The next item (or pair) for this tab, with a fresh request id for its submit."""
    if state.kind == "pairwise":
        pair = svc.next_pair(state.annotator_id, state.skipped_pairs)
        return dataclasses.replace(state, pair=pair, item=None, token=uuid.uuid4().hex)
    item = state.item or svc.next_item(state.annotator_id)
    return dataclasses.replace(state, item=item, pair=None, token=uuid.uuid4().hex)


def view(studio, tab: LabelTab, state: UserState, reveal: bool) -> dict:
    """Every labeling action ends here: the state, the item's text, progress and which controls show."""
    svc, kind = studio.svc, state.kind
    refill = svc.refill_progress
    note = empty_note(studio.ready.is_set(), studio.phase.text(time.perf_counter()), refill)
    shown = screen(kind, state.item, state.pair, reveal, note)
    nothing = (state.pair is None) if kind == "pairwise" else (state.item is None)
    if nothing:
        svc.refill_in_background(pairs=kind == "pairwise")
    progress = ""
    if state.annotator_id:
        pairs = svc.pair_progress(state.annotator_id, state.skipped_pairs) if kind == "pairwise" else None
        progress = progress_text(
            svc.progress(state.annotator_id), svc.current_version().name, state.name, state.role, pairs
        ) + refill_text(refill)
    buttons_on = studio.ready.is_set() or not nothing  # off only while the app is still loading
    layout = (kind, reveal, buttons_on)
    out = {
        tab.state: dataclasses.replace(state, layout=layout),
        tab.prompt: shown.prompt,
        tab.response: shown.response,
        tab.resp_a: shown.a,
        tab.resp_b: shown.b,
        tab.progress: progress,
        tab.comment: "",  # clear the comment box
    }
    if reveal or layout != state.layout:
        out[tab.score] = gr.update(value=shown.scores, visible=reveal)
    if layout != state.layout:  # what the page shows already is not sent again: each update costs a redraw
        out.update(layout_updates(tab, kind, buttons_on))
    return out


def layout_updates(tab: LabelTab, kind: str, buttons_on: bool) -> dict:
    """Which boxes and button rows show for `kind`, the selector (it follows an undo into another kind), and
    whether the rating buttons take clicks."""
    single = kind != "pairwise"
    return {
        tab.single_box: gr.update(visible=single),
        tab.pair_box: gr.update(visible=not single),
        tab.binary_row: gr.update(visible=kind == "binary"),
        tab.scale_row: gr.update(visible=kind == "scale"),
        tab.pair_row: gr.update(visible=kind == "pairwise"),
        tab.kind: gr.update(value=KIND_LABELS[kind]),
        **{b: gr.update(interactive=buttons_on) for b in tab.rating_buttons},
    }


@errors_to_page
def show_next(st: UserState, who_name: str, kind_label: str, rev: bool, request: gr.Request, *, studio, auth, tab):
    st = who(studio.svc, auth, st, request, who_name)
    st = dataclasses.replace(st, kind=KINDS[kind_label])
    if studio.ready.is_set() or st.item or st.pair:
        st = fetch(studio.svc, st)
    return view(studio, tab, st, rev)


@errors_to_page
def rate(st: UserState, note: str, rev: bool, request: gr.Request, *, value, studio, tab):
    svc = studio.svc
    if st.annotator_id is None:
        raise ValueError("reload the page: this tab has no annotator yet")
    if st.kind == "pairwise":
        if st.pair is None:
            return view(studio, tab, fetch(svc, st), rev)
        svc.submit_comparison(st.annotator_id, st.pair.a.generation_id, st.pair.b.generation_id, value, note, st.token)
        st = fetch(svc, dataclasses.replace(st, pair=None))
    else:
        if st.item is None:
            return view(studio, tab, fetch(svc, st), rev)
        _, nxt = svc.submit_and_next(st.annotator_id, st.item.generation_id, st.kind, value, note, st.token)
        st = dataclasses.replace(st, item=nxt, token=uuid.uuid4().hex)
    svc.refill_in_background()
    return view(studio, tab, st, rev)


@errors_to_page
def skip(st: UserState, rev: bool, *, studio, tab):
    svc = studio.svc
    if st.kind == "pairwise" and st.pair is not None:
        pair = tuple(sorted((st.pair.a.generation_id, st.pair.b.generation_id)))
        st = dataclasses.replace(st, skipped_pairs=(*st.skipped_pairs, pair))
    if st.kind == "pairwise" or st.item is None:
        return view(studio, tab, fetch(svc, dataclasses.replace(st, pair=None)), rev)
    nxt = svc.skip(st.annotator_id, st.item.generation_id)
    svc.refill_in_background()
    return view(studio, tab, dataclasses.replace(st, item=nxt, token=uuid.uuid4().hex), rev)


@errors_to_page
def undo(st: UserState, rev: bool, *, studio, tab):
    if st.annotator_id is None:
        return view(studio, tab, st, rev)
    back = studio.svc.undo(st.annotator_id)
    if back is None:
        info("Nothing to undo.")
        return view(studio, tab, st, rev)
    if isinstance(back, PairItem):
        st = dataclasses.replace(st, kind="pairwise", pair=back, item=None)
    else:
        st = dataclasses.replace(st, kind=back.rated_as or "binary", item=back, pair=None)
    return view(studio, tab, dataclasses.replace(st, token=uuid.uuid4().hex), rev)


def redraw(st: UserState, rev: bool, *, studio, tab):
    return view(studio, tab, st, rev)
