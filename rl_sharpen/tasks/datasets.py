"""Math problem sets as one normalized record type, `Problem`.

`load_problems(name_or_path, split=...)` takes a registered name (loaded from the Hugging Face hub
through `datasets`) or a local file: `.jsonl` (one object per line), `.json` (a top-level array of
objects, or one object per line) or `.parquet`. Rows are converted by a *format*, which fixes where
the problem text and the gold answer live:

  gsm8k  `question`; gold = text after the last `#### ` of `answer`, thousands commas removed
  math   `problem`; gold = `answer` if present, else the last `\\boxed{}` of `solution`;
         `level` (int or "Level N"), `subject` or `type`
  aime   `problem` or `question`; gold = `answer` as an integer ("025" -> "25")
  qa     `problem` or `question`; gold = `answer` (e.g. Minerva)

Text fields are strings that UTF-8 can encode; an integer or finite float answer is accepted too
(2.0 -> "2", 0.5 -> "0.5"), a number as problem text is not.
A local file's format, unless given, is inferred once from its first rows (`infer_format`) and applies
to every row: a row that does not fit it (invalid JSON or UTF-8, not a JSON object, a missing field,
no extractable gold) is skipped and counted in `LoadStats`, never read under another format. A UTF-8
byte order mark is ignored. A file of which no row loads raises ValueError.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import itertools
import json
import logging
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rl_sharpen.config import ConfigError, SourceError
from rl_sharpen.tasks.answers import last_boxed

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


LOCAL_EXTENSIONS = (".jsonl", ".json", ".parquet")
_INFER_ROWS = 64  # rows `infer_format` looks at


class _SkipRow(Exception):
    """A malformed row; the message is the reason it is counted under."""


class _MissingField(_SkipRow):
    """None of the field's names is present with a non-empty value."""


def _field_text(name: str, value: Any, numbers: bool = False) -> str | None:
    """A field's value as stripped text; None when empty; _SkipRow for a value that is not text
    (a finite number is text for an answer field, `numbers`) or text that UTF-8 cannot encode (a
    JSON-escaped lone surrogate, "\\ud83d", which a tokenizer refuses)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _SkipRow("invalid UTF-8") from None
        return value.strip() or None
    if numbers and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if numbers and isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise _SkipRow(f"{name} is {float(value)}")
        return np.format_float_positional(float(value), trim="-")  # 2.0 -> "2", 1e-7 -> "0.0000001"
    raise _SkipRow(f"{name} of type {type(value).__name__}")


def _field(row: Mapping[str, Any], *names: str, numbers: bool = False) -> str:
    """The first of `names` present with a non-empty value, as text."""
    for name in names:
        value = row.get(name)
        if value is not None:
            text = _field_text(name, value, numbers)
            if text is not None:
                return text
    raise _MissingField(f"missing {'/'.join(names)}")


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
    if isinstance(value, (float, np.floating)) and float(value).is_integer():  # 3.0: an int column with gaps
        value = int(value)
    match = re.fullmatch(r"(?:Level\s*)?(\d+)", str(value).strip()) if value is not None else None
    return int(match.group(1)) if match else None


def _subject(row: Mapping[str, Any]) -> str | None:
    subject = row.get("subject") or row.get("type")
    return None if subject is None else str(subject).strip() or None


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
        gold = _field(row, "answer", numbers=True)
    except _MissingField:
        gold = last_boxed(_field(row, "solution"))
        if not gold or not gold.strip():
            raise _SkipRow("no \\boxed{} in solution") from None
    return Problem(_row_id(row, source, index), _field(row, "problem"), _canonical_integer(gold.strip()),
                   level=_level(row.get("level")), subject=_subject(row),
                   source=source)


def _from_aime(row, index, source):
    answer = _field(row, "answer", numbers=True)
    if not re.fullmatch(r"\d+", answer):
        raise _SkipRow("non-integer AIME answer")
    return Problem(_row_id(row, source, index), _field(row, "problem", "question"), str(int(answer)),
                   source=source)


def _from_qa(row, index, source):
    return Problem(_row_id(row, source, index), _field(row, "problem", "question"),
                   _canonical_integer(_field(row, "answer", numbers=True)), source=source)


FORMATS: dict[str, Callable[[Mapping[str, Any], int, str], Problem]] = {
    "gsm8k": _from_gsm8k,
    "math": _from_math,
    "aime": _from_aime,
    "qa": _from_qa,
}
FORMAT_FIELDS = {  # what each format reads, for errors
    "gsm8k": "question, and answer ending in '#### <gold>'",
    "math": "problem, and answer or a solution whose last \\boxed{} holds the gold",
    "aime": "problem or question, and an integer answer",
    "qa": "problem or question, and answer",
}


def infer_format(rows: Sequence[Any]) -> str:
    """Format of a file from its first rows (non-objects ignored): `math` if a row has a `solution`
    or `level` field; else `gsm8k` if most rows with a `question` have an `answer` containing `####`
    (so one truncated solution does not turn a GSM8K file into `qa`); else `qa`."""
    objects = [row for row in rows if isinstance(row, Mapping)]
    if any("solution" in row or "level" in row for row in objects):
        return "math"
    questions = [row for row in objects if "question" in row]
    marked = sum("####" in str(row.get("answer", "")) for row in questions)
    return "gsm8k" if questions and 2 * marked > len(questions) else "qa"


def _check_local_path(path: str, field: str) -> None:
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(LOCAL_EXTENSIONS))
        raise SourceError(f"{field}={path!r} is a directory; allowed: one file of problems"
                          + (f", e.g. one of {files}" if files else f" ({', '.join(LOCAL_EXTENSIONS)})"))
    if not path.endswith(LOCAL_EXTENSIONS):
        raise SourceError(f"{field}={path!r}: unsupported file type; allowed extensions: {', '.join(LOCAL_EXTENSIONS)}")


class _BadLine:
    """A line of a local file that is not valid JSON (or not UTF-8): skipped and counted."""

    def __init__(self, reason: str):
        self.reason = reason


def _json_lines(lines: Iterable[bytes]) -> Iterable[Any]:
    """One value per non-blank line; a line that does not parse is a `_BadLine`."""
    for line in (part for chunk in lines for part in chunk.splitlines()):  # \n, \r\n and old-Mac \r
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield _BadLine("invalid UTF-8")
            continue
        if text.strip():
            try:
                yield json.loads(text)
            except json.JSONDecodeError:
                yield _BadLine("invalid JSON")


def _encodes(row: Any) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_local(path: str) -> Iterable[Any]:
    """Rows of a local file (see the module docstring for the file types)."""
    if path.endswith(".parquet"):
        import datasets

        yield from datasets.load_dataset("parquet", data_files=path, split="train")
        return
    with open(path, "rb") as f:
        if path.endswith(".json"):
            data = f.read().removeprefix(codecs.BOM_UTF8)
            try:
                text, clean = data.decode("utf-8"), True
            except UnicodeDecodeError:  # bad bytes become lone surrogates; rows holding one are skipped
                text, clean = data.decode("utf-8", errors="surrogateescape"), False
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:  # JSON Lines under a .json name
                yield from _json_lines([data])
                return
            for row in whole if isinstance(whole, list) else [whole]:
                yield row if clean or _encodes(row) else _BadLine("invalid UTF-8")
            return
        lines = iter(f)  # streamed: a large JSONL file is never held whole
        first = next(lines, b"").removeprefix(codecs.BOM_UTF8)
        yield from _json_lines(itertools.chain([first], lines))


def _read_hub(source: Source, name: str, split: str, field: str) -> Iterable[Any]:
    import datasets

    try:
        return datasets.load_dataset(source.hub_name, source.config, split=source.splits[split])
    except Exception as e:  # offline, unreachable, or not authorized: say how to go on without the hub
        raise SourceError(f"problem source {name!r} (split {split!r}) could not be loaded from the Hugging Face "
                         f"hub dataset {source.hub_name!r}: {type(e).__name__}: {e}. Without the hub, set "
                         f"{field} to a local {' / '.join(LOCAL_EXTENSIONS)} file of its rows") from e


def load_problems(name_or_path: str, split: str | None = None, limit: int | None = None,
                  format: str | None = None, field: str | None = None
                  ) -> tuple[list[Problem], LoadStats]:
    """Problems of a registered source (`SOURCES`) or of a local JSONL/parquet file.

    split: for a registered name, one of its splits (default: "test" if it has one, else "train");
      ignored for files. limit: keep the first `limit` valid problems. format: one of `FORMATS`;
      default: the source's format, or `infer_format` of a file's first 64 rows. field: the config
      field that named the source, for errors (default: both data fields; its split is `{field}_split`).
    Raises ConfigError (a ValueError) naming `field` when no row loads (unless limit=0).
    """
    split_field = f" ({field}_split)" if field else ""
    field = field or "data.train / data.validation"
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name_or_path in SOURCES:  # a registered name, even where a folder of that name exists
        source = SOURCES[name_or_path]
        split = split or ("test" if "test" in source.splits else "train")
        if split not in source.splits:
            raise ValueError(f"split of {name_or_path!r}{split_field} must be one of {sorted(source.splits)}, "
                             f"got {split!r}")
        rows, source_name, format = (_read_hub(source, name_or_path, split, field), f"{name_or_path}/{split}",
                                     format or source.format)
    elif os.path.exists(name_or_path):
        _check_local_path(name_or_path, field)
        folder = os.path.basename(os.path.dirname(os.path.abspath(name_or_path)))
        stem = os.path.splitext(os.path.basename(name_or_path))[0]
        rows, source_name = _read_local(name_or_path), f"{folder}/{stem}"
        if format is None:
            head = list(itertools.islice(rows, _INFER_ROWS))
            format, rows = infer_format(head), itertools.chain(head, rows)
    else:
        raise SourceError(f"unknown problem source {name_or_path!r}: not a file, and not one of {sorted(SOURCES)} "
                          f"(set by {field})")

    problems: list[Problem] = []
    skipped: collections.Counter[str] = collections.Counter()
    ids: set[str] = set()
    fields_seen: set[str] = set()
    wrappers: list[str] = []  # fields of the first row holding a list of objects: rows wrapped in an object
    num_rows = 0
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        num_rows += 1
        if isinstance(row, Mapping) and len(fields_seen) < 64:
            fields_seen.update(map(str, row))
            if index == 0:
                wrappers = [str(k) for k, v in row.items() if isinstance(v, list) and v and isinstance(v[0], Mapping)]
        if isinstance(row, _BadLine) or not isinstance(row, Mapping):
            skipped[row.reason if isinstance(row, _BadLine) else "not a JSON object"] += 1
            continue
        try:
            problem = FORMATS[format](row, index, source_name)
        except _SkipRow as reason:
            skipped[str(reason)] += 1
            continue
        if problem.id in ids:  # paired comparisons and caches key problems by id
            skipped["repeated id"] += 1
            continue
        ids.add(problem.id)
        problems.append(problem)
    if not problems and limit != 0:
        missing_fields = fields_seen and all(reason.startswith("missing ") for reason in skipped)
        raise ConfigError(
            f"{field}={name_or_path!r}: none of its {num_rows} rows loads as format {format!r}"
            + (f"; skipped: {dict(skipped)}" if skipped else "")
            + (f". A file holds a list of row objects (or one object per line); this one holds one object "
               f"with the rows under {' / '.join(map(repr, wrappers))}" if num_rows == 1 and wrappers else
               f". Its rows have the fields {sorted(fields_seen)}; {format!r} reads "
               f"{FORMAT_FIELDS.get(format, 'its own fields')}. Rename the file's fields to one format's "
               f"(formats: {'; '.join(f'{k}: {v}' for k, v in FORMAT_FIELDS.items())}), or register a reader in "
               "tasks.datasets.FORMATS" if missing_fields else ""))
    if skipped:
        _LOG.warning("%s: skipped %d malformed rows of %d: %s", name_or_path, sum(skipped.values()),
                     num_rows, dict(skipped))
    return problems, LoadStats(num_rows, len(problems), dict(skipped))
