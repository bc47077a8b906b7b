"""The Label tab without a browser: what the labeling area shows, the progress line, and the callbacks' returns
(keyed by component) against a fake service that records what they asked it to do."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import gradio as gr
import pytest

from feedback.types import Item, PairItem, Progress
from ui import label
from ui.common import UserState
from ui.label import progress_text, remember_name, screen


def _item(gid: int, score: float | None = 0.8766, response: str = "hello") -> Item:
    return Item(gid, 10 + gid, f"prompt {gid}", response, score, 1)


PAIR = PairItem(7, "the prompt", _item(1, 0.25, "answer a"), _item(2, 0.5, "answer b"))


def test_a_single_item_shows_its_score_only_when_revealed():
    item = _item(1)
    assert screen("binary", item, None, False, "empty") == label.Screen("prompt 1", "hello", "", "", "")
    assert screen("scale", item, None, True, "empty").scores == "P(not offensive): 0.877"
    assert screen("binary", _item(1, None), None, True, "empty").scores == ""  # no classifier score stored
    assert screen("binary", None, PAIR, True, "nothing yet") == label.Screen("nothing yet")


def test_a_pair_shows_both_answers_and_both_scores():
    shown = screen("pairwise", None, PAIR, True, "empty")
    assert (shown.prompt, shown.response, shown.a, shown.b) == ("the prompt", "", "answer a", "answer b")
    assert shown.scores == "P(not offensive): A 0.250 · B 0.500"
    assert screen("pairwise", None, PAIR, False, "empty").scores == ""
    assert screen("pairwise", _item(1), None, True, "empty") == label.Screen("empty")


def test_empty_note_says_loading_until_the_studio_is_ready():
    assert label.empty_note(False, "loading the policy") == "Loading: loading the policy"
    assert label.empty_note(True, "x").startswith("Nothing left to rate for you right now")


def test_progress_counts_items_or_pairs_and_shows_the_name_as_text():
    p = Progress(rated_items=3, total_items=16, mine=5, left_for_me=9)
    assert progress_text(p, "v1", "ann", "admin") == (
        "**3 / 16** items of v1 rated · you: **5** · left for you: **9** · signed in as **ann** (admin)"
    )
    assert progress_text(p, "v0 (base)", "<b>x</b>", "annotator", pairs=(2, 4)) == (
        "**2** pairs of v0 &#40;base&#41; compared by you · you: **5** · left for you: **4** pairs · "
        "signed in as **&#60;b&#62;x&#60;&#47;b&#62;** (annotator)"
    )


def test_the_remembered_name_is_the_typed_one_trimmed():
    assert remember_name("  Zoë Lee \n") == "Zoë Lee"
    assert label.restore_name("Ann") == "Ann" and label.restore_name("") == gr.skip()


# ---- callbacks against a fake service --------------------------------------------------------------------------------
class FakeService:
    refill_progress = None  # no refill running

    def __init__(self, items):
        self.items = list(items)
        self.calls = []

    def annotator(self, name):
        return SimpleNamespace(id=42, name=name, role="annotator")

    def next_item(self, annotator_id):
        return self.items[0] if self.items else None

    def next_pair(self, annotator_id, skipped):
        self.calls.append(("next_pair", skipped))
        return None

    def submit_and_next(self, annotator_id, generation_id, kind, value, note, token):
        self.calls.append(("submit", annotator_id, generation_id, kind, value, note, token))
        self.items.pop(0)
        return None, self.next_item(annotator_id)

    def skip(self, annotator_id, generation_id):
        self.calls.append(("skip", generation_id))
        self.items.pop(0)
        return self.next_item(annotator_id)

    def undo(self, annotator_id):
        return PAIR

    def refill_in_background(self, pairs=False):
        self.calls.append(("refill", pairs))

    def progress(self, annotator_id):
        return Progress(
            rated_items=1, total_items=4, mine=len([c for c in self.calls if c[0] == "submit"]), left_for_me=2
        )

    def pair_progress(self, annotator_id, skipped):
        return 0, 3

    def current_version(self):
        return SimpleNamespace(name="v0 (base)")


def _label_tab(studio) -> label.LabelTab:
    with gr.Blocks():
        return label.build_label_tab(studio, False, gr.State(UserState()))


def _studio(items):
    from feedback.rounds import RoundSettings
    from feedback.studio import StartPhase

    return SimpleNamespace(
        svc=FakeService(items),
        ready=SimpleNamespace(is_set=lambda: True),
        status="ready",
        phase=StartPhase("ready", 0.0),
        round_defaults=lambda: RoundSettings(),
    )


def test_show_next_names_the_annotator_and_returns_every_labeling_output():
    studio = _studio([_item(1), _item(2, response="second")])
    tab = _label_tab(studio)
    out = label.show_next(
        UserState(), " Ann ", "Binary (toxic / not toxic)", False, None, studio=studio, auth=False, tab=tab
    )
    assert set(out) == set(tab.outputs)  # the first view sends every component a labeling action may change
    st = out[tab.state]
    assert (st.annotator_id, st.name, st.role, st.item.generation_id) == (42, "Ann", "admin", 1)  # no logins: admin
    assert out[tab.prompt] == "prompt 1" and out[tab.response] == "hello" and out[tab.comment] == ""
    assert out[tab.progress].startswith("**1 / 4** items of v0 &#40;base&#41; rated · you: **0**")
    assert out[tab.binary_row]["visible"] is True and out[tab.pair_row]["visible"] is False


def test_a_rating_submits_the_item_on_screen_with_its_token_and_shows_the_next():
    studio = _studio([_item(1), _item(2, response="second")])
    tab = _label_tab(studio)
    st = label.show_next(
        UserState(), "Ann", "Binary (toxic / not toxic)", True, None, studio=studio, auth=False, tab=tab
    )[tab.state]
    out = label.rate(st, "rude", True, None, value=0, studio=studio, tab=tab)
    assert studio.svc.calls[0] == ("submit", 42, 1, "binary", 0, "rude", st.token)
    # the layout on the page is unchanged, so only the text is sent: each update costs the browser a redraw
    assert tab.binary_row not in out and tab.kind not in out and not set(tab.rating_buttons) & set(out)
    assert out[tab.response] == "second" and out[tab.state].token != st.token
    assert out[tab.score] == {"__type__": "update", "value": "P(not offensive): 0.877", "visible": True}
    assert "you: **1**" in out[tab.progress]
    skipped = label.skip(out[tab.state], True, studio=studio, tab=tab)
    assert ("skip", 2) in studio.svc.calls and skipped[tab.state].item is None
    assert skipped[tab.prompt].startswith("Nothing left to rate")  # and the pool is asked to refill
    assert studio.svc.calls[-1] == ("refill", False)


def test_a_refused_rating_warns_and_leaves_the_page_as_it_was():
    studio = _studio([_item(1)])
    tab = _label_tab(studio)
    with pytest.warns(UserWarning, match="reload the page"):
        assert label.rate(UserState(), "", False, None, value=1, studio=studio, tab=tab) == gr.skip()
    assert studio.svc.calls == []


def test_undo_of_a_comparison_switches_the_tab_to_pairwise():
    studio = _studio([_item(1)])
    tab = _label_tab(studio)
    st = dataclasses.replace(UserState(), annotator_id=42, name="Ann", item=_item(1))
    out = label.undo(st, False, studio=studio, tab=tab)
    assert out[tab.state].kind == "pairwise" and out[tab.state].pair == PAIR and out[tab.state].item is None
    assert out[tab.kind] == {"__type__": "update", "value": "Pairwise (A vs B)"}
    assert (out[tab.resp_a], out[tab.resp_b]) == ("answer a", "answer b")
    assert out[tab.pair_box]["visible"] is True and out[tab.single_box]["visible"] is False
    assert out[tab.progress].startswith("**0** pairs of v0 &#40;base&#41; compared by you")


def test_skipping_a_pair_keeps_it_out_of_this_tab():
    studio = _studio([])
    tab = _label_tab(studio)
    st = dataclasses.replace(UserState(), annotator_id=42, kind="pairwise", pair=PAIR)
    out = label.skip(st, False, studio=studio, tab=tab)
    assert out[tab.state].skipped_pairs == ((1, 2),) and ("next_pair", ((1, 2),)) in studio.svc.calls


def test_while_items_are_made_the_page_says_how_far_the_refill_got():
    assert label.empty_note(True, "", (8, 16)) == (
        "Nothing left to rate for you right now: generating new items (8/16 done)."
    )
    assert label.empty_note(False, "generating the first items 0/4 · 3 s") == (
        "Loading: generating the first items 0/4 · 3 s"
    )
    assert label.refill_text((8, 16)) == " · generating new items 8/16" and label.refill_text(None) == ""


def test_start_up_phases_report_their_time_and_once_counting_an_estimate():
    from feedback.studio import StartPhase

    assert StartPhase("importing prompts", started=100.0).text(now=107.4) == "importing prompts · 7 s"
    # 2 of 8 items in 10 s: 5 s each, 6 to go
    assert StartPhase("generating", 100.0, 2, 8).text(now=110.0) == "generating 2/8 · 10 s · about 30 s left"


def test_rating_buttons_are_off_only_while_the_app_loads():
    for items, ready, enabled in (([_item(1)], True, True), ([], True, True), ([], False, False)):
        studio = _studio(items)
        studio.ready = SimpleNamespace(is_set=lambda ready=ready: ready)
        tab = _label_tab(studio)
        out = label.show_next(
            UserState(), "Ann", "Binary (toxic / not toxic)", False, None, studio=studio, auth=False, tab=tab
        )
        assert [out[b]["interactive"] for b in tab.rating_buttons] == [enabled] * 11  # 2 + 5 + 3 + skip
        assert tab.undo not in out  # undo stays usable: it brings an item back
