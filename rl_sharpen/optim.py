"""Optimizer: AdamW with linear warmup then a constant or cosine schedule, global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from rl_sharpen.sampling.prompts import check_fields
from rl_sharpen.sharding import mesh_of


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6  # peak learning rate
    warmup_steps: int = 0  # linear warmup: update t < warmup_steps at peak x (t + 1) / warmup_steps
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    total_steps: int = 1000  # horizon of the cosine decay, in optimizer updates (RL steps x epochs x minibatches)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak
    weight_decay: float = 0.0  # decoupled (AdamW), of the parameters the model declares decayed
    decay_norms_and_biases: bool = False  # weight decay also shrinks norm scales and biases toward 0
    b1: float = 0.9  # Adam decay of the first-moment average
    b2: float = 0.999  # Adam decay of the second-moment average
    eps: float = 1e-8  # Adam denominator floor
    clip_norm: float = 1.0  # global gradient-norm clip; 0 disables

    def __post_init__(self):
        check_fields(self, [
            ("learning_rate", self.learning_rate > 0, "a float > 0"),
            ("warmup_steps", 0 <= self.warmup_steps and (self.schedule == "constant"
                                                         or self.warmup_steps <= self.total_steps),
             "an integer >= 0, at most total_steps with the cosine schedule"),
            ("schedule", self.schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
            ("total_steps", self.total_steps >= 1, "an integer >= 1"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a float in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "a float >= 0"),
            ("b1", 0 <= self.b1 < 1, "a float in [0, 1)"),
            ("b2", 0 <= self.b2 < 1, "a float in [0, 1)"),
            ("eps", self.eps > 0, "a float > 0"),
            ("clip_norm", self.clip_norm >= 0, "a float >= 0 (0 disables)"),
        ])


def schedule(cfg: OptimConfig) -> optax.Schedule:
    """Learning rate of update t (from 0): peak (t + 1) / W for t < W = warmup_steps, then the
    constant peak or a cosine from the peak over the remaining total_steps - W updates. The first
    update is not wasted at rate 0, and update W - 1 reaches the peak."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.total_steps - warm, 1), cfg.min_lr_ratio)
    if warm == 0:
        return after

    def warmed(count):
        return jnp.where(count < warm, cfg.learning_rate * (count + 1) / warm, after(jnp.maximum(count - warm, 0)))
    return warmed


def _state_in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` with its state built for float32 copies of the parameters, so Adam's moments are
    float32 whatever the parameters' dtype. In bfloat16 (8 significant bits) the second moment stops
    following the gradients: nu <- b2 nu + (1 - b2) g^2 with b2 = 0.999 moves nu by less than half
    its rounding step once |g^2 - nu| < ~2 nu, while the bias correction 1 / (1 - b2^t) keeps
    shrinking, so the step size drifts up. The updates are float32; the train step adds them to the
    parameters in float32 and casts the sum back to the parameters' dtype."""
    def init(params):
        return inner.init(jax.tree.map(lambda p: p.astype(jnp.float32) if jnp.issubdtype(p.dtype, jnp.floating)
                                       else p, params))
    return optax.GradientTransformation(init, inner.update)


def make_optimizer(cfg: OptimConfig, decay_mask=None) -> optax.GradientTransformation:
    """AdamW: theta <- theta - lr_t (m_hat / (sqrt(v_hat) + eps) + wd theta), the wd term only on
    the leaves where `decay_mask` (a bool pytree like the params, e.g.
    `registry.weight_decay_mask`) is True; on every leaf when it is None or
    `cfg.decay_norms_and_biases`."""
    # Both moments in float32 from the start (`_state_in_float32`): the first is float32 after any
    # update anyway (gradients are accumulated in float32), and a state whose dtypes change after
    # step 0 would be restored into the initial dtypes, so a resumed bfloat16 run would not reproduce.
    # no mask without decay: the state of a run without weight decay keeps its structure
    mask = None if cfg.decay_norms_and_biases or cfg.weight_decay == 0 else decay_mask
    adamw = _state_in_float32(optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                          weight_decay=cfg.weight_decay, mask=mask))
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw


def place(optimizer: optax.GradientTransformation, params, opt_state, param_shardings):
    """(params, opt_state) inside jit, constrained to `param_shardings` (NamedShardings of one mesh):
    each parameter-shaped leaf of the state (Adam's moments) sharded as its parameter, counters
    replicated. Left to itself, XLA may hand a step's outputs back in other layouts than its inputs
    (then the next call compiles again) or put a freshly initialized state on one device (24 GB of
    moments on one chip for a 3B model)."""
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    constrain = jax.lax.with_sharding_constraint
    return constrain(params, param_shardings), optax.tree_map_params(
        optimizer, constrain, opt_state, param_shardings, transform_non_params=lambda x: constrain(x, replicated))


def init_state(optimizer: optax.GradientTransformation, params):
    """`optimizer.init(params)`, placed by `place` when `params` are sharded over a mesh."""
    if mesh_of(params) is None:
        return jax.jit(optimizer.init)(params)
    shardings = jax.tree.map(lambda p: p.sharding, params)
    return jax.jit(lambda p: place(optimizer, p, optimizer.init(p), shardings)[1])(params)
