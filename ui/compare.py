"""The Compare tab: a policy version against the reference on one prompt, and an evaluation on held-out ones."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ui.common import HEAVY, bind, errors_to_page, version_id

EVAL_METRICS = {  # row name -> field of each side's statistics
    "reward mean": "reward_mean",
    "reward std": "reward_std",
    "toxicity mean": "toxicity_mean",
    "flagged share": "flagged_share",
    "response tokens": "response_tokens_mean",
}


# ---- pure views --------------------------------------------------------------------------------------------------
def answer_scores(answer) -> str:
    return f"reward {answer.reward:+.3f} · P(not offensive) {answer.p_not_offensive:.3f}"


def heldout_choices(prompts) -> list[str]:
    """Dropdown entries: the prompt's id and its first 70 characters (a dropdown shows its choices as text)."""
    return [f"#{p.id}: {p.text[:70]}" for p in prompts]


def heldout_id(choice: str) -> int:
    return int(choice.split(":", 1)[0].lstrip("#"))


def eval_table(ev) -> pd.DataFrame:
    """Reference and policy side by side, rounded to 4 decimals."""
    r, p = ev.reference, ev.policy
    return pd.DataFrame(
        {
            "metric": list(EVAL_METRICS),
            "reference": [getattr(r, field) for field in EVAL_METRICS.values()],
            "policy": [getattr(p, field) for field in EVAL_METRICS.values()],
        }
    ).round(4)


def eval_summary(ev) -> str:
    lo, hi = ev.relative_change_ci95
    return (
        f"Relative change of the mean reward: **{ev.relative_change:+.2%}** (95% CI {lo:+.2%} to {hi:+.2%}); "
        f"mean KL to the reference: **{ev.kl_to_reference:.4f}** nats; {ev.n_prompts} held-out prompts."
    )


def eval_chart(ev) -> pd.DataFrame:
    return pd.DataFrame(
        {"model": ["reference", "policy"], "mean reward": [ev.reference.reward_mean, ev.policy.reward_mean]}
    )


# ---- layout ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CompareTab:
    version: gr.Dropdown
    heldout_pick: gr.Dropdown
    prompt: gr.Textbox
    generate: gr.Button
    ref_out: gr.Textbox
    ref_score: gr.Textbox
    pol_out: gr.Textbox
    pol_score: gr.Textbox
    n_prompts: gr.Number
    evaluate: gr.Button
    eval_table: gr.Dataframe
    eval_summary: gr.Markdown
    eval_chart: gr.BarPlot


def build_compare_tab(studio) -> CompareTab:
    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            cmp_version = gr.Dropdown(label="Policy version", choices=[], elem_id="cmp-version")
            heldout_pick = gr.Dropdown(label="Held-out prompt", choices=[], elem_id="heldout-pick")
        cmp_prompt = gr.Textbox(label="Prompt (pick one above or type your own)", lines=6, elem_id="cmp-prompt")
        b_generate = gr.Button("Answer with both", variant="primary", elem_id="cmp-generate")
        with gr.Row():
            with gr.Column():
                ref_out = gr.Textbox(label="Reference (before training)", lines=5, interactive=False, elem_id="ref-out")
                ref_score = gr.Textbox(label="Reward · P(not offensive)", interactive=False, elem_id="ref-score")
            with gr.Column():
                pol_out = gr.Textbox(label="Policy (selected version)", lines=5, interactive=False, elem_id="pol-out")
                pol_score = gr.Textbox(label="Reward · P(not offensive)", interactive=False, elem_id="pol-score")
        with gr.Row():
            n_prompts = gr.Number(value=16, label="Held-out prompts", precision=0, minimum=1, elem_id="eval-n")
            b_eval = gr.Button("Evaluate", elem_id="evaluate")
        table = gr.Dataframe(
            pd.DataFrame(columns=["metric", "reference", "policy"]),
            label="Reference vs policy (press Evaluate)",
            interactive=False,
            elem_id="eval-table",
        )
        summary = gr.Markdown(elem_id="eval-summary")
        chart = gr.BarPlot(x="model", y="mean reward", title="Mean reward on held-out prompts", height=220)

    tab = CompareTab(
        version=cmp_version, heldout_pick=heldout_pick, prompt=cmp_prompt, generate=b_generate, ref_out=ref_out,
        ref_score=ref_score, pol_out=pol_out, pol_score=pol_score, n_prompts=n_prompts, evaluate=b_eval,
        eval_table=table, eval_summary=summary, eval_chart=chart,
    )  # fmt: skip
    tab.heldout_pick.change(bind(pick_heldout, studio=studio), [tab.heldout_pick], [tab.prompt])
    tab.generate.click(
        bind(answer, studio=studio, tab=tab),
        [tab.version, tab.prompt],
        [tab.ref_out, tab.ref_score, tab.pol_out, tab.pol_score],
        concurrency_id=HEAVY,
        concurrency_limit=1,
    )
    tab.evaluate.click(
        bind(evaluate, studio=studio, tab=tab),
        [tab.version, tab.n_prompts],
        [tab.eval_table, tab.eval_summary, tab.eval_chart],
        concurrency_id=HEAVY,
        concurrency_limit=1,
    )
    return tab


# ---- callbacks -------------------------------------------------------------------------------------------------------
def heldout_update(studio) -> gr.update:
    return gr.update(choices=heldout_choices(studio.svc.heldout_prompts(200)))


@errors_to_page
def pick_heldout(choice, *, studio):
    if not choice:
        return gr.skip()
    pid = heldout_id(choice)
    return next(p.text for p in studio.svc.heldout_prompts(10_000) if p.id == pid)


@errors_to_page
def answer(choice, text, *, studio, tab: CompareTab):
    if not choice:
        raise ValueError("pick a policy version")
    ref, pol = studio.compare(version_id(choice), text)
    return {
        tab.ref_out: ref.text,
        tab.ref_score: answer_scores(ref),
        tab.pol_out: pol.text,
        tab.pol_score: answer_scores(pol),
    }


@errors_to_page
def evaluate(choice, n, *, studio, tab: CompareTab):
    if not choice:
        raise ValueError("pick a policy version")
    ev = studio.evaluate(version_id(choice), int(n))
    return {tab.eval_table: eval_table(ev), tab.eval_summary: eval_summary(ev), tab.eval_chart: eval_chart(ev)}
