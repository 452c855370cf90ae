"""KL estimators: exact expectations and expected gradients on a categorical, by enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import kl

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
