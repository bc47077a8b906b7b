"""The feedback store and labeling service, on a temporary SQLite file and, when DATABASE_URL names a PostgreSQL
server, on a temporary database there too (CI starts one)."""

from __future__ import annotations

import doctest
import json
import os
import sqlite3
import threading
import uuid

import pytest
from sqlalchemy import create_engine, func, select, text

import feedback.rewards
from db.models import Comparison, Generation, PolicyVersion, Prompt, Rating
from db.session import make_engine, make_session_factory, upgrade
from feedback.io import ImportFileError, export_ratings, import_prompts
from feedback.rewards import blend, krippendorff_alpha
from feedback.service import FeedbackService
from feedback.types import NewGeneration


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgresql") else None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL: a temp SQLite file, or a temp database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studio.db'}"
        return
    server = _postgres_url()
    if server is None:
        pytest.skip("set DATABASE_URL=postgresql://... to run the store tests on PostgreSQL")
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    name = f"rlhf_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine, make_session_factory(engine)
    engine.dispose()


def _fill(svc: FeedbackService, n_items: int, n_prompts: int | None = None) -> list[int]:
    """n_items generations of the base version over n_prompts prompts (default: one prompt each)."""
    from feedback.io import add_prompt_texts

    n_prompts = n_prompts or n_items
    version = svc.ensure_base_version()
    add_prompt_texts(svc.Session, [(f"#Person1#: dialogue {i}", None) for i in range(n_prompts)], "test", "train")
    with svc.Session.begin() as s:
        prompt_ids = list(s.scalars(select(Prompt.id).order_by(Prompt.id)))
    gens = [
        NewGeneration(
            prompt_ids[i % n_prompts],
            f"prompt {i}",
            f"response {i}",
            [1, 2, 3],
            [4, 5],
            [-0.5, -0.25],
            (i % 10) / 10,
            None,
            "t",
        )
        for i in range(n_items)
    ]
    return svc.add_generations(version.id, gens)


# ---- concurrency -----------------------------------------------------------------------------------------------
def test_concurrent_submits_lose_nothing_and_double_nothing(store):
    """8 threads x 200 ratings, every 7th submit retried with its request id: exactly 1600 rows."""
    _, Session = store
    svc = FeedbackService(Session)
    _fill(svc, 220)
    errors, receipts = [], []

    def annotate(k: int) -> None:
        try:
            a = svc.annotator(f"annotator-{k}")
            item = svc.next_item(a.id)
            for n in range(200):
                rid = f"{a.id}-{n}"
                receipt, nxt = svc.submit_and_next(a.id, item.generation_id, "binary", n % 2, request_id=rid)
                receipts.append(receipt)
                if n % 7 == 0:  # the client did not see the answer and sends the same submit again
                    again = svc.submit(a.id, item.generation_id, "binary", n % 2, request_id=rid)
                    assert again.duplicate and again.id == receipt.id
                item = nxt
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Session.begin() as s:
        assert s.scalar(select(func.count(Rating.id))) == 1600
        pairs = s.execute(select(Rating.generation_id, Rating.annotator_id)).all()
        assert len(set(pairs)) == 1600
        per_annotator = s.execute(select(Rating.annotator_id, func.count()).group_by(Rating.annotator_id)).all()
        assert sorted(n for _, n in per_annotator) == [200] * 8
    assert not any(r.duplicate for r in receipts)


def test_two_annotators_never_get_the_same_item_while_unrated_items_remain(store):
    _, Session = store
    svc = FeedbackService(Session)
    _fill(svc, 40)
    annotators = [svc.annotator(f"a{k}") for k in range(4)]
    held: dict[int, list[int]] = {a.id: [] for a in annotators}
    barrier = threading.Barrier(len(annotators))
    errors = []

    def work(a) -> None:
        try:
            for _ in range(10):
                barrier.wait()
                item = svc.next_item(a.id)
                held[a.id].append(item.generation_id)
                barrier.wait()  # everyone holds their item at the same time here
                svc.submit(a.id, item.generation_id, "scale", 3)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(a,)) for a in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for turn in range(10):
        items = [held[a.id][turn] for a in annotators]
        assert len(set(items)) == len(items), f"turn {turn}: {items}"
    # 40 items, 4 annotators x 10 turns, leases respected: nobody got an item someone else had rated
    assert len({g for ids in held.values() for g in ids}) == 40


def test_queue_orders_by_fewest_ratings(store):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 10)
    first, second = svc.annotator("first"), svc.annotator("second")
    svc.submit(first.id, ids[0], "binary", 0)
    assert svc.next_item(second.id).generation_id == ids[1]  # ids[0] has a rating: the others come first
    svc.submit(second.id, ids[1], "binary", 1)
    svc.submit(first.id, ids[2], "binary", 1)
    assert svc.next_item(second.id).generation_id == ids[3]  # unrated ones first, by id


def test_a_unique_conflict_is_retried_in_a_new_transaction_and_other_errors_are_not(store):
    """`retry_on_conflict`: a get-or-create that loses the insert to another writer reads the winner's row."""
    from sqlalchemy.exc import IntegrityError

    from db.models import Annotator
    from db.session import retry_on_conflict

    _, Session = store
    calls = []

    def get_or_create(s):
        calls.append(1)
        if len(calls) == 1:  # our read found no row, and another writer inserts the name before our insert
            with Session.begin() as other:
                other.add(Annotator(name="racer", role="annotator"))
            found = None
        else:
            found = s.scalar(select(Annotator).where(Annotator.name == "racer"))
        if found is None:
            found = Annotator(name="racer", role="admin")
            s.add(found)
            s.flush()
        return found.role

    assert retry_on_conflict(Session, get_or_create) == "annotator"  # the second try read the winner's row
    assert len(calls) == 2
    with Session.begin() as s:
        assert s.scalars(select(Annotator.role).where(Annotator.name == "racer")).all() == ["annotator"]

    def always_conflicts(s):
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("unique"))

    calls.clear()
    with pytest.raises(IntegrityError):
        retry_on_conflict(Session, always_conflicts, attempts=3)
    assert len(calls) == 3

    def wrong(s):
        calls.append(1)
        raise ValueError("not a conflict")

    calls.clear()
    with pytest.raises(ValueError, match="not a conflict"):
        retry_on_conflict(Session, wrong)
    assert len(calls) == 1


def test_skip_puts_an_item_aside_for_that_annotator_only(store):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 3)
    a, b = svc.annotator("a"), svc.annotator("b")
    item = svc.next_item(a.id)
    nxt = svc.skip(a.id, item.generation_id)
    assert nxt.generation_id != item.generation_id
    assert svc.next_item(b.id).generation_id == item.generation_id  # released for others
    assert svc.progress(a.id).left_for_me == len(ids) - 1


def test_undo_removes_only_the_annotators_own_last_rating(store):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 5)
    a, b = svc.annotator("a"), svc.annotator("b")
    svc.submit(a.id, ids[0], "binary", 1)
    svc.submit(a.id, ids[1], "binary", 0)
    svc.submit(b.id, ids[2], "scale", 5)  # b rates after a's last rating
    undone = svc.undo(a.id)
    assert undone.generation_id == ids[1]
    with Session.begin() as s:
        left = sorted(s.execute(select(Rating.annotator_id, Rating.generation_id)).all())
    assert left == sorted([(a.id, ids[0]), (b.id, ids[2])])
    assert svc.next_item(a.id).generation_id == ids[1]  # the undone item comes back to a
    assert svc.undo(a.id).generation_id == ids[0]
    assert svc.undo(a.id) is None
    assert svc.progress(b.id).mine == 1


def test_deleting_an_annotators_ratings_needs_the_typed_phrase_and_keeps_a_copy(store, tmp_path):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 4, n_prompts=2)
    a, b = svc.annotator("spam"), svc.annotator("good")
    svc.submit(a.id, ids[0], "binary", 0, comment="meh")
    svc.submit(a.id, ids[1], "scale", 2)
    svc.submit_comparison(a.id, ids[0], ids[2], "a")
    svc.submit(b.id, ids[0], "binary", 1)
    for wrong in ("", "spam", "delete good", "DELETE spam"):
        with pytest.raises(ValueError, match="type exactly: delete spam"):
            svc.delete_ratings_of("spam", wrong, tmp_path / "deleted")
    assert svc.counts_per_annotator() == [("good", 1, 0), ("spam", 2, 1)] and not (tmp_path / "deleted").exists()

    n, backup = svc.delete_ratings_of(" spam ", "delete spam", tmp_path / "deleted")
    assert n == 3 and backup.parent == tmp_path / "deleted" and "spam" not in backup.name
    assert svc.counts_per_annotator() == [("good", 1, 0), ("spam", 0, 0)]
    kept = [json.loads(line) for line in backup.read_text(encoding="utf-8").splitlines()]
    assert [(r["type"], r.get("value"), r.get("winner"), r["comment"]) for r in kept] == [
        ("rating", 0, None, "meh"),
        ("rating", 2, None, None),
        ("comparison", None, "a", None),
    ]
    assert kept[0]["generation_id"] == ids[0] and kept[0]["response"] and kept[0]["prompt"]
    assert kept[2]["response_a"] and kept[2]["response_b"] and kept[0]["policy_version_id"]
    with pytest.raises(ValueError, match="no annotator"):
        svc.delete_ratings_of("nobody", "delete nobody", tmp_path)


def test_a_deletion_whose_copy_cannot_be_written_deletes_nothing(store, tmp_path):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 2)
    a = svc.annotator("spam")
    svc.submit(a.id, ids[0], "binary", 0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        svc.delete_ratings_of("spam", "delete spam", blocker / "deleted")
    assert svc.counts_per_annotator() == [("spam", 1, 0)]


def test_pairwise_preferences_map_to_scores_and_undo(store):
    _, Session = store
    svc = FeedbackService(Session)
    _fill(svc, 4, n_prompts=2)  # two responses per prompt
    a = svc.annotator("a")
    pair = svc.next_pair(a.id)
    assert pair.a.prompt_id == pair.b.prompt_id
    svc.submit_comparison(a.id, pair.a.generation_id, pair.b.generation_id, "b", request_id="p1")
    assert svc.submit_comparison(a.id, pair.a.generation_id, pair.b.generation_id, "b", request_id="p1").duplicate
    rows = {r.generation_id: r for r in svc.preview("human")}
    assert rows[pair.b.generation_id].human_score == 1.0 and rows[pair.a.generation_id].human_score == 0.0
    assert svc.next_pair(a.id).prompt_id != pair.prompt_id
    undone = svc.undo(a.id)
    assert {undone.a.generation_id, undone.b.generation_id} == {pair.a.generation_id, pair.b.generation_id}
    with Session.begin() as s:
        assert s.scalar(select(func.count(Comparison.id))) == 0


def test_a_skipped_pair_is_not_shown_again_and_progress_counts_pairs(store):
    _, Session = store
    svc = FeedbackService(Session)
    _fill(svc, 6, n_prompts=3)  # three prompts, two responses each: three pairs
    a = svc.annotator("a")
    assert svc.pair_progress(a.id) == (0, 3)
    first = svc.next_pair(a.id)
    skipped = [tuple(sorted((first.a.generation_id, first.b.generation_id)))]
    second = svc.next_pair(a.id, skipped)
    assert second.prompt_id != first.prompt_id and svc.pair_progress(a.id, skipped) == (0, 2)
    svc.submit_comparison(a.id, second.a.generation_id, second.b.generation_id, "a")
    assert svc.pair_progress(a.id, skipped) == (1, 1)
    third = svc.next_pair(a.id, skipped)
    assert third.prompt_id not in (first.prompt_id, second.prompt_id)
    skipped.append(tuple(sorted((third.a.generation_id, third.b.generation_id))))
    assert svc.next_pair(a.id, skipped) is None
    assert svc.next_pair(a.id).prompt_id == first.prompt_id  # a new session sees the skipped pairs again


def test_undo_says_which_kind_of_rating_it_took_back(store):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 4, n_prompts=2)
    a = svc.annotator("a")
    svc.submit(a.id, ids[0], "scale", 4)
    pair = svc.next_pair(a.id)
    svc.submit_comparison(a.id, pair.a.generation_id, pair.b.generation_id, "tie")
    svc.submit(a.id, ids[2], "binary", 1)
    assert svc.undo(a.id).rated_as == "binary"
    assert hasattr(svc.undo(a.id), "a")  # the pair
    back = svc.undo(a.id)
    assert (back.generation_id, back.rated_as) == (ids[0], "scale")


def test_bad_ratings_are_refused_with_the_allowed_values(store):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 1)
    a = svc.annotator("a")
    with pytest.raises(ValueError, match="1 to 5"):
        svc.submit(a.id, ids[0], "scale", 7)
    with pytest.raises(ValueError, match="0 .toxic. or 1"):
        svc.submit(a.id, ids[0], "binary", 2)
    svc.submit(a.id, ids[0], "binary", 1)
    with pytest.raises(ValueError, match="already rated"):
        svc.submit(a.id, ids[0], "binary", 0)


# ---- rewards -------------------------------------------------------------------------------------------------
def test_reward_doctests():
    assert doctest.testmod(feedback.rewards).failed == 0


def test_blend_returns_the_documented_lists():
    model = [0.1, 0.5, 0.9, 0.4]
    human = [1.0, None, 0.0, 0.5]
    assert blend(model, human, "model") == [0.1, 0.5, 0.9, 0.4]
    assert blend(model, human, "human") == [1.0, None, 0.0, 0.5]
    assert blend(model, human, "blend", 0.5) == pytest.approx([0.55, 0.5, 0.45, 0.45])
    assert blend(model, human, "blend", 1.0) == [1.0, 0.5, 0.0, 0.5]
    assert blend(model, human, "blend", 0.25) == pytest.approx([0.325, 0.5, 0.675, 0.425])
    with pytest.raises(ValueError, match="within"):
        blend(model, human, "blend", 1.5)
    with pytest.raises(ValueError, match="mode"):
        blend(model, human, "mixed")


def test_krippendorff_alpha_matches_a_hand_computation():
    # 2 annotators, 3 items: (1, 1), (0, 0), (1, 0). D_o = 2/6, D_e = 18/30, alpha = 1 - D_o / D_e = 4/9
    triples = [(1, 1, 1.0), (1, 2, 1.0), (2, 1, 0.0), (2, 2, 0.0), (3, 1, 1.0), (3, 2, 0.0)]
    assert krippendorff_alpha(triples) == pytest.approx(4 / 9)
    assert krippendorff_alpha([(1, 1, 1.0), (2, 1, 0.0)]) is None  # nobody overlaps


def test_preview_and_ppo_samples_follow_the_mode(store):
    """Human and Blend score a stored text with the learned reward, as a round scores a fresh sample; here a known
    reward (the response's length in characters, calibration the identity) makes the numbers checkable."""
    import numpy as np

    from feedback.human_reward import Calibration, HumanReward
    from rlhf.reward_model import LinearHead

    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 4)  # model scores 0.0, 0.1, 0.2, 0.3
    a, b = svc.annotator("a"), svc.annotator("b")
    svc.submit(a.id, ids[1], "binary", 1)
    svc.submit(b.id, ids[1], "scale", 2)  # mean human score of ids[1]: (1 + 0.25) / 2
    length = HumanReward(
        lambda texts: np.array([[len(t)] for t in texts], dtype=float),
        LinearHead(np.array([1.0]), 0.0, np.array([0.0]), np.array([1.0])),
        Calibration(0.0, 1.0, 0.0, 1.0),
        n=1,
        kind="scale",
        fit_s=0.0,
    )
    n = len(svc.preview("model")[0].response)
    preview = svc.preview("blend", 0.5, human=length)
    assert [r.generation_id for r in preview] == [ids[1]]
    assert preview[0].human_score == pytest.approx(0.625)  # the ratings, shown beside the rewards
    assert preview[0].model == pytest.approx(0.1) and preview[0].human == n
    assert preview[0].blend == pytest.approx(0.5 * n + 0.5 * 0.1)
    assert svc.preview("blend", 0.5)[0].human is None  # no learned reward yet: Human and Blend stay empty
    with pytest.raises(ValueError, match="needs the human reward"):
        svc.ppo_samples("human")
    human = svc.ppo_samples("human", human=length)
    assert [(s.generation_id, s.reward) for s in human] == [(ids[1], n)]  # replay: rated items only
    model = svc.ppo_samples("model")
    assert model[0].generation_id == ids[1]  # rated items first
    assert [s.reward for s in model] == pytest.approx([0.1, 0.0, 0.2, 0.3])
    assert model[0].logprobs == [-0.5, -0.25] and model[0].response_ids == [4, 5]
    texts, labels, rewards = svc.rated_items()
    assert (len(texts), labels, rewards) == (1, [pytest.approx(0.625)], [pytest.approx(0.1)])


# ---- import / export -------------------------------------------------------------------------------------------
def test_import_rejects_a_bad_file_and_writes_nothing(store, tmp_path):
    _, Session = store
    bad = tmp_path / "prompts.csv"
    bad.write_text('dialogue,summary\n"#Person1#: hi",a\n"#Person1#: hello\nthere",b\n,c\n"#Person1#: ok",d\n')
    with pytest.raises(ImportFileError, match="line 5") as err:  # the multi-line cell makes the empty one line 5
        import_prompts(Session, bad)
    assert err.value.errors == [("line 5", "'dialogue' must be non-empty text, got ''")]
    bad_json = tmp_path / "prompts.jsonl"
    bad_json.write_text('{"dialogue": "a"}\n{"dialogue": "b"\n{"text": "c"}\n')
    with pytest.raises(ImportFileError) as err:
        import_prompts(Session, bad_json)
    assert [w for w, _ in err.value.errors] == ["line 2", "line 3"]
    assert "no 'dialogue' field" in str(err.value)
    with Session.begin() as s:
        assert s.scalar(select(func.count(Prompt.id))) == 0


def test_import_strips_a_bom_and_refuses_nul_bytes_and_huge_prompts(store, tmp_path):
    _, Session = store
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffprompt,source\n#Person1#: hi,x\n".encode())
    assert import_prompts(Session, bom, text_column="prompt").added == 1
    bom_json = tmp_path / "bom.jsonl"
    bom_json.write_bytes('\ufeff{"prompt": "#Person1#: hello"}\n'.encode())
    assert import_prompts(Session, bom_json, text_column="prompt").added == 1

    bad = tmp_path / "bad.jsonl"
    rows = [{"prompt": "fine"}, {"prompt": "nul \x00 here"}, {"prompt": "x" * 20_001}, {"prompt": "x" * 20_000}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ImportFileError) as err:
        import_prompts(Session, bad, text_column="prompt")
    assert [w for w, _ in err.value.errors] == ["line 2", "line 3"]
    assert "NUL byte (character 5)" in str(err.value) and "20,001 characters, over the limit of 20,000" in str(
        err.value
    )
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "y" * 20_001}) + "\n")
    assert import_prompts(Session, long, text_column="prompt", max_chars=30_000).added == 1


def test_a_wrong_text_column_is_one_message_naming_the_files_columns(store, tmp_path):
    _, Session = store
    f = tmp_path / "p.csv"
    f.write_text("source,prompt\n" + "".join(f"s,#Person1#: line {i}\n" for i in range(10)))
    with pytest.raises(ImportFileError) as err:
        import_prompts(Session, f)
    assert err.value.errors == [
        ("file", "no 'dialogue' column; its columns are ['prompt', 'source']: name one as the text column")
    ]
    assert str(err.value).count("dialogue") == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"dialogue": "b"\n')
    with pytest.raises(ImportFileError) as err:
        import_prompts(Session, broken)
    assert "line 1: not valid JSON: Expecting ',' delimiter (column 17)" in str(err.value)  # where the } is missing
    assert "at at" not in str(err.value)


def test_import_skips_and_counts_duplicates(store, tmp_path, chitchat_jsonl):
    _, Session = store
    first = import_prompts(Session, chitchat_jsonl)
    assert first.added == first.rows == 200 and first.duplicates == 0
    again = import_prompts(Session, chitchat_jsonl)
    assert (again.added, again.duplicates) == (0, 200)
    import pandas as pd

    rows = [json.loads(line) for line in chitchat_jsonl.read_text().splitlines()[:3]]
    pq = tmp_path / "p.parquet"
    pd.DataFrame([*rows, {"dialogue": "#Person1#: new one", "summary": "s"}, rows[0]]).to_parquet(pq)
    third = import_prompts(Session, pq)
    assert (third.added, third.duplicates, third.rows) == (1, 4, 5)
    with Session.begin() as s:
        assert s.scalar(select(func.count(Prompt.id))) == 201
        assert s.scalar(select(Prompt.reference_summary).where(Prompt.text == "#Person1#: new one")) == "s"


def test_export_round_trips_in_trl_shapes(store, tmp_path):
    _, Session = store
    svc = FeedbackService(Session)
    ids = _fill(svc, 6, n_prompts=3)
    a, b = svc.annotator("ann"), svc.annotator("bea")
    svc.submit(a.id, ids[0], "binary", 0, comment="rude")
    svc.submit(b.id, ids[0], "scale", 5)
    svc.submit(a.id, ids[1], "binary", 1)
    svc.submit_comparison(a.id, ids[0], ids[3], "b", comment="B is kinder")  # ids[0] and ids[3]: one prompt
    svc.submit_comparison(b.id, ids[1], ids[4], "tie")
    expected = [
        {
            "prompt": "prompt 0",
            "completion": "response 0",
            "label": False,
            "score": 0.0,
            "kind": "binary",
            "annotator": "ann",
            "generation_id": ids[0],
            "comment": "rude",
            "policy_version": "v0 (base)",
        },
        {
            "prompt": "prompt 0",
            "completion": "response 0",
            "label": True,
            "score": 1.0,
            "kind": "scale",
            "annotator": "bea",
            "generation_id": ids[0],
            "comment": None,
            "policy_version": "v0 (base)",
        },
        {
            "prompt": "prompt 1",
            "completion": "response 1",
            "label": True,
            "score": 1.0,
            "kind": "binary",
            "annotator": "ann",
            "generation_id": ids[1],
            "comment": None,
            "policy_version": "v0 (base)",
        },
    ]
    out = export_ratings(Session, tmp_path / "r.jsonl", "jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    import datasets
    import pandas as pd

    csv_rows = pd.read_csv(export_ratings(Session, tmp_path / "r.csv", "csv")).to_dict("records")
    assert [r["completion"] for r in csv_rows] == [r["completion"] for r in expected]
    assert [bool(r["label"]) for r in csv_rows] == [r["label"] for r in expected]
    ds = datasets.load_from_disk(str(export_ratings(Session, tmp_path / "ds", "dataset")))
    assert ds.to_list() == expected
    pairs = datasets.load_from_disk(str(export_ratings(Session, tmp_path / "pairs", "dataset", shape="pairwise")))
    assert pairs.to_list() == [
        {
            "prompt": "prompt 0",
            "chosen": "response 3",
            "rejected": "response 0",
            "annotator": "ann",
            "comment": "B is kinder",
            "policy_version": "v0 (base)",
        }
    ]


# ---- schema and migrations ---------------------------------------------------------------------------------------
def test_models_match_the_migrations(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base

    engine, _ = store
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_an_old_database_upgrades_without_losing_a_row(tmp_path):
    """A database made at the first migration, with data, upgrades to head with every row intact."""
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine, "0001")
    con = sqlite3.connect(path)
    now = "2026-01-01 00:00:00"
    con.executescript(
        f"""
        INSERT INTO prompts VALUES (1, 'hello', 'h1', 'old', 'train', NULL, '{now}');
        INSERT INTO policy_versions VALUES (1, 'v0 (base)', NULL, NULL, 1, '{now}');
        INSERT INTO annotators VALUES (1, 'ann', '{now}');
        INSERT INTO generations VALUES (1, 1, 1, 'q', 'r', '[1]', '[2]', '[-0.5]', 0.7, NULL, 'x', '{now}', NULL, NULL);
        INSERT INTO ratings VALUES (1, 1, 1, 'binary', 1, 1.0, 'fine', 'req-1', '{now}');
        INSERT INTO training_rounds VALUES (1, '{{}}', 'model', 0.0, 'done', '[]', NULL, NULL, 1, NULL, '{now}', NULL, NULL);
        """
    )
    con.commit()
    con.close()
    upgrade(engine)
    Session = make_session_factory(engine)
    svc = FeedbackService(Session)
    ann = svc.annotator("ann")
    assert ann.role == "annotator" and ann.id == 1
    assert svc.current_version().id == 1
    assert svc.preview("human")[0].human_score == 1.0
    assert [r.id for r in svc.rounds()] == [1]
    with Session.begin() as s:
        assert s.get(Generation, 1).logprobs == [-0.5]
        assert s.get(Rating, 1).request_id == "req-1"
    engine.dispose()


def test_sqlite_is_opened_with_wal_busy_timeout_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def test_a_bad_database_url_says_what_shape_to_use():
    with pytest.raises(ValueError, match="postgresql"):
        make_engine("not a url")


def test_passwords_and_roles(store):
    _, Session = store
    svc = FeedbackService(Session)
    svc.set_password("root", "s3cret", role="admin")
    assert svc.check_login("root", "s3cret").is_admin
    assert svc.check_login("root", "wrong") is None
    assert svc.check_login("nobody", "s3cret") is None
    with Session.begin() as s:
        stored = s.scalar(text("SELECT password_hash FROM annotators WHERE name = 'root'"))
    assert "s3cret" not in stored


def test_migrations_run_on_an_engine_made_without_our_helper(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'y.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0003"


# ---- the bridge to the model -------------------------------------------------------------------------------------
def test_pool_refills_from_the_policy_and_rated_items_drive_a_ppo_step(store, tiny_llama, tiny_classifier):
    """Refill asks the policy for generations of the current version; rated ones make an on-policy PPO batch whose
    recorded log-probs are the policy's own, and a step on it changes the LoRA weights."""
    import torch

    from feedback.io import add_prompt_texts
    from feedback.model import PolicyGenerator, sample_batches, step_on_samples
    from rlhf.config import GenerationConfig, LoRAConfig, PolicyConfig, PPOConfig, RewardConfig, RunConfig
    from rlhf.models import load_policy
    from rlhf.ppo import PPOTrainer, response_logprobs
    from rlhf.scorers import load_scorer

    _, Session = store
    cfg = RunConfig(
        policy=PolicyConfig(
            name_or_path=str(tiny_llama), lora=LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
        ),
        generation=GenerationConfig(min_new_tokens=4, max_new_tokens=6, batch_size=8),
        reward=RewardConfig(name_or_path=str(tiny_classifier)),
        ppo=PPOConfig(batch_size=4, mini_batch_size=2, learning_rate=1e-3),
    )
    torch.manual_seed(0)
    policy = load_policy(cfg.policy, device="cpu")
    version = FeedbackService(Session).ensure_base_version()
    svc = FeedbackService(
        Session, PolicyGenerator(policy, load_scorer(cfg.reward, "cpu"), cfg, version.id), low_water=4, refill_size=6
    )
    add_prompt_texts(
        Session, [(f"#Person1#: hello {i}.\n#Person2#: I am good.", None) for i in range(20)], "t", "train"
    )
    assert svc.refill_if_low() == 6
    assert svc.refill_if_low() == 0  # 6 unrated items: not low
    ann = svc.annotator("a")
    rated = set()
    for value in (1, 0, 1, 1, 0):
        item = svc.next_item(ann.id)
        assert item.response is not None and 0.0 <= item.model_score <= 1.0
        svc.submit(ann.id, item.generation_id, "binary", value)
        rated.add(item.generation_id)
    assert svc.refill_if_low() == 6  # one unrated left: refilled
    assert svc.next_pair(ann.id) is None  # one response per prompt so far: nothing to compare
    assert svc.refill_if_low(pairs=True) == 3  # a second response to three prompts
    pair = svc.next_pair(ann.id)
    assert pair.a.prompt_id == pair.b.prompt_id and pair.a.generation_id != pair.b.generation_id
    samples = svc.ppo_samples("model")
    assert len(samples) == 15 and {s.generation_id for s in samples[:5]} == rated  # rated items first
    # the stored log-probs are what the policy gives its own samples now (nothing trained yet)
    again = response_logprobs(
        policy, [torch.tensor(s.query_ids) for s in samples], [torch.tensor(s.response_ids) for s in samples], 1.0
    )
    for s, lp in zip(samples, again, strict=True):
        assert s.logprobs == pytest.approx(lp, abs=1e-5)
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    trainer = PPOTrainer(policy, cfg.ppo)
    stats = step_on_samples(trainer, next(sample_batches(samples, cfg.ppo.batch_size)))
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # on-policy: the recorded log-probs are current
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if n in lora_before)
    with pytest.raises(ValueError, match="fewer than the PPO batch size"):
        next(sample_batches(samples[:3], cfg.ppo.batch_size))


def test_auto_weight_follows_whichever_side_the_annotators_agree_with():
    """Two scores per text, one that orders the items as the labels do and one that does not; the Auto weight
    leans to the first whichever side it is on, and the agreement table reports each against the labels."""
    import random

    import numpy as np

    from feedback.human_reward import agreement_table, auto_weight

    rng = random.Random(0)
    labels = [float(i % 2) for i in range(40)]
    texts = [f"text {i}" for i in range(40)]
    signal = {t: y + rng.gauss(0, 0.3) for t, y in zip(texts, labels, strict=True)}  # what the annotators follow
    noise = [rng.gauss(0, 1) for _ in texts]

    def features(batch):
        return np.array([[signal[t], rng.gauss(0, 1)] for t in batch])

    human_side = auto_weight(texts, labels, noise, features, resamples=50)  # the learned reward sees the signal
    assert human_side.weight >= 0.7 and human_side.low <= human_side.weight <= human_side.high
    model_side = auto_weight(
        texts, labels, [signal[t] for t in texts], lambda b: np.array([[rng.gauss(0, 1)] for _ in b])
    )
    assert model_side.weight <= 0.3
    rows = agreement_table(texts, labels, noise, features, alpha=0.5, alpha_items=3)
    assert [(r.measure, r.n) for r in rows] == [("AUROC", 40), ("AUROC", 40), ("Krippendorff's alpha (interval)", 3)]
    assert rows[1].value > 0.9 and abs(rows[0].value - 0.5) < 0.3 and rows[2].value == 0.5


def test_auto_weight_recovers_the_weight_that_made_synthetic_ratings():
    """Annotators who judge by 0.3 x what the learned reward can see + 0.7 x what the classifier scores."""
    import random

    import numpy as np

    from feedback.human_reward import auto_weight

    rng = random.Random(1)
    n, w_true = 400, 0.3
    texts = [f"text {i}" for i in range(n)]
    seen = {t: rng.gauss(0, 1) for t in texts}  # the feature the learned reward reads
    model = [rng.gauss(0, 1) for _ in texts]
    labels = [
        float(w_true * seen[t] + (1 - w_true) * m + rng.gauss(0, 0.1) > 0) for t, m in zip(texts, model, strict=True)
    ]
    a = auto_weight(texts, labels, model, lambda batch: np.array([[seen[t]] for t in batch]), resamples=100)
    assert abs(a.weight - w_true) <= 0.1 and a.low <= w_true <= a.high and a.high - a.low <= 0.3


def test_the_human_reward_refits_in_the_background_as_ratings_arrive():
    import threading
    import time

    import numpy as np

    from feedback.human_reward import HumanRewardSource

    rated = {"texts": ["a", "bb", "ccc"], "labels": [0.0, 1.0, 1.0]}

    def items():
        return list(rated["texts"]), list(rated["labels"]), [0.0] * len(rated["texts"])

    source = HumanRewardSource(items, lambda batch: np.array([[len(t)] for t in batch], dtype=float))
    stop = threading.Event()
    thread = source.refit_in_background(interval=0.05, stop=stop)
    try:
        time.sleep(0.3)
        assert source._fitted is None  # 3 ratings: too few to fit, and the loop goes on
        rated["texts"] += ["dddd", "e"]
        rated["labels"] += [1.0, 0.0]
        deadline = time.monotonic() + 10
        while source._fitted is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source._fitted is not None and source._fitted[1].n == 5  # fitted without anyone asking
        assert source.current() is source._fitted[1]  # and a round finds it ready
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_one_round_at_a_time_across_app_processes_sharing_a_database(db_url):
    """Two app processes on one database (two engines here): one round runs at a time, a live round of the other
    process survives this one's start-up, and a round whose process died is marked interrupted."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    import feedback.versions as versions
    from db.models import TrainingRound, utcnow

    engines = [make_engine(db_url) for _ in range(2)]
    upgrade(engines[0])
    a, b = (FeedbackService(make_session_factory(e)) for e in engines)
    a.ensure_base_version()
    try:
        first = a.create_round({}, "model", 0.0)
        with pytest.raises(ValueError, match=f"round {first.id} is still running .*another app process"):
            b.create_round({}, "model", 0.0)
        assert b.mark_interrupted_rounds() == 0  # b starting up leaves a's live round alone

        def set_round(**values):
            with a.Session.begin() as s:
                for k, v in values.items():
                    setattr(s.get(TrainingRound, first.id), k, v)

        set_round(owner="another-host:1", heartbeat=utcnow() - timedelta(seconds=10))
        assert b.mark_interrupted_rounds() == 0  # on another machine and beating: alive
        set_round(heartbeat=utcnow() - versions.ROUND_LEASE - timedelta(seconds=1))
        assert b.mark_interrupted_rounds() == 1  # silent for the lease: its process died
        assert b.rounds()[0].status == "interrupted"

        # a process of this host that no longer exists: interrupted at once, heartbeat or not
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        second = b.create_round({}, "model", 0.0)
        a.beat_round(second.id)
        with a.Session.begin() as s:
            s.get(TrainingRound, second.id).owner = f"{versions.socket.gethostname()}:{gone.stdout.strip()}"
        assert a.mark_interrupted_rounds() == 1

        # two processes starting a round at the same moment: exactly one gets it
        def start(svc):
            try:
                return svc.create_round({}, "model", 0.0).id
            except ValueError:
                return None

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(start, [a, b]))
        assert sum(x is not None for x in got) == 1
        assert [r.status for r in a.rounds()].count("queued") == 1
    finally:
        for e in engines:
            e.dispose()


class _SlowGenerator:
    """Answers each prompt with the version it holds, slowly, so a hand-over can come in the middle of a refill."""

    def __init__(self, version_id: int):
        self.version_id = version_id
        self.calls = 0

    def generate(self, prompts):
        import time

        self.calls += 1
        time.sleep(0.2)
        made_by = self.version_id
        return [NewGeneration(p.id, p.text, f"made by {made_by}", [1], [2], [-0.1], 0.5, None, "t") for p in prompts]


def test_a_hand_over_stops_a_running_refill_and_stores_the_new_versions_first_items(store):
    """A round's new version (or a rollback's) reaches the pool through `hand_over`: the refill in flight stops after
    its chunk, every item stays with the version that made it, and the new version has its first items before it
    becomes current."""
    _, Session = store
    base = FeedbackService(Session).ensure_base_version()
    gen = _SlowGenerator(base.id)
    svc = FeedbackService(Session, gen, low_water=16, refill_size=16)
    from feedback.io import add_prompt_texts

    add_prompt_texts(Session, [(f"#Person1#: dialogue {i}", None) for i in range(40)], "test", "train")
    with Session.begin() as s:
        new = PolicyVersion(name="v1", adapter_path=None, parent_id=base.id, is_current=False)
        s.add(new)
        s.flush()
        new_id = new.id
    refill = svc.refill_in_background()  # 16 prompts in chunks of 2, 4, 8, 2
    while gen.calls == 0:
        threading.Event().wait(0.01)

    def serve():
        gen.version_id = new_id

    assert svc.hand_over(new_id, serve, first=3) == 3
    refill.join(10)
    with Session.begin() as s:
        rows = s.execute(select(Generation.policy_version_id, Generation.response)).all()
    assert all(response == f"made by {version}" for version, response in rows)  # nothing stored under another
    made = [version for version, _ in rows]
    assert made.count(new_id) == 3
    assert 2 <= made.count(base.id) < 16  # the refill stopped after the chunk it was making
    assert svc.current_version().id == base.id  # the caller makes the new version current, once it has items
    assert svc.refill_if_low() == 0  # and until then no refill runs: the generator holds another version
