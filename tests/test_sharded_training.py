"""Where the big arrays of an RL run live when it is sharded over a {"data": 2, "fsdp": 2, "tensor": 2}
mesh of 8 fake CPU devices: the train state (and its checkpoint), the rollout (KV caches, samples,
reference scores), the update and the calibration memory, each placed as `sharding.LOGICAL_RULES` say.

Placements are read from the arrays (`.sharding`) or from the compiled programs (bytes per device
from `memory_analysis`, per-device FLOPs from `cost_analysis` against those of the unsharded program),
so nothing here depends on how the code asks for them.
"""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from rl_sharpen import models, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.checkpoint import Checkpointer
from rl_sharpen.rl.calibration import memory_config
from rl_sharpen.rl.rollout import rollout
from rl_sharpen.rl.update import TrainBatch
from rl_sharpen.sampling import ancestral, kv
from rl_sharpen.task_setup import EvalConfig, make_evaluator
from tests.test_trainer import CALIBRATED, _rl_run

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
ROW_SHARDS = MESH["data"] * MESH["fsdp"]  # "batch" -> ("data", "fsdp")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny calibrated run of tests/test_trainer.py on the 3-axis mesh (2 layers, D=64, 16 rows a step)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    return _rl_run(tmp_path_factory.mktemp("sharded"), 1, mesh=MESH, **CALIBRATED,
                   **{"data.synthetic_train_problems": 64})


@pytest.fixture(scope="module")
def state(run):
    return run.initial_state()


def _mismatches(tree, shardings) -> list[str]:
    """Leaves of `tree` not placed as `shardings` (a matching pytree of Shardings)."""
    flat = jax.tree_util.tree_leaves_with_path(tree)
    wanted = jax.tree.leaves(shardings)
    assert len(flat) == len(wanted)
    return [f"{jax.tree_util.keystr(path)} {x.shape}: {_spec(x.sharding)} != {_spec(want)}"
            for (path, x), want in zip(flat, wanted) if not x.sharding.is_equivalent_to(want, x.ndim)]


def _spec(sharding):
    return getattr(sharding, "spec", sharding)


def _moment_mismatches(optimizer, opt_state, param_shardings, mesh) -> list[str]:
    """Parameter-shaped leaves of an optimizer state not sharded as their parameter, and counters not
    replicated over the whole mesh."""
    bad = []

    def moment(x, want):
        if not x.sharding.is_equivalent_to(want, x.ndim):
            bad.append(f"moment {x.shape}: {_spec(x.sharding)} != {_spec(want)}")

    def counter(x):
        if not (x.sharding.is_fully_replicated and x.sharding.device_set == set(mesh.devices.flat)):
            bad.append(f"counter {x.shape}: {_spec(x.sharding)} on {len(x.sharding.device_set)} devices")

    optax.tree_map_params(optimizer, moment, opt_state, param_shardings, transform_non_params=counter)
    return bad


def _bytes_on_one_device(tree) -> int:
    device = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == device)


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_train_state_is_sharded_by_the_rules(run, state):
    """Policy, reference and memory params as `param_shardings`; Adam's moments as their parameter;
    each device holds about 1/(fsdp x tensor) of the state."""
    mesh, cfg = run.mesh, run.model_cfg
    rules = models.param_shardings(cfg, mesh)
    memory_rules = models.param_shardings(memory_config(cfg, run.calibration_cfg), mesh)
    assert _mismatches(state["params"], rules) == []
    assert _mismatches(run.ref_params, rules) == []
    assert _mismatches(state["memory"]["params"], memory_rules) == []
    assert _moment_mismatches(run.optimizer, state["opt_state"], rules, mesh) == []
    assert _moment_mismatches(run.memory.optimizer, state["memory"]["opt_state"], memory_rules, mesh) == []
    assert state["step"].sharding.is_fully_replicated and len(state["step"].sharding.device_set) == 8
    # norms and counters are replicated, so a little over a quarter (tensor x fsdp = 4), never all of it
    assert _bytes_on_one_device(state) < 0.3 * _nbytes(state)


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_optimizer_init_places_moments_as_their_parameters(run, clip_norm):
    """`optim.init_state` with and without the clipping stage (another state layout)."""
    from rl_sharpen import optim

    optimizer = optim.make_optimizer(optim.OptimConfig(clip_norm=clip_norm, weight_decay=0.1))
    rules = models.param_shardings(run.model_cfg, run.mesh)
    state = optim.init_state(optimizer, run.policy_params)
    assert _moment_mismatches(optimizer, state, rules, run.mesh) == []
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(rules))  # not vacuous


def test_restored_checkpoint_keeps_every_sharding(run, state, tmp_path):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), every=1)
    ckpt.save(1, state, {"step": 1, "config": run.config_record}, force=True)
    restored, record = ckpt.restore(state, run.config_record)  # placed like its target, as RLRun.run does
    ckpt.close()
    assert record["step"] == 1
    assert _mismatches(restored, jax.tree.map(lambda x: x.sharding, state)) == []
    np.testing.assert_array_equal(np.asarray(restored["opt_state"][1][0].mu["embed"]),
                                  np.asarray(state["opt_state"][1][0].mu["embed"]))


class _Spy:
    """Records what kv.prefill and the decode loop are given and return (the KV caches) while the
    sampler runs; the arguments as ShapeDtypeStructs, since the decode loop donates its caches."""

    def __init__(self, monkeypatch):
        self.calls = {"prefill": [], "decode": []}
        for name, module, attr in (("prefill", kv, "prefill"), ("decode", ancestral, "_decode")):
            monkeypatch.setattr(module, attr, self._recording(name, getattr(module, attr)))

    def _recording(self, name, fn):
        def call(*args, **kwargs):
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding if x.committed
                                                                   else None) if isinstance(x, jax.Array) else x,
                                    (args, kwargs))
            out = fn(*args, **kwargs)
            self.calls[name].append((fn, abstract, out))
            return out

        return call

    def flops_per_device(self, name, index=0) -> float:
        """Per-device FLOPs of the compiled call (already compiled: a cache hit) over its unsharded FLOPs."""
        fn, (args, kwargs), _ = self.calls[name][index]
        lowered = fn.lower(*args, **kwargs)
        return lowered.compile().cost_analysis()["flops"] / lowered.cost_analysis()["flops"]


def _assert_cache_sharded(cache, rows: int, mesh):
    """k/v over rows ("batch" -> data x fsdp) and kv heads ("kv_heads" -> tensor), as the rules say:
    each device holds 1/8 of every layer's cache."""
    per_layer = isinstance(cache["k"], list)
    layers = [(name, x) for name in ("k", "v") for x in (cache[name] if per_layer else [cache[name]])]
    for name, x in layers:
        axes = kv.PER_LAYER_CACHE_AXES[name] if per_layer else models.CACHE_AXES[name]
        assert x.shape[axes.index("batch")] == rows
        want = shd.named_sharding(mesh, axes, x.shape)
        assert x.sharding.is_equivalent_to(want, x.ndim), (x.shape, x.sharding, want)
        assert np.prod(x.sharding.shard_shape(x.shape)) * ROW_SHARDS * MESH["tensor"] == x.size, x.sharding
    assert cache["segment_ids"].sharding.is_equivalent_to(
        shd.named_sharding(mesh, ("batch", "cache_sequence")), 2)


def test_rollout_caches_samples_and_scores_are_sharded(run, state, monkeypatch):
    """The calibrated rollout: the policy's and the memory's KV caches, after prefill and after the
    decode loop, and every per-row array of the TrainBatch, split over the data axes; prefill, decode
    loop and reference scoring each compute about 1/8 of their FLOPs per device."""
    spy = _Spy(monkeypatch)
    sampling_cfg = dataclasses.replace(run.sampling_cfg, max_new_tokens=4)
    problems = run.train_problems[:run.rl_cfg.prompts_per_step]
    rows = len(problems) * sampling_cfg.num_samples
    batch, _ = rollout(state["params"], run.ref_params, run.model_cfg, run.task, problems, jax.random.key(0),
                       sampling_cfg, run.reward_cfg, run.adv_cfg, run.scorer, run.mesh,
                       contrast=run.memory.contrast(state["memory"]))
    assert len(spy.calls["prefill"]) == 2 and len(spy.calls["decode"]) == 1  # policy and memory prefill, one loop
    for _, _, (cache, *_) in spy.calls["prefill"]:
        _assert_cache_sharded(cache, rows, run.mesh)
    outputs, cache, contrast_cache = spy.calls["decode"][0][2]
    _assert_cache_sharded(cache, rows, run.mesh)
    _assert_cache_sharded(contrast_cache, rows, run.mesh)
    row_sharded = shd.batch_sharding(run.mesh, 2)
    for name in ("tokens", "logprobs", "sampled_logprobs"):
        assert outputs[name].sharding.is_equivalent_to(row_sharded, 2), name
    for name in ("tokens", "segments", "completion_mask", "behaviour_logprobs", "old_logprobs", "ref_logprobs"):
        x = getattr(batch, name)
        assert x.shape[0] == rows and x.sharding.is_equivalent_to(row_sharded, 2), (name, x.sharding)
    ref_scoring = run.scorer.logprobs.lower(run.ref_params, batch.tokens, batch.segments, sampling_cfg.max_new_tokens)
    ratios = {"prefill": spy.flops_per_device("prefill"), "decode": spy.flops_per_device("decode"),
              "reference scores": ref_scoring.compile().cost_analysis()["flops"] / ref_scoring.cost_analysis()["flops"]}
    # each device computes 1/8 (rows over data x fsdp, heads and MLP over tensor): 0.13 on this model
    assert all(r < 0.2 for r in ratios.values()), ratios


class _Sampled(Exception):
    pass


def test_evaluator_samples_with_the_sharded_params_on_the_mesh(run, state, monkeypatch):
    """Validation hands the sampler (checked above) the train state's params as they are placed and
    the run's mesh, so its rows and KV cache are split like the rollout's."""
    calls = []

    def spy(params, cfg, prompts, rng, sampling_cfg, mesh=None, contrast=None, stops=None):
        calls.append((params, mesh, len(prompts) * sampling_cfg.num_samples))
        raise _Sampled

    monkeypatch.setattr(sampling, "generate", spy)
    evaluate = make_evaluator(EvalConfig(num_samples=2, max_new_tokens=4, batch_size=4, greedy=False), run.task,
                              run.model_cfg, run.sampling_cfg, run.mesh)
    with pytest.raises(_Sampled):
        evaluate(state["params"], 0)
    (params, mesh, rows), = calls
    assert mesh == run.mesh and rows % ROW_SHARDS == 0
    assert _mismatches(params, models.param_shardings(run.model_cfg, run.mesh)) == []


def _abstract_batch(run, rows: int) -> TrainBatch:
    """The shapes and placement (`trainer._place`: rows over the data axes) of one update minibatch."""
    P, T = run.sampling_cfg.prompt_width, run.sampling_cfg.max_new_tokens

    def rows_of(*shape, dtype=np.float32):
        return jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=shd.batch_sharding(run.mesh, 1 + len(shape)))

    return TrainBatch(tokens=rows_of(P + T, dtype=np.int32), segments=rows_of(P + T, dtype=np.int32),
                      completion_mask=rows_of(T), behaviour_logprobs=rows_of(T), old_logprobs=rows_of(T),
                      ref_logprobs=rows_of(T), advantages=rows_of(), correct=rows_of())


def _policy_state(state):
    return {k: v for k, v in state.items() if k != "memory"}


@pytest.fixture(scope="module")
def compiled_step(run, state):
    """The run's jitted update compiled (not run: nothing is donated) for one minibatch of 16 rows
    in 2 micro-batches of 8."""
    minibatch = run.rl_cfg.prompts_per_step * run.sampling_cfg.num_samples // run.rl_cfg.minibatches
    assert (minibatch, run.rl_cfg.micro_batch) == (16, 8)
    return run.train_step.lower(_policy_state(state), _abstract_batch(run, minibatch)).compile()


def test_update_holds_a_shard_of_the_state_per_device(run, state, compiled_step):
    """Per-device argument bytes of the compiled update: a quarter of params + Adam moments
    (fsdp x tensor), not all of them; its metrics come back replicated."""
    total = _nbytes(_policy_state(state))
    stats = compiled_step.memory_analysis()
    assert stats.argument_size_in_bytes < 0.3 * total
    for sharding in jax.tree.leaves(compiled_step.output_shardings[1]):
        assert sharding.is_fully_replicated


def test_update_returns_the_state_in_the_shardings_it_took(state, compiled_step):
    """Otherwise the next call (and the sampler, the scorer) compiles again for the new layout, and a
    restored checkpoint, placed by the rules, once more."""
    assert _mismatches(_policy_state(state), compiled_step.output_shardings[0]) == []


def test_micro_batches_stay_split_over_the_data_axes(run, state, compiled_step):
    """Per-device FLOPs of the update (2 micro-batches of 8 rows) over those of the unsharded program
    (both analyses count the micro-batch loop's body once): about 1/8 when each micro-batch is split
    over data x fsdp and the weights over tensor, as with a single micro-batch (0.13); 0.24 if the
    reshape into micro-batches moves the row split onto the micro-batch index."""
    lowered = run.train_step.lower(_policy_state(state), _abstract_batch(run, 16))
    unsharded = lowered.cost_analysis()["flops"]
    per_device = compiled_step.cost_analysis()["flops"]
    assert per_device < 0.18 * unsharded, per_device / unsharded


def test_memory_update_keeps_its_state_placed_by_the_rules(run, state):
    memory = jax.tree.map(lambda x: x.copy(), state["memory"])  # eager copies keep the placement
    placed = jax.tree.map(lambda x: x.sharding, memory)
    P, T, rows = run.sampling_cfg.prompt_width, run.sampling_cfg.max_new_tokens, 16
    tokens = np.ones((rows, P + T), np.int32)
    mask = np.ones((rows, T), np.float32)
    put = [jax.device_put(x, shd.batch_sharding(run.mesh, x.ndim)) for x in (tokens, tokens, mask)]
    updated, _ = run.memory.update(memory, *put)  # donates `memory`
    assert _mismatches(updated, placed) == []


def test_sft_batches_are_split_over_the_data_axes(run, tmp_path, monkeypatch):
    """Each SFT step's rows go over ("data", "fsdp"): every device trains on its share, not the whole batch."""
    from rl_sharpen import sft

    placements, make_step = [], sft.make_sft_step

    def recording(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def step_fn(params, opt_state, *batch):
            placements.extend(x.sharding for x in batch)
            return step(params, opt_state, *batch)
        return step_fn

    monkeypatch.setattr(sft, "make_sft_step", recording)
    task = run.task  # the synthetic task of the tiny config
    params = jax.tree.map(lambda x: x.copy(), run.policy_params)
    sft.train_sft(params, run.model_cfg, task.sft_pairs, sft.SFTConfig(steps=1, batch_size=8), run.optim_cfg,
                  task.pad_id, str(tmp_path))
    assert len(placements) == 3
    for sharding in placements:
        assert sharding.is_equivalent_to(shd.batch_sharding(run.mesh, 2), 2), _spec(sharding)


def test_a_step_whose_rows_the_data_axes_do_not_divide_runs(tmp_path):
    """6 rows over 4 row shards (data x fsdp): the update and the memory replicate the rows over fsdp,
    as the sampler does, instead of failing after the rollout."""
    small = _rl_run(tmp_path, 1, mesh=MESH, **CALIBRATED, **{"rl.prompts_per_step": 3, "sampling.num_samples": 2,
                                                           "rl.micro_batch": 6})
    small.run()
    with open(tmp_path / "train.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1]


def test_rows_that_do_not_divide_over_the_batch_shards_are_reported(tmp_path, caplog):
    """Rows that do not divide are replicated over the data axes (`sharding._fits`): correct, but each
    device then computes the same rows, which a pod user must hear about."""
    import logging

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "even", 1, mesh={"data": 4, "fsdp": 2, "tensor": 1}, **{"rl.micro_batch": 8})
    assert "batch shards" not in caplog.text
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "odd", 1, mesh={"data": 8, "fsdp": 1, "tensor": 1}, **{"rl.micro_batch": 4})
    assert ("rl.micro_batch: 4 sequences do not divide over the 8 batch shards of the mesh ({'data': 8, 'fsdp': 1, "
            "'tensor': 1}), so devices compute the same rows, each device holding the activations of 4 of them: use a "
            "multiple of 8") in caplog.text
    assert "rl.prompts_per_step x sampling.num_samples" not in caplog.text  # 16 rows a step divide
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # 4 rows: over data (4), replicated over fsdp (2)
        _rl_run(tmp_path / "part", 1, mesh={"data": 4, "fsdp": 2, "tensor": 1}, **{"rl.micro_batch": 4})
    assert "each device holding the activations of 1 of them: use a multiple of 8" in caplog.text


def test_teacher_forced_passes_keep_their_rows_sharded_over_fsdp():
    """Rows over fsdp meet weights whose hidden dim is over fsdp too: unconstrained, XLA gathered every row
    onto every device and all-reduced partial logits (per device: the logits of all rows). Scoring and
    its gradient hold a row share, and the scorer's passes of `rows` rows hold less again, same values."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    import jax.numpy as jnp

    from rl_sharpen.rl.rollout import Scorer
    from rl_sharpen.rl.update import completion_logprobs

    cfg = models.ModelConfig("llama", 4096, 64, 128, 2, 4, 2, 16, max_position_embeddings=512)
    mesh = shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    shardings = models.param_shardings(cfg, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            models.abstract_params(cfg), shardings)
    R, T, N, chunk = 64, 256, 128, 128
    rows = jax.ShapeDtypeStruct((R, T), jnp.int32, sharding=shd.batch_sharding(mesh, 2, (R, T)))
    all_rows_logits = R * chunk * cfg.vocab_size * 4  # one chunk's float32 logits of every row

    def temp_bytes(fn):
        return fn.lower(abstract, rows, rows, N).compile().memory_analysis().temp_size_in_bytes

    def gradient(mesh):
        return jax.jit(jax.grad(lambda p, t, s, n: completion_logprobs(p, cfg, t, s, n, chunk=chunk, mesh=mesh).sum()),
                       static_argnums=3)

    whole, grouped = Scorer(cfg, chunk, 0, mesh), Scorer(cfg, chunk, 16, mesh)
    unconstrained = temp_bytes(Scorer(cfg, chunk).logprobs)  # inputs sharded alike, no mesh inside
    assert unconstrained > all_rows_logits  # the case this guards against: 256 MiB
    assert temp_bytes(whole.logprobs) < all_rows_logits / 4  # 26 MiB
    assert temp_bytes(grouped.logprobs) < temp_bytes(whole.logprobs) / 2  # 5.5 MiB
    assert temp_bytes(gradient(mesh)) < temp_bytes(gradient(None)) / 3  # 90 against 414 MiB

    params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
    tokens = jax.device_put(jax.random.randint(jax.random.key(1), (R, T), 0, cfg.vocab_size), rows.sharding)
    segments = jax.device_put(jnp.ones((R, T), jnp.int32), rows.sharding)
    expected = completion_logprobs(models.init_params(cfg, jax.random.key(0)), cfg, np.asarray(tokens),
                                   np.ones((R, T), np.int32), N, chunk=chunk)
    for scorer in (whole, grouped):
        np.testing.assert_allclose(np.asarray(scorer.logprobs(params, tokens, segments, N)), np.asarray(expected),
                                   atol=2e-5)
