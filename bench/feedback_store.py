"""Throughput of the labeling service: ratings per second with N concurrent annotators, and p50 / p95 of one
"submit and get next item" (one transaction), on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.feedback_store                      # SQLite only
    DATABASE_URL=postgresql://user:pw@127.0.0.1:5432/postgres .venv/bin/python -m bench.feedback_store

Each configuration runs on a fresh database (a temp SQLite file; a temp database on the PostgreSQL server)
holding `--items` generations; every annotator is a thread that rates `--ratings` items through
`FeedbackService.submit_and_next`, as the app's rating buttons do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from bench.run import cpu_model
from db.session import make_engine, make_session_factory, upgrade
from feedback.io import add_prompt_texts
from feedback.service import FeedbackService
from feedback.types import NewGeneration


def _fill(svc: FeedbackService, n: int) -> None:
    version = svc.ensure_base_version()
    add_prompt_texts(svc.Session, [(f"#Person1#: dialogue {i}", None) for i in range(n)], "bench", "train")
    gens = [
        NewGeneration(
            i + 1,
            f"prompt {i}",
            f"response {i}",
            list(range(40)),
            list(range(24)),
            [-1.0] * 24,
            (i % 97) / 97,
            None,
            "b",
        )
        for i in range(n)
    ]
    for start in range(0, n, 500):
        svc.add_generations(version.id, gens[start : start + 500])


def run_one(url: str, annotators: int, ratings: int, items: int) -> dict:
    engine = (
        make_engine(url, pool_size=annotators + 2, max_overflow=0) if not url.startswith("sqlite") else make_engine(url)
    )
    upgrade(engine)
    svc = FeedbackService(make_session_factory(engine))
    _fill(svc, items)
    latencies: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(annotators + 1)
    errors: list[BaseException] = []

    def annotate(k: int) -> None:
        try:
            a = svc.annotator(f"bench-{k}")
            item = svc.next_item(a.id)
            mine = []
            start_gate.wait()
            for n in range(ratings):
                if item is None:
                    break
                t0 = time.perf_counter()
                _, item = svc.submit_and_next(a.id, item.generation_id, "binary", n % 2, request_id=f"{k}-{n}")
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(k,)) for k in range(annotators)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    engine.dispose()
    if errors:
        raise errors[0]
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "annotators": annotators,
        "ratings": len(latencies),
        "wall_s": wall,
        "ratings_per_s": len(latencies) / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
    }


def _postgres_database(server: str):
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    name = f"rlhf_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin.url.set(database=name).render_as_string(hide_password=False), drop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", default="8,32", help="comma-separated concurrency levels")
    p.add_argument("--ratings", type=int, default=100, help="ratings per annotator")
    p.add_argument("--items", type=int, default=4000, help="generations in the pool")
    p.add_argument("--postgres", default=os.environ.get("DATABASE_URL", ""), help="PostgreSQL server URL")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.annotators.split(",")]
    cpu = cpu_model()
    print(f"# feedback store benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {cpu}")
    print(f"# pool {args.items} generations, {args.ratings} ratings per annotator, submit_and_next per rating\n")
    print("| back end | annotators | ratings | wall s | ratings/s | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|")
    backends = ["sqlite"] + (["postgresql"] if args.postgres.startswith("postgresql") else [])
    for backend in backends:
        for n in levels:
            with tempfile.TemporaryDirectory() as tmp:
                if backend == "sqlite":
                    url, drop = f"sqlite:///{Path(tmp) / 'bench.db'}", (lambda: None)
                else:
                    url, drop = _postgres_database(args.postgres)
                try:
                    r = run_one(url, n, args.ratings, args.items)
                finally:
                    drop()
            print(
                f"| {backend} | {n} | {r['ratings']} | {r['wall_s']:.1f} | {r['ratings_per_s']:.0f} | "
                f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} |",
                flush=True,
            )
    if len(backends) == 1:
        print("\n(PostgreSQL skipped: pass --postgres or set DATABASE_URL to a postgresql:// server URL)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
