"""Optimizer: AdamW with linear warmup then a constant or cosine schedule, global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6  # peak learning rate
    warmup_steps: int = 0  # linear warmup from 0 to the peak
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    total_steps: int = 1000  # horizon of the cosine decay
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak
    weight_decay: float = 0.0  # decoupled (AdamW)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # global gradient-norm clip; 0 disables


def schedule(cfg: OptimConfig) -> optax.Schedule:
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.total_steps - warm, 1), cfg.min_lr_ratio)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), after], [warm])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
