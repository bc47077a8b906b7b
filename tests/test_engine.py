"""Scorers, prompt sources, evaluation statistics, checkpoints and the CLI, on tiny local models."""

import json

import pytest
import torch

from rlhf import cli
from rlhf.config import DataConfig, PolicyConfig, RunConfig, preset
from rlhf.evaluate import paired_bootstrap_ci, relative_change, rouge_l
from rlhf.models import load_policy
from rlhf.prompts import Prompt, load_prompts, split_prompts
from rlhf.scorers import ClassifierScorer


# ---- scorers ---------------------------------------------------------------------------------------------
def test_classifier_scorer_gives_label_probability_and_logit(tiny_classifier):
    scorer = ClassifierScorer(str(tiny_classifier), label="NOTHATE", batch_size=2)
    texts = ["hello there", "I hate you", "a much longer text about the weather today", "<script>x</script>"]
    out = scorer.score_batch(texts)
    assert len(out.scores) == len(out.logits) == 4
    assert all(0.0 <= s <= 1.0 for s in out.scores)
    # batching does not change the numbers
    single = [ClassifierScorer(str(tiny_classifier)).score([t])[0] for t in texts]
    assert out.scores == pytest.approx(single, abs=1e-5)


def test_classifier_without_the_label_says_which_labels_it_has(tmp_path):
    from tests.tiny_models import build_tiny_roberta_classifier

    path = build_tiny_roberta_classifier(tmp_path / "clf", labels=("LABEL_0", "LABEL_1"))
    with pytest.raises(ValueError, match=r"no label named 'nothate'; its labels are \['LABEL_0', 'LABEL_1'\]"):
        ClassifierScorer(str(path), label="nothate")


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "./missing/folder"])
def test_bad_model_names_fail_with_what_to_pass(name):
    with pytest.raises(ValueError, match="--reward.name_or_path"):
        ClassifierScorer(name)
    with pytest.raises(ValueError, match="--policy.name_or_path"):
        load_policy(PolicyConfig(name_or_path=name), device="cpu")


def test_bad_lora_targets_list_the_linear_layers(tiny_llama):
    cfg = PolicyConfig(name_or_path=str(tiny_llama))
    cfg.lora.target_modules = ["q", "v"]  # T5 names on a Llama model
    with pytest.raises(ValueError, match=r"its linear layers are .*q_proj"):
        load_policy(cfg, device="cpu")


# ---- prompts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_prompt_files_are_filtered_by_length_and_keep_ids_and_summaries(tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"id": ["a", "b"], "dialogue": ["#Person1#: " + "x" * 300, "short"], "summary": ["s", "t"]})
    path = tmp_path / f"p{suffix}"
    if suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    prompts = load_prompts(DataConfig(source=str(path), min_chars=200, max_chars=1000))
    assert [p.id for p in prompts] == ["a"] and prompts[0].summary == "s"


def test_dialogsum_summaries_are_read_and_score_rouge_l(dialogsum_jsonl, tiny_classifier):
    """ROUGE-L needs prompts with reference summaries: DialogSum's, read from the file beside the checkout. An
    answer that is the summary scores 1; another scores what rouge_l gives it; one prompt without a summary, none."""
    from rlhf.evaluate import Answers, judge_answers
    from rlhf.scorers import ClassifierScorer

    prompts = load_prompts(DataConfig(source=str(dialogsum_jsonl), min_chars=200, max_chars=1000))
    assert all(200 <= len(p.dialogue) <= 1000 for p in prompts)
    assert prompts and all(p.summary for p in prompts)
    prompts = prompts[:4]
    summaries = [p.summary for p in prompts]
    first_lines = [p.dialogue.splitlines()[0] for p in prompts]
    answers = Answers(1, summaries, [5] * 4, first_lines, [5] * 4, [0.0] * 4)
    scorer = ClassifierScorer(str(tiny_classifier), label="NOTHATE")
    ev = judge_answers(answers, prompts, scorer, True)
    assert ev.reference.rouge_l == pytest.approx(1.0)
    assert ev.policy.rouge_l == pytest.approx(rouge_l(first_lines, summaries)) and ev.policy.rouge_l < 0.5
    without = [Prompt(p.id, p.dialogue, None if i == 0 else p.summary) for i, p in enumerate(prompts)]
    assert judge_answers(answers, without, scorer, True).reference.rouge_l is None


def test_dataset_without_the_text_column_names_its_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"conversation": "hi", "other": 1}) + "\n")
    with pytest.raises(ValueError, match=r"no column 'dialogue'; its columns are \['conversation', 'other'\]"):
        load_prompts(DataConfig(source=str(path)))


def test_missing_prompt_file_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="--data.source"):
        load_prompts(DataConfig(source=str(tmp_path / "nope.jsonl")))


def test_split_is_deterministic_and_disjoint():
    prompts = [Prompt(f"p{i}", f"d{i}") for i in range(100)]
    train, held = split_prompts(prompts, 10, seed=42)
    train2, held2 = split_prompts(list(reversed(prompts)), 10, seed=42)
    assert held == held2 and train == train2
    assert len(held) == 10 and not {p.id for p in train} & {p.id for p in held}
    assert split_prompts(prompts, 10, seed=1)[1] != held


# ---- evaluation statistics --------------------------------------------------------------------------------
def test_relative_change_and_paired_bootstrap():
    ref = [0.5, 0.6, 0.4, 0.5] * 10
    pol = [x + 0.1 for x in ref]
    assert relative_change(ref, pol) == pytest.approx(0.2)
    lo, hi = paired_bootstrap_ci(ref, pol)
    assert lo == pytest.approx(0.2, abs=0.02) and hi == pytest.approx(0.2, abs=0.02)  # paired: no spread
    noisy = [x + (0.3 if i % 2 else -0.3) for i, x in enumerate(ref)]
    lo, hi = paired_bootstrap_ci(ref, noisy)
    assert lo < 0 < hi


def test_rouge_l():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert rouge_l([""], ["the cat sat"]) == 0.0


# ---- config ------------------------------------------------------------------------------------------------
def test_presets_match_the_recipe():
    seed = preset("seed")
    assert seed.policy.name_or_path == "google/flan-t5-base"
    assert (seed.policy.lora.r, seed.policy.lora.alpha, seed.policy.lora.dropout) == (32, 32, 0.05)
    assert seed.policy.lora.target_modules == ["q", "v"]
    assert seed.reward.name_or_path == "facebook/roberta-hate-speech-dynabench-r4-target"
    assert seed.reward.label == "nothate"
    assert (seed.ppo.learning_rate, seed.ppo.batch_size, seed.ppo.mini_batch_size, seed.ppo.ppo_epochs) == (
        1.41e-5,
        16,
        4,
        1,
    )
    assert (seed.generation.top_k, seed.generation.top_p) == (0, 1.0)
    assert seed.data.template == "Summarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
    assert (seed.data.min_chars, seed.data.max_chars) == (200, 1000)
    assert RunConfig.from_dict(json.loads(seed.to_json())) == seed


def test_indivisible_batch_is_refused():
    cfg = preset("offline")
    cfg.ppo.mini_batch_size = 5
    with pytest.raises(ValueError, match="16 is not divisible by 5"):
        cfg.validate()


# ---- checkpoints and the CLI -------------------------------------------------------------------------------
def tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out):
    return [
        "train",
        "--out",
        str(out),
        "--steps",
        "2",
        "--policy.name_or_path",
        str(tiny_llama),
        "--policy.lora.target_modules",
        "q_proj,v_proj",
        "--policy.lora.r",
        "4",
        "--reward.name_or_path",
        str(tiny_classifier),
        "--data.source",
        str(chitchat_jsonl),
        "--data.heldout_size",
        "4",
        "--eval-prompts",
        "4",
        "--eval-answers",
        "2",
        "--eval-judge",
        "false",
        "--ppo.batch_size",
        "4",
        "--ppo.mini_batch_size",
        "2",
        "--generation.min_new_tokens",
        "4",
        "--generation.max_new_tokens",
        "6",
    ]


def test_cli_train_writes_a_complete_checkpoint(tmp_path, tiny_llama, tiny_classifier, chitchat_jsonl, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert cli.main(tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter",
        "eval.json",
        "eval.md",
        "metrics.jsonl",
        "run_config.json",
        "training_state.pt",
        "value_head.safetensors",
    ]
    assert not (tmp_path / "run.partial").exists()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert {"env/reward_mean", "objective/kl", "loss/total"} <= set(steps[0])
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n_prompts"] == 4 and ev["reference"]["rouge_l"] is None  # the chitchat prompts have no summaries
    assert ev["answers_per_prompt"] == 2 and ev["judge"] is None and ev["policy"]["judge_toxicity_mean"] is None
    assert set(ev["noise_floor"]) == set(ev["changes"]) and "toxicity, reward classifier" in ev["changes"]
    cfg = RunConfig.from_dict(json.loads((out / "run_config.json").read_text()))
    assert cfg.ppo.batch_size == 4 and cfg.policy.lora.target_modules == ["q_proj", "v_proj"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out / "adapter")
    assert any("lora_" in n for n, _ in model.named_parameters())
    printed = capsys.readouterr().out
    assert "noise floor" in printed

    # evaluate the saved checkpoint: same held-out prompts, the adapter loaded back
    assert cli.main(["evaluate", "--checkpoint", str(out), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert again["reference"] == ev["reference"]
    assert again["policy"]["reward_mean"] == pytest.approx(ev["policy"]["reward_mean"], abs=1e-6)

    # an existing folder is never overwritten by accident
    assert cli.main(tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out)) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_crash_never_leaves_a_half_checkpoint(tmp_path, tiny_llama, tiny_classifier, chitchat_jsonl, monkeypatch):
    from rlhf import train as train_mod

    def boom(*a, **k):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(train_mod, "evaluate_run", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        cli.main(tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out))
    assert not out.exists()
    assert (tmp_path / "run.partial" / "metrics.jsonl").exists()


def _resume_args(tiny_llama, tiny_classifier, chitchat_jsonl, out, steps):
    args = tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out)
    args[args.index("--steps") + 1] = str(steps)
    # score scaling on, so the running score moments matter too
    return args + ["--ppo.use_score_scaling", "true", "--ppo.use_score_norm", "true"]


def _saved_run(folder):
    """Everything a checkpoint holds that training decides, as tensors and plain values."""
    from safetensors.torch import load_file

    from rlhf.train import load_training_state

    state = load_training_state(folder)
    adam = state["trainer"]["optimizer"]["state"]
    return {
        "weights": load_file(folder / "adapter" / "adapter_model.safetensors"),
        "value_head": load_file(folder / "value_head.safetensors"),
        "adam": {f"{i}.{k}": v for i, s in adam.items() for k, v in s.items()},
        "generator": {"shuffle": state["trainer"]["generator"], "torch": state["rng"]["torch"]},
        "plain": {k: state["trainer"][k] for k in ("kl_coef", "score_moments", "step_count")}
        | {k: state[k] for k in ("steps", "batches_drawn", "lengths_rng")},
        "metrics": [
            {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (folder / "metrics.jsonl").read_text().splitlines()
        ],
        "config": json.loads((folder / "run_config.json").read_text()),
    }


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, tiny_llama, tiny_classifier, chitchat_jsonl, capsys):
    """4 steps straight equal 2 steps, saved (and evaluated, whose sampling must not shift training's random
    numbers), resumed for 2 more: weights, value head, Adam's state, KL coefficient, score moments, data position,
    random states and the metrics of every step, exactly (CPU, same process: tolerance 0)."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert cli.main(_resume_args(tiny_llama, tiny_classifier, chitchat_jsonl, straight, 4) + ["--no-eval"]) == 0
    assert cli.main(_resume_args(tiny_llama, tiny_classifier, chitchat_jsonl, halves, 2)) == 0
    first_half = _saved_run(halves)
    assert cli.main(["train", "--resume", str(halves), "--steps", "4", "--no-eval"]) == 0
    assert not (tmp_path / "halves.partial").exists() and not (halves / "eval.json").exists()

    want, got = _saved_run(straight), _saved_run(halves)
    assert got["metrics"] == want["metrics"] and [m["step"] for m in got["metrics"]] == [1, 2, 3, 4]
    assert got["metrics"][:2] == first_half["metrics"], "metrics.jsonl is appended to"
    assert got["plain"] == want["plain"] and got["plain"]["steps"] == 4
    assert got["plain"]["kl_coef"] != first_half["plain"]["kl_coef"] != 0.2, "the KL coefficient moved"
    assert got["config"] == want["config"], "the run's config, --steps the total"
    for part in ("weights", "value_head", "adam", "generator"):
        assert got[part].keys() == want[part].keys() and got[part]
        for name, value in want[part].items():
            assert torch.equal(got[part][name], value), f"{part} {name}"
            assert part == "generator" or not torch.equal(first_half[part][name], value), f"{part} {name} moved"

    # a resumed run is the saved one: nothing else may change, and --steps counts the steps already taken
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(halves), "--steps", "4"]) == 2
    assert "already has 4 steps" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(halves), "--steps", "6", "--ppo.learning_rate", "1"]) == 2
    assert "not --ppo.learning_rate" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--ppo.learning_rate",
        "--reward.label",
        "--data.text_column",
        "--policy.lora.r",
        "--steps",
        "--generation.top_k",
        "--ppo.kl_penalty",
        "--out",
    ):
        assert flag in text
    assert "offline: 0.0001; seed: 1.41e-05" in text


def test_every_option_reaches_the_config():
    """Top-level fields without a short alias (--threads, --eval_seed) were once dropped on the way."""
    args = cli.make_parser().parse_args(
        ["train", "--out", "x", "--threads", "3", "--eval_seed", "7", "--steps", "5", "--ppo.vf_coef", "0.5"]
    )
    cfg = cli.build_config(args)
    assert (cfg.threads, cfg.eval_seed, cfg.steps, cfg.ppo.vf_coef) == (3, 7, 5, 0.5)
    assert cfg.preset == "offline" and cfg.data == preset("offline").data


def test_bad_label_from_the_cli_is_a_clean_error(tmp_path, tiny_llama, chitchat_jsonl, capsys):
    from tests.tiny_models import build_tiny_roberta_classifier

    clf = build_tiny_roberta_classifier(tmp_path / "clf", labels=("LABEL_0", "LABEL_1"))
    assert cli.main(tiny_args(tiny_llama, clf, chitchat_jsonl, tmp_path / "run")) == 2
    assert "pass --reward.label" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_value_head_starts_at_zero(tiny_t5):
    policy = load_policy(PolicyConfig(name_or_path=str(tiny_t5)), device="cpu")
    assert torch.count_nonzero(policy.value_head.summary.weight) == 0


def test_length_grouped_batches_use_every_prompt_once_per_pass_and_pad_less():
    import random

    from rlhf.train import batches

    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(100)]  # 100 prompts: 6 batches of 16, 4 left out per pass
    prompts = [Prompt(id=str(i), dialogue=f"d{i}") for i in range(100)]
    queries = [torch.zeros(n, dtype=torch.long) for n in lengths]

    def one_pass(group):
        gen = batches(prompts, queries, 16, seed=3, group_by_length=group, group_batches=3)
        return [[int(p.id) for p in next(gen)[0]] for _ in range(6)]

    plain, grouped = one_pass(False), one_pass(True)
    for got in (plain, grouped):
        flat = [i for b in got for i in b]
        assert len(flat) == len(set(flat)) == 96 and all(len(b) == 16 for b in got)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b), "the same prompts are used"

    def padded(got):
        return sum(16 * max(lengths[i] for i in b) for b in got)

    assert padded(grouped) < 0.85 * padded(plain)
    assert one_pass(True) == grouped, "deterministic for a seed"


def test_hard_prompts_keep_the_training_prompts_whose_reference_answer_scored_worst(
    tiny_llama, tiny_classifier, chitchat_jsonl
):
    from rlhf.ppo import generate
    from rlhf.train import load_run

    args = tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, "unused")
    everything = load_run(cli.build_config(cli.make_parser().parse_args(args)), log=lambda _: None)
    narrowed = load_run(
        cli.build_config(cli.make_parser().parse_args([*args, "--data.hard_prompts", "5"])), log=lambda _: None
    )
    assert narrowed.heldout_prompts == everything.heldout_prompts, "held-out prompts are never looked at"
    kept = {p.id for p in narrowed.train_prompts}
    assert len(kept) == 5 and kept < {p.id for p in everything.train_prompts}
    # the same reference answers, drawn again: every kept prompt scored at most what any dropped one did
    torch.manual_seed(everything.cfg.seed)
    with everything.policy.reference():
        answers = generate(everything.policy, everything.train_queries, everything.cfg.generation)
    scores = dict(
        zip([p.id for p in everything.train_prompts], everything.score_fn(everything.decode(answers)), strict=True)
    )
    assert max(scores[i] for i in kept) <= min(s for i, s in scores.items() if i not in kept)
    assert [p.id for p in narrowed.train_prompts] == [p.id for p in everything.train_prompts if p.id in kept]
