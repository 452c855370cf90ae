"""Policy losses: aggregation, truncated IS, PPO clip boundaries, KL term, and alpha-DPG on a categorical."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import losses

MASK = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
VALUES = jnp.array([[1.0, 2.0, 3.0, 99.0], [4.0, 6.0, jnp.nan, 7.0], [5.0, 5.0, 5.0, 5.0]])


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (1 + 2 + 3 + 4 + 6) / 5),
    ("seq-mean-token-sum", ((1 + 2 + 3) / 8 + (4 + 6) / 8) / 2),
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + (4 + 6) / 2) / 2),
])
def test_aggregation_modes(mode, expected):
    np.testing.assert_allclose(losses.aggregate(VALUES, MASK, mode, max_len=8), expected, rtol=1e-6)


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_micro_batches_with_global_denominator_sum_to_full_batch(mode):
    full = losses.aggregate(VALUES, MASK, mode, max_len=8)
    denominator = 5 if mode == "token-mean" else 2
    parts = [losses.aggregate(VALUES[rows], MASK[rows], mode, max_len=8, denominator=denominator)
             for rows in (slice(0, 1), slice(1, 3))]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)


def batch(advantages, behaviour, **kw):
    mask = jnp.ones(behaviour.shape, jnp.int32)
    return losses.LossInputs(mask=mask, behaviour_logprobs=behaviour, advantages=advantages, **kw)


def test_reinforce_truncated_importance_weight():
    logprobs = jnp.log(jnp.array([[0.5, 0.3, 0.6]]))
    behaviour = jnp.log(jnp.array([[1.0, 0.3, 0.02]]))  # pi / mu = 0.5, 1, 30
    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=1, is_cap=20.0)
    loss_fn = jax.jit(lambda lp: losses.policy_loss(lp, batch(jnp.array([2.0]), behaviour), cfg))
    grad = jax.jit(jax.grad(lambda lp: loss_fn(lp)[0]))(logprobs)
    np.testing.assert_allclose(grad, [[-0.5 * 2, -1.0 * 2, -20.0 * 2]], rtol=1e-5)
    metrics = loss_fn(logprobs)[1]
    np.testing.assert_allclose(metrics["is_truncated_frac"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["is_weight_mean"], (0.5 + 1 + 20) / 3, rtol=1e-5)


def test_reinforce_importance_weights_recover_the_exact_policy_gradient():
    """Each of K outcomes sampled once from a uniform mu: weights pi/mu turn the batch into E_pi."""
    k = 5
    theta = jnp.array([0.4, -1.0, 0.3, 1.2, -0.2])
    a = jnp.array([1.0, -0.5, 2.0, 0.0, -1.5])
    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=1, is_cap=math.inf)
    loss = lambda th: losses.policy_loss(  # noqa: E731
        jax.nn.log_softmax(th)[:, None], batch(a, jnp.full((k, 1), -math.log(k))), cfg)[0]
    pi = np.exp(theta) / np.exp(theta).sum()
    exact = (np.eye(k) - pi).T @ (pi * a)  # sum_y pi(y) A(y) grad log pi(y)
    np.testing.assert_allclose(-jax.jit(jax.grad(loss))(theta), exact, rtol=1e-5, atol=1e-6)


def test_ppo_clip_boundaries_with_clip_higher():
    rho = jnp.array([[1.25, 1.3, 0.5, 0.7, 1.5, 0.9]])
    a = jnp.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    logprobs = jnp.log(rho).reshape(6, 1)
    zeros = jnp.zeros((6, 1))
    cfg = losses.LossConfig("ppo_clip", aggregation="seq-mean-token-sum", max_len=1, eps_low=0.2, eps_high=0.28)
    b = batch(a, zeros, old_logprobs=zeros)
    per_token, _ = jax.jit(losses.LOSSES["ppo_clip"], static_argnums=2)(logprobs, b, cfg)
    clipped = np.clip(np.asarray(rho[0]), 0.8, 1.28)
    expected = -np.minimum(np.asarray(rho[0]) * a, clipped * a)
    np.testing.assert_allclose(per_token[:, 0], expected, rtol=1e-6)
    loss_fn = jax.jit(lambda lp: losses.policy_loss(lp, b, cfg))
    grad = jax.jit(jax.grad(lambda lp: loss_fn(lp)[0]))(logprobs)[:, 0]
    # d/dlp of -rho A = -rho A / N where the unclipped branch is active; 0 where the clip binds.
    active = np.array([True, False, True, False, True, True])
    np.testing.assert_allclose(grad, np.where(active, -np.asarray(rho[0]) * a / 6, 0.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss_fn(logprobs)[1]["clip_frac"], 2 / 6, rtol=1e-6)


def test_ppo_applies_truncated_is_of_old_over_behaviour():
    old = jnp.log(jnp.array([[0.6], [0.9]]))
    behaviour = jnp.log(jnp.array([[0.3], [0.01]]))  # pi_old / mu = 2, 90 -> 2, 20
    a = jnp.array([1.0, 1.0])
    cfg = losses.LossConfig("ppo_clip", aggregation="token-mean", is_cap=20.0)
    grad = jax.jit(jax.grad(lambda lp: losses.policy_loss(lp, batch(a, behaviour, old_logprobs=old), cfg)[0]))(old)
    np.testing.assert_allclose(grad[:, 0], [-2.0 / 2, -20.0 / 2], rtol=1e-5)
    # without old_logprobs the anchor is the behaviour policy: rho = 2 and 90, clipped -> zero gradient
    grad = jax.jit(jax.grad(lambda lp: losses.policy_loss(lp, batch(a, behaviour), cfg)[0]))(old)
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_kl_penalty_term_and_masking():
    logprobs = jnp.array([[-0.5, -1.0, jnp.nan], [-0.2, -0.1, -0.3]])
    ref = jnp.array([[-1.0, -0.5, -jnp.inf], [-0.2, -0.6, -0.1]])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    b = losses.LossInputs(mask=mask, behaviour_logprobs=jnp.where(mask > 0, logprobs, 0.0),
                          advantages=jnp.array([1.0, -1.0]), ref_logprobs=ref)
    base = losses.LossConfig("reinforce")
    with_kl = losses.LossConfig("reinforce", kl_coef=0.3, kl_estimator="k3")
    loss_fn = jax.jit(losses.policy_loss, static_argnames="cfg")
    loss0, _ = loss_fn(logprobs, b, cfg=base)
    loss1, metrics = loss_fn(logprobs, b, cfg=with_kl)
    d = np.array([[0.5, -0.5], [0.0, 0.5]])
    expected_kl = float((np.exp(-d) - 1 + d).sum() + np.exp(0.2) - 1 - 0.2) / 5
    np.testing.assert_allclose(loss1 - loss0, 0.3 * expected_kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], expected_kl, rtol=1e-5)
    grad = jax.jit(jax.grad(lambda lp: losses.policy_loss(lp, b, with_kl)[0]))(logprobs)
    assert np.all(np.isfinite(grad)) and float(grad[0, 2]) == 0.0


def test_kl_penalty_weight_is_truncated_at_is_cap():
    """Off-policy the penalty's token weight is min(pi / mu, is_cap), as the reinforce term's."""
    logprobs = jnp.array([[-0.5, -1.0]])
    b = losses.LossInputs(mask=jnp.ones((1, 2)), behaviour_logprobs=logprobs - jnp.array([[2.0, 0.1]]),
                          advantages=jnp.zeros(1), ref_logprobs=jnp.array([[-1.0, -1.0]]))
    cfg = losses.LossConfig("reinforce", is_cap=2.0, kl_coef=0.5, kl_estimator="k1")  # d k1 / d lp = 1
    grad = jax.grad(lambda lp: losses.policy_loss(lp, b, cfg)[0])(logprobs)
    np.testing.assert_allclose(grad, 0.5 * np.array([[2.0, np.exp(0.1)]]) / 2, rtol=1e-6)  # e^2 held at 2


def test_policy_loss_jits_and_errors():
    b = batch(jnp.array([1.0]), jnp.zeros((1, 2)))
    loss, _ = jax.jit(losses.policy_loss, static_argnames="cfg")(jnp.zeros((1, 2)), b, losses.LossConfig("ppo_clip"))
    np.testing.assert_allclose(loss, -1.0)  # rho = 1, A = 1 on both tokens
    with pytest.raises(ValueError, match="name='grpo'; allowed: .*ppo_clip"):
        losses.LossConfig("grpo")
    with pytest.raises(ValueError, match="aggregation='mean'"):
        losses.LossConfig(aggregation="mean")
    with pytest.raises(ValueError, match="seq-mean-token-sum needs max_len > 0"):
        losses.LossConfig(aggregation="seq-mean-token-sum")
    with pytest.raises(ValueError, match="needs LossInputs.ref_logprobs"):
        losses.policy_loss(jnp.zeros((1, 2)), b, losses.LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="needs LossInputs.correct"):
        losses.policy_loss(jnp.zeros((1, 2)), batch(None, jnp.zeros((1, 2)), ref_logprobs=jnp.zeros((1, 2))),
                           losses.LossConfig("alpha_dpg"))


# --------------------------------------------------------------------------------------------------
# alpha-DPG toward p* = p_ref(. | correct) on a categorical of K outcomes (T = 1). The first tests check
# the reference direction `population_direction` against the alpha-divergence itself; the package's
# loss is then checked against that reference (test_alpha_dpg_loss_estimates_the_population_direction).

K_THETA = jnp.array([0.5, -0.3, 1.1, 0.0, -0.8, 0.4])
K_REF = jax.nn.log_softmax(jnp.array([0.2, 1.0, -0.4, 0.6, -1.2, 0.1]))
K_CORRECT = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
P_STAR = jnp.exp(K_REF) * K_CORRECT / jnp.sum(jnp.exp(K_REF) * K_CORRECT)


def alpha_divergence(theta, alpha):
    pi = jax.nn.softmax(theta)
    return (jnp.sum(P_STAR ** alpha * pi ** (1 - alpha)) - 1) / (alpha * (alpha - 1))


def population_direction(theta, alpha):
    """lim_{G->inf} E[A grad log pi] = E_pi[w grad log pi] / E_pi[w], w = (p*/pi)^alpha."""
    pi = jax.nn.softmax(theta)
    w = jnp.where(P_STAR > 0, (P_STAR / pi) ** alpha, 0.0)
    weight = jax.lax.stop_gradient(pi * w / jnp.sum(pi * w))
    return jax.grad(lambda th: jnp.sum(weight * jax.nn.log_softmax(th)))(theta)


population_direction = jax.jit(population_direction)


# Two groups of 4 sequences: the first has three correct samples, the second none.
DPG_S_PI = jnp.array([-1.0, -2.0, -0.5, -3.0, -1.0, -1.0, -1.0, -1.0])
DPG_S_REF = jnp.array([-2.0, -1.0, -0.5, -1.0, -1.0, -1.0, -1.0, -1.0])
DPG_CORRECT = jnp.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])


def test_alpha_dpg_advantages_by_hand():
    s_pi, s_ref, correct = DPG_S_PI, DPG_S_REF, DPG_CORRECT
    advantages = jax.jit(losses.alpha_dpg_advantages, static_argnums=(3, 4))
    a = advantages(s_pi, s_ref, correct, 4, 0.5)
    w = np.array([math.exp(-0.5), math.exp(0.5), 0.0, math.exp(1.0)])
    np.testing.assert_allclose(a[:4], 4 * w / w.sum() - 1, rtol=1e-6)
    np.testing.assert_allclose(a[4:], 0.0)  # no correct sample: no signal
    a0 = advantages(s_pi, s_ref, correct, 4, 0.0)
    np.testing.assert_allclose(a0[:4], [4 / 3 - 1, 4 / 3 - 1, -1.0, 4 / 3 - 1], rtol=1e-6)  # r / mean(r) - 1


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.999])
def test_alpha_dpg_direction_is_minus_gradient_of_alpha_divergence(alpha):
    direction = population_direction(K_THETA, alpha)
    minus_grad = -jax.jit(jax.grad(alpha_divergence))(K_THETA, alpha)
    cosine = jnp.dot(direction, minus_grad) / jnp.linalg.norm(direction) / jnp.linalg.norm(minus_grad)
    assert float(cosine) > 1 - 1e-5


def test_alpha_dpg_limits():
    def unit(v):
        return v / jnp.linalg.norm(v)

    pi = jax.nn.softmax(K_THETA)
    forward = P_STAR - pi  # -grad_theta KL(p* || softmax(theta))
    np.testing.assert_allclose(unit(population_direction(K_THETA, 1.0)), unit(forward), atol=1e-5)
    rl = pi * (K_CORRECT - jnp.sum(pi * K_CORRECT))  # grad_theta E_pi[r]
    np.testing.assert_allclose(unit(population_direction(K_THETA, 1e-4)), unit(rl), atol=1e-3)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_following_alpha_dpg_direction_reaches_filtered_model(alpha):
    step = jax.jit(lambda _, th: th + 2.0 * population_direction(th, alpha))
    pi = jax.nn.softmax(jax.lax.fori_loop(0, 3000, step, jnp.zeros(6)))
    assert 0.5 * float(jnp.sum(jnp.abs(pi - P_STAR))) < 1e-3


def test_alpha_dpg_loss_estimates_the_population_direction():
    g = 8192
    y = np.random.default_rng(0).choice(6, size=g, p=np.asarray(jax.nn.softmax(K_THETA), np.float64))
    cfg = losses.LossConfig("alpha_dpg", dpg_alpha=0.5, aggregation="token-mean")
    b = losses.LossInputs(mask=jnp.ones((g, 1)), behaviour_logprobs=jax.nn.log_softmax(K_THETA)[y][:, None],
                          ref_logprobs=K_REF[y][:, None], correct=K_CORRECT[y], group_size=g)
    loss = jax.jit(lambda th: losses.policy_loss(jax.nn.log_softmax(th)[y][:, None], b, cfg))
    estimate = -jax.jit(jax.grad(lambda th: loss(th)[0]))(K_THETA)
    expected = population_direction(K_THETA, 0.5)
    assert float(jnp.linalg.norm(estimate - expected) / jnp.linalg.norm(expected)) < 0.08
    assert 0.5 < float(loss(K_THETA)[1]["dpg_ess"]) <= 1.0


def test_alpha_dpg_loss_gradient_enumerated_over_every_group():
    """The package's loss, differentiated, averaged exactly over all K^G groups with their probabilities,
    against the self-normalized estimator written out in numpy: E[(1/G) sum_i (w^_i - 1) grad log pi(y_i)],
    w_i = (r_i p_ref(y_i) / pi(y_i))^alpha. Its bias against the population direction shrinks as G grows."""
    pi = np.asarray(jax.nn.softmax(K_THETA), np.float64)
    ref, correct = np.exp(np.asarray(K_REF, np.float64)), np.asarray(K_CORRECT, np.float64)
    score = np.eye(6) - pi  # score[y] = grad_theta log pi(y)
    for alpha in (0.0, 0.5, 1.0):
        cosines = []
        for g in (2, 3, 4):
            groups = np.array(list(itertools.product(range(6), repeat=g)))  # [6^G, G]
            prob = pi[groups].prod(1)
            y = groups.reshape(-1)
            cfg = losses.LossConfig("alpha_dpg", dpg_alpha=alpha, aggregation="seq-mean-token-sum", max_len=1)
            lp = jax.nn.log_softmax(K_THETA)[y][:, None]
            b = losses.LossInputs(mask=jnp.ones((y.size, 1)), behaviour_logprobs=lp, ref_logprobs=K_REF[y][:, None],
                                  correct=K_CORRECT[y], group_size=g)
            # d loss / d logprob_i = -A_i / N: recover each sample's A_i times N, then weight groups by prob
            per_sample = -y.size * np.asarray(jax.jit(jax.grad(lambda x: losses.policy_loss(x, b, cfg)[0]))(lp))[:, 0]
            package = prob @ np.einsum("ng,ngd->nd", per_sample.reshape(-1, g), score[groups]) / g
            w = np.where(correct[groups] > 0, (correct[groups] * ref[groups] / pi[groups]) ** alpha, 0.0)
            a = np.where(w.sum(1, keepdims=True) > 0, g * w / np.maximum(w.sum(1, keepdims=True), 1e-300) - 1, 0.0)
            expected = prob @ np.einsum("ng,ngd->nd", a, score[groups]) / g
            np.testing.assert_allclose(package, expected, rtol=1e-4, atol=1e-7, err_msg=f"alpha={alpha}, G={g}")
            population = np.asarray(population_direction(K_THETA, max(alpha, 1e-4)), np.float64)
            cosines.append(package @ population / np.linalg.norm(package) / np.linalg.norm(population))
        if alpha == 0:  # w^ = 1[r > 0] / mean_g 1[r > 0]: the population direction's, scaled, at any G
            assert min(cosines) > 1 - 1e-6, cosines
        else:
            assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 0.95, (alpha, cosines)


def test_alpha_dpg_refuses_groups_of_one():
    b = losses.LossInputs(mask=jnp.ones((2, 1)), behaviour_logprobs=jnp.zeros((2, 1)), ref_logprobs=jnp.zeros((2, 1)),
                          correct=jnp.ones(2))
    with pytest.raises(ValueError, match="alpha_dpg needs LossInputs.group_size >= 2"):
        losses.policy_loss(jnp.zeros((2, 1)), b, losses.LossConfig("alpha_dpg"))


def test_ppo_ratio_of_a_far_off_policy_token_stays_finite():
    """rho = e^94 against A < 0 would make the loss inf; the ratio is held at e^80 like the IS weights."""
    cfg = losses.LossConfig("ppo_clip", aggregation="token-mean")
    b = batch(jnp.array([-1.0]), jnp.full((1, 1), -100.0))  # old = behaviour: IS weight 1
    loss, _ = losses.policy_loss(jnp.full((1, 1), -6.0), b, cfg)
    np.testing.assert_allclose(float(loss), math.exp(losses.MAX_LOG_WEIGHT), rtol=1e-5)


def test_dpg_ess_averages_over_groups_with_a_target():
    """Group 1 has weights (e^-1, e^1, 0, e^2) at alpha = 1; group 2 no correct sample: ESS is group 1's alone."""
    s_pi, s_ref, correct = DPG_S_PI, DPG_S_REF, DPG_CORRECT
    b = losses.LossInputs(mask=jnp.ones((8, 1)), behaviour_logprobs=s_pi[:, None], ref_logprobs=s_ref[:, None],
                          correct=correct, group_size=4)
    metrics = losses.policy_loss(s_pi[:, None], b, losses.LossConfig("alpha_dpg", dpg_alpha=1.0))[1]
    w = np.exp([-1.0, 1.0, -np.inf, 2.0])
    np.testing.assert_allclose(metrics["dpg_ess"], w.sum() ** 2 / (w ** 2).sum() / 4, rtol=1e-5)
    assert float(metrics["dpg_target_groups"]) == 0.5


# --------------------------------------------------------------------------------------------------
# Off-policy REINFORCE on an enumerable autoregressive model: 2 tokens over a vocabulary of 2.

AR_SEQS = np.array([[a, b] for a in range(2) for b in range(2)])  # the 4 sequences
AR_REWARD = jnp.array([0.3, -1.0, 2.0, 0.7])


def ar_token_logprobs(logits, temperature=1.0):
    """[4, 2] log-probs of each sequence's tokens; logits [3, 2]: row 0 the first token, 1 + y_1 the second."""
    lp = jax.nn.log_softmax(logits / temperature, axis=-1)
    return jnp.stack([lp[0, AR_SEQS[:, 0]], lp[1 + AR_SEQS[:, 0], AR_SEQS[:, 1]]], axis=1)


def expected_reinforce_update(logits, sampler_temperature, is_level, group_size=2):
    """E over every group of G sequences drawn from mu (pi at the sampler's temperature) of -grad loss,
    with RLOO advantages and untruncated importance weights."""
    from rl_sharpen.rl import advantages as adv

    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=2, is_cap=math.inf,
                            is_level=is_level)
    behaviour = ar_token_logprobs(logits, sampler_temperature)
    groups = jnp.asarray(np.array(np.meshgrid(*[np.arange(4)] * group_size, indexing="ij")).reshape(group_size, -1).T)

    def update(idx):
        b = losses.LossInputs(mask=jnp.ones((group_size, 2)), behaviour_logprobs=behaviour[idx],
                              advantages=adv.compute_advantages(AR_REWARD[idx], group_size,
                                                                adv.AdvantageConfig("rloo")))
        return -jax.grad(lambda lg: losses.policy_loss(ar_token_logprobs(lg)[idx], b, cfg)[0])(logits)

    prob = jnp.exp(jnp.sum(behaviour, axis=1))[groups].prod(axis=1)
    return jnp.einsum("n,nij->ij", prob, jax.lax.map(update, groups))


def test_sequence_level_importance_weights_give_the_exact_off_policy_gradient():
    """Sampled at temperature 0.6, E_mu[w A grad log pi] = grad E_pi[R] / max_len with w = prod_t pi/mu;
    per-token weights leave that direction (the documented approximation)."""
    logits = 0.8 * jax.random.normal(jax.random.key(3), (3, 2))
    exact = jax.grad(lambda lg: jnp.sum(jnp.exp(jnp.sum(ar_token_logprobs(lg), axis=1)) * AR_REWARD))(logits) / 2
    sequence = expected_reinforce_update(logits, 0.6, "sequence")
    np.testing.assert_allclose(sequence, exact, rtol=1e-4, atol=1e-6)
    token = expected_reinforce_update(logits, 0.6, "token")
    assert float(jnp.linalg.norm(token - exact) / jnp.linalg.norm(exact)) > 0.05
    on_policy = expected_reinforce_update(logits, 1.0, "token")  # both levels are exact on-policy
    np.testing.assert_allclose(on_policy, exact, rtol=1e-4, atol=1e-6)


def test_sequence_level_weight_is_the_truncated_product_on_every_token():
    logprobs = jnp.log(jnp.array([[0.5, 0.3, 0.6], [0.5, 0.9, 0.9]]))
    behaviour = jnp.log(jnp.array([[0.25, 0.3, 0.6], [0.05, 0.1, 0.7]]))  # products pi/mu: 2 and 90 (last token masked)
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    b = losses.LossInputs(mask=mask, behaviour_logprobs=behaviour, advantages=jnp.array([1.0, 1.0]))
    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=1, is_cap=20.0,
                            is_level="sequence")
    grad = jax.grad(lambda lp: losses.policy_loss(lp, b, cfg)[0])(logprobs)
    np.testing.assert_allclose(grad, [[-1.0, -1.0, -1.0], [-10.0, -10.0, 0.0]], rtol=1e-5)  # w / N' = 2/2, 20/2
    untruncated = dataclasses.replace(cfg, is_cap=1000.0)  # the masked token's ratio 0.9/0.7 stays out: 90, not 116
    grad = jax.grad(lambda lp: losses.policy_loss(lp, b, untruncated)[0])(logprobs)
    np.testing.assert_allclose(grad, [[-1.0, -1.0, -1.0], [-45.0, -45.0, 0.0]], rtol=1e-5)
    metrics = losses.policy_loss(logprobs, b, cfg)[1]
    np.testing.assert_allclose(metrics["is_truncated_frac"], 2 / 5, rtol=1e-6)
    ppo = dataclasses.replace(cfg, name="ppo_clip")  # u = min(prod pi_old / mu, cap) weighs the clipped term
    b_old = dataclasses.replace(b, old_logprobs=logprobs)
    grad = jax.grad(lambda lp: losses.policy_loss(lp, b_old, ppo)[0])(logprobs)
    np.testing.assert_allclose(grad, [[-1.0, -1.0, -1.0], [-10.0, -10.0, 0.0]], rtol=1e-5)
    with pytest.raises(ValueError, match=r"is_level='seq'; allowed: \('token', 'sequence'\)"):
        losses.LossConfig(is_level="seq")


@pytest.mark.parametrize("is_level", losses.IS_LEVELS)
def test_untruncated_weights_of_long_sequences_stay_finite(is_level):
    """100 tokens at pi/mu = e each: prod_t pi/mu = e^100 overflows float32; a row with A = 0 must not
    turn inf * 0 into NaN."""
    logprobs = jnp.full((2, 100), -1.0)
    b = losses.LossInputs(mask=jnp.ones((2, 100)), behaviour_logprobs=jnp.full((2, 100), -2.0),
                          advantages=jnp.array([0.0, 1.0]))
    cfg = losses.LossConfig("reinforce", aggregation="seq-mean-token-sum", max_len=100, is_cap=math.inf,
                            is_level=is_level)
    loss, metrics = losses.policy_loss(logprobs, b, cfg)
    grad = jax.grad(lambda lp: losses.policy_loss(lp, b, cfg)[0])(logprobs)
    assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad[0]))) == 0.0
    weight = math.e if is_level == "token" else math.exp(losses.MAX_LOG_WEIGHT)
    np.testing.assert_allclose(-grad[1], weight / 200, rtol=1e-4)  # w A / (N' max_len)
    # per token nothing is held back; per sequence the e^100 weights are held at e^80, and reported
    assert float(metrics["is_truncated_frac"]) == (0.0 if is_level == "token" else 1.0)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_ignores_padding_and_sums_over_micro_batches(name, aggregation):
    """What the trainer relies on from any registered loss, a new one included: padding contributes
    nothing (garbage there changes neither the loss nor its gradient, which is 0 there), and micro-
    batches of whole groups, each divided by the whole batch's `loss_denominator`, add up to the
    whole batch's loss, gradient and metrics (`ratio_parts`)."""
    from rl_sharpen.rl.update import loss_denominator

    rng = np.random.default_rng(0)
    n, t, g = 8, 5, 4
    mask = np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None]
    def lp():
        return np.log(rng.uniform(0.05, 0.95, (n, t))).astype(np.float32)

    logprobs = lp()
    fields = dict(behaviour_logprobs=lp(), old_logprobs=lp(), ref_logprobs=lp(),
                  advantages=rng.normal(size=n).astype(np.float32),
                  correct=np.array([1, 0, 1, 0, 0, 0, 1, 1], np.float32))
    cfg = losses.LossConfig(name, aggregation=aggregation, max_len=t, kl_coef=0.1)

    def inputs(rows, garbage=False):
        def fill(x):
            x = np.array(x[rows] if x.ndim == 1 else np.where(mask, x, np.nan if garbage else 0.0)[rows])
            return jnp.asarray(x)
        return losses.LossInputs(mask=jnp.asarray(mask[rows]), group_size=g, **{k: fill(v) for k, v in fields.items()})

    def loss(lp_rows, rows, denominator, garbage=False):
        return losses.policy_loss(lp_rows, inputs(rows, garbage), cfg, denominator=denominator, ratio_parts=True)

    everything = slice(0, n)
    denominator = loss_denominator(jnp.asarray(mask), aggregation)
    clean = jnp.asarray(np.where(mask, logprobs, 0.0))
    (full, full_metrics), full_grad = jax.value_and_grad(loss, has_aux=True)(clean, everything, denominator)
    (dirty, _), dirty_grad = jax.value_and_grad(loss, has_aux=True)(
        jnp.asarray(np.where(mask, logprobs, 7.0)), everything, denominator, True)
    assert np.isfinite(float(full))
    np.testing.assert_allclose(float(dirty), float(full), rtol=1e-6)
    np.testing.assert_allclose(dirty_grad, full_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(full_grad)[~mask], 0.0)
    assert np.abs(np.asarray(full_grad)[mask]).max() > 0

    halves = [slice(0, g), slice(g, n)]
    parts = [jax.value_and_grad(loss, has_aux=True)(clean[rows], rows, denominator) for rows in halves]
    np.testing.assert_allclose(sum(float(p[0][0]) for p in parts), float(full), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), full_grad, rtol=1e-5, atol=1e-7)
    for key, value in full_metrics.items():
        if isinstance(value, losses.Ratio):
            summed = sum(p[0][1][key].num for p in parts) / max(sum(p[0][1][key].den for p in parts), 1)
            np.testing.assert_allclose(summed, value.value(), rtol=1e-5, err_msg=key)
