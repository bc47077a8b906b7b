"""The Data tab's views and its refusals: import report, export names, counts, agreement, admin-only actions."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from ui import data
from ui.common import UserState
from ui.data import COUNT_COLUMNS, agreement_text, counts_frame, export_name, import_text


def test_import_report_counts_and_names_the_split_as_text():
    report = SimpleNamespace(added=12, duplicates=3, rows=15)
    assert (
        import_text(report, "heldout") == "Imported **12** prompts into heldout; skipped **3** duplicates of 15 rows."
    )
    assert "into &#60;b&#62;x" in import_text(report, "<b>x")


def test_export_names_per_shape_and_format_and_refuses_anything_else():
    assert export_name("unpaired", "jsonl") == "ratings-unpaired.jsonl"
    assert export_name("pairwise", "csv") == "ratings-pairwise.csv"
    assert export_name("pairwise", "dataset") == "ratings-pairwise"  # a folder, zipped for the download
    for shape, fmt in [("pairwise", "xlsx"), (None, "csv"), ("../x", "jsonl")]:
        with pytest.raises(ValueError, match="choose an export shape and a format"):
            export_name(shape, fmt)


def test_counts_and_agreement():
    table = counts_frame([("ann", 5, 2), ("bob", 0, 1)])
    assert list(table.columns) == COUNT_COLUMNS and table.to_dict("records")[1] == {
        "annotator": "bob",
        "ratings": 0,
        "pairwise": 1,
    }
    assert list(counts_frame([]).columns) == COUNT_COLUMNS
    assert agreement_text(0.41234) == (
        "Agreement (Krippendorff's alpha, interval, over all binary and 1-5 ratings): **0.412**"
    )
    assert agreement_text(None) == "Agreement: needs at least two items rated by two or more annotators."


def test_import_and_export_are_for_admins_and_need_a_file():
    studio = SimpleNamespace(svc=None)  # never reached: the refusals come first
    bob = UserState(annotator_id=1, name="bob", role="annotator")
    with pytest.warns(UserWarning, match="bob is an annotator"):
        assert data.do_export(bob, "unpaired", "jsonl", None, studio=studio) == gr.skip()
    with pytest.warns(UserWarning, match="bob is an annotator"):
        assert data.do_import(bob, "x.csv", "dialogue", "train", studio=studio) == gr.skip()
    admin = UserState(annotator_id=2, name="ann", role="admin")
    with pytest.warns(UserWarning, match="choose a &#46;csv&#44; &#46;jsonl or &#46;parquet file first"):
        assert data.do_import(admin, None, "dialogue", "train", studio=studio) == gr.skip()


def test_import_passes_the_options_and_reports_what_the_service_added(tmp_path):
    calls = []

    def import_prompt_file(path, **options):
        calls.append((path, options))
        return SimpleNamespace(added=2, duplicates=1, rows=3)

    studio = SimpleNamespace(
        svc=SimpleNamespace(import_prompt_file=import_prompt_file), options=SimpleNamespace(max_prompt_chars=99)
    )
    admin = UserState(annotator_id=2, name="ann", role="admin")
    text = data.do_import(admin, str(tmp_path / "p.jsonl"), "  ", "heldout", studio=studio)
    assert text == "Imported **2** prompts into heldout; skipped **1** duplicates of 3 rows."
    assert calls == [
        (
            tmp_path / "p.jsonl",
            {"text_column": "dialogue", "source": "p.jsonl", "split": "heldout", "max_chars": 99},
        )
    ]
