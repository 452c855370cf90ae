"""The four regimes of Mittal et al. 2026 reach their closed-form optima under the exact policy gradient.

The sequence space is enumerable: vocab {0, 1, EOS}, at most 3 tokens (15 completions, those of
length 3 may end without EOS). Policy and reference are autoregressive tables (one softmax per
prefix), so S_pi and S_ref are sums of token log-probs exactly as in a language model, and the table
can represent any distribution over the 15 completions. The exact policy gradient
  g = sum_y pi(y) (R(y) - E_pi R) grad log pi(y),   R from `compute_rewards`, held constant,
is what every sampled estimator in the project estimates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen.rl import rewards

EOS, T = 2, 3
PREFIXES = [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]
SEQS = [p + (EOS,) for p in PREFIXES] + [p + (z,) for p in PREFIXES[3:] for z in (0, 1)]
TOKENS = np.zeros((len(SEQS), T), np.int32)
MASK = np.zeros((len(SEQS), T), bool)
PREFIX_IDS = np.zeros((len(SEQS), T), np.int32)
for _i, _s in enumerate(SEQS):
    for _t, _tok in enumerate(_s):
        TOKENS[_i, _t], MASK[_i, _t], PREFIX_IDS[_i, _t] = _tok, True, PREFIXES.index(_s[:_t])
LENGTHS = MASK.sum(1).astype(np.float32)
CORRECT = np.array([float(s.count(1) == 1) for s in SEQS], np.float32)  # "answer": exactly one token 1
# CHILD[u, c, y]: completion y starts with prefix u followed by token c.
CHILD = np.array([[[s[:len(u) + 1] == u + (c,) for s in SEQS] for c in range(3)] for u in PREFIXES])

# Reference model: its mode is the empty answer (EOS at once, incorrect); the best mean token
# log-prob belongs to (0, 1, 0) (correct). Sharpening by N = S_ref therefore prefers the short answer.
REF_TABLE = jnp.array([[0.4, 0.1, 0.2], [-1.1, 0.2, -3.0], [2.9, 1.1, -0.3], [-1.9, 2.6, 0.3],
                       [2.0, 1.5, -2.3], [-1.6, -1.0, -2.3], [-0.1, -0.1, -2.8]])


def token_logprobs(table):
    lp = jax.nn.log_softmax(table, axis=-1)[PREFIX_IDS, TOKENS]
    return jnp.where(MASK, lp, 0.0)


def seq_logprobs(table):
    return token_logprobs(table).sum(-1)


def table_for(log_q):
    """The autoregressive table whose sequence distribution is exp(log_q) (log-space, no underflow)."""
    return jax.nn.logsumexp(jnp.where(CHILD, log_q, -jnp.inf), axis=-1)


def normalized(log_q):
    return jnp.exp(log_q - jax.nn.logsumexp(log_q))


REF_TOK = token_logprobs(REF_TABLE)
REF_SEQ = REF_TOK.sum(-1)


def reward(table, cfg):
    inputs = rewards.RewardInputs(
        completion_mask=jnp.asarray(MASK), correct=jnp.asarray(CORRECT), answer_ids=jnp.full(len(SEQS), -1),
        ref_logprobs=REF_TOK, policy_logprobs=jax.lax.stop_gradient(token_logprobs(table)), group_size=len(SEQS))
    return rewards.compute_rewards(inputs, cfg)[0]


def exact_pg(table, cfg):
    pi = jnp.exp(seq_logprobs(table))
    r = reward(table, cfg)
    weight = jax.lax.stop_gradient(pi * (r - jnp.sum(pi * r)))
    return jax.grad(lambda th: jnp.sum(weight * seq_logprobs(th)))(table)


def ascend(cfg, steps=4000, lr=2.0):
    run = jax.jit(lambda th: jax.lax.fori_loop(0, steps, lambda _, th: th + lr * exact_pg(th, cfg), th))
    return jnp.exp(seq_logprobs(run(jnp.zeros_like(REF_TABLE))))


def tv(p, q):
    return 0.5 * float(jnp.sum(jnp.abs(p - q)))


def n_of(normalization):
    return {"sum": REF_SEQ, "mean": REF_SEQ / LENGTHS, "none": jnp.zeros_like(REF_SEQ)}[normalization]


def closed_form_objective(table, cfg):
    """E_pi[R] in closed form: linear in pi (optimization) or -KL(pi || pi*)/s + const (sampling)."""
    logpi = seq_logprobs(table)
    pi = jnp.exp(logpi)
    n = n_of(cfg.normalization)
    if cfg.mode == "optimization":
        if cfg.beta_inv == 0:
            return jnp.sum(pi * cfg.alpha * n)
        return jnp.sum(pi * (CORRECT + cfg.alpha / cfg.beta_inv * n))
    log_target = REF_SEQ + (cfg.alpha - 1.0) * n + cfg.beta_inv * CORRECT
    return -jnp.sum(pi * (logpi - log_target)) / (cfg.beta_inv if cfg.beta_inv > 0 else 1.0)


CASES = [rewards.regime_preset(name) for name in ("task_reward", "sharpening", "tempered_a0.5", "tempered_a1",
                                                   "tempered_a4", "tilted_a1.25_b100", "tilted_a2_b10000")] + [
    rewards.regime_preset("sharpening", normalization="mean"),
    rewards.regime_preset("tempered_a2", normalization="mean"),
    rewards.regime_preset("tilted_a1_b100", normalization="none"),  # N = 0: alpha other than 1 is refused
    rewards.regime_preset("task_reward", alpha=0.5, normalization="mean"),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.mode}-a{c.alpha:g}-b{c.beta_inv:g}-{c.normalization}")
def test_exact_policy_gradient_is_gradient_of_closed_form_objective(cfg):
    table = jnp.asarray(np.random.default_rng(0).normal(size=REF_TABLE.shape), jnp.float32)
    ours = exact_pg(table, cfg)
    expected = jax.grad(closed_form_objective)(table, cfg)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("beta_inv", [100.0, 10000.0])
def test_tilted_large_beta_inv_is_stationary_at_p_ref_alpha_on_correct(alpha, beta_inv):
    cfg = rewards.regime_preset(f"tilted_a{alpha:g}_b{beta_inv:g}")
    log_target = alpha * REF_SEQ + beta_inv * (CORRECT - 1.0)  # shifted by -beta_inv: exact in float32
    target = normalized(log_target)
    restricted = normalized(jnp.where(CORRECT > 0, alpha * REF_SEQ, -jnp.inf))
    assert tv(target, restricted) < 1e-6  # e^{-beta_inv}: all mass on correct answers, ∝ p_ref^alpha there
    table = jnp.asarray(np.random.default_rng(1).normal(size=REF_TABLE.shape), jnp.float32)
    at_optimum = exact_pg(table_for(log_target), cfg)
    assert float(jnp.max(jnp.abs(at_optimum))) < 1e-5 * float(jnp.max(jnp.abs(exact_pg(table, cfg))))
    # beta_inv (R - r) is the beta_inv-free part of the reward: (alpha - 1) S_ref + S_ref - S_pi.
    np.testing.assert_allclose(beta_inv * (reward(table, cfg) - CORRECT),
                               alpha * REF_SEQ - seq_logprobs(table), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("name,cfg,log_target", [
    ("tempered_a2", rewards.regime_preset("tempered_a2"), 2.0 * REF_SEQ),
    ("tempered_a0.5", rewards.regime_preset("tempered_a0.5"), 0.5 * REF_SEQ),
    ("tilted_a2_b2", rewards.regime_preset("tilted_a2_b100", beta_inv=2.0), 2.0 * REF_SEQ + 2.0 * CORRECT),
    ("tilted_a0.5_b2", rewards.regime_preset("tilted_a0.5_b100", beta_inv=2.0), 0.5 * REF_SEQ + 2.0 * CORRECT),
    ("task_reward_kl0.5", rewards.regime_preset("task_reward", kl_coef=0.5), REF_SEQ + 2.0 * CORRECT),
])
def test_sampling_regimes_converge_to_closed_form(name, cfg, log_target):
    pi = ascend(cfg)
    assert tv(pi, normalized(log_target)) < 1e-3, name


def test_tempered_optimum_is_sequence_level_not_token_temperature():
    token_tempered = jnp.exp(seq_logprobs(2.0 * jax.nn.log_softmax(REF_TABLE, axis=-1)))
    sequence_tempered = normalized(2.0 * REF_SEQ)
    assert tv(token_tempered, sequence_tempered) > 0.05
    assert tv(ascend(rewards.regime_preset("tempered_a2")), token_tempered) > 0.05


def test_sharpening_converges_to_mode_of_p_ref():
    mode = int(jnp.argmax(REF_SEQ))
    assert SEQS[mode] == (EOS,) and CORRECT[mode] == 0  # the empty, wrong answer
    pi = ascend(rewards.regime_preset("sharpening"))
    assert float(pi[mode]) > 0.999


def test_mean_normalized_sharpening_converges_to_best_mean_logprob():
    best = int(jnp.argmax(REF_SEQ / LENGTHS))
    assert best != int(jnp.argmax(REF_SEQ)) and SEQS[best] == (0, 1, 0)
    pi = ascend(rewards.regime_preset("sharpening", normalization="mean"), lr=4.0)
    assert float(pi[best]) > 0.99


def test_task_reward_moves_all_mass_to_correct_answers():
    pi = ascend(rewards.regime_preset("task_reward"))
    assert float(jnp.sum(jnp.where(CORRECT > 0, pi, 0.0))) > 0.999


def expected_update(table, reward_cfg, aggregation, group_size=2):
    """E over every group of G on-policy samples of -grad policy_loss, with rewards, RLOO advantages and
    the REINFORCE loss computed as the trainer does (one prompt per batch)."""
    from rl_sharpen.rl import advantages, losses

    groups = np.array(np.meshgrid(*[np.arange(len(SEQS))] * group_size, indexing="ij")).reshape(group_size, -1).T
    lp = jax.lax.stop_gradient(token_logprobs(table))
    loss_cfg = losses.LossConfig(aggregation=aggregation, max_len=T)

    def update(rows):
        inputs = rewards.RewardInputs(completion_mask=jnp.asarray(MASK)[rows], correct=jnp.asarray(CORRECT)[rows],
                                      answer_ids=jnp.full(group_size, -1), ref_logprobs=REF_TOK[rows],
                                      policy_logprobs=lp[rows], group_size=group_size)
        r = rewards.compute_rewards(inputs, reward_cfg)[0]
        a = advantages.compute_advantages(r, group_size, advantages.AdvantageConfig("rloo"))
        batch = losses.LossInputs(mask=jnp.asarray(MASK)[rows], behaviour_logprobs=lp[rows], advantages=a)
        return -jax.grad(lambda th: losses.policy_loss(token_logprobs(th)[rows], batch, loss_cfg)[0])(table)

    prob = jnp.exp(seq_logprobs(table))[groups].prod(1)
    return jnp.einsum("n,nij->ij", prob, jax.lax.map(update, jnp.asarray(groups)))


@pytest.mark.parametrize("cfg", [rewards.regime_preset("task_reward"), rewards.regime_preset("sharpening", normalization="mean"),
                                 rewards.regime_preset("tempered_a2"), rewards.regime_preset("tilted_a2_b100")],
                         ids=lambda c: f"{c.mode}-a{c.alpha:g}-b{c.beta_inv:g}-{c.normalization}")
def test_trainer_update_follows_the_objective_gradient_under_a_constant_normalizer(cfg):
    """RLOO + REINFORCE + seq-mean-token-sum: E[update] = (1/max_len) grad E_pi[R] exactly, E_pi[R] in
    closed form. token-mean divides by sampled lengths and leaves that direction."""
    table = jnp.asarray(np.random.default_rng(1).normal(size=REF_TABLE.shape), jnp.float32)
    expected = jax.grad(closed_form_objective)(table, cfg) / T
    got = expected_update(table, cfg, "seq-mean-token-sum")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
    for aggregation, bounds in [("token-mean", (0.98, 0.9995)), ("seq-mean-token-mean", (0.93, 0.96))]:
        biased = np.asarray(expected_update(table, cfg, aggregation)).ravel()
        cosine = biased @ np.asarray(expected).ravel() / np.linalg.norm(biased) / np.linalg.norm(expected)
        assert bounds[0] < cosine < bounds[1], aggregation  # the cosines quoted in the rl/losses.py docstring
