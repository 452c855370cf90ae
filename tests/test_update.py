"""The jitted policy update: exact gradient accumulation, and a sharded step equal to one device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_sharpen import models
from rl_sharpen import sharding as shd
from rl_sharpen.optim import OptimConfig, make_optimizer
from rl_sharpen.rl import losses
from rl_sharpen.rl.update import TrainBatch, completion_logprobs, make_train_step

CFG = models.ModelConfig("llama", 40, 32, 64, 1, 4, 2, 8)
G, P, T = 4, 5, 6


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(2, P + 1, n)
    comp_len = rng.integers(1, T + 1, n)
    tokens = rng.integers(3, CFG.vocab_size, (n, P + T)).astype(np.int32)
    seg = np.zeros((n, P + T), np.int32)
    mask = np.zeros((n, T), np.float32)
    for i in range(n):
        seg[i, P - prompt_len[i]:P + comp_len[i]] = 1
        mask[i, :comp_len[i]] = 1
    lp = -rng.uniform(0.5, 3.0, (n, T)).astype(np.float32) * mask
    return TrainBatch(tokens=jnp.asarray(tokens), segments=jnp.asarray(seg), completion_mask=jnp.asarray(mask),
                      behaviour_logprobs=jnp.asarray(lp), old_logprobs=jnp.asarray(lp),
                      ref_logprobs=jnp.asarray(lp - 0.1), advantages=jnp.asarray(rng.normal(size=n), jnp.float32),
                      correct=jnp.asarray(rng.integers(0, 2, n), jnp.float32))


def _state(params, optimizer):
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


@pytest.mark.parametrize("loss,aggregation", [("reinforce", "token-mean"), ("ppo_clip", "seq-mean-token-sum"),
                                              ("alpha_dpg", "token-mean")])
def test_micro_batches_equal_one_big_batch(aggregation, loss):
    params = models.init_params(CFG, jax.random.key(0))
    loss_cfg = losses.LossConfig(name=loss, aggregation=aggregation, max_len=T, kl_coef=0.05, dpg_alpha=0.5)
    opt = optax.sgd(1.0)  # params move by exactly -grad, so params compare gradients
    batch = _batch()
    correct = np.array(batch.correct).reshape(-1, G)
    correct[0], correct[1, 0] = 0, 1  # a group without a correct sample; groups of unequal weights
    batch = dataclasses.replace(batch, correct=jnp.asarray(correct.reshape(-1)))
    one = jax.jit(make_train_step(CFG, loss_cfg, opt, num_micro=1, group_size=G, remat=False))
    four = jax.jit(make_train_step(CFG, loss_cfg, opt, num_micro=4, group_size=G, remat=True))
    s1, m1 = one(_state(params, opt), batch)
    s4, m4 = four(_state(params, opt), batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), s1["params"], s4["params"])
    assert m1.keys() == m4.keys()
    for name in m1:  # every metric, the group means of alpha-DPG (dpg_ess, dpg_target_groups) included
        np.testing.assert_allclose(m1[name], m4[name], rtol=1e-5, atol=1e-7, err_msg=name)
    if loss == "alpha_dpg":
        assert float(m1["dpg_target_groups"]) == 0.75


@pytest.mark.parametrize("chunk", [3, 512])
def test_completion_logprobs_are_the_last_columns_of_teacher_forcing(chunk):
    """Projecting only the completion positions onto the vocabulary changes nothing, chunked or not."""
    params = models.init_params(CFG, jax.random.key(2))
    batch = _batch(8, seed=5)
    full = models.token_logprobs(params, CFG, batch.tokens, batch.segments, chunk=512)
    got = completion_logprobs(params, CFG, batch.tokens, batch.segments, T, chunk=chunk)
    assert got.shape == (8, T)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full)[:, P - 1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk,rows", [(4, 0), (512, 0), (4, 2)])
def test_chunked_token_statistics_equal_those_of_the_full_logits(chunk, rows):
    """The scorer's entropy / logsumexp / mean over completion positions never materializes [N, P+T, V]
    (nor, with `rows`, more than that many rows' activations); so are its log-probs."""
    from rl_sharpen.rl import rewards
    from rl_sharpen.rl.rollout import Scorer

    params = models.init_params(CFG, jax.random.key(3))
    batch = _batch(8, seed=6)
    logits = models.forward(params, CFG, batch.tokens, models.positions_from_segments(batch.segments),
                            batch.segments)[0]
    expected = rewards.token_statistics(logits[:, P - 1:-1])
    scorer = Scorer(CFG, chunk, rows)
    got = scorer.token_stats(params, batch.tokens, batch.segments, T)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(expected[name]), rtol=1e-5, atol=1e-5)
    logprobs = jax.nn.log_softmax(logits[:, P - 1:-1])
    expected_lp = jnp.take_along_axis(logprobs, batch.tokens[:, P:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(scorer.logprobs(params, batch.tokens, batch.segments, T)),
                               np.asarray(expected_lp), atol=2e-5)


def test_reinforce_gradient_is_advantage_weighted_score():
    """On-policy (w = 1), token-mean: grad = -(1/sum m) sum_i A_i sum_t m_it grad log pi(y_it)."""
    params = models.init_params(CFG, jax.random.key(1))
    batch = _batch(8, seed=3)
    lp = completion_logprobs(params, CFG, batch.tokens, batch.segments, T)
    batch = TrainBatch(**{**batch.__dict__, "behaviour_logprobs": lp, "old_logprobs": lp})
    loss_cfg = losses.LossConfig(name="reinforce", aggregation="token-mean")
    opt = make_optimizer(OptimConfig(learning_rate=1.0, clip_norm=0.0))

    def manual(p):
        lp = completion_logprobs(p, CFG, batch.tokens, batch.segments, T)
        return -jnp.sum(batch.advantages[:, None] * lp * batch.completion_mask) / batch.completion_mask.sum()

    want = optax.tree.norm(jax.grad(manual)(params))
    _, metrics = jax.jit(make_train_step(CFG, loss_cfg, opt, num_micro=2, group_size=G))(_state(params, opt), batch)
    np.testing.assert_allclose(metrics["grad_norm"], want, rtol=1e-4)


@pytest.mark.parametrize("num_micro", [1, 2])
def test_a_step_moves_params_down_the_gradient_of_the_loss_over_non_empty_sequences(num_micro):
    """seq-mean-token-sum, on-policy, a batch whose first sequence is empty (no completion token): the
    loss is -(1/(N - 1)) sum_i A_i sum_t m_it log pi(y_it) / max_len over the N - 1 sequences with
    tokens, and one SGD step at rate lr is theta - lr grad(loss)."""
    params = models.init_params(CFG, jax.random.key(2))
    batch = _batch(8, seed=5)
    mask = batch.completion_mask.at[0].set(0.0)
    lp = completion_logprobs(params, CFG, batch.tokens, batch.segments, T)
    batch = TrainBatch(**{**batch.__dict__, "completion_mask": mask, "behaviour_logprobs": lp, "old_logprobs": lp})
    loss_cfg = losses.LossConfig(name="reinforce", aggregation="seq-mean-token-sum", max_len=T)
    lr = 0.1

    def manual(p):
        lp = completion_logprobs(p, CFG, batch.tokens, batch.segments, T)
        return -jnp.sum(batch.advantages[:, None] * lp * mask) / T / 7  # 7 non-empty sequences

    opt = optax.sgd(lr)
    state, metrics = jax.jit(make_train_step(CFG, loss_cfg, opt, num_micro=num_micro, group_size=G))(
        _state(params, opt), batch)
    np.testing.assert_allclose(metrics["loss"], manual(params), rtol=1e-5)
    want = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(manual)(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state["params"], want)
    assert manual(state["params"]) < manual(params)


@pytest.mark.parametrize("family", models.FAMILIES)
@pytest.mark.parametrize("decay_norms_and_biases", [False, True])
def test_weight_decay_shrinks_the_weight_matrices_and_not_norms_or_biases(family, decay_norms_and_biases):
    """With zero gradients Adam's step is 0, so one AdamW update at rate lr is theta <- (1 - lr wd) theta
    on the decayed leaves and leaves norm scales (1) and biases alone, unless asked otherwise."""
    cfg = dataclasses.replace(CFG, family=family)
    params = jax.tree.map(lambda p: p + 0.5, models.init_params(cfg, jax.random.key(0)))  # biases nonzero
    mask = models.weight_decay_mask(cfg)
    not_decayed = sorted(jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(mask) if not v)
    want = {"llama": [], "qwen2": ["['layers']['k_bias']", "['layers']['q_bias']", "['layers']['v_bias']"],
            "qwen3": ["['layers']['k_norm']", "['layers']['q_norm']"]}[family]
    assert not_decayed == sorted(want + ["['final_norm']", "['layers']['attn_norm']", "['layers']['mlp_norm']"])
    opt = make_optimizer(OptimConfig(learning_rate=0.5, weight_decay=0.1, clip_norm=0.0,
                                     decay_norms_and_biases=decay_norms_and_biases), mask)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        shrink = 0.05 if decay_norms_and_biases or jax.tree_util.keystr(path) not in not_decayed else 0.0
        np.testing.assert_allclose(_leaf(updates, path), -shrink * p, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


@pytest.mark.parametrize("clip_norm,second_update", [(1.0, -1.0), (0.0, -0.7408)])
def test_adam_with_clipping_by_hand(clip_norm, second_update):
    """Gradients 10 then 1, lr 1, b1 0.9, b2 0.999. Clipped to norm 1 both are 1, and Adam's second
    update is m_hat / sqrt(v_hat) = 1. Unclipped: m = 1.0, v = 0.1009, so the update is
    -(1.0 / 0.19) / sqrt(0.1009 / 0.001999) = -0.7408 (one update alone would not tell: Adam's first
    step is -sign(g) at any scale)."""
    opt = make_optimizer(OptimConfig(learning_rate=1.0, clip_norm=clip_norm))
    params = {"w": jnp.zeros((1,), jnp.float32)}
    state = opt.init(params)
    for g in (10.0, 1.0):
        updates, state = opt.update({"w": jnp.full((1,), g)}, state, params)
    np.testing.assert_allclose(updates["w"], [second_update], rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_optimizer_state_keeps_its_dtypes_after_an_update(dtype):
    """A checkpoint restores into the initial state's dtypes, so an update must not change them
    (bfloat16 params with float32 gradients turned Adam's first moment from bfloat16 into float32)."""
    opt = make_optimizer(OptimConfig(learning_rate=1e-2))
    params = {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros((4,), dtype)}
    state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float32), params)  # accumulated in float32
    _, updated = opt.update(grads, state, params)
    assert jax.tree.map(lambda x: x.dtype, updated) == jax.tree.map(lambda x: x.dtype, state)


def test_bfloat16_params_get_the_adam_updates_of_float32_params():
    """Adam's second moment in bfloat16 stops following the gradients (b2 = 0.999 moves it by less than
    its rounding step): with it, the updates of 1000 steps of constant gradients drifted up to 20%
    above those of float32 parameters. Both moments are float32 now, so the updates are equal."""
    opt = make_optimizer(OptimConfig(learning_rate=1.0, clip_norm=0.0))
    grads = {"w": jnp.array([1.0, 0.5, 2.0, 1e-3], jnp.float32)}

    def updates(dtype):
        params = {"w": jnp.zeros((4,), dtype)}
        def body(state, _):
            u, state = opt.update(grads, state, params)
            return state, u["w"]
        return np.asarray(jax.lax.scan(body, opt.init(params), None, length=1000)[1])

    np.testing.assert_array_equal(updates(jnp.bfloat16), updates(jnp.float32))


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_warmup_starts_above_zero_and_reaches_the_peak_at_its_last_update(kind):
    from rl_sharpen.optim import schedule

    cfg = OptimConfig(learning_rate=2.0, warmup_steps=4, schedule=kind, total_steps=12, min_lr_ratio=0.25)
    rates = np.array([float(schedule(cfg)(t)) for t in range(14)])
    np.testing.assert_allclose(rates[:5], [0.5, 1.0, 1.5, 2.0, 2.0], rtol=1e-6)
    if kind == "cosine":  # from the peak at update 4 to the floor at update 4 + (12 - 4)
        t = np.arange(4, 14)
        expected = 2.0 * (0.25 + 0.75 * 0.5 * (1 + np.cos(np.pi * np.minimum(t - 4, 8) / 8)))
        np.testing.assert_allclose(rates[4:], expected, rtol=1e-5)
    else:
        np.testing.assert_allclose(rates[4:], 2.0)


def test_a_checkpoint_with_a_bfloat16_second_moment_restores_into_float32(tmp_path):
    """Checkpoints of bfloat16 runs saved before the moments were float32 still resume."""
    from rl_sharpen.checkpoint import Checkpointer
    from rl_sharpen.optim import schedule

    cfg = OptimConfig(learning_rate=1e-3, clip_norm=0.0)
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    before = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                         mu_dtype=jnp.float32)  # the optimizer of those checkpoints
    _, old_state = before.update({"w": jnp.full((4,), 0.5, jnp.float32)}, before.init(params), params)
    assert old_state[0].nu["w"].dtype == jnp.bfloat16
    Checkpointer(str(tmp_path), every=1).save(1, {"params": params, "opt_state": old_state}, {"config": {}})
    opt = make_optimizer(cfg)
    abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": opt.init(p)}, params)
    state, _ = Checkpointer(str(tmp_path), every=1).restore(abstract, {})
    assert state["opt_state"][0].nu["w"].dtype == jnp.float32
    np.testing.assert_array_equal(state["opt_state"][0].nu["w"], old_state[0].nu["w"].astype(jnp.float32))


def test_sharded_step_matches_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg = CFG
    params = models.init_params(cfg, jax.random.key(2))
    sharded_params = models.init_params(cfg, jax.random.key(2), mesh=mesh)
    loss_cfg = losses.LossConfig(name="reinforce", aggregation="token-mean", kl_coef=0.02)
    opt = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0, clip_norm=1.0))
    step = make_train_step(cfg, loss_cfg, opt, num_micro=2, group_size=G)
    batch = _batch(16, seed=5)
    s1, m1 = jax.jit(step)(_state(params, opt), batch)
    sharded_batch = jax.tree.map(lambda x: jax.device_put(x, shd.batch_sharding(mesh, x.ndim)), batch)
    state = jax.jit(lambda p: _state(p, opt))(sharded_params)
    s8, m8 = jax.jit(step, donate_argnums=0)(state, sharded_batch)
    assert s8["params"]["layers"]["gate"].sharding.spec == shd.logical_to_spec(("layers", "embed", "mlp"), mesh)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-5)
    # Adam's first step is lr * g / (|g| + eps): for a gradient entry near zero a different reduction
    # order moves the update by a visible fraction of lr, so the updates agree to 1% of lr (a sharding
    # bug moves them by O(lr)).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4),
                 s1["params"], s8["params"])


@pytest.mark.parametrize("name,extra", [("ppo_clip", {}), ("reinforce", {"kl_coef": 0.1}), ("alpha_dpg", {})])
def test_train_step_feeds_old_and_ref_logprobs_to_the_loss(name, extra):
    """old != behaviour (a sampler at T != 1) and ref != behaviour: the step's loss is policy_loss's."""
    cfg = models.ModelConfig("llama", 40, 32, 64, 1, 4, 2, 8)
    rng = np.random.default_rng(0)
    n, P, T = 8, 5, 6
    tokens = jnp.asarray(rng.integers(3, 40, (n, P + T)), jnp.int32)
    seg = jnp.ones((n, P + T), jnp.int32)
    mask = jnp.ones((n, T), jnp.float32)
    params = models.init_params(cfg, jax.random.key(0))
    old = completion_logprobs(params, cfg, tokens, seg, T)
    behaviour = old + jnp.asarray(rng.normal(0, 0.5, (n, T)), jnp.float32)
    ref = old - jnp.asarray(rng.uniform(0, 1, (n, T)), jnp.float32)
    adv, correct = jnp.asarray(rng.normal(size=n), jnp.float32), jnp.asarray([1, 1, 0, 1, 1, 0, 1, 1], jnp.float32)
    loss_cfg = losses.LossConfig(name, aggregation="token-mean", **extra)
    expected, _ = losses.policy_loss(old, losses.LossInputs(mask, behaviour, adv, old, ref, correct, group_size=4),
                                     loss_cfg)
    step = make_train_step(cfg, loss_cfg, optax.sgd(1.0), num_micro=2, group_size=4)
    _, m = jax.jit(step)({"params": params, "opt_state": optax.sgd(1.0).init(params), "step": jnp.zeros((), jnp.int32)},
                         TrainBatch(tokens, seg, mask, behaviour, old, ref, adv, correct))
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-5, atol=1e-6)
