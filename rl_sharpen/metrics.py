"""Metrics to TensorBoard, a JSONL file and stdout, in a workdir that may be local or on an object
store (gs://, s3://: read and written through `etils.epath`, which needs gcsfs / s3fs there)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
from etils import epath


def workdir_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: URLs (gs://bucket/run) as they are, local paths made absolute."""
    path = os.fspath(path)
    return epath.Path(path if "://" in path else os.path.abspath(path))


def check_shared_workdir(workdir: str | os.PathLike) -> None:
    """Under multi-process JAX, raises on every process unless all of them read what process 0 writes
    in `workdir`: checkpoints, the warm start and results live in one folder that every host sees."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(1 << 30))))
    probe = workdir_path(workdir) / f".shared_check_{token}"
    written = ""
    if jax.process_index() == 0:
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(str(token))
        except Exception as e:  # noqa: BLE001 (any backend's error: OSError, gcsfs, tf.io.gfile)
            written = f"{type(e).__name__}: {e}"
    if int(multihost_utils.broadcast_one_to_all(np.int32(bool(written)))):  # every process raises alike
        raise ValueError(f"--workdir={os.fspath(workdir)}: process 0 cannot write there"
                         + (f" ({written})" if written else ""))
    try:
        seen = probe.read_text() == str(token)
    except Exception:  # noqa: BLE001 (a missing file under any backend)
        seen = False
    seen_by = np.asarray(multihost_utils.process_allgather(np.int32(seen)))
    if jax.process_index() == 0:
        probe.unlink()
    if not seen_by.all():
        blind = [int(i) for i in np.flatnonzero(seen_by == 0)]
        raise ValueError(f"--workdir={os.fspath(workdir)} is not shared: process(es) {blind} of {jax.process_count()} "
                         "cannot read what process 0 writes there; a multi-host run needs a workdir every host "
                         "sees (gs://bucket/..., or a shared file system)")


def _can_append(path: epath.Path) -> bool:
    return "://" not in os.fspath(path)  # object stores (gs://, s3://) hold immutable objects


def _replace_text(path: epath.Path, text: str) -> None:
    """Makes `text` the whole file, so that a kill leaves either the old file or the new one: a local
    file is written beside it and renamed over it; an object-store write is atomic already."""
    if not _can_append(path):
        path.write_text(text)
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _scalar(v) -> float:
    return float(np.asarray(v))


def _rows_through(text: str, step: int) -> str:
    """The lines of a JSONL text whose "step" is <= `step`; a line cut off by a kill is dropped."""
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    return "".join(kept)


class MetricWriter:
    """`write(step, metrics)` adds one JSON line to `<workdir>/<name>.jsonl` and logs scalars to
    TensorBoard under `<workdir>/tb/<name>`. Only the main process (default: JAX process 0) writes.

    resume_step: None adds to whatever the file holds. An int N keeps only its rows of steps <= N:
    a run restored from its step-N checkpoint writes the later steps again (N = -1: start empty).
    Object stores cannot append, so there the whole file is rewritten on each write.

    TensorBoard's writer queues events for a thread that writes them every couple of minutes, so a
    killed run loses its last ones, while each JSON line is on disk once `write` returns. A resumed
    writer therefore tells TensorBoard to drop every earlier event (a purge at step 0) and writes the
    kept rows again: its curves are the JSONL's. It deletes the earlier event files but the newest,
    whose rows the purge hides: TensorBoard's Python loader, reading that one, would not move on to
    the new file if it were deleted. So the folder holds two copies of the rows at most, however often
    the run resumed.
    """

    def __init__(self, workdir: str | os.PathLike, name: str = "train", tensorboard: bool = True,
                 is_main: bool | None = None, resume_step: int | None = None):
        self.is_main = jax.process_index() == 0 if is_main is None else is_main
        workdir = workdir_path(workdir)
        self.path = workdir / f"{name}.jsonl"
        self._appendable = _can_append(workdir)
        self._text = ""  # the file's content, kept where it cannot be appended to
        self._tb = None
        if not self.is_main:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and (resume_step is not None or not self._appendable):
            self._text = self.path.read_text()
            if resume_step is not None:
                self._text = _rows_through(self._text, resume_step)
                _replace_text(self.path, self._text)
        if tensorboard:
            from tensorboardX import FileWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            folder = workdir / "tb" / name
            if resume_step is not None and folder.exists():  # their rows are rewritten below from the JSONL
                for old in sorted(folder.glob("events.out.tfevents.*"))[:-1]:  # named by the second they opened
                    old.unlink()
            # event files are named by the second they open in: a writer opened again within it (a run
            # resumed in the same process) would truncate the first one's file without its own suffix
            self._tb = FileWriter(os.fspath(folder), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
            if resume_step is not None:  # TensorBoard drops every earlier event; the kept rows follow
                self._tb.add_event(Event(step=0, file_version="brain.Event:2"))
                self._tb.add_event(Event(step=0, session_log=SessionLog(status=SessionLog.START)))
                for row in _parse_rows(self._text):
                    self._add_scalars(row)
                self._tb.flush()

    def _add_scalars(self, row: Mapping[str, object]) -> None:
        """One event per row, holding its finite float values (a tag allows no '@': pass_at_8)."""
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k.replace("@", "_at_"), simple_value=v) for k, v in row.items()
                  if k != "step" and isinstance(v, float) and math.isfinite(v)]
        if values:
            self._tb.add_summary(Summary(value=values), row["step"])

    def write(self, step: int, metrics: Mapping[str, object]) -> dict:
        row = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, (str, bool)) or v is None:
                row[k] = v
            else:
                row[k] = _scalar(v)
        if self.is_main:
            line = json.dumps(strict_json(row), allow_nan=False) + "\n"  # NaN: null, inf: "inf"
            if self._appendable:
                with self.path.open("a") as f:
                    f.write(line)
            else:
                self._text += line
                _replace_text(self.path, self._text)
            if self._tb is not None:
                self._add_scalars(row)
                self._tb.flush()
        return row

    def last_row(self) -> dict | None:
        """The last row the file holds (None if none, and on processes other than the main one)."""
        if not self.is_main or not self.path.exists():
            return None
        rows = read_jsonl(self.path)
        return rows[-1] if rows else None

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file, with the non-finite values `strict_json` wrote as such: null reads as
    NaN, "inf" / "-inf" as floats."""
    return _parse_rows(workdir_path(path).read_text())


def _parse_rows(text: str) -> list[dict]:
    def value(v):
        return math.nan if v is None else _NONFINITE.get(v, v) if isinstance(v, str) else v

    return [{k: value(v) for k, v in json.loads(line).items()} for line in text.splitlines() if line.strip()]


def json_value(x):
    """`json.dumps` default for numpy and JAX values (integers stay integers, arrays become lists) and
    for other numbers (Fraction, Decimal: as floats)."""
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        x = np.asarray(x)
        return x.tolist() if x.ndim else x.item()
    return float(x)


_NONFINITE = {"inf": math.inf, "-inf": -math.inf}


def strict_json(obj):
    """`obj` with numpy / JAX values as Python ones (`json_value`), NaN as None and +-inf as the strings
    "inf" / "-inf", so that `json.dumps(..., allow_nan=False)` holds: strict readers (jq, JavaScript,
    DuckDB) reject the bare NaN and Infinity that Python writes."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if not isinstance(obj, float):
        return strict_json(json_value(obj))
    if math.isnan(obj):
        return None
    return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")


def write_json(obj, path: str | os.PathLike) -> None:
    """`obj` as indented strict JSON at `path` (local or a gs:// / s3:// URL), numpy / JAX values
    included; NaN becomes null and +-inf "inf" / "-inf" (`strict_json`). A kill while it writes leaves
    the previous file."""
    _replace_text(workdir_path(path), json.dumps(strict_json(obj), indent=1, allow_nan=False))


def save_png(fig, path: str | os.PathLike, dpi: int = 150) -> None:
    """A matplotlib figure as PNG at `path` (local or a URL)."""
    with workdir_path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def format_row(row: Mapping[str, object], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        if k in row:
            v = row[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
