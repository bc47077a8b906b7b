"""The page assembled from its tabs, without a browser: every element id the page's keys and the browser test
rely on, callbacks that still receive the request, the status line and the version dropdowns."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import gradio as gr
from gradio.helpers import special_args

from feedback.rounds import RoundSettings
from ui.common import bind, link_markdown, version_choices, version_id
from ui.label import SHORTCUTS_JS
from ui.page import build_demo, status_text

# every elem_id of the page (the browser test and the shortcuts use them), each kept when the page was split into tabs
PAGE_IDS = {
    "status", "name", "kind", "prompt", "response", "response-a", "response-b", "reveal", "score", "comment",
    "rate-toxic", "rate-ok", "rate-1", "rate-2", "rate-3", "rate-4", "rate-5", "pick-a", "pick-b", "pick-tie",
    "skip", "undo", "progress", "mode", "weight", "auto-weight", "auto-weight-note", "agreement", "preview", "replay", "steps", "batch", "lr", "kl", "n-eval", "start-round",
    "cancel-round", "round-status", "round-progress", "history", "version-pick", "rollback", "cmp-version",
    "heldout-pick", "cmp-prompt", "cmp-generate", "ref-out", "ref-score", "pol-out", "pol-score", "eval-n",
    "evaluate", "eval-table", "eval-summary", "upload", "text-col", "import", "import-result", "export",
    "export-link", "counts", "delete-name", "delete-confirm", "delete-ratings", "delete-result",
}  # fmt: skip


def _stub_studio():
    return SimpleNamespace(round_defaults=lambda: RoundSettings(steps=7, batch_size=12, mini_batch_size=4))


def _ids(demo: gr.Blocks) -> list[str]:
    return [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]


def test_the_page_keeps_every_element_id_once_and_the_keys_name_only_existing_buttons():
    demo = build_demo(_stub_studio(), auth=True)
    ids = _ids(demo)
    assert set(ids) == PAGE_IDS and len(ids) == len(set(ids))
    keyed = set(re.findall(r'"([a-z0-9-]+)"', SHORTCUTS_JS.split("const keys =")[1].split(";")[0])) - set("12345abtsu")
    shortcut_ids = {"rate-toxic", "rate-1", "rate-ok", "rate-2", "rate-3", "rate-4", "rate-5", "pick-a", "pick-b"}
    assert keyed == shortcut_ids | {"pick-tie", "skip", "undo"}
    assert keyed <= set(ids)
    steps = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "steps")
    assert steps.value == 7  # the round defaults reach the fields
    name = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "name")
    assert name.visible is False  # with logins the login name is the annotator
    name = next(b for b in build_demo(_stub_studio()).blocks.values() if getattr(b, "elem_id", None) == "name")
    assert name.visible is True


def test_bind_fixes_keywords_and_gradio_still_hands_over_the_request():
    def callback(a, b, request: gr.Request, *, studio, tab):
        return (a, b, request, studio, tab)

    bound = bind(callback, studio="S", tab="T")
    inputs, *_ = special_args(bound, [1, 2], request="REQ")
    assert inputs == [1, 2, "REQ"]  # a functools.partial would get None here
    assert bound(*inputs) == (1, 2, "REQ", "S", "T")


def test_status_line_says_what_the_studio_is_doing_and_keeps_options_as_text():
    assert status_text(error="OSError: no [model](http://x)", ready=False, loading="x") == (
        "**Start-up failed**: OSError&#58; no &#91;model&#93;&#40;http&#58;&#47;&#47;x&#41;. "
        "Fix the option and restart; ratings already stored are safe."
    )
    assert status_text(error=None, ready=False, loading="loading the policy (2/3)") == (
        "Loading: loading the policy &#40;2&#47;3&#41;"
    )
    ready = status_text(error=None, ready=True, loading="", version="v1", policy="./my-model", refill_error=None)
    assert ready == "Ready · current policy: **v1** · &#46;&#47;my&#45;model"
    failed = status_text(error=None, ready=True, loading="", version="v1", policy="m", refill_error="<b>oom</b>")
    assert failed.endswith(" · last refill failed: &#60;b&#62;oom&#60;&#47;b&#62;")


def test_version_dropdowns_choose_the_current_version_and_parse_back_to_its_id():
    versions = [
        SimpleNamespace(id=3, name="v2", is_current=False),
        SimpleNamespace(id=2, name="v1", is_current=True),
        SimpleNamespace(id=1, name="v0 (base)", is_current=False),
    ]
    labels, current = version_choices(versions)
    assert labels == ["3: v2", "2: v1 (current)", "1: v0 (base)"] and current == "2: v1 (current)"
    assert [version_id(c) for c in labels] == [3, 2, 1]
    assert version_choices([]) == ([], None)


def test_a_download_link_is_markdown_with_the_label_and_name_as_text():
    link = link_markdown("Download [x]", "ratings-unpaired.jsonl", "tok_123", 15)
    assert link == (
        "[Download &#91;x&#93;: ratings&#45;unpaired&#46;jsonl](exports/tok_123) "
        "(the link works for 15 minutes, for you only)"
    )


def test_the_timer_updates_the_status_and_fetches_no_item_for_a_tab_without_annotator():
    from feedback.studio import StartPhase
    from ui.common import UserState
    from ui.page import tick

    swept = []
    studio = SimpleNamespace(
        error=None,
        status="loading the reward model ...",
        phase=StartPhase("loading the reward model", started=time.perf_counter() - 12.4),
        ready=SimpleNamespace(is_set=lambda: False),
        downloads=SimpleNamespace(sweep=lambda: swept.append(1)),
    )
    with gr.Blocks():
        status, seen = gr.Markdown(), gr.State()
    kwargs = dict(studio=studio, auth=False, tab=None, status=status, status_seen=seen)
    out = tick(UserState(), False, "ann", "Binary (toxic / not toxic)", None, None, **kwargs)
    assert list(out) == [status, seen] and out[seen] == out[status] and swept == [1]
    # the same line a moment later is not sent again
    assert tick(UserState(), False, "ann", "Binary (toxic / not toxic)", out[seen], None, **kwargs) == gr.skip()
    text, seconds = out[status].rsplit(" · ", 1)  # the phase, and how long it has run: 12 s and a bit
    assert text == "Loading: loading the reward model" and 12 <= int(seconds.removesuffix(" s")) < 60
