"""Token-level policy losses, registered by name: fn(logprobs, batch, cfg) -> (per-token loss [N, T], metrics).

lp_t = log pi_theta(y_t | x, y_<t) is the only differentiable input; sg = stop-gradient; A_i is the
advantage of sequence i. lp_mu are the log-probs of the distribution the tokens were actually drawn
from (sampler temperature / top-p applied), lp_old those of the policy that anchors the PPO ratio.

  reinforce   l_t = -sg(w_t) A_i lp_t,   w_t = min(pi_theta / mu, is_cap) = min(exp(lp_t - lp_mu_t), is_cap)
              grad = -w A grad log pi: the policy gradient on-policy (w = 1); off-policy (temperature,
              top-p / top-k, calibration) per-token weights are the usual approximation of the
              sequence-level ratio prod_t pi / mu, not the exact importance-sampled gradient.
              is_level = "sequence" uses that ratio instead, the same for every token of y_i:
              w_i = min(exp(sum_t lp_t - lp_mu_t), is_cap). Untruncated, with the constant normalizer
              (seq-mean-token-sum) and an advantage whose baseline does not depend on y_i (rloo, or
              none), it is exact, E_mu[w A grad log pi] = E_pi[A grad log pi], wherever mu > 0 where
              pi > 0: temperature and calibration, not top-k / top-p, which never draw the tokens they
              cut. Its variance grows with the length and with KL(pi || mu). Weights stop at e^80.
  ppo_clip    rho_t = exp(lp_t - lp_old_t)
              l_t = -sg(u_t) min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)
              u_t = min(exp(lp_old_t - lp_mu_t), is_cap) corrects the sampler/trainer mismatch
              (per sequence with is_level = "sequence", as in reinforce);
              eps_high > eps_low is DAPO's clip-higher (Yu et al. 2025)
  alpha_dpg   reinforce with A_i = `alpha_dpg_advantages` (Kruszewski et al. 2026, below), recomputed from
              the current sg(lp) at every step; batch.advantages is ignored

Optional KL penalty per token: l_t += kl_coef * sg(w_t) k(lp_t - lp_ref_t) (rl/kl.py), with the
importance weight w_t of reinforce above (per token, or per sequence with is_level = "sequence"):
w = 1 on-policy, and sampled from mu != pi (a temperature, calibration, a later PPO epoch) it makes
each position's expected gradient the one under pi. Under the constant normalizer
(seq-mean-token-sum) and untruncated, the expected gradient is that of a per-position KL with the
visit probabilities of the prefixes held fixed: k2 gives sum_u P(u) KL(pi(.|u) || p_ref(.|u)), k3 the
same with KL(p_ref(.|u) || pi(.|u)), k1 zero; P is mu's prefix distribution with per-token weights
and pi's with the sequence weight (tests/test_kl.py enumerates both). Without the weight the
penalty would follow the gradient of no KL off-policy (k1: -sum_u P_mu(u) CE(mu(.|u), pi(.|u)),
pushing pi away from mu; k2 17-19% and k3 31-33% off their KL at temperature 0.6 on that model). It is not
the gradient of the sequence-level KL(pi || p_ref) and the other aggregations reweight it by length;
for the objective's KL, and its optimum p_ref e^{r / beta} / Z, put it in the reward instead:
`RewardConfig.kl_coef` with k1.

Aggregation over generated tokens (mask m, L_i = sum_t m_it, N' = number of rows with L_i > 0):
  token-mean            sum_{i,t} m l / sum_{i,t} m
  seq-mean-token-sum    (1/N') sum_i sum_t m l / max_len      constant normalizer (pair with dr_grpo)
  seq-mean-token-mean   (1/N') sum_i (1/L_i) sum_t m l
Only the constant normalizer makes the expected update (1/max_len) grad E_pi[R] for an unbiased
advantage (rloo): the other two divide by sampled lengths, so they reweight samples by length
(short ones weigh more) and follow another direction when lengths vary (on the 3-token enumerable
model of tests/test_regimes.py, its table and four regime presets, groups of 2-3: cosine 0.986-0.995
to the gradient for token-mean, 0.934-0.952 for seq-mean-token-mean, which drives mean-normalized
sharpening to another completion than its optimum).
`denominator` replaces sum m (token-mean) or N' (seq-*) by the count over the whole global batch, so
that the sum of micro-batch losses equals the loss of the full batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rl_sharpen.rl import kl
from rl_sharpen.rl.registry import registrar

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
IS_LEVELS = ("token", "sequence")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossInputs:
    """Rollout-side arrays of one (micro-)batch; constant across the update steps on that batch."""

    mask: jax.Array  # [N, T] 1 on generated tokens (EOS included)
    behaviour_logprobs: jax.Array  # [N, T] lp_mu: log-probs under the sampling distribution
    advantages: jax.Array | None = None  # [N] (reinforce, ppo_clip)
    old_logprobs: jax.Array | None = None  # [N, T] lp_old (ppo_clip); None: behaviour_logprobs
    ref_logprobs: jax.Array | None = None  # [N, T] lp_ref (kl_coef > 0, alpha_dpg)
    correct: jax.Array | None = None  # [N] r(y) >= 0 (alpha_dpg)
    group_size: int = dataclasses.field(default=1, metadata=dict(static=True))  # alpha_dpg: whole groups


@dataclasses.dataclass(frozen=True)
class LossConfig:
    name: str = "reinforce"  # a name in LOSSES
    aggregation: str = "token-mean"  # one of AGGREGATIONS
    max_len: int = 0  # constant normalizer of seq-mean-token-sum; 0 in an experiment: sampling.max_new_tokens
    is_cap: float = 20.0  # truncation of the importance weights (math.inf: untruncated)
    is_level: str = "token"  # weights per token, or one per sequence (noisier; exact when untruncated, above)
    eps_low: float = 0.2  # ppo_clip: lower clip of the ratio, 1 - eps_low
    eps_high: float = 0.2  # ppo_clip: upper clip, 1 + eps_high (DAPO clip-higher: 0.28)
    kl_coef: float = 0.0  # per-token KL penalty added to the loss, kl_coef * sg(w_t) k(lp_t - lp_ref_t)
    kl_estimator: str = "k3"  # k of that penalty (rl/kl.py): a per-position KL, see the module docstring
    dpg_alpha: float = 0.5  # alpha of alpha_dpg: 1 forward KL (DPG), -> 0 reverse KL (RL-like)

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"LossConfig.name={self.name!r}; allowed: {sorted(LOSSES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"LossConfig.aggregation={self.aggregation!r}; allowed: {AGGREGATIONS}")
        if self.aggregation == "seq-mean-token-sum" and self.max_len <= 0:
            raise ValueError(f"LossConfig.max_len={self.max_len}; seq-mean-token-sum needs max_len > 0")
        if self.is_level not in IS_LEVELS:
            raise ValueError(f"LossConfig.is_level={self.is_level!r}; allowed: {IS_LEVELS}")
        if not self.is_cap > 0:
            raise ValueError(f"LossConfig.is_cap={self.is_cap}; must be > 0 (math.inf disables truncation)")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(f"LossConfig.eps_low={self.eps_low}, eps_high={self.eps_high}; allowed: eps_low in "
                             "[0, 1) (the ratio's lower clip 1 - eps_low stays > 0), eps_high >= 0")
        if self.kl_coef < 0:
            raise ValueError(f"LossConfig.kl_coef={self.kl_coef}; must be >= 0")
        if self.kl_estimator not in kl.KL_ESTIMATORS:
            raise ValueError(f"LossConfig.kl_estimator={self.kl_estimator!r}; allowed: {sorted(kl.KL_ESTIMATORS)}")
        if self.dpg_alpha < 0:
            raise ValueError(f"LossConfig.dpg_alpha={self.dpg_alpha}; must be >= 0")


def _required(batch: LossInputs, name: str, loss: str) -> jax.Array:
    value = getattr(batch, name)
    if value is None:
        raise ValueError(f"loss {loss!r} needs LossInputs.{name}, which is None")
    return value


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


class Ratio(NamedTuple):
    """A metric that is a mean over groups rather than tokens: num / max(den, 1), den a count.

    Micro-batches add num and den apart, so the metric of a split batch is that of the whole batch."""

    num: jax.Array
    den: jax.Array

    def value(self) -> jax.Array:
        return self.num / jnp.maximum(self.den, 1)


def metric_values(metrics: dict) -> dict[str, jax.Array]:
    """The metrics with each `Ratio` replaced by its value."""
    return {k: v.value() if isinstance(v, Ratio) else v for k, v in metrics.items()}


def _is_metrics(truncated: jax.Array, weight: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    return {"is_weight_mean": _masked_mean(weight, mask), "is_truncated_frac": _masked_mean(truncated, mask)}


# --------------------------------------------------------------------------------------------------
# Registry.

Loss = Callable[[jax.Array, LossInputs, "LossConfig"], tuple[jax.Array, dict[str, jax.Array]]]
LOSSES: dict[str, Loss] = {}


# @register_loss(name): makes `fn(logprobs, batch, cfg) -> (per-token loss [N, T], metrics)` available by `name`.
register_loss = registrar(LOSSES, "loss")


MAX_LOG_WEIGHT = 80.0  # importance weights stop at e^80 even untruncated: float32 exp overflows past 88.7


def _importance_weights(log_ratio, mask, cfg):
    """(truncated, weight) [N, T], constants, from per-token log(pi / mu): per token, or with
    is_level = "sequence" the sequence's sum_t of them, on each of its tokens. Taken in log space, so a
    long sequence's ratio cannot overflow to inf (and inf * 0 advantages to NaN). `truncated` counts
    the weights held at e^80 too, so an untruncated run (is_cap = inf) reports when it is not exact."""
    log_ratio = jax.lax.stop_gradient(log_ratio)
    if cfg.is_level == "sequence":
        log_ratio = jnp.broadcast_to(jnp.sum(jnp.where(mask, log_ratio, 0.0), axis=-1, keepdims=True),
                                     log_ratio.shape)
    log_cap = min(math.log(cfg.is_cap), MAX_LOG_WEIGHT)
    return log_ratio > log_cap, jnp.exp(jnp.minimum(log_ratio, log_cap))


def _reinforce_terms(logprobs, batch, advantages, cfg):
    truncated, weight = _importance_weights(logprobs - batch.behaviour_logprobs, batch.mask, cfg)
    return -weight * advantages[:, None] * logprobs, _is_metrics(truncated, weight, batch.mask)


@register_loss("reinforce")
def reinforce(logprobs: jax.Array, batch: LossInputs, cfg: LossConfig):
    return _reinforce_terms(logprobs, batch, _required(batch, "advantages", "reinforce"), cfg)


@register_loss("ppo_clip")
def ppo_clip(logprobs: jax.Array, batch: LossInputs, cfg: LossConfig):
    advantages = _required(batch, "advantages", "ppo_clip")[:, None]
    old = batch.behaviour_logprobs if batch.old_logprobs is None else batch.old_logprobs
    truncated, weight = _importance_weights(old - batch.behaviour_logprobs, batch.mask, cfg)
    rho = jnp.exp(jnp.minimum(logprobs - old, MAX_LOG_WEIGHT))  # inf * A < 0 would make the loss inf
    unclipped = rho * advantages
    clipped = jnp.clip(rho, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * advantages
    metrics = _is_metrics(truncated, weight, batch.mask)
    metrics["clip_frac"] = _masked_mean(clipped < unclipped, batch.mask)
    metrics["ratio_mean"] = _masked_mean(rho, batch.mask)
    return -weight * jnp.minimum(unclipped, clipped), metrics


def alpha_dpg_advantages(policy_seq_logprobs: jax.Array, ref_seq_logprobs: jax.Array, correct: jax.Array,
                         group_size: int, alpha: float) -> jax.Array:
    """Self-normalized alpha-DPG weights minus their group mean, [N] (Kruszewski et al. 2026).

    Target: the filtered model p*(y) = p_ref(y) r(y) / Z (r = correct >= 0; r in {0, 1} keeps exactly the
    correct completions). Amari alpha-divergence and its gradient, for y ~ pi:

      D_alpha(p* || pi) = (sum_y p*(y)^alpha pi(y)^(1-alpha) - 1) / (alpha (alpha - 1))
      grad D_alpha      = -(1/alpha) E_pi[(p*(y) / pi(y))^alpha grad log pi(y)]

    limits: alpha -> 1 gives KL(p* || pi) (forward, mass covering: DPG); alpha -> 0 gives KL(pi || p*)
    (reverse, mode seeking, the RL objective). Z^-alpha / alpha is a positive constant, so per group of
    G samples with log w_i = alpha (log r_i + S_ref_i - S_pi_i) (w_i = 0 where r_i = 0):

      w^_i = G w_i / sum_j w_j   (mean 1 over the group),   A_i = w^_i - 1   (group-mean baseline)

    and E[A grad log pi] -> E_pi[w grad log pi] / E_pi[w] = -alpha Z^alpha grad D_alpha / E_pi[w] as G
    grows (consistent; O(1/G) bias from self-normalization and from the baseline). alpha = 0 gives
    w_i = 1[r_i > 0] (r^0), so w^_i = 1[r_i > 0] / mean_g(1[r > 0]) whatever the reward's scale: for
    r in {0, 1}, REINFORCE on r scaled by the inverse group success rate; alpha = 1 gives
    DPG's importance weights p_ref(y) / pi(y) on correct samples. A group without a correct sample gets
    A = 0. Large alpha on long sequences concentrates w^ on one sample (watch the 'dpg_ess' metric).
    """
    r = correct.astype(jnp.float32).reshape(-1, group_size)
    log_w = alpha * (jnp.log(jnp.maximum(r, 1e-30)) + (ref_seq_logprobs - policy_seq_logprobs).reshape(-1, group_size))
    has_target = jnp.any(r > 0, axis=1, keepdims=True)
    log_w = jnp.where(r > 0, log_w, -jnp.inf)
    w = group_size * jax.nn.softmax(jnp.where(has_target, log_w, 0.0), axis=-1)
    return jnp.where(has_target, w - 1.0, 0.0).reshape(-1)


@register_loss("alpha_dpg")
def alpha_dpg(logprobs: jax.Array, batch: LossInputs, cfg: LossConfig):
    mask = batch.mask
    ref = _required(batch, "ref_logprobs", "alpha_dpg")
    correct = _required(batch, "correct", "alpha_dpg")
    n = mask.shape[0]
    if batch.group_size < 2:  # one sample's self-normalized weight is 1: A = 0, a zero gradient
        raise ValueError(f"alpha_dpg needs LossInputs.group_size >= 2 (the G samples of a prompt), "
                         f"got {batch.group_size}")
    if n % batch.group_size:
        raise ValueError(f"alpha_dpg needs whole groups: LossInputs.group_size={batch.group_size} must divide N={n}")
    s_pi = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(logprobs), 0.0), axis=-1)
    s_ref = jnp.sum(jnp.where(mask, ref, 0.0), axis=-1)
    advantages = alpha_dpg_advantages(s_pi, s_ref, correct, batch.group_size, cfg.dpg_alpha)
    token_loss, metrics = _reinforce_terms(logprobs, batch, advantages, cfg)
    w = (advantages + 1.0).reshape(-1, batch.group_size)
    ess = jnp.square(jnp.sum(w, axis=1)) / jnp.maximum(jnp.sum(jnp.square(w), axis=1), 1e-30) / batch.group_size
    has_target = jnp.any(correct.reshape(-1, batch.group_size) > 0, axis=1)
    groups_with_target = jnp.sum(has_target).astype(jnp.float32)
    # ESS / G over the groups that have a target (others have no weights), and how many groups do
    metrics["dpg_ess"] = Ratio(jnp.sum(jnp.where(has_target, ess, 0.0)), groups_with_target)
    metrics["dpg_target_groups"] = Ratio(groups_with_target, jnp.float32(has_target.shape[0]))
    return token_loss, metrics


# --------------------------------------------------------------------------------------------------
# Entry point.


def aggregate(token_values: jax.Array, mask: jax.Array, mode: str, *, max_len: int = 0,
              denominator: jax.Array | float | None = None) -> jax.Array:
    """Scalar from per-token values [N, T] by `mode` (AGGREGATIONS; formulas in the module docstring)."""
    mask = mask.astype(bool)
    per_token = jnp.where(mask, token_values, 0.0)
    lengths = jnp.sum(mask, axis=-1)
    if mode == "token-mean":
        total, count = jnp.sum(per_token), jnp.sum(lengths)
    elif mode == "seq-mean-token-sum":
        if max_len <= 0:
            raise ValueError(f"seq-mean-token-sum needs max_len > 0, got {max_len}")
        total, count = jnp.sum(per_token) / max_len, jnp.sum(lengths > 0)
    elif mode == "seq-mean-token-mean":
        total = jnp.sum(jnp.sum(per_token, axis=-1) / jnp.maximum(lengths, 1))
        count = jnp.sum(lengths > 0)
    else:
        raise ValueError(f"aggregation={mode!r}; allowed: {AGGREGATIONS}")
    if denominator is None:
        denominator = jnp.maximum(count, 1)
    return total / denominator


def policy_loss(logprobs: jax.Array, batch: LossInputs, cfg: LossConfig, *,
                denominator: jax.Array | float | None = None, ratio_parts: bool = False
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss to minimize, metrics) for current log-probs [N, T] of the sampled tokens.

    Positions outside `batch.mask` may hold anything finite or not; they are zeroed before use.
    Metrics are token means, except group means, which are returned as `Ratio`s with
    `ratio_parts=True` (for micro-batch accumulation) and as their values otherwise.
    Jittable with cfg static: jax.jit(policy_loss, static_argnames="cfg").
    """
    mask = batch.mask.astype(bool)
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs shape {logprobs.shape} != LossInputs.mask shape {mask.shape}")

    def clean(x):
        return None if x is None else jnp.where(mask, x.astype(jnp.float32), 0.0)

    batch = dataclasses.replace(batch, mask=mask, behaviour_logprobs=clean(batch.behaviour_logprobs),
                                old_logprobs=clean(batch.old_logprobs), ref_logprobs=clean(batch.ref_logprobs))
    logprobs = clean(logprobs)
    token_loss, metrics = LOSSES[cfg.name](logprobs, batch, cfg)
    metrics["policy_loss"] = aggregate(token_loss, mask, cfg.aggregation, max_len=cfg.max_len,
                                       denominator=denominator)
    if cfg.kl_coef > 0:
        _, weight = _importance_weights(logprobs - batch.behaviour_logprobs, mask, cfg)
        token_kl = weight * kl.token_kl(
            logprobs, _required(batch, "ref_logprobs", f"{cfg.name} with kl_coef > 0"), cfg.kl_estimator)
        metrics["kl"] = _masked_mean(jax.lax.stop_gradient(token_kl), mask)
        token_loss = token_loss + cfg.kl_coef * token_kl
    loss = aggregate(token_loss, mask, cfg.aggregation, max_len=cfg.max_len, denominator=denominator)
    return loss, (metrics if ratio_parts else metric_values(metrics))

