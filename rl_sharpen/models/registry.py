"""Model families by name, and everything derived from their parameter declarations:
abstract shapes, logical axes, shardings and initialization."""

from __future__ import annotations

import math

import jax

from rl_sharpen import sharding as shd
from rl_sharpen.models import layers, llama, qwen2, qwen3
from rl_sharpen.models.config import ModelConfig

FAMILIES = {"llama": llama, "qwen2": qwen2, "qwen3": qwen3}


def _is_spec(x) -> bool:
    return isinstance(x, layers.ParamSpec)


def param_specs(cfg: ModelConfig) -> dict:
    return FAMILIES[cfg.family].param_specs(cfg)


def hf_names(cfg: ModelConfig) -> dict:
    return FAMILIES[cfg.family].HF_NAMES


def param_axes(cfg: ModelConfig) -> dict:
    """Pytree of logical-axis tuples, matching the params pytree."""
    return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def weight_decay_mask(cfg: ModelConfig) -> dict:
    """Pytree of bools, matching the params pytree: True where AdamW's weight decay applies."""
    return jax.tree.map(lambda s: s.decay, param_specs(cfg), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig) -> dict:
    """Pytree of ShapeDtypeStructs (no memory)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cfg.weight_dtype), param_specs(cfg),
                        is_leaf=_is_spec)


def count_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s.shape) for s in jax.tree.leaves(abstract_params(cfg)))


def param_shardings(cfg: ModelConfig, mesh, rules=shd.LOGICAL_RULES) -> dict:
    """NamedSharding of every parameter, from the one logical-axis rules table."""
    return jax.tree.map(lambda s: shd.named_sharding(mesh, s.axes, s.shape, rules), param_specs(cfg),
                        is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array, mesh=None, rules=shd.LOGICAL_RULES) -> dict:
    """Random params (std 0.02 normals, unit norms, zero biases), created directly in their sharding."""
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)

    def make(key):
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [s.initialize(keys[i], cfg.weight_dtype) for i, s in enumerate(leaves)])

    if mesh is None:
        return jax.jit(make)(key)
    return jax.jit(make, out_shardings=param_shardings(cfg, mesh, rules))(key)
