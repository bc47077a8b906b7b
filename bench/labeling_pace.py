"""Does an annotator at a steady pace ever wait for an item? The app's own service, without the page.

`bench.app_latency` measures the same in Chromium, page and HTTP included, on the machine it runs on. This one drives
the `Studio` the app builds (pool process, refill, rounds) through the calls the page's callbacks make
(`submit_and_next`, `refill_in_background`, `next_item`), so it runs where no browser does: on a GPU machine, for
instance, to see what labeling needs from the hardware. Click-to-next here is the service's part of the page's figure
(the page adds its own HTTP and redraw, about 150 ms p50 with the tiny models).

    .venv/bin/python -m bench.labeling_pace --pace 2 --clicks 40 --round-steps 20
    .venv/bin/python -m bench.labeling_pace --device cuda --out runs/labeling-pace-cuda.md

It prints launch to first item (fresh store, model already converted), click-to-next p50 / p95 / max while quiet and
during a model-mode round, how many clicks met an empty pool, the longest wait, and the round's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.app_latency import click_figures
from bench.run import cpu_model


@dataclasses.dataclass
class Clicks:
    """Click-to-next latencies (seconds) and the waits for an empty pool."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    empty: int = 0  # clicks after which no item was there at once
    longest_wait_s: float = 0.0

    def row(self) -> str:
        """The table row, with the percentiles `bench.app_latency` reports for the page."""
        if not self.latencies:
            return "| 0 | - | - | - | 0 | - |"
        f = click_figures(self.latencies)
        return (
            f"| {f['clicks']} | {f['p50_ms']:.0f} ms | {f['p95_ms']:.0f} ms | {f['max_ms']:.0f} ms | "
            f"{self.empty} | {self.longest_wait_s:.1f} s |"
        )


def wait_for_item(svc, annotator_id: int, deadline: float, poll_s: float = 0.05):
    """What the page does when an annotator has nothing: ask for a refill and look again until an item comes."""
    while True:
        item = svc.next_item(annotator_id)
        if item is not None:
            return item
        if time.monotonic() > deadline:
            raise TimeoutError("no item came for the annotator")
        svc.refill_in_background()
        time.sleep(poll_s)


def click_through(
    svc, annotator_id: int, item, pace: float, deadline: float, clicks: int | None = None, until=None
) -> tuple[Clicks, object]:
    """Rate the shown item every `pace` seconds (binary, as the page's button does), `clicks` times or until
    `until()` is true; each click's latency runs from the click to the next item in hand."""
    out = Clicks()
    while (clicks is None or len(out.latencies) < clicks) and not (until is not None and until()):
        time.sleep(pace)
        t = time.monotonic()
        _, item = svc.submit_and_next(annotator_id, item.generation_id, "binary", 1)
        svc.refill_in_background()
        if item is None:
            out.empty += 1
            item = wait_for_item(svc, annotator_id, deadline)
            out.longest_wait_s = max(out.longest_wait_s, time.monotonic() - t)
        out.latencies.append(time.monotonic() - t)
    return out, item


def measure(options, clicks: int, pace: float, round_steps: int, round_eval: int, timeout: float, say) -> dict:
    from feedback.studio import Studio

    t0 = time.monotonic()
    deadline = t0 + timeout
    studio = Studio(options, log_fn=lambda m: say(f"app: {m}"))
    try:
        studio.start()
        who = studio.svc.annotator("pace-annotator")
        item = wait_for_item(studio.svc, who.id, deadline)
        first_s = time.monotonic() - t0
        say(f"first item after {first_s:.1f} s")
        quiet, item = click_through(studio.svc, who.id, item, pace, deadline, clicks=clicks)
        say(f"quiet: {quiet.row()}")
        during, round_s, status = None, None, None
        if round_steps:
            studio.ready.wait(max(0.0, deadline - time.monotonic()))  # the app's own copy loads after the first items
            while studio.runner is None:
                if studio.error:
                    raise RuntimeError(studio.error)
                time.sleep(0.1)
            settings = dataclasses.replace(studio.round_defaults(), steps=round_steps, eval_prompts=round_eval)
            t_round = time.monotonic()
            studio.start_round(settings)
            say(f"round of {round_steps} steps started")
            during, item = click_through(
                studio.svc, who.id, item, pace, deadline, until=lambda: not studio.runner.running
            )
            round_s = time.monotonic() - t_round
            status = studio.svc.rounds()[0].status
            say(f"during the round ({round_s:.0f} s, {status}): {during.row()}")
        rated = studio.svc.progress(who.id).mine
        return {
            "first_item_s": first_s,
            "quiet": quiet,
            "during": during,
            "round_s": round_s,
            "round_status": status,
            "rated": rated,
        }
    finally:
        studio.close(timeout=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.labeling_pace", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (the app's --device)")
    p.add_argument("--pace", type=float, default=2.0, help="seconds between an item in hand and its click [2]")
    p.add_argument("--clicks", type=int, default=40, help="clicks measured before the round [40]")
    p.add_argument("--round-steps", type=int, default=20, help="a model-mode round of this many steps (0: none) [20]")
    p.add_argument("--round-eval", type=int, default=16, help="the round's held-out prompts before and after [16]")
    p.add_argument("--pool-size", type=int, default=16, help="the app's --pool-size [16]")
    p.add_argument("--first-items", type=int, default=2, help="the app's --first-items [2]")
    p.add_argument("--policy", default=None, help="the app's --policy (default: the embedded SmolLM2)")
    p.add_argument("--lora-targets", default=None, help="the app's --lora-targets, for --policy")
    p.add_argument("--reward", default=None, help="the app's --reward")
    p.add_argument("--prompts", default=None, help="the app's --prompts")
    p.add_argument("--max-new-tokens", type=int, default=None, help="the app's --max-new-tokens")
    p.add_argument("--heldout", type=int, default=64, help="the app's --heldout [64]")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from feedback.studio import StudioOptions
    from rlhf.models import resolve_device

    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f} s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as data:
        options = StudioOptions(
            data_dir=Path(data),
            policy=args.policy,
            lora_targets=args.lora_targets.split(",") if args.lora_targets else None,
            reward=args.reward,
            prompts=args.prompts,
            max_new_tokens=args.max_new_tokens,
            heldout=args.heldout,
            pool_size=args.pool_size,
            first_items=args.first_items,
            device=args.device,
        )
        r = measure(options, args.clicks, args.pace, args.round_steps, args.round_eval, args.timeout, say)
    device = resolve_device(args.device)
    where = f"{os.cpu_count()} cores ({cpu_model()})"
    if device.type == "cuda":
        import torch

        where += f", {torch.cuda.get_device_name()}"
    lines = [
        f"`python -m bench.labeling_pace --device {args.device} --pace {args.pace} --clicks {args.clicks} "
        f"--round-steps {args.round_steps} --round-eval {args.round_eval} --pool-size {args.pool_size} "
        f"--first-items {args.first_items}`, {'--policy ' + args.policy if args.policy else 'embedded default'} "
        f"on {device.type}, {where}.",
        "",
        f"Launch to first item (fresh store, model converted before): {r['first_item_s']:.1f} s.",
        "",
        "| when | clicks | click to next p50 | p95 | max | clicks that met an empty pool | longest wait |",
        "|---|---|---|---|---|---|---|",
        "| quiet " + r["quiet"].row(),
    ]
    if r["during"] is not None:
        lines.append(
            f"| during a {args.round_steps}-step round ({r['round_s']:.0f} s, {r['round_status']}) " + r["during"].row()
        )
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
