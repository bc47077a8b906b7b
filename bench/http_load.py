"""Many annotators at once over HTTP: the real app (`app.py` as a subprocess, on a fresh database) and N simulated
annotators, each with its own account, login and Gradio session, driving the Label tab's events as the page does
(`bench.http_client`: Gradio's queue protocol, no browser). Each annotator opens the page, then repeatedly rates
the item on screen (binary, a random value) and gets the next one, at one of two paces:

- human: a random 2-5 s (`--human-wait`) between an item shown and its rating;
- full: no wait.

What is measured, per configuration (annotators x pace x database):

- click to next item, p50 / p95 / max: from sending a rating (the button's event) to having the next item on screen
  (that event's answer; when it brings none, the page's one-second re-fetch until one comes: "met an empty pool");
- ratings the clients believe stored (the page moved on without a warning), and per second;
- errors: failed requests or events, and warning pop-ups;

and afterwards, from the database (SQLAlchemy on `db.models`):

- every rating a client believes stored is stored exactly once, with the value it sent ("lost": not stored;
  "extra": stored with no client believing it, e.g. twice; "wrong value");
- no item was handed to two annotators at once: each item's time on each screen (from the answer that showed it to
  the rating sent, both client-side, so inside the server's lease) is matched to its generation in the store; two
  annotators' times on one generation that overlap are a "double hand-out".

Labeling must not wait for the policy: the app runs on the tiny models of `tests/tiny_models.py` (a 2-layer
Llama-like policy, 8 new tokens, and a 2-layer RoBERTa reward), which answer a chunk of 8 prompts in tens of ms,
with `--pool-size` 4 x annotators (at least 32): a refill starts when fewer items than that are unrated and adds as
many. Start-up generates the whole first pool (`--first-items` = pool size) before the clock starts, so every
annotator gets an item of their own from the first click. What remains is the app: Gradio's queue, the callbacks,
the store's transactions and the pool process, on this machine's cores (the annotators run here too).

    .venv/bin/python -m bench.http_load --seconds 10 --annotators 4 --paces full     # a smoke run, SQLite
    .venv/bin/python -m bench.http_load --database-url postgresql://postgres:postgres@127.0.0.1:5432/postgres \\
        --annotators 8 32 --paces human full --databases sqlite postgresql --seconds 60 --out http-load.md
    .venv/bin/python -m bench.http_load ... -- --max-new-tokens 16   # anything after -- goes to app.py

A PostgreSQL configuration creates a fresh database on the server of `--database-url` (else $DATABASE_URL) and
drops it afterwards. A browser also polls once a second (the status and round timers); `--ticks` adds those
events, one second apart, in a second session per annotator.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.http_client import (
    AppProcess,
    GradioError,
    GradioPage,
    LabelPage,
    Shown,
    fresh_postgres_database,
    wait_for_item,
)

PACES = ("human", "full")
TINY_NEW_TOKENS = 8


@dataclass(frozen=True)
class LoadSettings:
    """One configuration's annotators.

    Args:
        annotators: how many people label at once.
        human_wait: (min, max) seconds between an item shown and its rating, drawn uniformly; None: full speed.
        seconds: how long they label (the clock starts once the app hands out items).
        ratings: stop each annotator after this many ratings (0: only the clock stops them).
        ticks: also send the page's one-second timer events, as a browser does.
        seed: seeds each annotator's waits and rating values.
    """

    annotators: int
    human_wait: tuple[float, float] | None = None
    seconds: float = 60.0
    ratings: int = 0
    ticks: bool = False
    seed: int = 0


@dataclass
class Holding:
    """One item on one annotator's screen: from the answer that showed it (`since`, monotonic) to the rating sent
    (`until`; None: still on screen when the run ended)."""

    shown: Shown
    since: float
    until: float | None = None
    value: int | None = None
    outcome: str = "shown"  # stored: the page moved on without a warning; unknown: the rating's call failed
    generation_id: int | None = None  # filled in from the store by `verify`


@dataclass
class AnnotatorRun:
    """What one simulated annotator did and saw."""

    name: str
    url: str
    holdings: list[Holding] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # click to next item, seconds
    empty: int = 0  # ratings after which the pool had nothing for them
    started: float = 0.0  # when the clock started (monotonic), everyone signed in
    errors: list[str] = field(default_factory=list)

    @property
    def stored(self) -> list[Holding]:
        return [h for h in self.holdings if h.outcome == "stored"]


def accounts(n: int) -> list[tuple[str, str]]:
    """(name, password) of the annotators: ann01, ann02, ..."""
    width = max(2, len(str(n)))
    return [(f"ann{i:0{width}d}", f"pw-ann{i:0{width}d}") for i in range(1, n + 1)]


def app_args(
    policy: Path, reward: Path, users: list[tuple[str, str]], pool_size: int, extra: list[str] = ()
) -> list[str]:
    """app.py options: the tiny models, a pool that outpaces the annotators (see the module docstring), logins."""
    args = [
        "--policy", str(policy), "--lora-targets", "q_proj,v_proj", "--reward", str(reward),
        "--max-new-tokens", str(TINY_NEW_TOKENS), "--heldout", "8",
        "--pool-size", str(pool_size), "--first-items", str(pool_size), "--auth",
    ]  # fmt: skip
    for name, password in users:
        args += ["--add-user", f"{name}:{password}"]
    return [*args, *extra]


def pool_size_for(annotators: int) -> int:
    return max(32, 4 * annotators)


# ---- the annotators -------------------------------------------------------------------------------------------
def _until_item(page: LabelPage, run: AnnotatorRun, stop_at: float) -> Shown | None:
    """The page's one-second re-fetch while nothing is on screen, until an item comes (None: the run ended)."""
    while time.monotonic() < stop_at:
        try:
            shown, warnings = page.open()
            run.errors += warnings
        except GradioError as err:
            run.errors.append(str(err))
            shown = None
        if shown is not None:
            return shown
        time.sleep(1.0)
    return None


def annotate(run: AnnotatorRun, page: LabelPage, settings: LoadSettings, stop_at: float, rng: random.Random) -> None:
    """One signed-in annotator: open the Label tab, then rate and get the next item until `stop_at` (or
    `settings.ratings`)."""
    shown = _until_item(page, run, stop_at)
    while shown is not None:
        held = Holding(shown, time.monotonic())
        run.holdings.append(held)
        if settings.ratings and len(run.stored) >= settings.ratings:
            return
        if settings.human_wait is not None:
            wait = rng.uniform(*settings.human_wait)
            if time.monotonic() + wait >= stop_at:
                return
            time.sleep(wait)
        if time.monotonic() >= stop_at:
            return
        held.value = rng.randint(0, 1)
        held.until = time.monotonic()
        try:
            shown, warnings = page.rate(held.value)
        except GradioError as err:
            shown, warnings = None, [str(err)]
        run.errors += warnings
        held.outcome = "unknown" if warnings else "stored"
        if shown is None:
            run.empty += held.outcome == "stored"
            shown = _until_item(page, run, stop_at)
            if shown is None:
                return
        if held.outcome == "stored":
            run.latencies.append(time.monotonic() - held.until)


def tick(page: GradioPage, stop_at: float, errors: list[str]) -> None:
    """The page's two one-second timers (status line, round progress), as an open browser tab sends them."""
    label_tick, round_tick = page.api("tick"), page.api("round_tick")
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            page.call(label_tick)
            page.call(round_tick)
        except GradioError as err:
            errors.append(f"timer: {err}")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def label_load(
    urls: list[str], users: list[tuple[str, str]], settings: LoadSettings
) -> tuple[list[AnnotatorRun], float]:
    """`settings.annotators` annotators (the first of `users`), spread over the app processes at `urls` in turn,
    labeling at once. Returns what each did and the end of the run (monotonic)."""
    runs = [AnnotatorRun(name, urls[i % len(urls)]) for i, (name, _) in enumerate(users[: settings.annotators])]
    passwords = dict(users)
    with ExitStack() as pages:
        # Everyone signs in before the clock starts, as people do once before a session of labeling (a login is
        # slow on purpose, pbkdf2, and Gradio checks it on its event loop: concurrent logins stall every page).
        labels = [pages.enter_context(LabelPage(run.url, run.name, passwords[run.name])) for run in runs]
        # the page's timers run in a second session of each annotator (the same login)
        timers = [pages.enter_context(GradioPage(r.url, r.name, passwords[r.name])) for r in runs if settings.ticks]
        started = time.monotonic()
        stop_at = started + settings.seconds
        for run in runs:
            run.started = started
        threads = [
            threading.Thread(
                target=annotate,
                args=(run, page, settings, stop_at, random.Random(settings.seed * 10_007 + i)),
                name=f"annotator-{run.name}",
                daemon=True,
            )
            for i, (run, page) in enumerate(zip(runs, labels, strict=True))
        ]
        tickers = [
            threading.Thread(target=tick, args=(page, stop_at, run.errors), daemon=True)
            for run, page in zip(runs, timers, strict=False)
        ]
        for t in [*threads, *tickers]:
            t.start()
        for t in [*threads, *tickers]:
            t.join(max(1.0, stop_at - time.monotonic()) + 300)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        raise TimeoutError(f"annotators still waiting for an answer 300 s after the end: {stuck}")
    return runs, time.monotonic()


# ---- checking the store -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What the store says about the clients' ratings and hand-outs (see the module docstring)."""

    believed: int  # ratings the clients believe stored
    stored: int  # ratings of these annotators in the store
    lost: int
    extra: int
    wrong_value: int
    double_handouts: int  # pairs of overlapping screen times of two annotators on one generation
    unmatched_screens: int  # items on screen at the end that the store does not show leased to that annotator
    examples: tuple[str, ...] = ()  # a few of the problems, for a failing test's message

    @property
    def ok(self) -> bool:
        return not (self.lost or self.extra or self.wrong_value or self.double_handouts)


def verify(database_url: str, runs: list[AnnotatorRun], end: float, since: datetime | None = None) -> Verdict:
    """Match every client's ratings and screens to the store's rows (by annotator, prompt and response text); with
    `since` (naive UTC, as `db.models.utcnow`), only the ratings stored from then on: an earlier run's are not
    this run's."""
    from sqlalchemy import select, true
    from sqlalchemy.orm import Session

    from db.models import Annotator, Generation, Prompt, Rating
    from db.session import make_engine

    names = [r.name for r in runs]
    engine = make_engine(database_url)
    try:
        with Session(engine) as s:
            rated = s.execute(
                select(Annotator.name, Generation.id, Prompt.text, Generation.response, Rating.value)
                .join(Rating, Rating.annotator_id == Annotator.id)
                .join(Generation, Generation.id == Rating.generation_id)
                .join(Prompt, Prompt.id == Generation.prompt_id)
                .where(Annotator.name.in_(names), Rating.created >= since if since is not None else true())
            ).all()
            leased = s.execute(
                select(Annotator.name, Generation.id, Prompt.text, Generation.response)
                .join(Generation, Generation.leased_to == Annotator.id)
                .join(Prompt, Prompt.id == Generation.prompt_id)
                .where(Annotator.name.in_(names))
            ).all()
    finally:
        engine.dispose()
    ratings: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # (name, prompt, response) -> [(gid, value)]
    for name, gid, prompt, response, value in rated:
        ratings[(name, prompt, response)].append((gid, value))
    leases: dict[tuple, list[int]] = defaultdict(list)
    for name, gid, prompt, response in leased:
        leases[(name, prompt, response)].append(gid)

    problems: list[str] = []
    believed = lost = wrong = unmatched = 0
    for run in runs:
        for h in run.holdings:
            key = (run.name, h.shown.prompt, h.shown.response)
            if h.outcome == "shown":  # still on screen at the end: leased to this annotator
                if leases[key]:
                    h.generation_id = leases[key][0]
                else:
                    unmatched += 1
                continue
            rows = ratings[key]
            same = [r for r in rows if r[1] == h.value]
            if h.outcome == "stored":
                believed += 1
                if same or rows:
                    gid, value = (same or rows)[0]
                    rows.remove((gid, value))
                    h.generation_id = gid
                    if value != h.value:
                        wrong += 1
                        problems.append(f"{run.name}: sent {h.value}, stored {value} for generation {gid}")
                else:
                    lost += 1
                    problems.append(f"{run.name}: rating {h.value} of {h.shown.response!r} not stored")
            elif rows:  # the call failed, the rating may be stored: then it is this one
                h.generation_id = (same or rows)[0][0]
                rows.remove((same or rows)[0])
    leftover = [(key[0], gid) for key, rows in ratings.items() for gid, _ in rows]
    problems += [f"{name}: a rating of generation {gid} nobody believes stored" for name, gid in leftover[:5]]
    double = _overlaps(runs, end, problems)
    return Verdict(
        believed=believed,
        stored=len(rated),
        lost=lost,
        extra=len(leftover),
        wrong_value=wrong,
        double_handouts=double,
        unmatched_screens=unmatched,
        examples=tuple(problems[:10]),
    )


def _overlaps(runs: list[AnnotatorRun], end: float, problems: list[str]) -> int:
    """Pairs of two annotators' screen times on one generation that overlap."""
    by_generation: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for run in runs:
        for h in run.holdings:
            if h.generation_id is not None:
                by_generation[h.generation_id].append((h.since, h.until if h.until is not None else end, run.name))
    n = 0
    for gid, spans in by_generation.items():
        spans.sort()
        for i, (start, stop, name) in enumerate(spans):
            for start2, stop2, name2 in spans[i + 1 :]:
                if start2 >= stop:
                    break
                if name2 != name and start < stop2:
                    n += 1
                    problems.append(f"generation {gid} on the screens of {name} and {name2} at once")
    return n


# ---- one configuration ----------------------------------------------------------------------------------------------
def figures(runs: list[AnnotatorRun], seconds: float) -> dict:
    """Click-to-next p50 / p95 / max (ms), ratings, ratings per second, empty-pool waits, errors."""
    lat = sorted(x for r in runs for x in r.latencies)
    if len(lat) > 1:
        q = statistics.quantiles(lat, n=100, method="inclusive")
        p50, p95 = q[49], q[94]
    else:
        p50 = p95 = lat[0] if lat else float("nan")
    ratings = sum(len(r.stored) for r in runs)
    return {
        "ratings": ratings,
        "ratings_per_s": ratings / seconds if seconds > 0 else float("nan"),
        "p50_ms": p50 * 1000,
        "p95_ms": p95 * 1000,
        "max_ms": (lat[-1] if lat else float("nan")) * 1000,
        "empty": sum(r.empty for r in runs),
        "errors": sum(len(r.errors) for r in runs),
        "error_examples": [e for r in runs for e in r.errors][:5],
    }


def measure(
    database_url: str,
    settings: LoadSettings,
    policy: Path,
    reward: Path,
    data_dir: Path,
    pool_size: int | None = None,
    extra_args: list[str] = (),
    say=lambda text: None,
) -> dict:
    """One configuration: the app on `database_url` (an empty database), the annotators, then the store's verdict."""
    users = accounts(settings.annotators)
    pool = pool_size or pool_size_for(settings.annotators)
    app = AppProcess(app_args(policy, reward, users, pool, list(extra_args)), data_dir, database_url)
    with app:
        t0 = time.monotonic()
        app.wait_http()
        wait_for_item(app.url, *users[0])
        say(
            f"app ready in {time.monotonic() - t0:.0f} s; {settings.annotators} annotators for {settings.seconds:.0f} s"
        )
        runs, end = label_load([app.url], users, settings)
        elapsed = end - runs[0].started
    verdict = verify(database_url, runs, end)
    return figures(runs, elapsed) | {"seconds": elapsed, "verdict": verdict, "runs": runs}


# ---- the report ------------------------------------------------------------------------------------------------------
HEADER = (
    "| database | annotators | pace | s | ratings | in the store | ratings/s | click to next p50 | p95 | max "
    "| met an empty pool | errors | lost | extra | wrong value | double hand-outs |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(database: str, annotators: int, pace: str, r: dict) -> str:
    v: Verdict = r["verdict"]
    return (
        f"| {database} | {annotators} | {pace} | {r['seconds']:.0f} | {r['ratings']} | {v.stored} | "
        f"{r['ratings_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['max_ms']:.0f} ms | "
        f"{r['empty']} | {r['errors']} | {v.lost} | {v.extra} | {v.wrong_value} | {v.double_handouts} |"
    )


def _say(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f} s] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        prog="python -m bench.http_load", description="click-to-next latency and store checks with N annotators"
    )
    p.add_argument("--annotators", type=int, nargs="+", default=[8, 32], help="annotators at once [8 32]")
    p.add_argument("--paces", nargs="+", choices=PACES, default=["human", "full"], help="[human full]")
    p.add_argument(
        "--databases",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=None,
        help="[sqlite, and postgresql when a server URL is known]",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="a PostgreSQL server URL: each configuration gets a fresh database there [$DATABASE_URL]",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="labeling time per configuration [60]")
    p.add_argument("--ratings", type=int, default=0, help="stop each annotator after this many ratings [0: no cap]")
    p.add_argument("--human-wait", type=float, nargs=2, default=[2.0, 5.0], metavar=("MIN", "MAX"), help="[2 5] s")
    p.add_argument("--pool-size", type=int, default=None, help="app.py --pool-size [4 x annotators, at least 32]")
    p.add_argument("--ticks", action="store_true", help="also send the page's one-second timer events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    args = p.parse_args(own)
    server = args.database_url if (args.database_url or "").startswith("postgresql") else None
    databases = args.databases or (["sqlite", "postgresql"] if server else ["sqlite"])
    if "postgresql" in databases and server is None:
        p.error("postgresql needs a server: --database-url postgresql://... (or $DATABASE_URL)")

    from bench.run import cpu_model
    from tests.tiny_models import build_tiny_llama, build_tiny_roberta_classifier

    t0 = time.monotonic()
    say = lambda text: _say(t0, text)  # noqa: E731
    lines = [
        f"# HTTP load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {cpu_model()}",
        f"# tiny models, {args.seconds:.0f} s per configuration, human wait {args.human_wait[0]:g}-"
        f"{args.human_wait[1]:g} s{', with the page timers' if args.ticks else ''}"
        + (f"; app.py {' '.join(extra)}" if extra else ""),
        "",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="http_load-") as tmp:
        policy = build_tiny_llama(Path(tmp) / "tiny-llama")
        reward = build_tiny_roberta_classifier(Path(tmp) / "tiny-roberta")
        for database in databases:
            for n in args.annotators:
                for pace in args.paces:
                    settings = LoadSettings(
                        annotators=n,
                        human_wait=tuple(args.human_wait) if pace == "human" else None,
                        seconds=args.seconds,
                        ratings=args.ratings,
                        ticks=args.ticks,
                        seed=args.seed,
                    )
                    say(f"{database}, {n} annotators, {pace} pace")
                    with tempfile.TemporaryDirectory(prefix="app-", dir=tmp) as data, ExitStack() as stack:
                        url = (
                            stack.enter_context(fresh_postgres_database(server))
                            if database == "postgresql"
                            else f"sqlite:///{Path(data) / 'studio.db'}"
                        )
                        r = measure(url, settings, policy, reward, Path(data), args.pool_size, extra, say)
                    row = table_row(database, n, pace, r)
                    lines.append(row)
                    print(row, flush=True)
                    for problem in [*r["error_examples"], *r["verdict"].examples]:
                        say(f"  {problem}")
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
        say(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
