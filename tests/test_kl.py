"""KL estimators: exact expectations and expected gradients on a categorical and on a two-step
autoregressive model, by enumeration."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import kl, losses

THETA = jnp.array([0.3, -1.2, 0.8, 0.0, -0.4])  # policy logits
REF = jax.nn.log_softmax(jnp.array([1.0, 0.2, -0.5, 0.3, -1.0]))


def reverse_kl(theta):
    logpi = jax.nn.log_softmax(theta)
    return jnp.sum(jnp.exp(logpi) * (logpi - REF))


def forward_kl(theta):
    logpi = jax.nn.log_softmax(theta)
    return jnp.sum(jnp.exp(REF) * (REF - logpi))


def expectation(theta, per_outcome):
    return jnp.sum(jax.nn.softmax(theta) * per_outcome)


def test_estimator_values():
    d = jnp.array([-1.0, 0.0, 0.5])
    np.testing.assert_allclose(kl.token_kl(d, 0.0 * d, "k1"), [-1.0, 0.0, 0.5])
    np.testing.assert_allclose(kl.token_kl(d, 0.0 * d, "k2"), [0.5, 0.0, 0.125])
    np.testing.assert_allclose(kl.token_kl(d, 0.0 * d, "k3"), np.exp([1.0, 0.0, -0.5]) - 1 + np.array(d),
                               rtol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(estimator):
    logpi = jax.nn.log_softmax(THETA)
    value = expectation(THETA, kl.token_kl(logpi, REF, estimator))
    np.testing.assert_allclose(value, reverse_kl(THETA), rtol=1e-6)


def test_k2_is_biased_but_nonnegative():
    logpi = jax.nn.log_softmax(THETA)
    k2 = kl.token_kl(logpi, REF, "k2")
    assert float(jnp.min(k2)) >= 0
    assert abs(float(expectation(THETA, k2) - reverse_kl(THETA))) > 1e-2


def _in_loss_gradient(estimator):
    """E_{y~pi}[grad_theta k(log pi(y) - log ref(y))] with the samples y held fixed."""
    weights = jax.lax.stop_gradient(jax.nn.softmax(THETA))
    return jax.jit(jax.grad(lambda th: jnp.sum(weights * kl.token_kl(jax.nn.log_softmax(th), REF, estimator))))(THETA)


def _in_reward_gradient(estimator):
    """E_{y~pi}[k(y) grad log pi(y)] with k a stop-gradient reward (score function)."""
    weights = jax.lax.stop_gradient(jax.nn.softmax(THETA) * kl.token_kl(jax.nn.log_softmax(THETA), REF, estimator))
    return jax.jit(jax.grad(lambda th: jnp.sum(weights * jax.nn.log_softmax(th))))(THETA)


def test_gradients_depend_on_where_the_estimator_is_used():
    g_reverse, g_forward = jax.jit(jax.grad(reverse_kl))(THETA), jax.jit(jax.grad(forward_kl))(THETA)
    assert float(jnp.max(jnp.abs(g_reverse - g_forward))) > 0.05
    np.testing.assert_allclose(_in_reward_gradient("k1"), g_reverse, atol=1e-6)
    np.testing.assert_allclose(_in_loss_gradient("k1"), 0.0, atol=1e-6)
    np.testing.assert_allclose(_in_loss_gradient("k2"), g_reverse, atol=1e-6)
    np.testing.assert_allclose(_in_loss_gradient("k3"), g_forward, atol=1e-6)
    assert float(jnp.max(jnp.abs(_in_reward_gradient("k3") - g_reverse))) > 1e-2


def test_sequence_kl_sums_masked_tokens_only():
    logprobs = jnp.array([[-0.5, -1.0, jnp.nan], [-0.2, -0.1, -0.3]])
    ref = jnp.array([[-1.0, -0.5, -jnp.inf], [-0.2, -0.6, -0.1]])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(kl.sequence_kl(logprobs, ref, mask, "k1"), [0.0, 0.3], atol=1e-6)
    k3 = lambda d: np.exp(-d) - 1 + d  # noqa: E731
    np.testing.assert_allclose(kl.sequence_kl(logprobs, ref, mask, "k3"),
                               [k3(0.5) + k3(-0.5), k3(0.0) + k3(0.5) + k3(-0.2)], rtol=1e-5)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator='k5'; allowed: \\['k1', 'k2', 'k3'\\]"):
        kl.token_kl(jnp.zeros(2), jnp.zeros(2), "k5")


# A two-step autoregressive model over 3 tokens: pi(a) pi(b | a), every sequence (a, b) enumerated.
STEP_THETA = (jnp.array([0.4, -0.9, 0.2]), jnp.array([[0.5, -0.3, 1.1], [-1.0, 0.6, 0.0], [0.2, 0.9, -0.7]]))
STEP_REF = (jnp.array([1.0, 0.1, -0.6]), jnp.array([[0.0, 0.8, -0.4], [0.3, -0.5, 0.9], [-0.2, 0.0, 0.4]]))
SEQUENCES = [(a, b) for a in range(3) for b in range(3)]


def _step_logprobs(theta, temperature=1.0):
    first, second = theta
    return jax.nn.log_softmax(first / temperature), jax.nn.log_softmax(second / temperature, axis=-1)


def _sequence_logprobs(logprobs, a, b):
    return jnp.stack([logprobs[0][a], logprobs[1][a, b]])


def _per_position_kl(theta, prefix_weights, forward):
    """sum_u P(u) KL at prefix u: the empty prefix (P = 1) and each first token a (P = prefix_weights[a])."""
    (pi0, pi1), (ref0, ref1) = _step_logprobs(theta), _step_logprobs(STEP_REF)
    if forward:
        pi0, ref0, pi1, ref1 = ref0, pi0, ref1, pi1
    kl0 = jnp.sum(jnp.exp(pi0) * (pi0 - ref0))
    kl1 = jnp.sum(jnp.exp(pi1) * (pi1 - ref1), axis=-1)
    return kl0 + jnp.sum(prefix_weights * kl1)


@pytest.mark.parametrize("is_level", ["token", "sequence"])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_loss_kl_penalty_off_policy_follows_the_per_position_kl(estimator, is_level):
    """Samples from mu = pi at temperature 0.6. The penalty's exact expected gradient, divided by
    max_len = 2, is that of sum_u P(u) KL_u: P = mu's prefix distribution with per-token weights, pi's
    with the sequence weight; reverse KL for k2, forward for k3, zero for k1. Without the weight
    (the samples taken for pi's own) it is none of these."""
    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=2, is_cap=math.inf,
                            is_level=is_level, kl_coef=1.0, kl_estimator=estimator)
    mu = _step_logprobs(STEP_THETA, temperature=0.6)
    ref = _step_logprobs(STEP_REF)

    def expected_gradient(behaviour_is_pi):
        def loss(theta, a, b):
            lp = _sequence_logprobs(_step_logprobs(theta), a, b)[None]
            behaviour = jax.lax.stop_gradient(lp) if behaviour_is_pi else _sequence_logprobs(mu, a, b)[None]
            inputs = losses.LossInputs(mask=jnp.ones((1, 2)), behaviour_logprobs=behaviour,
                                       advantages=jnp.zeros(1), ref_logprobs=_sequence_logprobs(ref, a, b)[None])
            return losses.policy_loss(lp, inputs, cfg)[0]

        grad = jax.jit(jax.grad(loss))
        total = jax.tree.map(jnp.zeros_like, STEP_THETA)
        for a, b in SEQUENCES:
            weight = jnp.exp(jnp.sum(_sequence_logprobs(mu, a, b)))
            total = jax.tree.map(lambda t, g: t + weight * g, total, grad(STEP_THETA, a, b))
        return jnp.concatenate([x.ravel() for x in total])

    prefixes = jnp.exp(mu[0]) if is_level == "token" else jax.nn.softmax(STEP_THETA[0])
    target = jax.grad(lambda th: _per_position_kl(th, prefixes, forward=estimator == "k3") / 2)(STEP_THETA)
    target = jnp.concatenate([x.ravel() for x in target]) * (estimator != "k1")
    np.testing.assert_allclose(expected_gradient(behaviour_is_pi=False), target, atol=2e-6)
    unweighted = expected_gradient(behaviour_is_pi=True)
    assert float(jnp.max(jnp.abs(unweighted - target))) > 1e-2
