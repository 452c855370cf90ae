"""Per-sample rewards: a weighted mixture of named components (Mittal, Gagnon, Lajoie 2026).

One objective, max_pi E_pi[R(y)] - beta KL(pi || p_ref), covers four regimes. The sampling mode
carries the KL term inside R, with weight beta = 1 / beta_inv for beta_inv > 0 and 1 (R unscaled)
for beta_inv = 0; the optimization mode has none (beta = 0, unless `kl_coef` adds one, below). For a
completion y with generated-token mask m_t (EOS included) and L = sum_t m_t:

  S_ref = sum_t m_t log p_ref(y_t | x, y_<t)      S_pi = sum_t m_t log pi(y_t | x, y_<t)  (temperature 1)
  N(y)  = 0 | S_ref | S_ref / L | S_ref / L^w      normalization = none | sum | mean | weighted_mean

The 'paper' mixture (`paper_weights`), with r in {0, 1} the verified correctness:

  mode          beta_inv  R(y)                                             optimum (N = S_ref)
  optimization  0         alpha N                                          delta at argmax_y N(y)
  optimization  > 0       r + (alpha / beta_inv) N                         delta at argmax_y [beta_inv r + alpha N]
  sampling      0         (alpha - 1) N + S_ref - S_pi                     pi* ∝ p_ref^alpha
  sampling      > 0       r + ((alpha - 1) N + S_ref - S_pi) / beta_inv    pi* ∝ p_ref^alpha e^{beta_inv r}

Optimization mode has no entropy term: E_pi[R] is linear in pi and is maximized by a point mass on
argmax R. Sampling mode carries the KL inside the reward: S_ref - S_pi is a one-sample (k1) estimate
of -KL(pi || p_ref), and with R treated as a constant its policy gradient is exact (with an unbiased
advantage and a constant loss normalizer, `LossConfig.aggregation="seq-mean-token-sum"`), so (s = beta_inv,
or 1 when beta_inv = 0)
  s E_pi[R] = E_pi[beta_inv r + (alpha - 1) N] - KL(pi || p_ref) = log Z - KL(pi || pi*),
  pi* = p_ref e^{(alpha - 1) N + beta_inv r} / Z,   = p_ref^alpha e^{beta_inv r} / Z for N = S_ref.
The four regimes of the paper (`regime_preset`):
  task_reward       optimization, alpha = 0, beta_inv = 1:  R = r; any pi supported on correct answers
  sharpening        optimization, alpha = 1, beta_inv = 0:  R = S_ref; the mode of p_ref
                    (N = S_ref / L instead gives the completion with the best mean token log-prob)
  tempered_a{a}     sampling, beta_inv = 0:                 pi* ∝ p_ref^a (sequence level, not per-token temperature)
  tilted_a{a}_b{b}  sampling, beta_inv = b:                 pi* ∝ p_ref^a e^{b r}
`kl_coef` > 0 subtracts kl_coef * sum_t k(d_t) (rl/kl.py) from R; with k1 and R = r this gives
pi* ∝ p_ref e^{r / kl_coef}.

More components (register one with `@register_component(name, needs=...)`; weight it with `extra`):
  neg_entropy     -(1/L) sum_t m_t H(pi(. | x, y_<t))                         low entropy along the sampled path
  self_certainty  (1/L) sum_t m_t KL(U || pi(. | x, y_<t))                    Zhao et al. 2025 (Intuitor)
                  = (1/L) sum_t m_t [logsumexp(z_t) - mean(z_t) - log V]
  majority_vote   1[answer_id = majority answer id of the group]              Zuo et al. 2025 (TTRL)
  format          1[an answer was extracted]
As rewards, neg_entropy and self_certainty get the score-function gradient only (R held constant),
not their pathwise gradient: the update favours samples along which pi is confident, which is not
the gradient of E_pi[-H] (as in Intuitor and RENT).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from rl_sharpen.rl import kl
from rl_sharpen.rl.registry import registrar

MODES = ("optimization", "sampling")
NORMALIZATIONS = ("none", "sum", "mean", "weighted_mean")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RewardInputs:
    """Arrays for one rollout batch of N = num_prompts * group_size completions, padded to T tokens.

    Rows n*G .. n*G+G-1 answer the same prompt. Optional fields are needed only by the components
    that read them; a missing one raises an error naming it.
    """

    completion_mask: jax.Array  # [N, T] 1 on generated tokens (EOS included), 0 on padding
    correct: jax.Array  # [N] f32 verified task reward r in {0, 1}, computed on host
    answer_ids: jax.Array  # [N] int32 hash of the extracted normalized answer, -1 if none
    ref_logprobs: jax.Array | None = None  # [N, T] f32 log p_ref(y_t | x, y_<t)
    policy_logprobs: jax.Array | None = None  # [N, T] f32 log pi(y_t | x, y_<t), temperature 1, at rollout
    token_entropy: jax.Array | None = None  # [N, T] f32 H(pi(. | x, y_<t)) (`token_statistics`)
    logit_lse: jax.Array | None = None  # [N, T] f32 logsumexp_j z_tj of the temperature-1 logits
    logit_mean: jax.Array | None = None  # [N, T] f32 (1/V) sum_j z_tj
    group_size: int = dataclasses.field(default=1, metadata=dict(static=True))
    vocab_size: int = dataclasses.field(default=0, metadata=dict(static=True))  # V: width of those logits


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """R = sum_k weight_k * component_k - kl_coef * sum_t k(d_t); weights = paper_weights + extra."""

    mode: str = "optimization"  # one of MODES
    alpha: float = 0.0  # weight of the sharpening term S_ref (the tempered / tilted exponent); see MODES
    beta_inv: float = 1.0  # 1 / beta; 0 drops the task reward and the 1/beta_inv scaling
    normalization: str = "sum"  # one of NORMALIZATIONS
    length_exponent: float = 1.0  # w of weighted_mean: N = S_ref / L^w
    extra: tuple[tuple[str, float], ...] = ()  # more components: ((name, weight), ...); built in Python, also a dict
    kl_coef: float = 0.0  # KL penalty folded into the sequence reward: R -= kl_coef * sum_t k(d_t)
    kl_estimator: str = "k1"  # k of that penalty (rl/kl.py); k1: the policy gradient of -kl_coef KL(pi || p_ref)

    def __post_init__(self):
        if isinstance(self.extra, Mapping):
            object.__setattr__(self, "extra", tuple(self.extra.items()))
        object.__setattr__(self, "extra", tuple((str(n), float(w)) for n, w in self.extra))
        if self.mode not in MODES:
            raise ValueError(f"RewardConfig.mode={self.mode!r}; allowed: {MODES}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"RewardConfig.normalization={self.normalization!r}; allowed: {NORMALIZATIONS}")
        if self.length_exponent != 1.0 and self.normalization != "weighted_mean":
            raise ValueError(f"RewardConfig.length_exponent={self.length_exponent} is used only with "
                             f"normalization='weighted_mean' (got {self.normalization!r}); allowed: "
                             "normalization='weighted_mean', or length_exponent=1.0")
        if self.beta_inv < 0:
            raise ValueError(f"RewardConfig.beta_inv={self.beta_inv}; must be >= 0")
        if self.kl_coef < 0:
            raise ValueError(f"RewardConfig.kl_coef={self.kl_coef}; must be >= 0")
        if self.kl_estimator not in kl.KL_ESTIMATORS:
            raise ValueError(f"RewardConfig.kl_estimator={self.kl_estimator!r}; allowed: {sorted(kl.KL_ESTIMATORS)}")
        for name, _ in self.extra:
            if name not in REWARD_COMPONENTS:
                raise ValueError(f"RewardConfig.extra names {name!r}; registered: {sorted(REWARD_COMPONENTS)}")
        weights = mixture_weights(self)
        if self.normalization == "none":
            weights.pop("sharpening", None)  # N = 0
            if self.mode == "sampling" and self.alpha != 1.0:  # the exponent acts through N alone: pi* = p_ref
                raise ValueError(f"RewardConfig.alpha={self.alpha} with normalization='none' in sampling mode has no "
                                 "effect (N = 0, so pi* ∝ p_ref e^{beta_inv r} whatever alpha); allowed: "
                                 "normalization 'sum', 'mean' or 'weighted_mean', or alpha=1.0")
        if not any(weights.values()) and self.kl_coef == 0:
            raise ValueError(f"RewardConfig(mode={self.mode!r}, alpha={self.alpha}, beta_inv={self.beta_inv}, "
                             f"normalization={self.normalization!r}, extra={self.extra}, kl_coef=0) gives R = 0 for "
                             "every sample; allowed: a nonzero term (alpha with a normalization other than 'none', "
                             "beta_inv > 0, an `extra` weight or kl_coef > 0)")
        if self.normalization == "none" and self.mode == "optimization" and self.alpha != 0.0:
            raise ValueError(f"RewardConfig.alpha={self.alpha} with normalization='none' in optimization mode has no "
                             "effect (N = 0, so R does not depend on alpha); allowed: normalization 'sum', 'mean' "
                             "or 'weighted_mean', or alpha=0.0")

    def replace(self, **kw) -> "RewardConfig":
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------------------------------
# Components: fn(inputs, cfg) -> [N] float32.

RewardComponent = Callable[[RewardInputs, RewardConfig], jax.Array]
REWARD_COMPONENTS: dict[str, RewardComponent] = {}


# The optional RewardInputs a rollout fills only when a weighted component declares it needs them
# (one more teacher-forced pass of the policy over the rollout: `Scorer.token_stats`).
TOKEN_STATISTICS = ("token_entropy", "logit_lse", "logit_mean")
COMPONENT_NEEDS: dict[str, tuple[str, ...]] = {}  # component name -> the TOKEN_STATISTICS it reads
_register = registrar(REWARD_COMPONENTS, "reward component")


def register_component(name: str, needs: tuple[str, ...] = ()):
    """@register_component(name, needs=(...)): makes `fn(inputs, cfg) -> [N]` available to RewardConfig
    by `name`. `needs` lists the TOKEN_STATISTICS it reads (the rollout computes them only then); the
    other RewardInputs fields are always filled."""
    if unknown := sorted(set(needs) - set(TOKEN_STATISTICS)):
        raise ValueError(f"register_component({name!r}, needs={needs}): {unknown} are not optional statistics; "
                         f"allowed: {TOKEN_STATISTICS} (the other RewardInputs fields are always filled)")

    def wrap(fn: RewardComponent) -> RewardComponent:
        _register(name)(fn)
        COMPONENT_NEEDS[name] = tuple(needs)
        return fn

    return wrap


def needs_token_statistics(cfg: RewardConfig) -> bool:
    """Whether a weighted component of `cfg` reads the policy's per-token statistics."""
    return any(COMPONENT_NEEDS.get(name) for name in mixture_weights(cfg))


def _field(inputs: RewardInputs, name: str, component: str) -> jax.Array:
    value = getattr(inputs, name)
    if value is None:
        hint = ""
        if name in TOKEN_STATISTICS:
            hint = ("; the caller fills it (the rollout does, for a component that declares it)"
                    if name in COMPONENT_NEEDS.get(component, ()) else
                    f"; declare it with @register_component({component!r}, needs=({name!r},)) (the rollout fills it)")
        raise ValueError(f"reward component {component!r} needs RewardInputs.{name}, which is None{hint}")
    return value.astype(jnp.float32)


def _mask(inputs: RewardInputs) -> jax.Array:
    return inputs.completion_mask.astype(bool)


def _masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0), axis=-1)


def completion_lengths(inputs: RewardInputs) -> jax.Array:
    """L = sum_t m_t -> [N] float32."""
    return jnp.sum(_mask(inputs), axis=-1).astype(jnp.float32)


def _masked_mean(values: jax.Array, inputs: RewardInputs) -> jax.Array:
    return _masked_sum(values, _mask(inputs)) / jnp.maximum(completion_lengths(inputs), 1.0)


@register_component("task")
def task_reward(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """r: the verifier's correctness."""
    return inputs.correct.astype(jnp.float32)


@register_component("sharpening")
def sharpening(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """N(y) = 0 | S_ref | S_ref / L | S_ref / L^w by cfg.normalization (L clamped to >= 1)."""
    if cfg.normalization == "none":
        return jnp.zeros(inputs.correct.shape, jnp.float32)
    s_ref = _masked_sum(_field(inputs, "ref_logprobs", "sharpening"), _mask(inputs))
    if cfg.normalization == "sum":
        return s_ref
    exponent = 1.0 if cfg.normalization == "mean" else cfg.length_exponent
    return s_ref / jnp.maximum(completion_lengths(inputs), 1.0) ** exponent


@register_component("log_ratio")
def log_ratio(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """S_ref - S_pi = log p_ref(y) / pi(y); E_pi of it is -KL(pi || p_ref)."""
    mask = _mask(inputs)
    ref = _field(inputs, "ref_logprobs", "log_ratio")
    policy = _field(inputs, "policy_logprobs", "log_ratio")
    return _masked_sum(ref - policy, mask)


@register_component("neg_entropy", needs=("token_entropy",))
def neg_entropy(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """-(1/L) sum_t m_t H_t: mean negative entropy of the policy's next-token distributions."""
    return -_masked_mean(_field(inputs, "token_entropy", "neg_entropy"), inputs)


@register_component("self_certainty", needs=("logit_lse", "logit_mean"))
def self_certainty(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """(1/L) sum_t m_t KL(U || pi_t), KL(U || softmax(z)) = logsumexp(z) - mean(z) - log V."""
    if inputs.vocab_size <= 0:
        raise ValueError(f"reward component 'self_certainty' needs RewardInputs.vocab_size > 0, "
                         f"got {inputs.vocab_size}")
    lse = _field(inputs, "logit_lse", "self_certainty")
    mean = _field(inputs, "logit_mean", "self_certainty")
    return _masked_mean(lse - mean - math.log(inputs.vocab_size), inputs)


@register_component("majority_vote")
def majority_vote(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """1 if answer_id equals the most frequent valid (>= 0) answer id of its group, else 0.

    Ties go to the answer that appears first in the group; invalid answers (-1) never score.
    """
    if inputs.group_size < 2:  # a sample is its own majority: every answered sample would score 1
        raise ValueError(f"majority_vote needs RewardInputs.group_size >= 2 (the G samples of a prompt), "
                         f"got {inputs.group_size}")
    ids = inputs.answer_ids.reshape(-1, inputs.group_size)
    valid = ids >= 0
    same = (ids[:, :, None] == ids[:, None, :]) & valid[:, None, :]
    counts = jnp.where(valid, jnp.sum(same, axis=-1), 0)
    majority = jnp.take_along_axis(ids, jnp.argmax(counts, axis=-1)[:, None], axis=-1)
    return ((ids == majority) & valid).astype(jnp.float32).reshape(-1)


@register_component("format")
def format_reward(inputs: RewardInputs, cfg: RewardConfig) -> jax.Array:
    """1 if an answer was extracted (answer_id >= 0)."""
    return (inputs.answer_ids >= 0).astype(jnp.float32)


# --------------------------------------------------------------------------------------------------
# Mixture.


def paper_weights(mode: str, alpha: float, beta_inv: float) -> dict[str, float]:
    """Weights on task (r), sharpening (N) and log_ratio (S_ref - S_pi) of the four formulas above."""
    if mode == "optimization":
        if beta_inv == 0:
            weights = {"sharpening": alpha}
        else:
            weights = {"task": 1.0, "sharpening": alpha / beta_inv}
    elif mode == "sampling":
        if beta_inv == 0:
            weights = {"sharpening": alpha - 1.0, "log_ratio": 1.0}
        else:
            weights = {"task": 1.0, "sharpening": (alpha - 1.0) / beta_inv, "log_ratio": 1.0 / beta_inv}
    else:
        raise ValueError(f"mode={mode!r}; allowed: {MODES}")
    return {name: float(w) for name, w in weights.items() if w != 0}


def mixture_weights(cfg: RewardConfig) -> dict[str, float]:
    """paper_weights(cfg) plus cfg.extra (weights of a repeated name add up)."""
    weights = paper_weights(cfg.mode, cfg.alpha, cfg.beta_inv)
    for name, w in cfg.extra:
        weights[name] = weights.get(name, 0.0) + w
    return weights


def _check_shapes(inputs: RewardInputs) -> None:
    if inputs.completion_mask.ndim != 2:
        raise ValueError(f"RewardInputs.completion_mask must be [N, T], got shape {inputs.completion_mask.shape}")
    n, t = inputs.completion_mask.shape
    for name in ("correct", "answer_ids"):
        if getattr(inputs, name).shape != (n,):
            raise ValueError(f"RewardInputs.{name} must have shape ({n},), got {getattr(inputs, name).shape}")
    for name in ("ref_logprobs", "policy_logprobs", "token_entropy", "logit_lse", "logit_mean"):
        value = getattr(inputs, name)
        if value is not None and value.shape != (n, t):
            raise ValueError(f"RewardInputs.{name} must have shape ({n}, {t}), got {value.shape}")
    if inputs.group_size < 1 or n % inputs.group_size:
        raise ValueError(f"RewardInputs.group_size={inputs.group_size} must be >= 1 and divide N={n}")


def compute_rewards(inputs: RewardInputs, cfg: RewardConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(R [N] float32, {component name: [N]} for every weighted component, plus 'kl' if kl_coef > 0).

    Jittable with cfg static: jax.jit(compute_rewards, static_argnames="cfg").
    """
    _check_shapes(inputs)
    weights = mixture_weights(cfg)
    values = {name: _one_per_completion(name, REWARD_COMPONENTS[name](inputs, cfg), inputs) for name in weights}
    total = jnp.zeros(inputs.correct.shape, jnp.float32)
    for name, w in weights.items():
        total = total + w * values[name]
    if cfg.kl_coef > 0:
        values["kl"] = kl.sequence_kl(_field(inputs, "policy_logprobs", "kl"), _field(inputs, "ref_logprobs", "kl"),
                                      inputs.completion_mask, cfg.kl_estimator)
        total = total - cfg.kl_coef * values["kl"]
    return total, values


def _one_per_completion(name: str, value: jax.Array, inputs: RewardInputs) -> jax.Array:
    """A component's value, checked to be [N]: an [N, 1] would broadcast the total reward to [N, N]."""
    if jnp.shape(value) != inputs.correct.shape:
        raise ValueError(f"reward component {name!r} returned shape {jnp.shape(value)}; allowed: "
                         f"{inputs.correct.shape}, one value per completion")
    return value


def check_components(cfg: RewardConfig, group_size: int, vocab_size: int) -> None:
    """Calls every weighted component of `cfg` on small inputs shaped like a rollout's (2 groups of 3
    tokens), so that one that reads a statistic the rollout does not compute for it, or returns the
    wrong shape, fails before a run spends its first evaluation, with an error naming it."""
    n, t = 2 * group_size, 3

    def rollout_like(with_statistics: bool) -> RewardInputs:
        def full(value):
            return jnp.full((n, t), value, jnp.float32)

        stats = {"token_entropy": full(1.0), "logit_lse": full(2.0), "logit_mean": full(0.5)}
        return RewardInputs(completion_mask=full(1.0), correct=jnp.arange(n, dtype=jnp.float32) % 2,
                            answer_ids=jnp.arange(n, dtype=jnp.int32) % 3, ref_logprobs=full(-1.0),
                            policy_logprobs=full(-1.5), group_size=group_size, vocab_size=vocab_size,
                            **(stats if with_statistics else {}))

    inputs = rollout_like(needs_token_statistics(cfg))
    for name in mixture_weights(cfg):
        try:
            value = REWARD_COMPONENTS[name](inputs, cfg)
        except Exception as e:  # noqa: BLE001 (whatever the component's own code raises)
            hint = ""
            if not COMPONENT_NEEDS.get(name):
                try:
                    REWARD_COMPONENTS[name](rollout_like(True), cfg)
                    hint = (f"; it reads per-token statistics, which the rollout computes only for a component "
                            f"registered with needs=(...) from {TOKEN_STATISTICS}")
                except Exception:  # noqa: BLE001
                    pass
            raise ValueError(f"reward component {name!r} fails on a rollout's inputs ({type(e).__name__}: {e})"
                             f"{hint}") from e
        _one_per_completion(name, value, inputs)


def token_statistics(logits: jax.Array) -> dict[str, jax.Array]:
    """Per-position 'token_entropy', 'logit_lse' and 'logit_mean' of temperature-1 logits [..., V], float32."""
    z = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1)
    # H = log s + sum_v e_v (m - z_v) / s with m = max z, e = exp(z - m), s = sum e: two sums of
    # non-negative terms, where lse - E_p[z] cancels on a peaked row (one logit 30 above 1000 standard
    # normal ones gave 0 instead of 2e-8). log s = log1p(s - 1), s - 1 summed without the max's 1s.
    gap = jnp.max(z, axis=-1, keepdims=True) - z
    e = jnp.exp(-gap)
    rest = jnp.sum(jnp.where(gap > 0, e, 0.0), axis=-1) + (jnp.sum(gap == 0, axis=-1) - 1)
    entropy = jnp.log1p(rest) + jnp.sum(jnp.where(e > 0, e * gap, 0.0), axis=-1) / (1.0 + rest)  # -inf logits: 0
    return {"token_entropy": entropy, "logit_lse": lse, "logit_mean": jnp.mean(z, axis=-1)}


# --------------------------------------------------------------------------------------------------
# Presets: the four regimes of the paper (N = S_ref throughout).

TEMPERED_ALPHAS = (0.5, 1.0, 1.25, 2.0, 4.0)
TILTED_BETA_INVS = (100.0, 10000.0)


def _presets() -> dict[str, RewardConfig]:
    presets = {
        "task_reward": RewardConfig(mode="optimization", alpha=0.0, beta_inv=1.0),
        "sharpening": RewardConfig(mode="optimization", alpha=1.0, beta_inv=0.0),
    }
    for a in TEMPERED_ALPHAS:
        presets[f"tempered_a{a:g}"] = RewardConfig(mode="sampling", alpha=a, beta_inv=0.0)
    for a in TEMPERED_ALPHAS:
        for b in TILTED_BETA_INVS:
            presets[f"tilted_a{a:g}_b{b:g}"] = RewardConfig(mode="sampling", alpha=a, beta_inv=b)
    return presets


REGIME_PRESETS: dict[str, RewardConfig] = _presets()
PRESET_NAMES: tuple[str, ...] = tuple(REGIME_PRESETS)


def regime_preset(name: str, **overrides) -> RewardConfig:
    """A paper regime by name, e.g. regime_preset("tilted_a2_b100", normalization="mean")."""
    if name not in REGIME_PRESETS:
        raise ValueError(f"reward preset {name!r}; allowed: {list(PRESET_NAMES)}")
    return REGIME_PRESETS[name].replace(**overrides)


def with_regime(cfg: RewardConfig, name: str) -> RewardConfig:
    """`cfg` moved to the regime `name`: the preset's (mode, alpha, beta_inv); the normalization N,
    `extra` components and KL penalty of `cfg` kept (e.g. every regime of a demo with N = S_ref / L)."""
    preset = regime_preset(name)
    return cfg.replace(mode=preset.mode, alpha=preset.alpha, beta_inv=preset.beta_inv)
