"""A rollout's batch and metrics against teacher forcing of the same sequences: the temperature-1
policy log-probs that rewards and metrics use, the law actually sampled (tempered, calibrated), and
the per-group answer ids of the majority-vote reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen import models, sampling
from rl_sharpen.rl import advantages as adv
from rl_sharpen.rl import rewards as rw
from rl_sharpen.rl.calibration import CalibrationConfig, Memory
from rl_sharpen.rl.rollout import Scorer, answer_ids, rollout
from tests.test_multihost import EvenLastTokenTask
from tests.test_sampling import peaky_model

PROMPTS = [(3, 2, 4), (0, 4), (2,)]
G, T = 4, 5


def _teacher_forced(params, cfg, batch, shift=None):
    """log softmax(z / temperature - shift)[y] at the completion columns, from one forward pass."""
    pos = models.positions_from_segments(batch.segments)
    logits = models.forward(params, cfg, batch.tokens, pos, batch.segments)[0][:, -T - 1:-1]
    return logits.astype(jnp.float32) if shift is None else shift(logits.astype(jnp.float32))


def _picked(logits, batch):
    lp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(lp, batch.tokens[:, -T:, None], axis=-1)[..., 0]
    return np.asarray(picked * batch.completion_mask)


@pytest.mark.parametrize("calibrated", [False, True])
def test_rewards_and_metrics_use_temperature_one_log_probs_of_the_sampled_law(calibrated):
    """Sampling at temperature 0.5 (and from z - mu z_m with a trained memory): the batch's behaviour
    log-probs are log q(y), q = softmax((z - mu z_m) / 0.5), while old log-probs, the log-ratio reward
    S_ref - S_pi and kl_k1 = E[S_pi - S_ref] use the policy at temperature 1, pi = softmax(z)."""
    cfg, policy = peaky_model(seed=0)
    _, ref = peaky_model(seed=1)
    sc = sampling.SamplingConfig(max_new_tokens=T, num_samples=G, temperature=0.5, eos_ids=(1,), pad_id=0)
    contrast, mu = None, 0.5
    if calibrated:
        memory = Memory(cfg, CalibrationConfig(mu=mu, memory_layers=1, learning_rate=1e-2))
        state = memory.initial_state(ref, jax.random.key(3))
        out = sampling.generate(ref, cfg, [list(p) for p in PROMPTS], jax.random.key(4), sc)
        tokens, segments = out.sequences()
        state, _ = memory.update(state, tokens, segments, np.asarray(out.completion_mask, np.float32))
        contrast = memory.contrast(state)
    reward_cfg = rw.RewardConfig("sampling", alpha=0.5, beta_inv=0.0)  # (alpha - 1) S_ref + S_ref - S_pi
    batch, metrics = rollout(policy, ref, cfg, EvenLastTokenTask(), PROMPTS, jax.random.key(2), sc, reward_cfg,
                             adv.AdvantageConfig(), Scorer(cfg), contrast=contrast)
    mask = np.asarray(batch.completion_mask)
    assert mask.sum() > len(mask)  # completions of several tokens
    z = _teacher_forced(policy, cfg, batch)
    s_pi = _picked(z, batch).sum(1)
    s_ref = _picked(_teacher_forced(ref, cfg, batch), batch).sum(1)
    np.testing.assert_allclose(np.asarray(batch.old_logprobs) * mask, _picked(z, batch), atol=2e-5)
    np.testing.assert_allclose(np.asarray(batch.ref_logprobs), _picked(_teacher_forced(ref, cfg, batch), batch),
                               atol=2e-5)  # 0 after the completion, as the sampler's log-probs are
    assert (mask == 0).any() and not np.asarray(batch.old_logprobs)[mask == 0].any()
    z_sampled = z
    if calibrated:
        z_memory = _teacher_forced(contrast.params, contrast.cfg, batch)
        assert float(jnp.abs(z_memory).max()) > 0.1  # the memory has learned something to subtract
        z_sampled = z - mu * z_memory
    np.testing.assert_allclose(np.asarray(batch.behaviour_logprobs) * mask, _picked(z_sampled / 0.5, batch),
                               atol=5e-5)
    np.testing.assert_allclose(metrics["reward_log_ratio"], np.mean(s_ref - s_pi), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["kl_k1"], np.mean(s_pi - s_ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["s_pi"], np.mean(s_pi), rtol=1e-5)
    log_q = _picked(z_sampled / 0.5, batch).sum(1)
    np.testing.assert_allclose(metrics["kl_sampler_policy"], np.mean(log_q - s_pi), rtol=1e-4, atol=1e-4)


def test_answer_ids_number_equal_answers_within_each_group_and_mark_no_answer():
    answers = ["x", None, "x", "y", "y", "x", None, None]
    np.testing.assert_array_equal(answer_ids(answers, 4), [0, -1, 0, 1, 0, 1, -1, -1])
    np.testing.assert_array_equal(answer_ids(answers, 2), [0, -1, 0, 1, 0, 1, -1, -1])
    np.testing.assert_array_equal(answer_ids(answers, 8), [0, -1, 0, 1, 1, 0, -1, -1])
