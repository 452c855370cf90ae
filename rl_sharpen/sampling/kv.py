"""Prefill and single-token decode over the explicit KV cache of `models.transformer`.

Cache layout after `prefill` for B prompts padded to width P, `copies` rows per prompt and
`cache_len` slots: row b * copies + c holds prompt b; slots [0, P) hold the left-padded prompt,
slots [P, cache_len) the generated tokens, written one per decode step (`end` = next slot).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rl_sharpen import sharding as shd
from rl_sharpen.models import transformer
from rl_sharpen.models.config import ModelConfig


def constrain(x, mesh, axes):
    """`x` laid out by logical `axes` over `mesh` (dims a mesh axis does not divide are replicated)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, shd.named_sharding(mesh, axes, x.shape))


def constrain_cache(cache: dict, mesh) -> dict:
    if mesh is None:
        return cache
    return {k: constrain(v, mesh, transformer.CACHE_AXES[k]) for k, v in cache.items()}


def constrain_rows(x, mesh):
    """Shards dim 0 (one row per sequence) over the data axes."""
    return constrain(x, mesh, ("batch",) + (None,) * (x.ndim - 1))


@functools.partial(jax.jit, static_argnames=("cfg", "copies", "cache_len", "mesh"))
def prefill(params, tokens, segment_ids, *, cfg: ModelConfig, copies: int, cache_len: int, mesh=None):
    """Runs the prompts once and repeats the result `copies` times along the batch.

    Returns (cache, logits [B*copies, V] f32 for the first new token, next_positions [B*copies],
    segments [B*copies] (the segment id new tokens continue), tokens and segment_ids [B*copies, P]).
    """
    B, P = tokens.shape
    tokens, segment_ids = constrain_rows(tokens, mesh), constrain_rows(segment_ids, mesh)
    positions = transformer.positions_from_segments(segment_ids)
    cache = constrain_cache(transformer.init_cache(cfg, B, P), mesh)
    h, cache = transformer.hidden_states(params, cfg, tokens, positions, segment_ids, cache)
    logits = transformer.logits_from_hidden(params, cfg, h[:, -1])

    def rows(x):
        return constrain_rows(jnp.repeat(x, copies, axis=0), mesh)

    def slots(x, pad_value=0):  # [L, B, P, ...] -> [L, B*copies, cache_len, ...]
        x = jnp.repeat(x, copies, axis=1)
        pad = [(0, 0)] * x.ndim
        pad[2] = (0, cache_len - P)
        return jnp.pad(x, pad, constant_values=pad_value)

    cache = {"k": slots(cache["k"]), "v": slots(cache["v"]),
             "segment_ids": slots(cache["segment_ids"][None])[0], "end": cache["end"]}
    return (constrain_cache(cache, mesh), rows(logits), rows(positions[:, -1] + 1), rows(segment_ids[:, -1]),
            rows(tokens), rows(segment_ids))


def decode_step(params, cfg: ModelConfig, cache: dict, tokens, positions, segments, mesh=None):
    """Feeds one token per row ([R] each) and returns (logits [R, V] f32 for the next token, cache)."""
    logits, cache = transformer.forward(params, cfg, tokens[:, None], positions[:, None], segments[:, None], cache)
    return constrain_rows(logits[:, 0], mesh), constrain_cache(cache, mesh)


def take_rows(cache: dict, rows, mesh=None) -> dict:
    """The cache with its batch rows reordered / duplicated to `rows` (beam search reordering)."""
    out = {"k": jnp.take(cache["k"], rows, axis=1), "v": jnp.take(cache["v"], rows, axis=1),
           "segment_ids": jnp.take(cache["segment_ids"], rows, axis=0), "end": cache["end"]}
    return constrain_cache(out, mesh)
