"""The real app over HTTP (`bench.http_client`: Gradio's queue protocol, no browser), on the tiny models.

- The benchmark's store check, on a hand-made store: it catches a double hand-out, an extra rating, a wrong value.
- The load benchmark's smoke run: a few annotators on SQLite; every rating they believe stored is stored exactly
  once, and no item was on two screens at once.
- Issue 12 item 4, on PostgreSQL ($DATABASE_URL; skipped without it): two app processes on one database, annotators
  spread over both; one round at a time across them; the other process serves the version a round made.

The last two start `app.py` as subprocesses (about half a minute to a minute and a half on 2 cores): marked `slow`.
"""

from __future__ import annotations

import os
import time

import pytest

from bench.http_client import AppProcess, LabelPage, Shown, fresh_postgres_database, wait_for_item
from bench.http_load import (
    AnnotatorRun,
    Holding,
    LoadSettings,
    accounts,
    app_args,
    label_load,
    measure,
    verify,
)

ADMIN = ("admin", "admin-pass")


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_the_store_check_catches_overlaps_extra_and_wrong_values(tmp_path):
    """The checker itself, on a store where x and y both rated generation 1: a double hand-out when their screen
    times overlap (not when one follows the other), 'extra' for a rating no client believes stored, 'wrong value'
    for a value the client did not send."""
    from sqlalchemy.orm import Session

    from db.models import Annotator, Base, Generation, PolicyVersion, Prompt, Rating
    from db.session import make_engine

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Prompt(id=1, text="p", text_hash="h"), PolicyVersion(id=1, name="v0")])
        s.add_all([Annotator(id=1, name="x"), Annotator(id=2, name="y")])
        s.add(Generation(id=1, prompt_id=1, policy_version_id=1, query_text="p", response="r", query_ids=[],
                         response_ids=[], logprobs=[]))  # fmt: skip
        s.flush()
        s.add_all([Rating(generation_id=1, annotator_id=a, kind="binary", value=1, score=1.0) for a in (1, 2)])
        s.commit()
    engine.dispose()

    def runs(y_since: float, x_value: int = 1) -> list[AnnotatorRun]:
        x, y = AnnotatorRun("x", ""), AnnotatorRun("y", "")
        x.holdings.append(Holding(Shown("p", "r"), since=0.0, until=6.0, value=x_value, outcome="stored"))
        y.holdings.append(Holding(Shown("p", "r"), since=y_since, until=9.0, value=1, outcome="stored"))
        return [x, y]

    v = verify(url, runs(y_since=5.0), end=10.0)
    assert (v.believed, v.stored, v.lost, v.extra, v.wrong_value, v.double_handouts) == (2, 2, 0, 0, 0, 1)
    assert verify(url, runs(y_since=7.0), end=10.0).ok
    x, y = runs(y_since=7.0, x_value=0)
    y.holdings.clear()
    v = verify(url, [x, y], end=10.0)
    assert (v.believed, v.lost, v.extra, v.wrong_value) == (1, 0, 1, 1)


@pytest.mark.slow
def test_load_benchmark_smoke_on_sqlite(tmp_path, tiny_llama, tiny_classifier):
    settings = LoadSettings(annotators=3, human_wait=(0.2, 0.8), seconds=6)
    r = measure(f"sqlite:///{tmp_path / 'studio.db'}", settings, tiny_llama, tiny_classifier, tmp_path / "app")
    v, runs = r["verdict"], r["runs"]
    assert r["errors"] == 0, r["error_examples"]
    assert all(run.stored for run in runs), "every annotator rated at least one item"
    assert v.believed == r["ratings"] == v.stored > 0
    assert (v.lost, v.extra, v.wrong_value, v.double_handouts, v.unmatched_screens) == (0, 0, 0, 0, 0), v.examples
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"]


# ---- two app processes on one PostgreSQL database (issue 12, item 4) -------------------------------------------
@pytest.fixture
def postgres_url():
    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith("postgresql"):
        pytest.skip("set DATABASE_URL=postgresql://... (.ci/start-postgres prints one) to run two app processes")
    with fresh_postgres_database(server, prefix="rlhf_test") as url:
        yield url


@pytest.mark.slow
def test_two_app_processes_share_one_postgres_database(postgres_url, tiny_llama, tiny_classifier, tmp_path):
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from db.models import Generation, PolicyVersion, TrainingRound, utcnow
    from db.session import make_engine

    users = accounts(4)
    # the tiny policy emits byte 0 now and then: decoding drops it, since PostgreSQL text cannot hold it
    args = app_args(tiny_llama, tiny_classifier, users, pool_size=16, extra=["--add-user", ":".join([*ADMIN, "admin"])])
    engine = make_engine(postgres_url)

    def latest_round() -> TrainingRound | None:
        with Session(engine) as s:
            return s.scalars(select(TrainingRound).order_by(TrainingRound.id.desc())).first()

    def generations_of(version_id: int) -> int:
        with Session(engine) as s:
            return s.scalar(select(func.count(Generation.id)).where(Generation.policy_version_id == version_id))

    # B starts once A is ready (database migrated, prompts imported, first items made): a second process joining a
    # running one, as the README's deployment does; two processes creating one empty store at once is not tested
    a = AppProcess(args, tmp_path / "a", postgres_url).start()
    b = AppProcess(args, tmp_path / "b", postgres_url)
    try:
        a.wait_http()
        wait_for_item(a.url, *users[0])
        b.start().wait_http()
        wait_for_item(b.url, *users[1])

        # ---- annotators on both processes: no item on two screens, every rating stored once -------------------
        runs, end = label_load([a.url, b.url], users, LoadSettings(annotators=4, human_wait=(0.1, 0.5), seconds=6))
        verdict = verify(postgres_url, runs, end)
        assert [e for run in runs for e in run.errors] == []
        assert {run.url for run in runs if run.stored} == {a.url, b.url}, "both processes took ratings"
        assert verdict.believed == verdict.stored > 0
        assert verdict.ok and verdict.unmatched_screens == 0, verdict.examples

        # ---- one round at a time across the processes -------------------------------------------------------
        for app in (a, b):
            app.wait_log("models loaded in")  # the policy that trains has loaded (labeling started before it)
        with LabelPage(a.url, *ADMIN) as admin_a, LabelPage(b.url, *ADMIN) as admin_b:
            for page in (admin_a, admin_b):
                page.open()  # the page's load: the tab's state knows its admin
            start_a, start_b = admin_a.event("start-round", "click"), admin_b.event("start-round", "click")
            long_round = {"steps": 1000, "batch": 4, "n-eval": 0}  # runs until cancelled
            assert admin_a.call(start_a, long_round).warnings == []
            running = _wait_for(lambda: (r := latest_round()) and r.status == "running" and r, 60, "A's round")
            refused = admin_b.call(start_b, {"steps": 1, "batch": 4, "n-eval": 0})
            assert len(refused.warnings) == 1
            assert f"round {running.id} is still running (in another app process" in refused.warnings[0]
            assert latest_round().id == running.id, "B created no round"

            admin_a.call(admin_a.event("cancel-round", "click"))
            _wait_for(lambda: latest_round().status == "interrupted", 60, "A's round to stop after Cancel")

            # ---- a round ends in B: A serves its version ------------------------------------------------------
            assert admin_b.call(start_b, {"steps": 1, "batch": 4, "n-eval": 0}).warnings == []
            done = _wait_for(lambda: (r := latest_round()).status in ("done", "failed") and r, 120, "B's round")
            assert done.status == "done", done.error
        with Session(engine) as s:
            current = s.scalar(select(PolicyVersion).where(PolicyVersion.is_current.is_(True)))
        assert current.id == done.output_version_id
        _wait_for(lambda: "is current (set by another app process)" in a.log_text(), 30, "A to follow")
        b.stop()
        made_by_b = generations_of(current.id)
        # A alone now: its annotators rate the new version's items, and A's refills make more of them
        since = utcnow()
        runs, end = label_load([a.url], users, LoadSettings(annotators=2, seconds=8))
        verdict = verify(postgres_url, runs, end, since)
        assert [e for run in runs for e in run.errors] == [] and verdict.ok, verdict.examples
        with Session(engine) as s:
            rated = [s.get(Generation, h.generation_id) for run in runs for h in run.stored]
        assert rated and {g.policy_version_id for g in rated} == {current.id}
        assert generations_of(current.id) > made_by_b, "A generated items of the new version"
    finally:
        b.stop()
        a.stop()
        engine.dispose()
