"""Distribution-level calibration: the memory network's init and NLL updates, and its config errors
(the calibrated sampling law is checked by enumeration in test_sampling.py, the trainer's resume
with a memory in test_trainer.py)."""

import jax
import numpy as np
import pytest

from rl_sharpen import models, sampling
from rl_sharpen.rl.calibration import CalibrationConfig, Memory, init_memory
from tests.test_sampling import peaky_model

PROMPTS = [[3, 2, 4], [0, 4]]


def _rollouts(cfg, params, n=8):
    out = sampling.generate(params, cfg, PROMPTS, jax.random.key(1),
                            sampling.SamplingConfig(max_new_tokens=3, num_samples=n, eos_ids=(1,)))
    tokens, segments = out.sequences()
    return tokens, segments, np.asarray(out.completion_mask, np.float32)


def test_memory_nll_is_the_completion_token_mean_and_falls_with_updates():
    cfg, params = peaky_model()
    cal = CalibrationConfig(mu=0.5, memory_layers=1, learning_rate=1e-2, updates_per_step=3)
    memory = Memory(cfg, cal)
    state = memory.initial_state(params, jax.random.key(0))
    assert memory.cfg.num_layers == 1 and state["params"]["layers"]["q"].shape[0] == 1
    tokens, segments, mask = _rollouts(cfg, params)
    lp = np.asarray(models.token_logprobs(state["params"], memory.cfg, tokens, segments))[:, -mask.shape[1]:]
    expected = -(lp * mask).sum() / mask.sum()
    nlls = []
    for _ in range(4):
        state, metrics = memory.update(state, tokens, segments, mask)
        nlls.append(float(metrics["memory_nll"]))
    np.testing.assert_allclose(nlls[0], expected, rtol=1e-5)
    # 12 Adam steps at lr 1e-2 learn a batch of 16 short rollouts: 0.19-0.48 nats over 16 sampling seeds
    assert nlls[-1] < nlls[0] - 0.1, nlls


def test_reference_init_is_the_reference_truncated():
    cfg, params = peaky_model()
    mcfg, mparams = init_memory(cfg, params, CalibrationConfig(mu=1.0, memory_init="reference"), jax.random.key(0))
    tokens = np.array([[3, 2, 4, 0, 2]], np.int32)
    seg = np.ones_like(tokens)
    pos = models.positions_from_segments(seg)
    np.testing.assert_array_equal(np.asarray(models.forward(mparams, mcfg, tokens, pos, seg)[0]),
                                  np.asarray(models.forward(params, cfg, tokens, pos, seg)[0]))
    mcfg, mparams = init_memory(cfg, params, CalibrationConfig(mu=1.0, memory_init="reference", memory_layers=1),
                                jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(mparams["layers"]["down"]), np.asarray(params["layers"]["down"][:1]))
    assert mparams["lm_head"] is not params["lm_head"]  # a copy: training the memory leaves p_ref alone


def test_random_memory_starts_empty():
    """An empty memory: every logit is 0, so calibrated sampling starts as plain sampling."""
    cfg, params = peaky_model()
    mcfg, mparams = init_memory(cfg, params, CalibrationConfig(mu=1.0), jax.random.key(0))
    tokens, segments, _ = _rollouts(cfg, params)
    logits = np.asarray(models.forward(mparams, mcfg, tokens, models.positions_from_segments(segments), segments)[0])
    np.testing.assert_array_equal(logits, 0.0)
    assert not mcfg.tie_embeddings and np.abs(np.asarray(mparams["embed"])).max() > 0


@pytest.mark.parametrize("field,value,allowed", [("mu", -0.1, ">= 0"), ("memory_layers", -1, ">= 0"),
                                                 ("memory_init", "policy", "'random' or 'reference'"),
                                                 ("learning_rate", 0.0, "> 0"), ("updates_per_step", 0, ">= 1")])
def test_bad_config_names_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=f"CalibrationConfig.{field}=.*allowed: .*{allowed}"):
        CalibrationConfig(**{field: value})


def test_reference_memory_deeper_than_the_reference_is_refused():
    cfg, params = peaky_model()
    with pytest.raises(ValueError, match="memory_layers=3.*at most the reference's 2 layers"):
        init_memory(cfg, params, CalibrationConfig(mu=1.0, memory_init="reference", memory_layers=3), jax.random.key(0))


def test_random_memory_of_a_tied_policy_starts_empty():
    """Every paper model ties its embeddings; the random memory must still get its own zero unembedding."""
    cfg = models.ModelConfig("llama", 5, 16, 32, 2, 2, 1, 8, max_position_embeddings=64, tie_embeddings=True)
    params = models.init_params(cfg, jax.random.key(0))
    mcfg, mparams = init_memory(cfg, params, CalibrationConfig(mu=1.0, memory_layers=1), jax.random.key(1))
    tok = np.array([[3, 2, 4, 0]], np.int32)
    seg = np.ones_like(tok)
    logits = models.forward(mparams, mcfg, tok, models.positions_from_segments(seg), seg)[0]
    assert not mcfg.tie_embeddings
    np.testing.assert_array_equal(np.asarray(logits), 0.0)


def test_memory_updates_over_micro_batches_equal_one_update_over_the_whole_rollout():
    """The trainer gives the memory its update's micro-batch: the gradient summed over micro-batches of
    4 rows (each divided by the whole batch's token count) is the whole batch's, and so is the step."""
    cfg, params = peaky_model()
    cal = CalibrationConfig(mu=0.5, memory_layers=1, memory_init="reference", learning_rate=1e-2)
    tokens, segments, mask = _rollouts(cfg, params)  # 16 rows with completions of 1-3 tokens
    results = []
    for micro_rows, remat in [(0, False), (4, False), (4, True)]:
        memory = Memory(cfg, cal, micro_rows=micro_rows, remat=remat)
        state = memory.initial_state(params, jax.random.key(0))
        program = str(jax.make_jaxpr(memory._step)(state["params"], state["opt_state"], tokens, segments, mask))
        assert ("length=4" in program) == bool(micro_rows)  # 16 rows in 4 micro-batches of 4
        state, metrics = memory.update(state, tokens, segments, mask)
        results.append((float(metrics["memory_nll"]), state["params"]))
    (nll, whole), *parts = results
    for part_nll, part in parts:
        np.testing.assert_allclose(part_nll, nll, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), part, whole)
    assert not np.array_equal(whole["layers"]["q"], params["layers"]["q"][:1])  # the step moved it
