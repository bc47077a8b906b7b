"""Which backbone the reward model should fit on, measured on labelled tweets rather than guessed.

    .venv/bin/python -m bench.reward_backbones --out runs/reward-backbones.md [--sizes 50,200,1000,4000] [--quick]

The data is Davidson et al.'s labelled tweets (`tweet`, `class`: 0 hate, 1 offensive, 2 neither); a tweet rated
`neither` is good (1), the others bad (0). One fixed permutation of the file gives a held-out set (its first
`--heldout` tweets) and, from the rest, the first N tweets as the N ratings, so every method and size sees the
same tweets and a larger sample contains the smaller ones. Per N it measures:

- `head/policy` and `head/classifier`: `rlhf.reward_model`'s logistic head on frozen features (the policy's base
  model, mean-pooled; or the packaged profanity model's TF-IDF vector and margin), as `rlhf reward fit` runs it:
  k-fold cross-validated agreement on the N ratings (`reward_model.cross_validate`), the head fitted on all N and
  scored on the held-out tweets, and the times: features of the N texts from a cold cache, head fit, head refit on
  cached features (what a background refit costs as ratings arrive), cross-validation;
- `trl/lora`: trl's `RewardTrainer` with a LoRA adapter on the same policy as `AutoModelForSequenceClassification`
  (num_labels=1), trained on chosen/rejected pairs built from the N ratings (each good tweet paired with a bad
  one, cycling the smaller side), scored on the held-out tweets. No cross-validation (k trainings are too slow
  on a CPU): its agreement is on the held-out tweets only;
- `packaged`: the packaged classifier itself, unfitted, score = 1 - P(offensive), on the N tweets and held-out.

It writes a markdown table to --out and every figure, with each method's held-out scores, to the same name
with `.json`, so any AUROC in the table can be recomputed from the scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "davidson-hate-offensive" / "labeled_data.dev.csv"
GOOD_CLASS = "2"  # neither hate nor offensive
HEADS = ("policy", "classifier")


# ---- data --------------------------------------------------------------------------------------------------------
def load_tweets(path: Path) -> tuple[list[str], list[int]]:
    """(texts, labels) of the labelled tweets: label 1 = good (class `neither`), 0 = hate or offensive."""
    import csv

    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    missing = {"tweet", "class"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: no {sorted(missing)} column; expected Davidson's labeled_data.csv columns")
    return [r["tweet"] for r in rows], [int(r["class"].strip() == GOOD_CLASS) for r in rows]


def split(n_rows: int, sizes: list[int], heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(held-out indices, rating-pool indices) of one fixed permutation; sample N is the pool's first N."""
    if heldout + max(sizes) > n_rows:
        raise ValueError(
            f"{heldout} held-out + {max(sizes)} ratings exceed the {n_rows} rows; lower --sizes or --heldout"
        )
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return order[:heldout], order[heldout : heldout + max(sizes)]


def pairs_of(texts: list[str], labels: list[int], seed: int) -> tuple[list[str], list[str]]:
    """(chosen, rejected): every good text against a bad one, the smaller side cycled, so each rating is used."""
    rng = random.Random(seed)
    good = [t for t, y in zip(texts, labels, strict=True) if y]
    bad = [t for t, y in zip(texts, labels, strict=True) if not y]
    if not good or not bad:
        raise ValueError("pairs need at least one good and one bad rating")
    rng.shuffle(good)
    rng.shuffle(bad)
    n = max(len(good), len(bad))
    return [good[i % len(good)] for i in range(n)], [bad[i % len(bad)] for i in range(n)]


def auroc_acc(labels, scores, threshold: float | None) -> dict:
    """AUROC of `scores` against `labels`, and accuracy at `threshold` (none when the scores have no natural one)."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    out = {"auroc": float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None, "accuracy": None}
    if threshold is not None:
        out["accuracy"] = float(np.mean((s > threshold) == (y == 1)))
    return out


# ---- methods -----------------------------------------------------------------------------------------------------
def run_head(features, backbone: str, texts, labels, held_texts, held_labels, folds: int) -> dict:
    """`rlhf reward fit`'s head on `features`: CV agreement, held-out agreement and the fit's times."""
    from rlhf import reward_model as rm

    ratings = rm.Ratings("binary", list(texts), [float(y) for y in labels], [float(y) for y in labels])
    cache = getattr(features, "_cache", None)
    if cache is not None:  # a cold start for this N: the texts' features are computed, not looked up
        cache.clear()
    t0 = time.perf_counter()
    x = features(ratings.texts)
    features_s = time.perf_counter() - t0
    y = np.asarray(ratings.labels)
    t0 = time.perf_counter()
    scaler, head = rm._fit_head(x, "binary", y, 1.0)
    head_s = time.perf_counter() - t0
    refits = []
    for _ in range(3):  # the features are cached now: this is what a refit on one more rating costs
        t0 = time.perf_counter()
        x_again = features(ratings.texts)
        rm._fit_head(x_again, "binary", y, 1.0)
        refits.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    cv = rm.cross_validate(features, ratings, folds, 1.0)
    cv_s = time.perf_counter() - t0
    held = rm._logit(scaler, head, features(list(held_texts)))
    return {
        "method": f"head/{backbone}",
        "cv": {"folds": cv.folds, "auroc": cv.auroc, "accuracy": cv.accuracy},
        "heldout": auroc_acc(held_labels, held, 0.0),
        "heldout_scores": [float(v) for v in held],
        "features_s": features_s,
        "head_s": head_s,
        "refit_s": float(np.median(refits)),
        "cv_s": cv_s,
        "fit_s": features_s + head_s,
    }


def run_trl(model_path: str, texts, labels, held_texts, held_labels, args) -> dict:
    """trl's RewardTrainer with LoRA on the policy as a one-logit sequence classifier, trained on pairs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    chosen, rejected = pairs_of(list(texts), list(labels), args.seed)
    set_seed(args.seed)  # the score head is initialised here, before RewardTrainer seeds anything
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    steps_per_epoch = math.ceil(len(chosen) / args.trl_batch)
    max_steps = min(args.trl_max_steps, steps_per_epoch * args.trl_epochs)
    with tempfile.TemporaryDirectory(prefix="trl-reward-") as tmp:
        config = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.trl_batch,
            max_steps=max_steps,
            learning_rate=args.trl_lr,
            bf16=False,  # RewardConfig defaults to bf16; these CPUs train in fp32
            gradient_checkpointing=False,  # 135M parameters fit; checkpointing would only slow the CPU down
            max_length=args.max_length,
            logging_steps=max(1, max_steps // 5),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=args.seed,
            use_cpu=args.device == "cpu",
        )
        peft_config = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0)
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_dict({"chosen": chosen, "rejected": rejected}),
            processing_class=tok,
            peft_config=peft_config,
        )
        t0 = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = score_sequence_classifier(trainer.model, tok, list(held_texts), args.max_length)
    score_s = time.perf_counter() - t0
    return {
        "method": "trl/lora",
        "cv": None,
        "heldout": auroc_acc(held_labels, held, None),  # a Bradley-Terry reward has no threshold
        "heldout_scores": held,
        "pairs": len(chosen),
        "steps": int(result.global_step),
        "epochs": round(result.global_step * args.trl_batch / len(chosen), 2),
        "train_loss": float(result.training_loss),
        "load_s": load_s,
        "fit_s": train_s,
        "score_s": score_s,
    }


def score_sequence_classifier(model, tok, texts: list[str], max_length: int, batch_size: int = 32) -> list[float]:
    """The model's one logit per text, each text ending in the EOS token as RewardTrainer trained it."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        batch = [t if t.endswith(tok.eos_token) else t + tok.eos_token for t in texts[i : i + batch_size]]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        with torch.no_grad():
            out += model(**enc).logits[:, 0].float().cpu().tolist()
    return out


# ---- report ------------------------------------------------------------------------------------------------------
def _f(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _s(v) -> str:
    return "—" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.1f}")


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Reward-model backbones on labelled tweets",
        "",
        f"`{results['command']}` — {m['date']}, {m['cores']} cores ({m['cpu']}), torch {m['torch_threads']} threads, "
        f"load average {' '.join(f'{v:.2f}' for v in m['loadavg_start'])} at start and "
        f"{' '.join(f'{v:.2f}' for v in m['loadavg_end'])} at the end; python {m['python']}, trl {m['trl']}.",
        "",
        f"Data: `{results['data']}`, good = class 2 (neither). Held-out set: {results['heldout']['n']} tweets "
        f"({results['heldout']['good']} good), never rated. Ratings: the first N of the remaining tweets in one "
        f"fixed shuffle (seed {results['seed']}), the same for every method.",
        "",
        "CV = the k-fold cross-validated agreement on the N ratings that `rlhf reward fit` prints; held-out = "
        "fitted on all N, scored on the held-out tweets. Accuracy is at P(good) = 0.5 (a trl reward has no "
        "threshold). Times in seconds: fit = features of the N texts from a cold cache + head fit (trl: the "
        "training); refit = the head refitted on cached features, what a background refit costs as a rating "
        "arrives; load = loading the backbone, once per process. `packaged` is the packaged classifier unfitted "
        "(1 - P(offensive)): its CV columns are its agreement on the N ratings, nothing fitted.",
        "",
        "| N (good) | method | CV AUROC | CV acc | held-out AUROC | held-out acc | fit s | refit s | CV s | load s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        for r in size["rows"]:
            cv = r.get("cv") or {}
            cv_auc = _f(cv.get("auroc")) + (f" ({cv['folds']}-fold)" if cv.get("folds") else "")
            note = f" ({r['pairs']} pairs, {r['steps']} steps)" if r["method"] == "trl/lora" else ""
            lines.append(
                f"| {size['n']} ({size['good']}) | {r['method']}{note} | {cv_auc} | {_f(cv.get('accuracy'))} | "
                f"{_f(r['heldout']['auroc'])} | {_f(r['heldout']['accuracy'])} | {_s(r.get('fit_s'))} | "
                f"{_s(r.get('refit_s'))} | {_s(r.get('cv_s'))} | {_s(r.get('load_s'))} |"
            )
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _machine() -> dict:
    import torch
    import trl

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "trl": trl.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


# ---- main --------------------------------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    from rlhf.config import EMBEDDED_PROFANITY, EMBEDDED_SMOLLM2

    p = argparse.ArgumentParser(prog="python -m bench.reward_backbones", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="markdown table to write; the JSON goes beside it")
    p.add_argument("--data", type=Path, default=DATA, help="labelled tweets (Davidson's tweet/class CSV)")
    p.add_argument("--sizes", default="50,200,1000", help="numbers of ratings, comma-separated")
    p.add_argument("--heldout", type=int, default=1000, help="held-out tweets every method is scored on")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for the heads")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle, the pairs and trl's training")
    p.add_argument("--policy", default=EMBEDDED_SMOLLM2, help="model of the `policy` head and of trl's LoRA")
    p.add_argument("--classifier", default=EMBEDDED_PROFANITY, help="source of the `classifier` head's features")
    p.add_argument("--no-trl", action="store_true", help="skip trl's RewardTrainer")
    p.add_argument("--heads", default=",".join(HEADS), help="backbones of the heads to measure, comma-separated")
    p.add_argument("--no-heads", action="store_true", help="skip the heads (run trl and the packaged baseline)")
    p.add_argument("--trl-epochs", type=int, default=2, help="epochs over the pairs (capped by --trl-max-steps)")
    p.add_argument("--trl-max-steps", type=int, default=150, help="most optimizer steps per trl training")
    p.add_argument("--trl-batch", type=int, default=8, help="pairs per trl step")
    p.add_argument("--trl-lr", type=float, default=2e-4, help="trl's learning rate (LoRA and the score head)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per tweet, for the trl model")
    p.add_argument("--device", default="cpu", help="device of trl's model")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 50,200, 200 held out, 10 trl steps")
    return p


def main(argv: list[str] | None = None) -> int:
    from rlhf import reward_model as rm
    from rlhf.config import EMBEDDED_SMOLLM2
    from rlhf.offline import ensure_smollm2, profanity_probabilities

    args = make_parser().parse_args(argv)
    if args.quick:
        args.sizes, args.heldout, args.trl_max_steps = "50,200", 200, 10
    sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
    machine = _machine()
    texts, labels = load_tweets(args.data)
    held_idx, pool = split(len(texts), sizes, args.heldout, args.seed)
    held_texts, held_labels = [texts[i] for i in held_idx], [labels[i] for i in held_idx]
    results: dict = {
        "command": " ".join(["python -m bench.reward_backbones", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "data": str(args.data),
        "seed": args.seed,
        "heldout": {"n": len(held_idx), "good": sum(held_labels), "labels": held_labels},
        "sizes": [],
        "notes": [],
    }
    sources = {"policy": args.policy, "classifier": args.classifier}
    features, load_s = {}, {}
    heads = () if args.no_heads else tuple(h for h in HEADS if h in args.heads.split(","))
    for backbone in heads:
        t0 = time.perf_counter()
        features[backbone] = rm.load_features(backbone, sources[backbone])
        features[backbone](held_texts[:2])  # the packaged model unpickles on first use
        load_s[backbone] = time.perf_counter() - t0
    trl_path = str(ensure_smollm2()) if args.policy == EMBEDDED_SMOLLM2 else args.policy
    packaged_held = [1.0 - p for p in profanity_probabilities(held_texts)]

    for n in sizes:
        sample = pool[:n]
        s_texts, s_labels = [texts[i] for i in sample], [labels[i] for i in sample]
        rows = []
        for backbone in heads:
            row = run_head(features[backbone], backbone, s_texts, s_labels, held_texts, held_labels, args.folds)
            rows.append(row | {"load_s": load_s[backbone]})
            _log(n, row)
        if not args.no_trl:
            row = run_trl(trl_path, s_texts, s_labels, held_texts, held_labels, args)
            rows.append(row)
            _log(n, row)
        rows.append(
            {
                "method": "packaged",
                "cv": auroc_acc(s_labels, [1.0 - p for p in profanity_probabilities(s_texts)], 0.5),
                "heldout": auroc_acc(held_labels, packaged_held, 0.5),
                "heldout_scores": packaged_held,
            }
        )
        results["sizes"].append({"n": n, "good": sum(s_labels), "rows": rows})
        _write(args.out, results)  # a partial table survives an interrupted run
    if not args.no_trl:
        results["notes"].append(
            f"trl/lora: RewardTrainer (trl {machine['trl']}), LoRA r={args.lora_r} alpha={2 * args.lora_r} on "
            f"`{args.policy}` as AutoModelForSequenceClassification(num_labels=1), batch {args.trl_batch} pairs, "
            f"lr {args.trl_lr}, at most {args.trl_epochs} epochs or {args.trl_max_steps} steps, fp32 on "
            f"{args.device}; one held-out split, no cross-validation."
        )
    _write(args.out, results)
    print(args.out.read_text())
    return 0


def _write(out: Path, results: dict) -> None:
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.write_text(render(results))


def _log(n: int, row: dict) -> None:
    print(
        f"N={n} {row['method']}: held-out AUROC {_f(row['heldout']['auroc'])}, fit {row['fit_s']:.2f} s",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
