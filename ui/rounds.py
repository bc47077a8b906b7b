"""Pure views of training rounds: the per-step plots and the history table (no Gradio, unit-tested)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from feedback.rounds import eta_text

REWARD_SERIES = (("reward", "env/reward_mean"),)
KL_LOSS_SERIES = (("KL", "objective/kl"), ("loss", "loss/total"))


def metric_frame(metrics: Sequence[dict], series: Sequence[tuple[str, str]]) -> pd.DataFrame | None:
    """Long-format (step, metric, value) rows of the named step statistics; None when there are none yet (an
    empty frame leaves Gradio 6.31's plot unable to draw later data)."""
    rows = [
        {"step": int(m["step"]), "metric": name, "value": float(m[key])}
        for m in metrics
        for name, key in series
        if key in m
    ]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", "metric", "value"]).astype({"step": "int64", "value": "float64"})


def progress_html(done: int, total: int, phase: str = "", eta_s: float | None = None) -> str:
    """A real progress bar (never an input) for the steps of the latest round, with the running round's phase
    and the time it expects to need; the phase names are ours (escaped all the same), no user text."""
    import html

    done, total = int(done), int(total)
    if total <= 0:
        return '<progress max="1" value="0" style="width:100%"></progress><div>no round yet</div>'
    text = f"{done}/{total} PPO steps"
    if phase:
        text = f"{html.escape(phase)} · {text}"
    if eta_s is not None:
        text += f" · {eta_text(eta_s)}"
    return f'<progress max="{total}" value="{min(done, total)}" style="width:100%"></progress><div>{text}</div>'


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "" if x is None else format(float(x), fmt)


def before_after(evaluation: dict | None, before: str, after: str, change: str, ci: str) -> str:
    """'0.0587 → 0.0453 (-22.8%, CI -49.7% to +24.3% vs reference)', or '' when the round was not evaluated."""
    ev = evaluation or {}
    if ev.get(before) is None or ev.get(after) is None:
        return ""
    text = f"{_num(ev[before])} → {_num(ev[after])}"
    if ev.get(change) is not None and ev.get(ci):
        lo, hi = ev[ci]
        text += f" ({ev[change]:+.1%}, CI {lo:+.1%} to {hi:+.1%} vs reference)"
    return text


HISTORY_COLUMNS = [
    "round",
    "status",
    "reward mode",
    "steps",
    "reward before → after",
    "toxicity, reward classifier",
    "toxicity, second judge",
    "from",
    "to",
]


def history_frame(rounds: Sequence, version_names: dict[int, str]) -> pd.DataFrame:
    """One row per round: what it trained on, and toxicity before and after by both judges with the CI."""
    return pd.DataFrame(
        [
            {
                "round": r.id,
                "status": r.status,
                "reward mode": r.reward_mode + (f" (w={r.reward_weight:.2f})" if r.reward_mode == "blend" else ""),
                "steps": len(r.metrics),
                "reward before → after": before_after(r.evaluation, "before_mean", "after_mean", "", ""),
                "toxicity, reward classifier": before_after(
                    r.evaluation,
                    "before_toxicity",
                    "after_toxicity",
                    "toxicity_change_vs_reference",
                    "toxicity_change_ci95",
                ),
                "toxicity, second judge": before_after(
                    r.evaluation,
                    "before_judge_toxicity",
                    "after_judge_toxicity",
                    "judge_toxicity_change_vs_reference",
                    "judge_toxicity_change_ci95",
                ),
                "from": version_names.get(r.input_version_id, ""),
                "to": version_names.get(r.output_version_id, "") if r.output_version_id else "",
            }
            for r in rounds
        ],
        columns=HISTORY_COLUMNS,
    )
