"""Reward formulas of the paper on hand-computed numbers, the extra components, presets and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import rewards

# Two completions; the second has 2 generated tokens and garbage in its padded slot.
REF = [[-1.0, -2.0, -0.5], [-0.2, -0.3, np.nan]]  # S_ref = [-3.5, -0.5], L = [3, 2]
POLICY = [[-0.5, -1.0, -0.25], [-0.1, -0.4, np.inf]]  # S_pi = [-1.75, -0.5]
MASK = [[1, 1, 1], [1, 1, 0]]
CORRECT = [1.0, 0.0]


def inputs(**kw):
    base = dict(completion_mask=jnp.array(MASK), correct=jnp.array(CORRECT), answer_ids=jnp.array([5, -1]),
                ref_logprobs=jnp.array(REF), policy_logprobs=jnp.array(POLICY), group_size=2)
    return rewards.RewardInputs(**{**base, **kw})


@pytest.mark.parametrize("cfg,expected", [
    # optimization, beta_inv = 0: alpha N
    (rewards.RewardConfig("optimization", alpha=2.0, beta_inv=0.0), [-7.0, -1.0]),
    (rewards.RewardConfig("optimization", alpha=0.0, beta_inv=0.0, normalization="none", kl_coef=1.0),
     [-1.75, 0.0]),  # only the KL penalty -(S_pi - S_ref)
    # optimization, beta_inv > 0: r + (alpha / beta_inv) N, N = mean
    (rewards.RewardConfig("optimization", alpha=2.0, beta_inv=100.0, normalization="mean"),
     [1.0 + 0.02 * (-3.5 / 3), 0.02 * (-0.25)]),
    # sampling, beta_inv = 0: (alpha - 1) N + S_ref - S_pi
    (rewards.RewardConfig("sampling", alpha=0.5, beta_inv=0.0), [-0.5 * -3.5 + (-3.5 + 1.75), -0.5 * -0.5 + 0.0]),
    # sampling, beta_inv > 0: r + ((alpha - 1) / beta_inv) N + (S_ref - S_pi) / beta_inv, N = S_ref / L^0.5
    (rewards.RewardConfig("sampling", alpha=4.0, beta_inv=10000.0, normalization="weighted_mean",
                          length_exponent=0.5),
     [1.0 + 3e-4 * (-3.5 / math.sqrt(3)) + (-3.5 + 1.75) / 1e4, 3e-4 * (-0.5 / math.sqrt(2)) + 0.0]),
    (rewards.RewardConfig("sampling", alpha=1.25, beta_inv=100.0, normalization="weighted_mean",
                          length_exponent=2.0),
     [1.0 + 0.0025 * (-3.5 / 9) + (-1.75) / 100, 0.0025 * (-0.5 / 4)]),
])
def test_paper_formulas_on_hand_computed_numbers(cfg, expected):
    total, _ = rewards.compute_rewards(inputs(), cfg)
    np.testing.assert_allclose(total, expected, rtol=1e-6, atol=1e-7)


def test_presets_reproduce_paper_formulas():
    r = np.array(CORRECT)
    s_ref, s_pi = np.array([-3.5, -0.5]), np.array([-1.75, -0.5])
    expected = {
        "task_reward": r,
        "sharpening": s_ref,
        "tempered_a2": 1.0 * s_ref + s_ref - s_pi,
        "tempered_a1": s_ref - s_pi,
        "tilted_a0.5_b100": r - 0.005 * s_ref + 0.01 * (s_ref - s_pi),
        "tilted_a4_b10000": r + 3e-4 * s_ref + 1e-4 * (s_ref - s_pi),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(rewards.compute_rewards(inputs(), rewards.regime_preset(name))[0], value,
                                   rtol=1e-6, atol=1e-7, err_msg=name)


def test_preset_names_and_fields():
    names = rewards.PRESET_NAMES
    assert len(names) == 2 + 5 + 10 and len(set(names)) == len(names)
    assert {"task_reward", "sharpening", "tempered_a0.5", "tempered_a1.25", "tempered_a4", "tilted_a2_b100",
            "tilted_a1.25_b10000"} <= set(names)
    cfg = rewards.regime_preset("tilted_a2_b100")
    assert (cfg.mode, cfg.alpha, cfg.beta_inv, cfg.normalization) == ("sampling", 2.0, 100.0, "sum")
    assert rewards.regime_preset("sharpening", normalization="mean").normalization == "mean"
    with pytest.raises(ValueError, match="tempered_a3.*allowed.*tempered_a2"):
        rewards.regime_preset("tempered_a3")


def test_paper_weights_table():
    assert rewards.paper_weights("optimization", 1.0, 0.0) == {"sharpening": 1.0}
    assert rewards.paper_weights("optimization", 0.0, 1.0) == {"task": 1.0}
    assert rewards.paper_weights("optimization", 3.0, 10.0) == {"task": 1.0, "sharpening": 0.3}
    assert rewards.paper_weights("sampling", 1.0, 0.0) == {"log_ratio": 1.0}
    assert rewards.paper_weights("sampling", 3.0, 10.0) == {"task": 1.0, "sharpening": 0.2, "log_ratio": 0.1}


def test_tilted_alpha_one_equals_task_reward_with_k1_kl_in_reward():
    tilted = rewards.compute_rewards(inputs(), rewards.RewardConfig("sampling", alpha=1.0, beta_inv=4.0))[0]
    task_kl, parts = rewards.compute_rewards(inputs(), rewards.regime_preset("task_reward", kl_coef=0.25))
    np.testing.assert_allclose(tilted, task_kl, rtol=1e-6)
    np.testing.assert_allclose(parts["kl"], [1.75, 0.0], atol=1e-7)  # S_pi - S_ref


def test_kl_in_reward_with_k3():
    total, parts = rewards.compute_rewards(inputs(), rewards.regime_preset("task_reward", kl_coef=0.5,
                                                                           kl_estimator="k3"))
    d = np.array(POLICY)[:, :2] - np.array(REF)[:, :2]
    k3 = np.exp(-d) - 1 + d
    expected_kl = [k3[0].sum() + (math.exp(-0.25) - 1 + 0.25), k3[1].sum()]
    np.testing.assert_allclose(parts["kl"], expected_kl, rtol=1e-6)
    np.testing.assert_allclose(total, np.array(CORRECT) - 0.5 * np.array(expected_kl), rtol=1e-6)


@pytest.mark.parametrize("normalization,length_exponent", [("mean", 1.0), ("weighted_mean", 0.5)])
def test_an_empty_completion_s_normalized_sharpening_is_zero_not_nan(normalization, length_exponent):
    """N = S_ref / max(L, 1)^w: a completion of no tokens (L = 0, S_ref = 0) scores 0."""
    cfg = rewards.RewardConfig("optimization", alpha=1.0, beta_inv=0.0, normalization=normalization,
                               length_exponent=length_exponent)
    total, _ = rewards.compute_rewards(inputs(completion_mask=jnp.array([[1, 1, 0], [0, 0, 0]])), cfg)
    np.testing.assert_allclose(total, [-3.0 / 2 ** length_exponent, 0.0], rtol=1e-6)


def test_compute_rewards_is_jittable_and_padding_does_not_leak():
    cfg = rewards.regime_preset("tilted_a2_b100", kl_coef=0.1)
    eager, eager_parts = rewards.compute_rewards(inputs(), cfg)
    jitted, jitted_parts = jax.jit(rewards.compute_rewards, static_argnames="cfg")(inputs(), cfg)
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    assert set(jitted_parts) == set(eager_parts) == {"task", "sharpening", "log_ratio", "kl"}


def test_majority_vote_ties_invalid_and_empty_groups():
    ids = jnp.array([7, 3, 7, -1, 3, 4, 4, 9, -1, -1, -1, -1, -1, -1, -1], jnp.int32)
    x = rewards.RewardInputs(completion_mask=jnp.ones((15, 1)), correct=jnp.zeros(15), answer_ids=ids, group_size=5)
    cfg = rewards.RewardConfig(alpha=0.0, beta_inv=0.0, extra={"majority_vote": 1.0, "format": 0.5})
    total, parts = jax.jit(rewards.compute_rewards, static_argnames="cfg")(x, cfg)
    # group 1: 7 and 3 tie at 2 votes, 7 appears first; group 2: 4 wins; group 3: no valid answer.
    np.testing.assert_array_equal(parts["majority_vote"], [1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(parts["format"], [1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(total, parts["majority_vote"] + 0.5 * parts["format"])
    alone = rewards.RewardInputs(completion_mask=jnp.ones((15, 1)), correct=jnp.zeros(15), answer_ids=ids)
    with pytest.raises(ValueError, match="majority_vote needs RewardInputs.group_size >= 2"):
        rewards.compute_rewards(alone, cfg)  # each sample its own majority: all answered samples would score 1


def test_entropy_of_peaked_rows_keeps_its_relative_precision():
    """A confident token's entropy is tiny; lse - E_p[z] in float32 cancels it to noise (or 0)."""
    z = np.random.default_rng(1).normal(size=(5, 1000))
    z[:, 7] += np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    z32 = z.astype(np.float32)
    p = np.exp(z32.astype(np.float64) - z32.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    exact = -(p * np.log(p)).sum(-1)  # down to 1e-13 for the peak of 40
    got = np.asarray(jax.jit(rewards.token_statistics)(jnp.asarray(z32))["token_entropy"], np.float64)
    np.testing.assert_allclose(got[:4], exact[:4], rtol=1e-5)
    np.testing.assert_allclose(got[4], exact[4], rtol=2e-3)  # float32 exp of gaps near 40
    ties = np.asarray(rewards.token_statistics(jnp.asarray([[2.0, 2.0, 2.0, -jnp.inf]]))["token_entropy"])
    np.testing.assert_allclose(ties, np.log(3), rtol=1e-6)  # several maxima, and a masked (-inf) entry


def test_entropy_and_self_certainty_against_brute_force():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 11)) * 3.0, jnp.float32)
    stats = jax.jit(rewards.token_statistics)(logits)
    p = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
    entropy = -(p * np.log(p)).sum(-1)
    kl_uniform = (np.log(1 / 11) - np.log(p)).sum(-1) / 11  # KL(U || p) = sum_j (1/V) log((1/V) / p_j)
    np.testing.assert_allclose(stats["token_entropy"], entropy, rtol=1e-5)
    x = inputs(**stats, vocab_size=11)
    cfg = rewards.RewardConfig(alpha=0.0, beta_inv=0.0, extra={"neg_entropy": 1.0, "self_certainty": 2.0})
    total, parts = jax.jit(rewards.compute_rewards, static_argnames="cfg")(x, cfg)
    mask = np.array(MASK, bool)
    mean = lambda v: (v * mask).sum(-1) / mask.sum(-1)  # noqa: E731
    np.testing.assert_allclose(parts["neg_entropy"], -mean(entropy), rtol=1e-5)
    np.testing.assert_allclose(parts["self_certainty"], mean(kl_uniform), rtol=1e-5)
    np.testing.assert_allclose(total, -mean(entropy) + 2 * mean(kl_uniform), rtol=1e-5)


def test_registered_component_and_extra_weights_add_up():
    @rewards.register_component("length_bonus_test")
    def length_bonus(x, cfg):
        return rewards.completion_lengths(x)

    try:
        cfg = rewards.regime_preset("task_reward", extra=(("length_bonus_test", 0.1), ("task", 1.0)))
        total, parts = rewards.compute_rewards(inputs(), cfg)
        np.testing.assert_allclose(total, 2 * np.array(CORRECT) + 0.1 * np.array([3.0, 2.0]), rtol=1e-6)
        assert set(parts) == {"task", "length_bonus_test"}
        with pytest.raises(ValueError, match="already registered"):
            rewards.register_component("length_bonus_test")(length_bonus)
    finally:
        del rewards.REWARD_COMPONENTS["length_bonus_test"]


def test_components_declare_the_statistics_they_read():
    """A component that reads a per-token statistic declares it, so the rollout computes it; one that
    does not, or that returns the wrong shape, fails in `check_components` (which a run calls before
    its first evaluation) with an error naming the component and the fix."""
    entropy = rewards.regime_preset("task_reward", extra={"neg_entropy": 0.1})
    assert rewards.needs_token_statistics(entropy) and not rewards.needs_token_statistics(
        rewards.regime_preset("tempered_a2", extra={"format": 1.0}))
    rewards.check_components(entropy, group_size=2, vocab_size=11)

    @rewards.register_component("undeclared_test")
    def undeclared(x, cfg):
        return jnp.sum(x.token_entropy, axis=-1)

    @rewards.register_component("host_test")
    def on_host(x, cfg):  # numpy and Python control flow: the rollout calls components eagerly
        lengths = np.asarray(x.completion_mask).sum(-1)
        return jnp.asarray(lengths if lengths.max() > 1 else -lengths)

    @rewards.register_component("column_test")
    def column(x, cfg):
        return rewards.completion_lengths(x)[:, None]

    @rewards.register_component("declared_test", needs=("token_entropy",))
    def declared(x, cfg):
        return jnp.max(rewards._field(x, "token_entropy", "declared_test"), axis=-1)

    try:
        cfg = rewards.regime_preset("task_reward", extra={"undeclared_test": 1.0})
        assert not rewards.needs_token_statistics(cfg)
        with pytest.raises(ValueError, match=r"component 'undeclared_test' fails on a rollout's inputs \(TypeError: "
                                             r".*; it reads per-token statistics, which the rollout computes only "
                                             r"for a component registered with needs="):
            rewards.check_components(cfg, group_size=2, vocab_size=11)
        with pytest.raises(ValueError, match=r"component 'majority_vote' fails on a rollout's inputs \(ValueError: "
                                             r"majority_vote needs RewardInputs.group_size >= 2 .*, got 1\)$"):
            rewards.check_components(rewards.regime_preset("task_reward", extra={"majority_vote": 1.0}), 1, 11)
        rewards.check_components(rewards.regime_preset("task_reward", extra={"host_test": 1.0}), 2, 11)
        column_cfg = rewards.regime_preset("task_reward", extra={"column_test": 1.0})
        with pytest.raises(ValueError, match=r"component 'column_test' returned shape \(4, 1\); allowed: \(4,\)"):
            rewards.check_components(column_cfg, 2, 11)
        with pytest.raises(ValueError, match=r"component 'column_test' returned shape \(2, 1\); allowed: \(2,\)"):
            rewards.compute_rewards(inputs(), column_cfg)
        cfg = rewards.regime_preset("task_reward", extra={"declared_test": 1.0})
        assert rewards.needs_token_statistics(cfg)
        rewards.check_components(cfg, group_size=2, vocab_size=11)
        with pytest.raises(ValueError, match=r"needs RewardInputs.token_entropy, which is None; the caller fills it"):
            rewards.compute_rewards(inputs(), cfg)  # called without the statistics
        with pytest.raises(ValueError, match=r"needs RewardInputs.token_entropy, which is None; declare it with "
                                             r"@register_component\('undeclared_test', needs=\('token_entropy',\)\)"):
            rewards._field(inputs(), "token_entropy", "undeclared_test")
        with pytest.raises(ValueError, match=r"needs=\('correct',\).*allowed: \('token_entropy'"):
            rewards.register_component("bad_needs_test", needs=("correct",))
    finally:
        for name in ("undeclared_test", "host_test", "column_test", "declared_test"):
            del rewards.REWARD_COMPONENTS[name]
            rewards.COMPONENT_NEEDS.pop(name)


def test_with_regime_keeps_normalization_components_and_kl():
    base = rewards.RewardConfig(normalization="weighted_mean", length_exponent=0.5, extra={"format": 0.2},
                                kl_coef=0.1, kl_estimator="k3")
    tempered = rewards.with_regime(base, "tempered_a4")
    assert (tempered.mode, tempered.alpha, tempered.beta_inv) == ("sampling", 4.0, 0.0)
    assert tempered.replace(mode=base.mode, alpha=base.alpha, beta_inv=base.beta_inv) == base
    assert rewards.with_regime(rewards.RewardConfig(), "sharpening") == rewards.regime_preset("sharpening")
    with pytest.raises(ValueError, match="reward preset 'tempered'"):
        rewards.with_regime(base, "tempered")


def test_errors_name_the_field_and_allowed_values():
    with pytest.raises(ValueError, match="mode='sample'.*optimization"):
        rewards.RewardConfig(mode="sample")
    with pytest.raises(ValueError, match="normalization='avg'.*weighted_mean"):
        rewards.RewardConfig(normalization="avg")
    with pytest.raises(ValueError, match="length_exponent=0.5 is used only with normalization='weighted_mean'"):
        rewards.RewardConfig(normalization="mean", length_exponent=0.5)
    with pytest.raises(ValueError, match="extra names 'bogus'.*majority_vote"):
        rewards.RewardConfig(extra={"bogus": 1.0})
    with pytest.raises(ValueError, match="kl_estimator='k4'"):
        rewards.RewardConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="needs RewardInputs.ref_logprobs"):
        rewards.compute_rewards(inputs(ref_logprobs=None), rewards.regime_preset("sharpening"))
    with pytest.raises(ValueError, match="needs RewardInputs.policy_logprobs"):
        rewards.compute_rewards(inputs(policy_logprobs=None), rewards.regime_preset("tempered_a2"))
    with pytest.raises(ValueError, match="group_size=3 must be >= 1 and divide N=2"):
        rewards.compute_rewards(inputs(group_size=3), rewards.regime_preset("task_reward"))
    with pytest.raises(ValueError, match=r"correct must have shape \(2,\)"):
        rewards.compute_rewards(inputs(correct=jnp.zeros(3)), rewards.regime_preset("task_reward"))
    # The task-reward regime needs no log-probs at all.
    total, _ = rewards.compute_rewards(inputs(ref_logprobs=None, policy_logprobs=None),
                                       rewards.regime_preset("task_reward"))
    np.testing.assert_array_equal(total, CORRECT)


def test_an_exponent_that_cannot_act_is_refused():
    with pytest.raises(ValueError, match=r"RewardConfig.alpha=0.5 with normalization='none' in sampling mode has no "
                                         r"effect \(N = 0, so pi\* ∝ p_ref e\^\{beta_inv r\} whatever alpha\)"):
        rewards.regime_preset("tilted_a0.5_b100", normalization="none")
    rewards.regime_preset("tilted_a1_b100", normalization="none")  # alpha = 1 asks for nothing N would do
    for alpha in (2.0, -1.0):  # optimization mode: R = r + (alpha / beta_inv) N, and N = 0
        with pytest.raises(ValueError, match=rf"RewardConfig.alpha={alpha} with normalization='none' in optimization "
                                             r"mode has no effect \(N = 0, so R does not depend on alpha\)"):
            rewards.regime_preset("task_reward", alpha=alpha, normalization="none")
    rewards.regime_preset("task_reward", normalization="none")  # alpha = 0: nothing asked of N


def test_a_reward_that_is_zero_for_every_sample_is_refused():
    with pytest.raises(ValueError, match=r"gives R = 0 for every sample; allowed: a nonzero term"):
        rewards.RewardConfig("optimization", alpha=2.0, beta_inv=0.0, normalization="none")
    with pytest.raises(ValueError, match=r"gives R = 0"):
        rewards.RewardConfig("optimization", alpha=0.0, beta_inv=0.0)


def test_majority_vote_and_format_score_answer_id_zero():
    """rollout.answer_ids numbers a group's answers from 0: the first answer of every group has id 0."""
    from rl_sharpen.rl import rollout

    ids = rollout.answer_ids(["7", "7", "3", None, "5", "5", "5", "2"], group_size=4)
    assert ids.tolist() == [0, 0, 1, -1, 0, 0, 0, 1]
    x = rewards.RewardInputs(completion_mask=jnp.ones((8, 1)), correct=jnp.zeros(8), answer_ids=jnp.asarray(ids),
                             group_size=4)
    _, parts = rewards.compute_rewards(x, rewards.RewardConfig(alpha=0.0, beta_inv=0.0,
                                                               extra={"majority_vote": 1.0, "format": 1.0}))
    np.testing.assert_array_equal(parts["majority_vote"], [1, 1, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(parts["format"], [1, 1, 1, 0, 1, 1, 1, 1])
