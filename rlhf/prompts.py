"""Prompt sources (hub dataset, local file, packaged chitchat dialogues) and the train / held-out split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import EMBEDDED_CHITCHAT, DataConfig

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Prompt:
    id: str
    dialogue: str
    summary: str | None = None
    source: str = ""


def load_prompts(cfg: DataConfig) -> list[Prompt]:
    """All prompts of the configured source whose dialogue length is within [min_chars, max_chars]."""
    if cfg.source == EMBEDDED_CHITCHAT:
        from rlhf.offline import chitchat_prompts

        rows = chitchat_prompts(min_chars=cfg.min_chars, max_chars=cfg.max_chars)
        prompts = [Prompt(r["id"], r["dialogue"], None, "chitchat") for r in rows]
    else:
        prompts = _from_dataset(cfg)
    prompts = [p for p in prompts if cfg.min_chars <= len(p.dialogue) <= cfg.max_chars]
    if not prompts:
        raise ValueError(
            f"no prompt in {cfg.source!r} has a {cfg.text_column!r} of {cfg.min_chars} to {cfg.max_chars} "
            "characters; widen --data.min_chars / --data.max_chars or choose another --data.source"
        )
    return prompts


def _from_dataset(cfg: DataConfig) -> list[Prompt]:
    import datasets

    path = Path(cfg.source).expanduser()
    try:
        if path.suffix.lower() in LOCAL_FORMATS or path.exists():
            if not path.exists():
                raise FileNotFoundError(f"no such file: {path}")
            fmt = LOCAL_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise ValueError(f"{path} is not one of {sorted(LOCAL_FORMATS)}")
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
            source = path.name
        else:
            ds = datasets.load_dataset(cfg.source, split=cfg.split)
            source = cfg.source
    except Exception as err:  # noqa: BLE001 - one message that says what to pass instead
        raise ValueError(
            f"could not read prompts from {cfg.source!r}: {type(err).__name__}: {err}. Pass --data.source with a "
            f"hub dataset id, a local {'/'.join(sorted(LOCAL_FORMATS))} file, or {EMBEDDED_CHITCHAT!r}"
        ) from err
    if cfg.text_column not in ds.column_names:
        raise ValueError(
            f"dataset {cfg.source!r} has no column {cfg.text_column!r}; its columns are {ds.column_names}; "
            "pass --data.text_column with the one holding the dialogue"
        )
    has_summary = bool(cfg.summary_column) and cfg.summary_column in ds.column_names
    id_col = next((c for c in ("id", "fname") if c in ds.column_names), None)
    out = []
    for i, row in enumerate(ds):
        text = row[cfg.text_column]
        if not isinstance(text, str):
            continue
        pid = str(row[id_col]) if id_col else f"{source}-{i}"
        out.append(Prompt(pid, text.strip(), row[cfg.summary_column] if has_summary else None, source))
    return out


def split_prompts(prompts: Sequence[Prompt], heldout_size: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Deterministic (train, held-out) split: a seeded shuffle of the prompts sorted by id."""
    if heldout_size >= len(prompts):
        raise ValueError(
            f"held-out size {heldout_size} leaves no training prompt out of {len(prompts)}; lower --data.heldout_size"
        )
    ordered = sorted(prompts, key=lambda p: p.id)
    random.Random(seed).shuffle(ordered)
    return ordered[heldout_size:], ordered[:heldout_size]


def format_prompt(dialogue: str, template: str) -> str:
    return template.replace("{dialogue}", dialogue)


def encode_prompt(tokenizer, dialogue: str, template: str, chat_template: bool | None):
    """Token ids of one query: the template, wrapped in the chat template for instruct models."""
    import torch

    text = format_prompt(dialogue, template)
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the policy's tokenizer has no chat template; pass --policy.chat_template false")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def decode_responses(tokenizer, responses: Sequence) -> list[str]:
    """Response token ids -> the texts that are scored, shown and stored: special tokens dropped, ends stripped,
    and NUL characters removed (a byte-level tokenizer can emit one; PostgreSQL text cannot hold it)."""
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return [t.replace("\x00", "").strip() for t in texts]
