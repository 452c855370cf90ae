"""Sharded models on 8 fake CPU devices: same numbers as one device, weights where the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rl_sharpen import models
from rl_sharpen import sharding as shd
from tests import hf_models


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    return shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_make_mesh_fills_the_rest():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    m = shd.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs 12 devices"):
        shd.make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="axis sizes must be integers >= 1, or -1"):
        shd.make_mesh({"data": -1, "fsdp": 0})


def test_rules_refuse_two_dims_on_one_mesh_axis(mesh):
    assert shd.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert shd.logical_to_spec(("batch", None), mesh) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="both map to mesh axis 'tensor'"):
        shd.logical_to_spec(("heads", "mlp"), mesh)
    with pytest.raises(KeyError, match="no rule"):
        shd.logical_to_spec(("nonsense",), mesh)
    # a rule may name one mesh axis without a tuple: "fsdp" is ("fsdp",), not 'f', 's', 'd', 'p'
    bare = {**shd.LOGICAL_RULES, "embed": "fsdp"}
    assert shd.logical_to_spec(("embed", "mlp"), mesh, bare) == P("fsdp", "tensor")
    with pytest.raises(ValueError, match="both map to mesh axis 'fsdp'"):
        shd.logical_to_spec(("embed", "batch"), mesh, bare)


def test_rules_and_mesh_that_do_not_fit_are_refused(mesh):
    """A misspelt mesh axis in the rules, or a mesh axis no rule uses, would replicate silently."""
    typo = {**shd.LOGICAL_RULES, "mlp": ("tensr",)}
    with pytest.raises(ValueError, match=r"rules name mesh axis 'tensr', which is neither one of the mesh's axes"):
        shd.logical_to_spec(("embed", "mlp"), mesh, typo)
    other = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    with pytest.raises(ValueError, match=r"mesh axis 'model' \(size 2\) is used by no sharding rule"):
        shd.named_sharding(other, ("embed", "mlp"))
    # the library's axes that a mesh lacks are dropped
    assert shd.logical_to_spec(("batch", "mlp"), shd.make_mesh({"data": 8})) == P("data", None)


def test_a_dimension_keeps_the_mesh_axes_whose_product_divides_it(mesh):
    """"batch" maps to (data, fsdp), 2 x 2 shards: a dimension of 4 takes both, 6 and 2 only data
    (6 is not a multiple of 4), 3 neither (replicated)."""
    spec = {n: shd.named_sharding(mesh, ("batch",), (n,)).spec for n in (4, 6, 2, 3)}
    assert spec == {4: P(("data", "fsdp")), 6: P("data"), 2: P("data"), 3: P(None)}


def test_each_replicated_dimension_is_logged_once_however_many_came_before(mesh, monkeypatch):
    logged = []
    monkeypatch.setattr(shd.logging, "info", lambda message, *args: logged.append(message % args))
    for _ in range(3):
        for size in range(100_001, 100_041, 2):  # odd sizes no other test uses: none divides 2 tensor shards
            shd.named_sharding(mesh, ("mlp",), (size,))
    assert len(logged) == len(set(logged)) == 20
    assert logged[-1].startswith("dim of size 100039 not divisible by mesh axis 'tensor' (2)")


def test_parameters_are_laid_out_as_designed(mesh):
    """Matrices over fsdp x tensor (vocab, heads, kv heads, MLP width over tensor; hidden over fsdp),
    layers and norms replicated. 4 heads and 2 kv heads divide the 2 tensor shards."""
    cfg = models.ModelConfig("qwen3", 64, 16, 32, 2, 4, 2, 8)
    specs = jax.tree.map(lambda s: s.spec, models.param_shardings(cfg, mesh))
    want = {"embed": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"), "final_norm": P(None),
            "layers": {"attn_norm": P(None, None), "mlp_norm": P(None, None), "q_norm": P(None, None),
                       "k_norm": P(None, None), "q": P(None, "fsdp", "tensor", None),
                       "k": P(None, "fsdp", "tensor", None), "v": P(None, "fsdp", "tensor", None),
                       "o": P(None, "tensor", None, "fsdp"), "gate": P(None, "fsdp", "tensor"),
                       "up": P(None, "fsdp", "tensor"), "down": P(None, "tensor", "fsdp")}}
    assert specs == want


@pytest.mark.parametrize("family", models.FAMILIES)
def test_sharded_forward_equals_single_device(mesh, family, tmp_path):
    hf_models.save_tiny_hf_model(family, tie=False, path=str(tmp_path))
    cfg, params = models.load_hf(str(tmp_path))
    cfg_s, sharded = models.load_hf(str(tmp_path), mesh=mesh)
    q = sharded["layers"]["q"]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert sharded["layers"]["down"].sharding.spec == P(None, "tensor", "fsdp")
    assert sharded["embed"].sharding.spec == P(None, "fsdp")  # vocab 97 is odd: replicated over tensor
    assert sharded["lm_head"].sharding.spec == P("fsdp", None)  # vocab 97 is odd: replicated over tensor
    # each device holds 1/4 of q (fsdp x tensor), not a replica
    assert q.addressable_shards[0].data.size * 4 == q.size

    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (8, 12)), jnp.int32)
    segments = jnp.asarray(np.arange(12)[None, :] >= rng.integers(0, 6, (8, 1)), jnp.int32)
    positions = models.positions_from_segments(segments)
    ref, _ = models.forward(params, cfg, tokens, positions, segments)
    batch = shd.batch_sharding(mesh, 2)
    fwd = jax.jit(models.forward, static_argnums=1)
    out, _ = fwd(sharded, cfg_s, *(jax.device_put(x, batch) for x in (tokens, positions, segments)))
    real = np.asarray(segments) != 0
    assert np.abs(np.asarray(out) - np.asarray(ref))[real].max() <= 1e-5


def test_policy_and_reference_both_sharded(mesh):
    cfg = models.ModelConfig("qwen2", 128, 64, 128, 2, 4, 2, 16)
    policy = models.init_params(cfg, jax.random.key(0), mesh=mesh)
    ref_mesh = shd.make_mesh({"data": 4, "tensor": 2})
    reference = models.init_params(cfg, jax.random.key(0), mesh=ref_mesh)
    for tree, m in ((policy, mesh), (reference, ref_mesh)):
        leaf = tree["layers"]["gate"]
        assert leaf.sharding.mesh.shape == m.shape
        assert "tensor" in jax.tree.leaves(tuple(leaf.sharding.spec))
    np.testing.assert_array_equal(np.asarray(policy["layers"]["gate"]), np.asarray(reference["layers"]["gate"]))
    assert models.param_shardings(cfg, mesh)["layers"]["q_bias"].spec == P(None, "tensor", None)


@pytest.mark.parametrize("config, preset", [("qwen25_3b_math", "qwen2.5-3b-instruct"),
                                            ("llama32_3b_math", "llama-3.2-3b-instruct"),
                                            ("qwen3_4b_math", "qwen3-4b-instruct-2507")])
def test_paper_configs_spread_the_training_state_over_every_device(config, preset):
    """policy + reference + Adam's two moments + gradients, float32: 58-75 GiB for these models, an
    eighth of it per device on 8 devices (each device holding all of it would fill an 80 GB card)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    from rl_sharpen.models.registry import param_shardings
    from tests.experiment_configs import get_config

    c = get_config(config, "task_reward")
    cfg = models.preset(preset, param_dtype=c.model.param_dtype, compute_dtype=c.model.compute_dtype)
    mesh = shd.make_mesh(dict(c.mesh))
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    shardings = param_shardings(cfg, mesh)
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    per_device = sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                     for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))
    assert 5 * whole > 55 * 2**30 and 5 * per_device < 5 * whole / 7.5
