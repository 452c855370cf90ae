"""Advantages from per-sample rewards R [N], rows n*G .. n*G+G-1 sharing a prompt.

Estimators (registered by name; g(i) is the group of sample i, mean_g / std_g over its G rewards,
std with ddof = 1):

  rloo                   A_i = R_i - 1/(G-1) sum_{j in g(i), j != i} R_j = G/(G-1) (R_i - mean_g)
                         the baseline does not depend on y_i, so E[A_i grad log pi(y_i)] = grad E_pi[R]
                         exactly (the paper's default; no std normalization); the update follows it
                         only under a constant loss normalizer (losses.py, seq-mean-token-sum)
  grpo                   A_i = (R_i - mean_g) / (std_g + eps)                    Shao et al. 2024
  dr_grpo                A_i = R_i - mean_g; pair it with a constant loss normalizer
                         (aggregation 'seq-mean-token-sum', losses.py)           Liu et al. 2025
  reinforce_pp           A_i = (R_i - mean_B) / (std_B + eps) over the whole batch   Hu 2025 (REINFORCE++)
  reinforce_pp_baseline  A_i = (R_i - mean_g) / (std_B(R - mean_g) + eps)        REINFORCE++ with group baseline

mean_g inside the baseline makes dr_grpo estimate (G-1)/G grad E_pi[R] exactly. grpo's std_g depends
on the samples, so its expected update is not parallel to grad E_pi[R] once rewards take more than two
values: within a group of equal correctness it scales the continuous terms of the sharpening,
tempered and tilted rewards to unit size, undoing tilted sampling's 1 / beta_inv (exact gradient of
tilted_a2_b100 on a 3-token model, cosine to grad E_pi[R]: 0.31 at G = 2, 0.48 at G = 3, about 0.93
at G = 8; 1.0 for rloo and dr_grpo). Use rloo or dr_grpo for those regimes.

Every estimator works on rewards shifted by one member of their group (or batch), R_i - R_first,
which changes no formula above but makes a group of equal rewards give A = 0 exactly. Without the
shift, a float32 mean of G equal rewards is often one ulp off them (e.g. G = 12 copies of -147.28),
and grpo would divide that rounding error by a std of the same size, giving the whole group
advantages of about +-0.9: the case of a collapsed policy whose G completions are identical.

Inverse-success calibration (Fan et al. 2026, "When Sharpening Becomes Collapse"), applied after any
estimator when `inverse_success_exponent` a != 0: with c_g = sum_{j in g} correct_j,

  A_i <- A_i (G - c_g)^a   if A_i > 0,   A_i unchanged otherwise.

Positive signal from easy prompts (most samples correct) is damped relative to hard ones, which slows
the collapse of the policy onto the modes that happen to be sampled; a = 0 leaves A unchanged. An
all-correct group (c_g = G) loses its positive advantages entirely (see `inverse_success_scale`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rl_sharpen.rl.registry import registrar


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    estimator: str = "rloo"  # a name in ADVANTAGE_ESTIMATORS
    eps: float = 1e-6  # added to the std of grpo / reinforce_pp*
    inverse_success_exponent: float = 0.0  # a of the inverse-success calibration; 0 disables

    def __post_init__(self):
        if self.estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"AdvantageConfig.estimator={self.estimator!r}; allowed: {sorted(ADVANTAGE_ESTIMATORS)}")
        if self.eps < 0:
            raise ValueError(f"AdvantageConfig.eps={self.eps}; must be >= 0")
        if self.inverse_success_exponent < 0:
            raise ValueError(f"AdvantageConfig.inverse_success_exponent={self.inverse_success_exponent}; must be >= 0")


Estimator = Callable[[jax.Array, int, AdvantageConfig], jax.Array]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


GROUP_BASELINE_ESTIMATORS: set[str] = set()  # baseline from the other samples of a prompt: need G >= 2
GROUP_STD_ESTIMATORS: set[str] = set()  # divide by each group's reward std, which reweights R's terms per group
_register = registrar(ADVANTAGE_ESTIMATORS, "advantage estimator")


def register_estimator(name: str, *, group_baseline: bool, group_std: bool = False):
    """@register_estimator(name, group_baseline=..., group_std=...): makes `fn(rewards [N], group_size,
    cfg) -> [N]` available by `name`. group_baseline: its baseline comes from the other samples of the
    prompt (configs with one sample per prompt are refused); group_std: it divides by each group's
    reward std (runs whose reward has terms besides the task reward are warned)."""

    def wrap(fn: Estimator) -> Estimator:
        _register(name)(fn)
        if group_baseline:
            GROUP_BASELINE_ESTIMATORS.add(name)
        if group_std:
            GROUP_STD_ESTIMATORS.add(name)
        return fn

    return wrap


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    return rewards.astype(jnp.float32).reshape(-1, group_size)


def _shifted_groups(rewards: jax.Array, group_size: int, estimator: str) -> jax.Array:
    """Rewards [N] as [N/G, G] minus each group's first reward (see the module docstring)."""
    if group_size < 2:  # a group of one is its own baseline: A = 0, no learning signal
        raise ValueError(f"{estimator} needs group_size >= 2 (a baseline from the other samples of "
                         f"the prompt), got {group_size}")
    r = _grouped(rewards, group_size)
    return r - r[:, :1]


def _over(centered: jax.Array, scale: jax.Array) -> jax.Array:
    """centered / scale, and 0 where scale is 0: with eps = 0, a group (or batch) of equal rewards
    has std 0 and, after the shift, centered rewards that are exactly 0."""
    return centered / jnp.where(scale > 0, scale, 1.0)


@register_estimator("rloo", group_baseline=True)
def rloo(rewards: jax.Array, group_size: int, cfg: AdvantageConfig) -> jax.Array:
    r = _shifted_groups(rewards, group_size, "rloo")
    loo_mean = (jnp.sum(r, axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - loo_mean).reshape(-1)


@register_estimator("grpo", group_baseline=True, group_std=True)
def grpo(rewards: jax.Array, group_size: int, cfg: AdvantageConfig) -> jax.Array:
    r = _shifted_groups(rewards, group_size, "grpo")
    centered = r - jnp.mean(r, axis=1, keepdims=True)
    return _over(centered, jnp.std(r, axis=1, keepdims=True, ddof=1) + cfg.eps).reshape(-1)


@register_estimator("dr_grpo", group_baseline=True)
def dr_grpo(rewards: jax.Array, group_size: int, cfg: AdvantageConfig) -> jax.Array:
    return _group_centered(rewards, group_size, "dr_grpo")


def _group_centered(rewards: jax.Array, group_size: int, estimator: str) -> jax.Array:
    r = _shifted_groups(rewards, group_size, estimator)
    return (r - jnp.mean(r, axis=1, keepdims=True)).reshape(-1)


def _batch_whiten(values: jax.Array, eps: float, estimator: str) -> jax.Array:
    if values.shape[0] < 2:
        raise ValueError(f"{estimator} needs at least 2 samples per rollout batch (std over the batch), "
                         f"got {values.shape[0]}")
    v = values - values[:1]
    return _over(v - jnp.mean(v), jnp.std(v, ddof=1) + eps)


@register_estimator("reinforce_pp", group_baseline=False)
def reinforce_pp(rewards: jax.Array, group_size: int, cfg: AdvantageConfig) -> jax.Array:
    return _batch_whiten(rewards.astype(jnp.float32), cfg.eps, "reinforce_pp")


@register_estimator("reinforce_pp_baseline", group_baseline=True)
def reinforce_pp_baseline(rewards: jax.Array, group_size: int, cfg: AdvantageConfig) -> jax.Array:
    return _batch_whiten(_group_centered(rewards, group_size, "reinforce_pp_baseline"), cfg.eps,
                         "reinforce_pp_baseline")


def inverse_success_scale(advantages: jax.Array, correct: jax.Array, group_size: int,
                          exponent: float) -> jax.Array:
    """A_i (G - c_g)^a where A_i > 0 (c_g = number correct in the group), A_i elsewhere.

    The scale is 0 for a group that is all correct (c_g = G): with a pure task reward its advantages
    are 0 anyway; with a mixed reward (e.g. sharpening terms) its positive advantages are dropped and
    only the negative ones remain, so such a group's advantages no longer sum to zero.
    """
    c = _grouped(correct, group_size)
    scale = jnp.power(group_size - jnp.sum(c, axis=1, keepdims=True), exponent)
    scale = jnp.broadcast_to(scale, c.shape).reshape(-1)
    return jnp.where(advantages > 0, advantages * scale, advantages)


def compute_advantages(rewards: jax.Array, group_size: int, cfg: AdvantageConfig,
                       correct: jax.Array | None = None) -> jax.Array:
    """A [N] float32 from rewards [N]; `correct` [N] is needed when inverse_success_exponent != 0."""
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {rewards.shape}")
    advantages = ADVANTAGE_ESTIMATORS[cfg.estimator](rewards, group_size, cfg)
    if cfg.inverse_success_exponent != 0:
        if correct is None:
            raise ValueError("AdvantageConfig.inverse_success_exponent != 0 needs `correct` [N]")
        advantages = inverse_success_scale(advantages, correct, group_size, cfg.inverse_success_exponent)
    return advantages
