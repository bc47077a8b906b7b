"""Import prompts (CSV / JSONL / Parquet, all or nothing) and export ratings in the shapes trl's trainers read.

Export shapes:
- unpaired (binary and 1-5 ratings): ``prompt``, ``completion``, ``label`` (True = not toxic / harmless, as
  KTO reads it), plus ``score`` (the rating in [0, 1]), ``kind``, ``annotator``, ``generation_id``, ``comment``
  and ``policy_version`` (the name of the version that wrote the completion);
- pairwise: ``prompt``, ``chosen``, ``rejected`` (ties are left out), plus ``annotator``, ``comment`` and
  ``policy_version``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, sessionmaker

from db import queries as q
from db.models import Annotator, Comparison, Generation, PolicyVersion, Rating
from feedback.types import ImportReport

IMPORT_FORMATS = (".csv", ".jsonl", ".parquet")
EXPORT_FORMATS = ("jsonl", "csv", "dataset")
MAX_REPORTED_ERRORS = 10
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused: the tokenizer would encode them at every refill


class ImportFileError(ValueError):
    """A prompt file that cannot be imported; `errors` lists (line, problem) and nothing was written."""

    def __init__(self, path: Path, errors: list[tuple[str, str]]):
        self.errors = errors
        shown = "; ".join(f"{where}: {problem}" for where, problem in errors[:MAX_REPORTED_ERRORS])
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        super().__init__(f"{path.name} was not imported, nothing was written: {shown}{more}")


def _rows(path: Path) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, row, problem) for each record; `where` names the line (or row, for Parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first record
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.strip())  # a column past the end of the line would mislead
                except json.JSONDecodeError as err:
                    yield f"line {n}", None, f"not valid JSON: {err.msg} (column {err.colno})"
                    continue
                if not isinstance(row, dict):
                    yield f"line {n}", None, f"expected a JSON object, got {type(row).__name__}"
                    continue
                yield f"line {n}", row, None
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                yield "line 1", None, "the file has no header row"
                return
            start = reader.line_num + 1
            for row in reader:
                if None in row:  # more cells than header columns
                    yield (
                        f"line {start}",
                        None,
                        f"{len(row[None]) + len(reader.fieldnames)} cells, header has {len(reader.fieldnames)}",
                    )
                else:
                    yield f"line {start}", row, None
                start = reader.line_num + 1
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {n}", row, None
    else:
        raise ValueError(f"{path.name}: prompts import from {', '.join(IMPORT_FORMATS)} files")


def _text_problem(text: object, column: str, max_chars: int) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"{column!r} must be non-empty text, got {text!r:.40}"
    if "\x00" in text:
        return f"{column!r} contains a NUL byte (character {text.index(chr(0)) + 1}); remove it and import again"
    if len(text.strip()) > max_chars:
        return (
            f"{column!r} is {len(text.strip()):,} characters, over the limit of {max_chars:,}; shorten it or raise "
            "the limit (--max-prompt-chars)"
        )
    return None


def read_prompt_file(
    path: Path,
    text_column: str = "dialogue",
    summary_column: str | None = "summary",
    max_chars: int = MAX_PROMPT_CHARS,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Parse and check every record: (rows of text / summary, errors as (where, problem)).

    A text column that no record has is one error naming the columns the file does have, not one per line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    rows, errors, missing, columns = [], [], [], set()
    try:
        for where, row, problem in _rows(path):
            if problem is not None:
                errors.append((where, problem))
                continue
            columns.update(row)
            if text_column not in row:
                missing.append((where, f"no {text_column!r} field (fields: {sorted(row)})"))
                errors.append(missing[-1])
                continue
            text = row[text_column]
            problem = _text_problem(text, text_column, max_chars)
            if problem is not None:
                errors.append((where, problem))
                continue
            summary = row.get(summary_column) if summary_column else None
            rows.append({"text": text.strip(), "summary": summary if isinstance(summary, str) else None})
    except UnicodeDecodeError as err:
        errors.append(("file", f"not UTF-8 text ({err.reason} at byte {err.start})"))
    except Exception as err:  # noqa: BLE001 - e.g. a corrupt Parquet file: report it the same way
        if isinstance(err, ValueError) and "import from" in str(err):
            raise
        errors.append(("file", f"{type(err).__name__}: {err}"))
    if missing and not rows:  # the wrong column, not bad records: say so once, with the columns there are
        errors = [e for e in errors if e not in missing]
        errors.insert(
            0, ("file", f"no {text_column!r} column; its columns are {sorted(columns)}: name one as the text column")
        )
    if not rows and not errors:
        errors.append(("file", "no records"))
    return rows, errors


def import_prompts(
    session_factory: sessionmaker[Session],
    path: Path,
    text_column: str = "dialogue",
    summary_column: str | None = "summary",
    source: str | None = None,
    split: str = "train",
    max_chars: int = MAX_PROMPT_CHARS,
) -> ImportReport:
    """Import every prompt of a file in one transaction, or none: an error anywhere names the line and writes
    nothing. Prompts already in the store, or repeated in the file, are skipped and counted."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    path = Path(path)
    rows, errors = read_prompt_file(path, text_column, summary_column, max_chars)
    if errors:
        raise ImportFileError(path, errors)
    with session_factory.begin() as s:
        existing = q.existing_prompt_hashes((q.text_hash(r["text"]) for r in rows), session=s)
        seen, new = set(existing), []
        for r in rows:
            h = q.text_hash(r["text"])
            if h in seen:
                continue
            seen.add(h)
            new.append(
                {
                    "text": r["text"],
                    "text_hash": h,
                    "source": source or path.name,
                    "split": split,
                    "reference_summary": r["summary"],
                }
            )
        q.add_prompts(new, session=s)
    return ImportReport(added=len(new), duplicates=len(rows) - len(new), rows=len(rows))


def add_prompt_texts(
    session_factory: sessionmaker[Session], texts: list[tuple[str, str | None]], source: str, split: str
) -> ImportReport:
    """Add (text, summary) prompts from code (the app's default prompt set), skipping ones already stored."""
    with session_factory.begin() as s:
        existing = q.existing_prompt_hashes((q.text_hash(t) for t, _ in texts), session=s)
        new, seen = [], set(existing)
        for text, summary in texts:
            h = q.text_hash(text)
            if h not in seen:
                seen.add(h)
                new.append(
                    {"text": text, "text_hash": h, "source": source, "split": split, "reference_summary": summary}
                )
        q.add_prompts(new, session=s)
    return ImportReport(len(new), len(texts) - len(new), len(texts))


# ---- export --------------------------------------------------------------------------------------------------
def unpaired_rows(session_factory: sessionmaker[Session]) -> list[dict]:
    with session_factory.begin() as s:
        rows = s.execute(
            select(
                Generation.query_text,
                Generation.response,
                Rating.score,
                Rating.kind,
                Annotator.name,
                Generation.id,
                Rating.comment,
                PolicyVersion.name,
            )
            .join(Rating, Rating.generation_id == Generation.id)
            .join(Annotator, Annotator.id == Rating.annotator_id)
            .join(PolicyVersion, PolicyVersion.id == Generation.policy_version_id)
            .order_by(Rating.id)
        )
        return [
            {
                "prompt": prompt,
                "completion": completion,
                "label": bool(score >= 0.5),
                "score": float(score),
                "kind": kind,
                "annotator": name,
                "generation_id": gid,
                "comment": comment,
                "policy_version": version,
            }
            for prompt, completion, score, kind, name, gid, comment, version in rows
        ]


def pairwise_rows(session_factory: sessionmaker[Session]) -> list[dict]:
    ga, gb = aliased(Generation), aliased(Generation)
    with session_factory.begin() as s:
        rows = s.execute(
            select(
                ga.query_text,
                ga.response,
                gb.response,
                Comparison.winner,
                Annotator.name,
                Comparison.comment,
                PolicyVersion.name,
            )
            .join(ga, ga.id == Comparison.generation_a_id)
            .join(gb, gb.id == Comparison.generation_b_id)
            .join(Annotator, Annotator.id == Comparison.annotator_id)
            .join(PolicyVersion, PolicyVersion.id == ga.policy_version_id)
            .where(Comparison.winner != "tie")
            .order_by(Comparison.id)
        )
        return [
            {
                "prompt": prompt,
                "chosen": a if winner == "a" else b,
                "rejected": b if winner == "a" else a,
                "annotator": name,
                "comment": comment,
                "policy_version": version,
            }
            for prompt, a, b, winner, name, comment, version in rows
        ]


def export_ratings(
    session_factory: sessionmaker[Session], out: Path, fmt: str = "jsonl", shape: str = "unpaired"
) -> Path:
    """Write the ratings as `fmt` (jsonl, csv, or dataset: a `datasets.Dataset` folder via save_to_disk).

    shape: ``unpaired`` (prompt / completion / label) or ``pairwise`` (prompt / chosen / rejected).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if shape == "unpaired":
        rows = unpaired_rows(session_factory)
        columns = [
            "prompt",
            "completion",
            "label",
            "score",
            "kind",
            "annotator",
            "generation_id",
            "comment",
            "policy_version",
        ]
    elif shape == "pairwise":
        rows = pairwise_rows(session_factory)
        columns = ["prompt", "chosen", "rejected", "annotator", "comment", "policy_version"]
    else:
        raise ValueError(f"export shape must be unpaired or pairwise, got {shape!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        import datasets

        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({c: [] for c in columns})
        ds.save_to_disk(str(out))
    return out
