"""Per-token estimators of KL(pi || p_ref) from the log-probs of sampled tokens.

With the log-ratio d_t = log pi(y_t | x, y_<t) - log p_ref(y_t | x, y_<t) of a token y_t ~ pi:

  k1 = d_t                          E_pi[k1] = KL(pi || p_ref)   unbiased, can be negative
  k2 = d_t^2 / 2                    E_pi[k2] = KL + O(d^3)       biased, >= 0
  k3 = exp(-d_t) - 1 + d_t          E_pi[k3] = KL(pi || p_ref)   unbiased, >= 0
     = p_ref/pi - 1 - log(p_ref/pi)

Which gradient an estimator produces depends on where it is used. For one categorical step
(y ~ pi, expectations exact; checked by tests/test_kl.py):

  in the reward, stop-gradient, sequence level (R -= beta * sum_t k_t, score-function gradient):
    k1:  E[k1 grad log pi] = grad KL(pi || p_ref)          the KL-regularized objective
    k3:  E[k3 grad log pi] != grad KL in general
  in the loss, token level (differentiated through log pi with the samples held fixed):
    k1:  E[grad k1] = E[grad log pi] = 0                    no regularization at all
    k2:  E[grad k2] = E[d grad log pi] = grad KL(pi || p_ref)
    k3:  E[grad k3] = E[(1 - p_ref/pi) grad log pi] = grad KL(p_ref || pi)   the forward KL

No clamping: k3 overflows float32 only for d < -88, i.e. a sampled token 1e38 times likelier
under p_ref than under pi.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

KLEstimator = Callable[[jax.Array], jax.Array]


def _k1(log_ratio: jax.Array) -> jax.Array:
    return log_ratio


def _k2(log_ratio: jax.Array) -> jax.Array:
    return 0.5 * jnp.square(log_ratio)


def _k3(log_ratio: jax.Array) -> jax.Array:
    return jnp.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": _k1, "k2": _k2, "k3": _k3}


def _estimator(name: str) -> KLEstimator:
    if name not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={name!r}; allowed: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]


def token_kl(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate k(d_t), d_t = logprobs - ref_logprobs, in float32; same shape as the inputs.

    Differentiable through `logprobs` (use it in the loss); padded positions are not masked here.
    """
    log_ratio = logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32)
    return _estimator(estimator)(log_ratio)


def sequence_kl(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
                estimator: str = "k1") -> jax.Array:
    """Sequence-level estimate sum_t m_t k(d_t) -> [N] (for the reward; k1 gives sum_t d_t = S_pi - S_ref)."""
    values = token_kl(logprobs, ref_logprobs, estimator)
    return jnp.sum(jnp.where(mask.astype(bool), values, 0.0), axis=-1)
