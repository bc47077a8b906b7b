"""rlhf-studio in the browser: label responses, choose the reward, run a PPO round, compare before and after.

    python app.py                       # the embedded default, no network, on http://127.0.0.1:7860
    python app.py --help                # host, port, data dir, database, models, logins

This file is the command line and the launch; the page is `ui.page.build_demo(studio)`, one module per tab in
ui/, whose callbacks call feedback/ (and, through it, rlhf/). Text from prompts and models is only ever shown in
text components (never as Markdown or HTML).
"""

import argparse
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: the app runs a pool refill, a round and the web server side by
# side, and spinning threads take the cores the others need (set before torch is imported; yours wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastapi import Request
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.routing import APIRoute

from feedback.model import ROUND_NICE
from feedback.studio import Studio, StudioOptions
from rlhf.reward_model import BACKBONES

__all__ = ["add_users", "export_route", "launch", "main", "options_from", "parse_args"]


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
    p.add_argument(
        "--pool-size", type=int, default=16, help="items per refill; a refill starts when fewer are left to rate"
    )
    p.add_argument(
        "--no-pool-copy",
        dest="pool_copy",
        action="store_false",
        help="fill the pool from the training policy itself (saves one model copy of memory; labeling then waits "
        "for items while a round trains)",
    )
    p.add_argument(
        "--first-items",
        type=int,
        default=2,
        help="items generated first at start-up, before the page takes ratings; the rest of the pool follows [2]",
    )
    p.add_argument(
        "--round-nice",
        type=int,
        default=0,
        help="how far below labeling a round's CPU priority is (Linux nice, 0-19; {ROUND_NICE}: labeling first, and a "
        "round waits while labelers keep the pool refilling) [0]".replace("{ROUND_NICE}", str(ROUND_NICE)),
    )
    p.add_argument(
        "--human-backbone",
        choices=BACKBONES,
        default="policy",
        help="frozen features the learned human reward is fitted on: the policy's base model, or the reward "
        "classifier (BENCHMARKS.md: the policy's middle layer learns tastes the classifier does not see) [policy]",
    )
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
    args = p.parse_args(argv)
    if not 0 <= args.round_nice <= 19:
        p.error(f"--round-nice takes 0 to 19 (Linux nice values), got {args.round_nice}")
    if args.first_items < 1:
        p.error(f"--first-items takes 1 or more, got {args.first_items}")
    return args


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
        pool_copy=args.pool_copy,
        first_items=args.first_items,
        round_nice=args.round_nice,
        max_prompt_chars=args.max_prompt_chars,
        max_new_tokens=args.max_new_tokens,
        human_backbone=args.human_backbone,
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


def _login(studio: Studio):
    """Gradio's login check, awaited on its event loop: the password hash (deliberately slow) runs in a worker
    thread, so the other pages' events go on while someone signs in (32 people signing in at once otherwise held
    every page for seconds)."""
    import asyncio

    async def login(user: str, password: str) -> bool:
        return await asyncio.to_thread(lambda: studio.svc.check_login(user, password) is not None)

    return login


def launch(studio: Studio, host: str, port: int, auth: bool, **kwargs):
    # Gradio is imported here, after `studio.start()`: the models load while it imports (seconds on 2 cores)
    from ui.label import SHORTCUTS_JS
    from ui.page import build_demo

    demo = build_demo(studio, auth=auth)
    demo.queue(default_concurrency_limit=16)
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=_login(studio) if auth else None,
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
