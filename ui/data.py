"""The Data tab: import prompts, export ratings as an owner-only link, ratings per annotator, deleting ratings."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from ui.common import UserState, bind, download_link, errors_to_page, info, login, require_admin
from ui.text import counted, plain

SHAPES = ("unpaired", "pairwise")
FORMATS = ("jsonl", "csv", "dataset")
COUNT_COLUMNS = ["annotator", "ratings", "pairwise"]


# ---- pure views --------------------------------------------------------------------------------------------------
def import_text(report, split: str) -> str:
    return (
        f"Imported **{report.added}** prompts into {plain(split)}; "
        f"skipped **{report.duplicates}** duplicates of {report.rows} rows."
    )


def export_name(shape: str, fmt: str) -> str:
    """The export's file name (a `dataset` is a folder, zipped for the download)."""
    if shape not in SHAPES or fmt not in FORMATS:
        raise ValueError("choose an export shape and a format")
    return f"ratings-{shape}" + ("" if fmt == "dataset" else f".{fmt}")


def counts_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COUNT_COLUMNS)


def agreement_text(alpha: float | None) -> str:
    if alpha is None:
        return "Agreement: needs at least two items rated by two or more annotators."
    return f"Agreement (Krippendorff's alpha, interval, over all binary and 1-5 ratings): **{alpha:.3f}**"


# ---- layout ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DataTab:
    upload: gr.File
    text_col: gr.Textbox
    split: gr.Radio
    import_: gr.Button
    import_result: gr.Markdown
    shape: gr.Radio
    fmt: gr.Radio
    export: gr.Button
    export_link: gr.Markdown
    counts: gr.Dataframe
    agreement: gr.Markdown
    refresh: gr.Button
    doomed: gr.Textbox
    confirm: gr.Textbox
    delete: gr.Button
    delete_result: gr.Markdown


def build_data_tab(studio, state: gr.State) -> DataTab:
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
            shape = gr.Radio(list(SHAPES), value="unpaired", label="Export shape")
            fmt = gr.Radio(list(FORMATS), value="jsonl", label="Format")
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

    tab = DataTab(
        upload=upload, text_col=text_col, split=split, import_=b_import, import_result=import_result,
        shape=shape, fmt=fmt, export=b_export, export_link=export_link, counts=counts, agreement=agreement,
        refresh=b_refresh, doomed=doomed, confirm=confirm, delete=b_delete, delete_result=delete_result,
    )  # fmt: skip
    tab.delete.click(
        bind(delete_ratings, studio=studio, tab=tab),
        [state, tab.doomed, tab.confirm],
        [tab.counts, tab.agreement, tab.delete_result, tab.confirm],
    )
    tab.import_.click(bind(do_import, studio=studio), [state, tab.upload, tab.text_col, tab.split], [tab.import_result])
    tab.export.click(bind(do_export, studio=studio), [state, tab.shape, tab.fmt], [tab.export_link])
    tab.refresh.click(bind(data_view, studio=studio, tab=tab), None, [tab.counts, tab.agreement])
    return tab


# ---- callbacks -------------------------------------------------------------------------------------------------------
@errors_to_page
def do_import(st: UserState, file, column: str, which: str, *, studio):
    require_admin(st)
    if file is None:
        raise ValueError("choose a .csv, .jsonl or .parquet file first")
    path = Path(file if isinstance(file, str) else file.name)
    report = studio.svc.import_prompt_file(
        path,
        text_column=column.strip() or "dialogue",
        source=path.name,
        split=which,
        max_chars=studio.options.max_prompt_chars,
    )
    return import_text(report, which)


@errors_to_page
def do_export(st: UserState, which_shape: str, which_fmt: str, request: gr.Request, *, studio):
    require_admin(st)
    name = export_name(which_shape, which_fmt)
    out = studio.svc.export_ratings(studio.downloads.new_path(name), which_fmt, which_shape)
    if which_fmt == "dataset":
        out = Path(shutil.make_archive(str(out), "zip", root_dir=out))  # a folder downloads as one zip
    return download_link(studio, out, login(request), "Download")


def data_view(*, studio, tab: DataTab) -> dict:
    return {
        tab.counts: counts_frame(studio.svc.counts_per_annotator()),
        tab.agreement: agreement_text(studio.svc.agreement()),
    }


@errors_to_page
def delete_ratings(st: UserState, who_name: str, typed: str, request: gr.Request, *, studio, tab: DataTab):
    require_admin(st)
    n, backup = studio.svc.delete_ratings_of(who_name, typed, studio.data_dir / "deleted")
    deleted = counted(n, "rating or comparison", "ratings and comparisons")
    info(f"Deleted {deleted} of {who_name.strip()}.")
    link = download_link(studio, backup, login(request), "Download what was deleted", keep=True)
    return {**data_view(studio=studio, tab=tab), tab.delete_result: link, tab.confirm: ""}
