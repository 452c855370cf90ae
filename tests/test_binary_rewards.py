"""Binary rewards on the enumerable toy model: closed forms against exact sums, the fits against
their known optima, and the collapse of KL control in a family that cannot represent p*."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen import binary_rewards as br
from rl_sharpen import experiment
from rl_sharpen.config import ConfigError
from tests.experiment_configs import get_config

SPACE = br.SequenceSpace.build(3, 4)
VALID = br.validity(SPACE, 3)  # token sum <= 3
BASE = 0.7 * jax.random.normal(jax.random.key(0), SPACE.param_shape("autoregressive"))
LOG_A = SPACE.log_probs(BASE, "autoregressive")
LOG_STAR = br.filtered(LOG_A, VALID)
MU = float(jnp.sum(jnp.exp(LOG_A) * VALID))


def tv(log_p, log_q):
    return 0.5 * float(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)).sum())


def test_sequence_space_enumerates_every_sequence_with_its_prefixes():
    assert SPACE.sequences.shape == (81, 4)
    assert {tuple(s) for s in SPACE.sequences} == set(itertools.product(range(3), repeat=4))
    prefixes = {}
    for seq, ids in zip(SPACE.sequences, SPACE.prefix_ids):
        for t in range(4):
            assert prefixes.setdefault(tuple(seq[:t]), ids[t]) == ids[t]  # one id per prefix
    assert sorted(prefixes.values()) == list(range(SPACE.num_prefixes))  # 1 + 3 + 9 + 27 = 40 distinct ids
    assert VALID.sum() == 31  # 1 + 4 + 10 + 16 sequences of token sum 0, 1, 2, 3


def test_autoregressive_log_probs_are_a_distribution_and_chain_rule():
    probs = jnp.exp(LOG_A)
    assert abs(float(probs.sum()) - 1) < 1e-5
    seq = SPACE.sequences[37]
    by_hand = sum(jax.nn.log_softmax(BASE[SPACE.prefix_ids[37, t]])[seq[t]] for t in range(4))
    assert abs(float(LOG_A[37] - by_hand)) < 1e-5
    factorized = jax.random.normal(jax.random.key(1), SPACE.param_shape("factorized"))
    log_f = SPACE.log_probs(factorized, "factorized")
    marginals = jax.nn.softmax(factorized, axis=-1)
    assert abs(float(jnp.exp(log_f).sum()) - 1) < 1e-5
    assert abs(float(jnp.exp(log_f[37])) - float(np.prod([marginals[t, seq[t]] for t in range(4)]))) < 1e-6


@pytest.mark.parametrize("beta", [2.0, 0.5, 0.1])
def test_tilted_model_closed_forms(beta):
    log_beta = br.tilted(LOG_A, VALID, beta)
    nu = float(jnp.sum(jnp.exp(log_beta) * VALID))
    assert abs(nu - br.validity_rate(MU, beta)) < 1e-5
    assert abs(br.beta_for_validity(MU, nu) - beta) < 1e-3 * beta
    log_z = math.log(MU * math.exp(1 / beta) + 1 - MU)
    assert abs(float(br.kl(LOG_STAR, log_beta)) + math.log(nu)) < 1e-5  # KL(p* || p_beta) = -log nu
    assert abs(float(br.kl(log_beta, LOG_A)) - (nu / beta - log_z)) < 1e-4  # KL(p_beta || a)
    # p_beta is the maximizer of E[v] - beta KL(pi || a), with value beta log Z_beta
    assert abs(-float(br.kl_control_loss(log_beta, LOG_A, VALID, beta)) - beta * log_z) < 1e-4
    # restricted to the valid set, p_beta is p*
    cond = jnp.where(VALID, log_beta, -jnp.inf) - math.log(nu)
    assert tv(cond, LOG_STAR) < 1e-5
    assert abs(float(br.kl(LOG_STAR, LOG_A)) + math.log(MU)) < 1e-5  # KL(p* || a) = -log mu


def test_beta_for_validity_rejects_impossible_rates():
    with pytest.raises(ValueError, match="nu"):
        br.beta_for_validity(0.3, 0.2)


def test_diagnostics_of_a_two_sequence_space_by_hand():
    """pi = (1/2, 1/2), only the first sequence valid, so p* = (1, 0): validity 1/2, one valid output,
    KL(p* || pi) = log 2, coverage@k = sum_y p*(y) (1 - (1 - pi(y))^k) = 1/2 at k = 1, 3/4 at k = 2."""
    out = br.diagnostics(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([1.0, 1e-30])),
                         jnp.array([True, False]), ks=(1, 2))
    assert out["validity"] == pytest.approx(0.5)
    assert out["effective_valid_outputs"] == pytest.approx(1.0)
    assert out["kl_filtered_to_policy"] == pytest.approx(math.log(2), rel=1e-6)
    assert (out["coverage@1"], out["coverage@2"]) == pytest.approx((0.5, 0.75))


def test_alpha_divergence_against_its_definition_and_limits():
    log_pi = SPACE.log_probs(jax.random.normal(jax.random.key(2), SPACE.param_shape("autoregressive")),
                             "autoregressive")
    p, q = np.exp(np.asarray(LOG_STAR, np.float64)), np.exp(np.asarray(log_pi, np.float64))
    for alpha in (0.3, 0.7):
        direct = ((p ** alpha * q ** (1 - alpha)).sum() - 1) / (alpha * (alpha - 1))
        assert abs(float(br.alpha_divergence(LOG_STAR, log_pi, alpha)) - direct) < 1e-4 * direct
    forward_kl = float(br.kl(LOG_STAR, log_pi))
    assert abs(float(br.alpha_divergence(LOG_STAR, log_pi, 1.0)) - forward_kl) < 1e-6
    assert abs(float(br.alpha_divergence(LOG_STAR, log_pi, 0.995)) - forward_kl) < 0.01 * forward_kl  # the limit alpha -> 1


@pytest.mark.parametrize("beta", [1.0, 0.2])
def test_kl_control_in_the_autoregressive_family_reaches_the_tilted_model(beta):
    logits = br.fit(SPACE, "autoregressive", BASE, lambda lp: br.kl_control_loss(lp, LOG_A, VALID, beta),
                    steps=1500, learning_rate=0.05)
    assert tv(SPACE.log_probs(logits, "autoregressive"), br.tilted(LOG_A, VALID, beta)) < 2e-3


def test_forward_kl_in_the_factorized_family_is_the_product_of_marginals():
    """argmin_pi KL(p* || pi) over factorized pi is the product of p*'s marginals: alpha-DPG at
    alpha = 1 by exact gradient lands on it."""
    logits = br.fit(SPACE, "factorized", br.factorized_projection(LOG_A, SPACE),
                    lambda lp: br.alpha_divergence(LOG_STAR, lp, 1.0), steps=1500, learning_rate=0.05)
    moment_matched = SPACE.log_probs(br.factorized_projection(LOG_STAR, SPACE), "factorized")
    assert tv(SPACE.log_probs(logits, "factorized"), moment_matched) < 2e-3


def test_kl_control_collapses_in_the_factorized_family_and_alpha_dpg_keeps_coverage():
    cfg = br.BinaryRewardsConfig(vocab_size=3, length=4, max_token_sum=3, betas=(1.0, 0.1, 0.01), alphas=(1.0,),
                                 steps=2000, ks=(1, 16), restarts=3)
    runs = {(r["name"], r["family"]): r for r in br.run_experiment(cfg, seed=0)["runs"]}
    star = runs[("filtered p*", "exact")]
    # well specified: the policy tends to p* as beta -> 0, with all of its valid outputs
    exact = runs[("KL control beta=0.01", "autoregressive")]
    assert exact["validity"] > 0.99
    assert abs(exact["effective_valid_outputs"] - star["effective_valid_outputs"]) < 0.02 * star["effective_valid_outputs"]
    # misspecified: validity rises as beta falls, but on fewer and fewer valid outputs
    factorized = [runs[(f"KL control beta={b:g}", "factorized")] for b in cfg.betas]
    assert [r["validity"] for r in factorized] == sorted(r["validity"] for r in factorized)
    support = [r["effective_valid_outputs"] for r in factorized]
    assert support == sorted(support, reverse=True)
    assert support[-1] < 0.5 * star["effective_valid_outputs"]
    assert factorized[-1]["validity"] > 0.95
    coverage = [r["coverage@16"] for r in factorized]  # rises with validity, then falls with the collapse
    assert coverage[-1] < max(coverage) - 0.05
    # alpha-DPG in the same family keeps more of p* covered at k = 16
    dpg = runs[("alpha-DPG alpha=1", "factorized")]
    assert dpg["effective_valid_outputs"] > 2 * support[-1]
    assert dpg["coverage@16"] > factorized[-1]["coverage@16"] + 0.05
    # the restarts keep the lowest objective, the start from the base model's included; the collapse is
    # a property of the objective, not of where the fit started
    for r in factorized + [dpg]:
        assert r["best_of_restarts"]["objective"] <= r["objective"]
    best = factorized[-1]["best_of_restarts"]
    assert best["effective_valid_outputs"] < 0.5 * star["effective_valid_outputs"] and best["validity"] > 0.95
    assert dpg["effective_valid_outputs"] > 2 * best["effective_valid_outputs"]
    assert "best_of_restarts" not in exact and exact["objective"] < factorized[-1]["objective"]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="BinaryRewardsConfig.alphas"):
        br.BinaryRewardsConfig(alphas=(1.5,))
    with pytest.raises(ValueError, match="BinaryRewardsConfig.length"):
        br.BinaryRewardsConfig(vocab_size=3, length=20)
    with pytest.raises(ValueError, match="BinaryRewardsConfig.learning_rate"):
        br.BinaryRewardsConfig(learning_rate=0.0)
    for field in ("learning_rate", "base_scale"):  # inf passed `> 0` and made every fit NaN
        with pytest.raises(ValueError, match=rf"BinaryRewardsConfig.{field}=inf; allowed: a finite float"):
            br.BinaryRewardsConfig(**{field: math.inf})
    with pytest.raises(ValueError, match=r"BinaryRewardsConfig.betas=\(1.0, inf\); allowed: finite floats > 0"):
        br.BinaryRewardsConfig(betas=(1.0, math.inf))
    with pytest.raises(ValueError, match="BinaryRewardsConfig.restarts=-1; allowed: an integer >= 0"):
        br.BinaryRewardsConfig(restarts=-1)
    for mu in (0.0, -0.1, 1.0):  # a division by zero or a math domain error before
        with pytest.raises(ValueError, match=rf"base validity mu={mu}; allowed: 0 < mu < 1"):
            br.beta_for_validity(mu, 0.5)
        with pytest.raises(ValueError, match=rf"base validity mu={mu}; allowed: 0 < mu < 1"):
            br.validity_rate(mu, 1.0)


def test_main_mode_writes_json_and_plot(tmp_path):
    result = experiment.run(get_config("binary_rewards", "tiny"), str(tmp_path))
    on_disk = json.loads((tmp_path / "binary_rewards.json").read_text())
    assert on_disk["num_valid"] == result["num_valid"] == 31
    assert (tmp_path / "binary_rewards.png").stat().st_size > 10_000
    assert "alpha-DPG alpha=1" in br.table(result)
    bad = get_config("binary_rewards", "tiny")
    bad.binary_rewards.max_token_sum = 8
    with pytest.raises(ValueError, match="BinaryRewardsConfig.max_token_sum"):
        experiment.run(bad, str(tmp_path))
    bad = get_config("binary_rewards", "tiny")
    bad.mode = "toy"
    with pytest.raises(ConfigError, match="mode"):
        experiment.parse(bad)


def test_restarts_explore_and_the_closed_form_is_recorded():
    cfg = br.BinaryRewardsConfig(vocab_size=3, length=4, max_token_sum=3, betas=(1.0, 0.1, 0.01), alphas=(1.0,),
                                 steps=2000, ks=(1, 16), restarts=3)
    result = br.run_experiment(cfg, seed=0)
    runs = {(r["name"], r["family"]): r for r in result["runs"]}
    collapsed = runs[("KL control beta=0.01", "factorized")]
    assert collapsed["best_of_restarts"]["objective"] < collapsed["objective"] - 1e-4  # a perturbed start won
    for beta in cfg.betas:  # the autoregressive fit reaches p_beta, whose validity is the recorded closed form
        r = runs[(f"KL control beta={beta:g}", "autoregressive")]
        assert abs(r["tilted_validity"] - r["validity"]) < 2e-3
    assert sum("best of restarts" in line for line in br.table(result).splitlines()) == 1
