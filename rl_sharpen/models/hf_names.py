"""Tensor transforms between Hugging Face layouts and ours, used by the per-family name tables.

A torch Linear stores weight [out, in]; we store [in..., out...] so that `x @ w` needs no
transpose. LINEAR(n) converts a weight whose first n dims (in our layout) are its inputs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
    n_in: int | None  # leading input dims of a Linear in our layout; None for non-Linear tensors
    flatten: bool = False  # HF stores the tensor flat (biases [H*E] vs ours [H, E])

    def to_ours(self, hf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.n_in is None:
            return hf.reshape(shape)
        return hf.T.reshape(shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.n_in is None:
            return ours.reshape(-1) if self.flatten else ours
        fan_in = math.prod(ours.shape[:self.n_in])
        return np.ascontiguousarray(ours.reshape(fan_in, -1).T)

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.n_in is None:
            return (math.prod(shape),) if self.flatten else shape
        return (math.prod(shape[self.n_in:]), math.prod(shape[:self.n_in]))


COPY = Transform(None)
RESHAPE = Transform(None, flatten=True)
_LINEARS = {n: Transform(n) for n in (1, 2)}


def LINEAR(n_in: int) -> Transform:  # noqa: N802 (reads like a constant in the tables)
    return _LINEARS[n_in]
