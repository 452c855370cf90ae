"""Prefill and single-token decode over the explicit KV cache of `models.transformer`.

Cache after `prefill` for B prompts padded to width P, `copies` rows per prompt and `cache_len`
slots: row b * copies + c holds prompt b; slots [0, P) hold the left-padded prompt, slots
[P, cache_len) the generated tokens, one per decode step (`end` = next slot). With
`per_layer=True` the cache's "k" / "v" are lists of L arrays, keys [R, K, E, S] (slots last) and
values [R, K, S, E] (for `decode.step`): every layer's cache is updated in place, and attention reads
it without a transpose, its scores q.k summed over E along contiguous slots; otherwise they are
stacked [L, R, S, K, E] as `models.forward` takes them (`decode_step`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rl_sharpen import sharding as shd
from rl_sharpen.sharding import constrain, constrain_rows
from rl_sharpen.models import transformer
from rl_sharpen.models.config import ModelConfig


PER_LAYER_CACHE_AXES = {"k": ("batch", "kv_heads", "head_dim", "cache_sequence"),
                        "v": ("batch", "kv_heads", "cache_sequence", "head_dim")}


def constrain_cache(cache: dict, mesh) -> dict:
    if mesh is None:
        return cache
    return {name: [constrain(v, mesh, PER_LAYER_CACHE_AXES[name]) for v in value] if isinstance(value, list)
            else constrain(value, mesh, transformer.CACHE_AXES[name]) for name, value in cache.items()}


def place_rows(x, mesh):
    """Host array -> device array with dim 0 over the data axes of `mesh` (replicated if they do not divide it)."""
    if mesh is None:
        return jnp.asarray(x)
    return jax.device_put(x, shd.batch_sharding(mesh, x.ndim, x.shape))


@functools.partial(jax.jit, static_argnames=("cfg", "copies", "cache_len", "per_layer", "mesh"))
def prefill(params, tokens, segment_ids, *, cfg: ModelConfig, copies: int, cache_len: int, per_layer: bool,
            mesh=None):
    """Runs the prompts once and repeats the result `copies` times along the batch.

    Returns (cache, logits [R, V] f32 for the first new token, next_positions [R], segments [R]
    (the segment id new tokens continue), tokens and segment_ids [R, P]), R = B * copies.
    """
    B, P = tokens.shape
    tokens, segment_ids = constrain_rows(tokens, mesh), constrain_rows(segment_ids, mesh)
    positions = transformer.positions_from_segments(segment_ids)
    cache = constrain_cache(transformer.init_cache(cfg, B, P), mesh)
    h, cache = transformer.hidden_states(params, cfg, tokens, positions, segment_ids, cache)
    logits = transformer.logits_from_hidden(params, cfg, h[:, -1])

    def rows(x):
        return constrain_rows(jnp.repeat(x, copies, axis=0), mesh)

    def slots(x, batch_axis):  # [..., B, P, ...] -> [..., B * copies, cache_len, ...]
        x = jnp.repeat(x, copies, axis=batch_axis)
        pad = [(0, 0)] * x.ndim
        pad[batch_axis + 1] = (0, cache_len - P)
        return jnp.pad(x, pad)

    if per_layer:  # [R, S, K, E] -> keys [R, K, E, S], values [R, K, S, E]
        k = [slots(cache["k"][i], 0).transpose(0, 2, 3, 1) for i in range(cfg.num_layers)]
        v = [slots(cache["v"][i], 0).transpose(0, 2, 1, 3) for i in range(cfg.num_layers)]
    else:
        k, v = slots(cache["k"], 1), slots(cache["v"], 1)
    cache = {"k": k, "v": v, "segment_ids": slots(cache["segment_ids"], 0), "end": cache["end"]}
    return (constrain_cache(cache, mesh), rows(logits), rows(positions[:, -1] + 1), rows(segment_ids[:, -1]),
            rows(tokens), rows(segment_ids))


def decode_step(params, cfg: ModelConfig, cache: dict, tokens, positions, segments, mesh=None):
    """Feeds one token per row ([R] each) and returns (logits [R, V] f32 for the next token, cache)."""
    logits, cache = transformer.forward(params, cfg, tokens[:, None], positions[:, None], segments[:, None], cache)
    return constrain_rows(logits[:, 0], mesh), constrain_cache(cache, mesh)


def take_rows(cache: dict, rows, mesh=None) -> dict:
    """The cache with its batch rows reordered / duplicated to `rows` (beam search reordering)."""
    if isinstance(cache["k"], list):
        k, v = ([jnp.take(x, rows, axis=0) for x in c] for c in (cache["k"], cache["v"]))
    else:
        k, v = jnp.take(cache["k"], rows, axis=1), jnp.take(cache["v"], rows, axis=1)
    out = {"k": k, "v": v, "segment_ids": jnp.take(cache["segment_ids"], rows, axis=0), "end": cache["end"]}
    return constrain_cache(out, mesh)
