"""Metrics to TensorBoard, a JSONL file and stdout."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np


def _scalar(v) -> float:
    return float(np.asarray(v))


class MetricWriter:
    """`write(step, metrics)` appends one JSON line to `<workdir>/<name>.jsonl` and logs scalars to
    TensorBoard under `<workdir>/tb/<name>`. Only process 0 writes."""

    def __init__(self, workdir: str, name: str = "train", tensorboard: bool = True, is_main: bool = True):
        self.is_main = is_main
        self.path = os.path.join(workdir, f"{name}.jsonl")
        self._tb = None
        if is_main:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tb", name))

    def write(self, step: int, metrics: Mapping[str, object]) -> dict:
        row = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, (str, bool)) or v is None:
                row[k] = v
            else:
                row[k] = _scalar(v)
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tb is not None:
                for k, v in row.items():
                    if isinstance(v, float) and math.isfinite(v):
                        self._tb.add_scalar(k, v, step)
                self._tb.flush()
        return row

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_row(row: Mapping[str, object], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        if k in row:
            v = row[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
