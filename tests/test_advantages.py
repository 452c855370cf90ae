"""Advantage estimators against brute-force loops, and their expected gradients by enumeration."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import advantages as adv

REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 2.0, -1.0, 0.25, 0.25, 0.7, 0.7, 0.7, 0.7], np.float32)
G = 4


def compute(name, rewards=REWARDS, group_size=G, **kw):
    return np.asarray(adv.compute_advantages(jnp.asarray(rewards), group_size,
                                             adv.AdvantageConfig(estimator=name, **kw)))


def test_rloo_brute_force():
    expected = []
    for i, r in enumerate(REWARDS):
        g = i // G
        others = [REWARDS[j] for j in range(g * G, g * G + G) if j != i]
        expected.append(r - sum(others) / len(others))
    np.testing.assert_allclose(compute("rloo"), expected, rtol=1e-6, atol=1e-7)


def test_grpo_and_dr_grpo_brute_force():
    groups = REWARDS.reshape(-1, G).astype(np.float64)
    centered = groups - groups.mean(1, keepdims=True)
    np.testing.assert_allclose(compute("dr_grpo"), centered.reshape(-1), atol=1e-7)
    grpo = centered / (groups.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(compute("grpo"), grpo.reshape(-1), rtol=1e-5, atol=1e-6)
    # a group of equal rewards has zero advantages, not NaN
    np.testing.assert_array_equal(compute("grpo")[12:], 0.0)


def test_grpo_adds_eps_to_the_group_std():
    """Rewards 0 1 0 0: centered -1/4 3/4 -1/4 -1/4, std (ddof 1) 1/2; at eps = 1 the advantages are
    centered / 1.5 (an eps of 1e-6, the default, is below the other tests' tolerance)."""
    np.testing.assert_allclose(compute("grpo", np.array([0.0, 1.0, 0.0, 0.0], np.float32), eps=1.0),
                               [-1 / 6, 1 / 2, -1 / 6, -1 / 6], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(adv.ADVANTAGE_ESTIMATORS))
def test_equal_rewards_give_exactly_zero_advantages(name):
    """A collapsed policy's group (G identical completions, bit-identical rewards) carries no signal.

    The float32 mean of G copies of these values is off by an ulp (e.g. 12 x -147.28), which grpo
    would blow up to advantages of about +-0.9 without the shift by a group member.
    """
    for v in (-147.28, -123.29):  # one group: reinforce_pp's batch sees a single value too
        np.testing.assert_array_equal(compute(name, np.full(12, v, np.float32), 12), 0.0)
    if name == "reinforce_pp":  # whitens over the batch, not per group
        return
    values = np.float32(-np.random.default_rng(0).uniform(5.0, 200.0, 40))
    for group_size in (2, 3, 5, 6, 7, 8, 12, 16):
        rewards = np.repeat(values, group_size)
        np.testing.assert_array_equal(compute(name, rewards, group_size), 0.0,
                                      err_msg=f"{name}, G = {group_size}")


def test_batch_whitening_refuses_a_single_sample():
    with pytest.raises(ValueError, match="reinforce_pp needs at least 2 samples"):
        compute("reinforce_pp", np.array([0.7], np.float32), 1)


@pytest.mark.parametrize("name", sorted(adv.ADVANTAGE_ESTIMATORS))
def test_registered_flags_match_what_each_estimator_does(name):
    """group_baseline: refuses groups of one (a sample that is its own baseline has A = 0, and a run
    would train on nothing); group_std: a group's advantages ignore a rescaling of its rewards alone.
    The config check and the reward-weights warning read these flags, so they must be true."""
    assert adv.GROUP_BASELINE_ESTIMATORS >= adv.GROUP_STD_ESTIMATORS
    if name in adv.GROUP_BASELINE_ESTIMATORS:
        with pytest.raises(ValueError, match=f"{name} needs group_size >= 2"):
            compute(name, REWARDS, 1)
    else:
        assert np.all(np.isfinite(compute(name, REWARDS, 1)))
    scaled = REWARDS.copy()
    scaled[4:8] *= 3.0
    unchanged = np.allclose(compute(name, scaled)[4:8], compute(name)[4:8], rtol=1e-5)
    assert unchanged == (name in adv.GROUP_STD_ESTIMATORS)


def test_register_estimator_declares_its_baseline():
    def half(rewards, group_size, cfg):
        return rewards / 2

    with pytest.raises(TypeError, match="group_baseline"):
        adv.register_estimator("half_test")(half)
    try:
        adv.register_estimator("half_test", group_baseline=False)(half)
        assert "half_test" not in adv.GROUP_BASELINE_ESTIMATORS | adv.GROUP_STD_ESTIMATORS
        np.testing.assert_allclose(compute("half_test"), REWARDS / 2)
    finally:
        del adv.ADVANTAGE_ESTIMATORS["half_test"]


@pytest.mark.parametrize("name", ["grpo", "reinforce_pp", "reinforce_pp_baseline"])
def test_no_eps_still_gives_zero_advantages_to_equal_rewards(name):
    """eps = 0 is allowed: a group (or batch) of equal rewards has std 0 and gets A = 0, not 0 / 0."""
    rewards = np.array([1, 1, 1, 1, 0, 1, 0, 1], np.float32) if name != "reinforce_pp" else np.ones(8, np.float32)
    a = compute(name, rewards, eps=0.0)
    assert np.all(np.isfinite(a)), a
    if name == "grpo":
        np.testing.assert_array_equal(a[:4], 0.0)
        np.testing.assert_allclose(a[4:], [-0.866025, 0.866025, -0.866025, 0.866025], rtol=1e-5)
    else:
        np.testing.assert_array_equal(a if name == "reinforce_pp" else a[:4], 0.0)


def test_reinforce_pp_normalizes_over_the_whole_batch():
    r = REWARDS.astype(np.float64)
    np.testing.assert_allclose(compute("reinforce_pp", eps=0.0), (r - r.mean()) / r.std(ddof=1), rtol=1e-5)
    centered = (r.reshape(-1, G) - r.reshape(-1, G).mean(1, keepdims=True)).reshape(-1)
    np.testing.assert_allclose(compute("reinforce_pp_baseline", eps=0.0), centered / centered.std(ddof=1),
                               rtol=1e-5, atol=1e-6)


def test_expected_gradient_by_enumerating_every_group():
    """E over all K^G groups of (1/G) sum_i A_i grad log pi(y_i): RLOO is exact, Dr.GRPO is (G-1)/G of it."""
    k, g = 3, 3
    theta = np.array([0.2, -0.7, 0.5])
    reward_of = np.array([1.0, 0.0, 2.5])
    pi = np.exp(theta) / np.exp(theta).sum()
    score = np.eye(k) - pi  # score[y] = grad_theta log softmax(theta)[y]
    true_gradient = score.T @ (pi * reward_of)  # grad E_pi[R] = sum_y pi(y) R(y) grad log pi(y)
    groups = np.array(list(itertools.product(range(k), repeat=g)))  # [K^G, G]
    prob = pi[groups].prod(1)
    for name, factor in [("rloo", 1.0), ("dr_grpo", (g - 1) / g)]:
        a = compute(name, reward_of[groups].reshape(-1).astype(np.float32), g).reshape(-1, g)
        per_group = np.einsum("ng,ngd->nd", a, score[groups]) / g
        np.testing.assert_allclose(prob @ per_group, factor * true_gradient, rtol=1e-5, atol=1e-7, err_msg=name)


def test_inverse_success_scales_positive_advantages_only():
    rewards = np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)  # correct = rewards; G = 4
    base = compute("rloo", rewards)
    for a in (0.0, 0.5, 2.0):
        scaled = np.asarray(adv.compute_advantages(
            jnp.asarray(rewards), 4, adv.AdvantageConfig("rloo", inverse_success_exponent=a), correct=rewards))
        # group 1: 3 correct -> (4 - 3)^a = 1; group 2: 1 correct -> 3^a on its one positive advantage
        expected = base.copy()
        expected[4] *= 3.0 ** a
        np.testing.assert_allclose(scaled, expected, rtol=1e-6)
    assert base[4] > 0 and np.all(base[5:] < 0)


def test_inverse_success_on_all_correct_group_zeroes_positive_advantages():
    rewards = np.array([1.0, 0.5, 0.2, 0.9], np.float32)  # mixture rewards, all four correct
    cfg = adv.AdvantageConfig("dr_grpo", inverse_success_exponent=1.0)
    scaled = adv.compute_advantages(jnp.asarray(rewards), 4, cfg, correct=jnp.ones(4))
    base = compute("dr_grpo", rewards)
    np.testing.assert_allclose(scaled, np.where(base > 0, 0.0, base), atol=1e-7)


def test_errors():
    with pytest.raises(ValueError, match="estimator='ppo'; allowed: .*'rloo'"):
        adv.AdvantageConfig(estimator="ppo")
    with pytest.raises(ValueError, match="multiple of group_size=6"):
        compute("rloo", group_size=6)
    with pytest.raises(ValueError, match="needs `correct`"):
        adv.compute_advantages(jnp.asarray(REWARDS), G, adv.AdvantageConfig(inverse_success_exponent=1.0))
    with pytest.raises(ValueError, match="inverse_success_exponent=-1"):
        adv.AdvantageConfig(inverse_success_exponent=-1.0)
