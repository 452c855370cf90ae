"""Math problem sets as one normalized record type, `Problem`.

`load_problems(name_or_path, split=...)` takes a registered name (loaded from the Hugging Face hub
through `datasets`) or a local `.jsonl` / `.json` (one object per line) / `.parquet` file. Rows are
converted by a *format*, which fixes where the problem text and the gold answer live:

  gsm8k  `question`; gold = text after the last `#### ` of `answer`, thousands commas removed
  math   `problem`; gold = `answer` if present, else the last `\\boxed{}` of `solution`;
         `level` (int or "Level N"), `subject` or `type`
  aime   `problem` or `question`; gold = `answer` as an integer ("025" -> "25")
  qa     `problem` or `question`; gold = `answer` (e.g. Minerva)

A row that is not a JSON object, lacks a field, or has no extractable gold is skipped and
counted in `LoadStats`; loading never fails on bad rows.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping

from rl_sharpen.tasks.verify import last_boxed

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str  # gold final answer (LaTeX or plain text)
    level: int | None = None  # MATH difficulty 1-5; number of steps for the synthetic task
    subject: str | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class LoadStats:
    num_rows: int  # rows read (including skipped ones)
    num_loaded: int
    skipped: Mapping[str, int]  # reason -> count

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclasses.dataclass(frozen=True)
class Source:
    hub_name: str
    config: str | None
    splits: Mapping[str, str]  # our split name -> the hub's split name
    format: str


SOURCES: dict[str, Source] = {
    "gsm8k": Source("openai/gsm8k", "main", {"train": "train", "test": "test"}, "gsm8k"),
    "math": Source("DigitalLearningGmbH/MATH-lighteval", "default", {"train": "train", "test": "test"}, "math"),
    "math500": Source("HuggingFaceH4/MATH-500", None, {"test": "test"}, "math"),
    "minerva": Source("math-ai/minervamath", None, {"test": "test"}, "qa"),
    "aime24": Source("HuggingFaceH4/aime_2024", None, {"test": "train"}, "aime"),
    "aime25": Source("math-ai/aime25", None, {"test": "test"}, "aime"),
    "deepscaler": Source("agentica-org/DeepScaleR-Preview-Dataset", None, {"train": "train"}, "math"),
}


class _SkipRow(Exception):
    """A malformed row; the message is the reason it is counted under."""


def _field(row: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    raise _SkipRow(f"missing {'/'.join(names)}")


def _canonical_integer(answer: str) -> str:
    return str(int(answer)) if re.fullmatch(r"\d+", answer) else answer


def _gsm8k_gold(solution: str) -> str:
    if "####" not in solution:
        raise _SkipRow("no '####' in answer")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise _SkipRow("empty gold answer")
    return _canonical_integer(gold)


def _level(value: Any) -> int | None:
    match = re.fullmatch(r"(?:Level\s*)?(\d+)", str(value).strip()) if value is not None else None
    return int(match.group(1)) if match else None


def _row_id(row: Mapping[str, Any], source: str, index: int) -> str:
    """"{source}/{the row's own id}", or "{source}/{row index}" for rows without one."""
    for key in ("unique_id", "id", "idx"):
        if row.get(key) is not None:
            return f"{source}/{row[key]}"
    return f"{source}/{index}"


def _from_gsm8k(row, index, source):
    return Problem(_row_id(row, source, index), _field(row, "question"), _gsm8k_gold(_field(row, "answer")),
                   source=source)


def _from_math(row, index, source):
    try:
        gold = _field(row, "answer")
    except _SkipRow:
        gold = last_boxed(_field(row, "solution"))
        if not gold or not gold.strip():
            raise _SkipRow("no \\boxed{} in solution") from None
    return Problem(_row_id(row, source, index), _field(row, "problem"), _canonical_integer(gold.strip()),
                   level=_level(row.get("level")), subject=row.get("subject") or row.get("type"),
                   source=source)


def _from_aime(row, index, source):
    answer = _field(row, "answer")
    if not re.fullmatch(r"\d+", answer):
        raise _SkipRow("non-integer AIME answer")
    return Problem(_row_id(row, source, index), _field(row, "problem", "question"), str(int(answer)),
                   source=source)


def _from_qa(row, index, source):
    return Problem(_row_id(row, source, index), _field(row, "problem", "question"),
                   _canonical_integer(_field(row, "answer")), source=source)


FORMATS: dict[str, Callable[[Mapping[str, Any], int, str], Problem]] = {
    "gsm8k": _from_gsm8k,
    "math": _from_math,
    "aime": _from_aime,
    "qa": _from_qa,
}


def infer_format(row: Mapping[str, Any]) -> str:
    """Format of a local file from the fields of its first row."""
    if "question" in row and "####" in str(row.get("answer", "")):
        return "gsm8k"
    if "solution" in row or "level" in row:
        return "math"
    return "qa"


def _read_local(path: str) -> Iterable[Any]:
    """Rows of a local file; a JSONL line that does not parse yields None (counted as skipped)."""
    if path.endswith(".parquet"):
        import datasets

        yield from datasets.load_dataset("parquet", data_files=path, split="train")
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield None


def _read_hub(source: Source, split: str) -> Iterable[Any]:
    import datasets

    return datasets.load_dataset(source.hub_name, source.config, split=source.splits[split])


def load_problems(name_or_path: str, split: str | None = None, limit: int | None = None,
                  format: str | None = None) -> tuple[list[Problem], LoadStats]:
    """Problems of a registered source (`SOURCES`) or of a local JSONL/parquet file.

    split: for a registered name, one of its splits (default: "test" if it has one, else "train");
      ignored for files. limit: keep the first `limit` valid problems. format: one of `FORMATS`;
      default: the source's format, or inferred from a file's first row.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if os.path.exists(name_or_path):
        folder = os.path.basename(os.path.dirname(os.path.abspath(name_or_path)))
        stem = os.path.splitext(os.path.basename(name_or_path))[0]
        rows, source_name = _read_local(name_or_path), f"{folder}/{stem}"
    elif name_or_path in SOURCES:
        source = SOURCES[name_or_path]
        split = split or ("test" if "test" in source.splits else "train")
        if split not in source.splits:
            raise ValueError(f"split of {name_or_path!r} must be one of {sorted(source.splits)}, got {split!r}")
        rows, source_name, format = _read_hub(source, split), f"{name_or_path}/{split}", format or source.format
    else:
        raise ValueError(f"unknown problem source {name_or_path!r}: not a file, and not one of {sorted(SOURCES)}")

    problems: list[Problem] = []
    skipped: collections.Counter[str] = collections.Counter()
    num_rows = 0
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        num_rows += 1
        if not isinstance(row, Mapping):
            skipped["not a JSON object"] += 1
            continue
        format = format or infer_format(row)
        try:
            problems.append(FORMATS[format](row, index, source_name))
        except _SkipRow as reason:
            skipped[str(reason)] += 1
    if skipped:
        _LOG.warning("%s: skipped %d malformed rows of %d: %s", name_or_path, sum(skipped.values()),
                     num_rows, dict(skipped))
    return problems, LoadStats(num_rows, len(problems), dict(skipped))
