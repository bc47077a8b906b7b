"""The reward model fitted on ratings (rlhf/reward_model.py) and its command line."""

import json
import random

import pytest

from rlhf import cli
from rlhf import reward_model as rm

CLEAN = ["thanks for the notes on {}", "the meeting about {} moved to friday", "we agreed to share the {} report"]
RUDE = ["this {} plan is fucking stupid", "shut up about the damn {}", "what a shitty {} idea, idiot"]
TOPICS = ["budget", "garden", "train", "holiday", "music", "coffee", "office", "match", "rent", "dinner"]


def _texts(templates, n, seed):
    rng = random.Random(seed)
    return [rng.choice(templates).format(rng.choice(TOPICS)) + f" {i}" for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    good, bad = _texts(CLEAN, 30, 1), _texts(RUDE, 30, 2)
    binary = [{"prompt": "p", "completion": t, "label": True} for t in good]
    binary += [{"prompt": "p", "completion": t, "label": False} for t in bad]
    random.Random(0).shuffle(binary)
    rng = random.Random(3)
    scale = [{"prompt": "p", "completion": t, "label": rng.choice([4, 5])} for t in good]
    scale += [{"prompt": "p", "completion": t, "label": rng.choice([1, 2])} for t in bad]
    pairs = [{"prompt": "p", "chosen": g, "rejected": b} for g, b in zip(good, bad, strict=True)]
    return {
        "binary": _write(tmp_path / "binary.jsonl", binary),
        "scale": _write(tmp_path / "scale.jsonl", scale),
        "pairs": _write(tmp_path / "pairs.jsonl", pairs),
    }


@pytest.mark.parametrize("kind", ["binary", "scale", "pairs"])
def test_fit_then_score_round_trips_every_rating_kind(tmp_path, files, kind, capsys):
    model, scores = tmp_path / f"rm-{kind}", tmp_path / f"scores-{kind}.jsonl"
    fit = ["reward", "fit", "--data", str(files[kind]), "--out", str(model), "--backbone", "classifier"]
    assert cli.main(fit) == 0
    meta = json.loads((model / rm.MODEL_FILE).read_text())
    assert meta["kind"] == kind and meta["n"] == (30 if kind == "pairs" else 60)
    a = meta["agreement"]
    if kind == "scale":
        assert a["spearman"] > 0.7
    else:
        assert a["auroc"] > 0.95 and a["accuracy"] > 0.9
    assert "cross-validated agreement" in capsys.readouterr().out

    assert cli.main(["reward", "score", "--model", str(model), "--data", str(files[kind]), "--out", str(scores)]) == 0
    lines = [json.loads(x) for x in scores.read_text().splitlines()]
    rows = rm.read_rows(files[kind])
    assert len(lines) == len(rows)  # one line per input row, in order
    scorer = rm.LearnedRewardScorer(model)
    if kind == "pairs":
        assert all(x["chosen_score"] > x["rejected_score"] for x in lines)
        again = scorer.score([r["chosen"] for r in rows])
        assert [x["chosen_score"] for x in lines] == pytest.approx(again)
    else:
        again = scorer.score([r["completion"] for r in rows])
        assert [x["score"] for x in lines] == pytest.approx(again)
        is_good = [r["label"] is True or r["label"] in (4, 5) for r in rows]  # (True == 1 in Python)
        good = [x["score"] for x, g in zip(lines, is_good, strict=True) if g]
        bad = [x["score"] for x, g in zip(lines, is_good, strict=True) if not g]
        assert min(good) > max(bad)
    assert "agreement with the file's labels" in capsys.readouterr().out


def test_a_reward_folder_loads_through_reward_name_or_path(tmp_path, files):
    from rlhf.scorers import load_scorer, reward_fn

    model = tmp_path / "rm"
    rm.fit(rm.ratings_from_rows(rm.read_rows(files["binary"])), model, "classifier", log=lambda _: None)
    args = ["train", "--out", "unused", "--reward.name_or_path", str(model), "--reward.use_logit", "true"]
    cfg = cli.build_config(cli.make_parser().parse_args(args))
    scorer = load_scorer(cfg.reward, "cpu")
    assert isinstance(scorer, rm.LearnedRewardScorer)
    texts = ["thanks for the notes on rent", "shut up about the damn rent"]
    logits = reward_fn(scorer, use_logit=True)(texts)
    probs = reward_fn(scorer, use_logit=False)(texts)
    assert logits[0] > 0 > logits[1] and probs[0] > 0.5 > probs[1]
    assert probs == pytest.approx([rm._sigmoid(x) for x in logits])


def test_the_policy_backbone_reads_a_causal_models_hidden_states(tmp_path, tiny_llama, files):
    model = tmp_path / "rm"
    ratings = rm.ratings_from_rows(rm.read_rows(files["binary"]))
    report = rm.fit(ratings, model, "policy", source=str(tiny_llama), log=lambda _: None)
    assert report.agreement.auroc is not None and report.agreement.n == 60
    scorer = rm.LearnedRewardScorer(model)
    features = scorer.features(ratings.texts[:3])
    assert features.shape == (3, scorer.features.model.config.hidden_size)
    assert report.layer == scorer.features.layer == "middle"
    # the head reproduces sklearn's decision function on the same features
    scaler, head = rm._fit_head(scorer.features(ratings.texts), "binary", rm.np.asarray(ratings.labels), 1.0)
    assert scorer.logits(ratings.texts[:3]) == pytest.approx(head.decision_function(scaler.transform(features)))


def test_features_pool_the_layer_asked_for_and_old_folders_keep_the_last(tmp_path, tiny_llama, tiny_t5, files):
    import torch

    texts = ["thanks for the notes", "see you at noon, ok?"]
    middle = rm.EncoderFeatures(str(tiny_llama), layer="middle")
    last = rm.EncoderFeatures(str(tiny_llama), layer="last")
    enc = middle.tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = middle.model(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].unsqueeze(-1).float()
    for features, h in ((middle, hidden[len(hidden) // 2]), (last, hidden[-1])):
        pooled = ((h * mask).sum(1) / mask.sum(1)).numpy()
        assert features(texts) == pytest.approx(pooled, abs=1e-5)
    assert not rm.np.allclose(middle(texts), last(texts))
    # a seq2seq policy's features are its encoder's
    assert rm.EncoderFeatures(str(tiny_t5), layer="middle")(texts).shape[0] == 2
    # a folder written before features had a layer was fitted on the last one, and still loads as such
    model = tmp_path / "rm"
    rm.fit(rm.ratings_from_rows(rm.read_rows(files["binary"])), model, "policy", str(tiny_llama), log=lambda _: None)
    meta = rm.json.loads((model / rm.MODEL_FILE).read_text())
    del meta["layer"]
    (model / rm.MODEL_FILE).write_text(rm.json.dumps(meta))
    assert rm.LearnedRewardScorer(model).features.layer == "last"
    with pytest.raises(ValueError, match="layer must be one of"):
        rm.EncoderFeatures(str(tiny_llama), layer="first")


def test_a_file_with_other_columns_or_labels_gets_a_clear_error(tmp_path):
    tweets = _write(tmp_path / "t.jsonl", [{"tweet": "hi", "class": 2}, {"tweet": "ugh", "class": 0}] * 3)
    with pytest.raises(ValueError, match=r"no 'completion' or 'label' column; the file has \['tweet', 'class'\]"):
        rm.ratings_from_rows(rm.read_rows(tweets))
    with pytest.raises(ValueError, match="pass --good"):
        rm.ratings_from_rows(rm.read_rows(tweets), "tweet", "class")
    ratings = rm.ratings_from_rows(rm.read_rows(tweets), "tweet", "class", good=["2"])
    assert ratings.kind == "binary" and ratings.labels == [1.0, 0.0] * 3
    same = _write(tmp_path / "same.jsonl", [{"completion": "x", "label": 1}] * 6)
    with pytest.raises(ValueError, match="at least 2 good and 2 bad"):
        rm.fit(rm.ratings_from_rows(rm.read_rows(same)), None, "classifier")
    one_bad = _write(tmp_path / "one.jsonl", [{"completion": "x", "label": 1}] * 5 + [{"completion": "y", "label": 0}])
    with pytest.raises(ValueError, match="at least 2 good and 2 bad"):
        rm.fit(rm.ratings_from_rows(rm.read_rows(one_bad)), None, "classifier")
