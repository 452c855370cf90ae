"""The decoder forward pass shared by the Llama, Qwen2 and Qwen3 families.

    forward(params, cfg, tokens, positions, segment_ids, cache) -> (logits, cache)

`segment_ids` [B, T] int32 marks padding with 0 and real tokens with a segment number; a token
attends to earlier tokens of its own segment only (left padding, or several packed sequences). A
number names one contiguous run of a row (1 1 2 2 3, as packing writes): a number used again later
in the row joins the earlier run in attention, while `positions_from_segments` restarts there.
The KV cache is an explicit pytree:

    {"k": [L, B, S, K, E], "v": [L, B, S, K, E], "segment_ids": [B, S] int32, "end": int32 []}

Slots [0, end) are filled; a call writes its T tokens to slots [end, end + T) and returns the cache
with end += T. Slot order is time order (batches are left-padded), so causality is slot order.
end + T must not exceed S (XLA would clamp the write over filled slots): T > S is a ValueError; so is
end + T > S when `end` is concrete (an eager call), and under jit, where `end` is traced, such a call
returns NaN hidden states and logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_sharpen import sharding as shd
from rl_sharpen.models import layers
from rl_sharpen.models.config import ModelConfig

Params = dict
Cache = dict


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
    """An empty cache of `max_len` slots (k/v in the compute dtype unless `dtype` is given)."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dtype = dtype or cfg.dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32), "end": jnp.zeros((), jnp.int32)}


CACHE_AXES = {"k": ("layers", "batch", "cache_sequence", "kv_heads", "head_dim"),
              "v": ("layers", "batch", "cache_sequence", "kv_heads", "head_dim"),
              "segment_ids": ("batch", "cache_sequence"), "end": ()}


def _allowed(q_seg, k_seg, q_slot, k_slot):
    """[B, T, S] mask: same non-padding segment and key slot <= query slot."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    return same & (k_slot[None, None, :] <= q_slot[None, :, None])


def _block(cfg: ModelConfig, inv_freq, x, positions, allowed, p, cache_k, cache_v, end):
    """One pre-norm decoder layer. cache_k/v are this layer's [B, S, K, E] slots or None. The sampler's
    decode step has its own copy, laid out for one token (sampling/decode.py `_layer`): keep them equal."""
    dt, prec = cfg.dtype, layers.precision(cfg.dtype)
    h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dhe->bthe", h, p["q"].astype(dt), precision=prec)
    k = jnp.einsum("btd,dke->btke", h, p["k"].astype(dt), precision=prec)
    v = jnp.einsum("btd,dke->btke", h, p["v"].astype(dt), precision=prec)
    q, k, v = layers.qkv_bias_and_norm(cfg, p, q, k, v)
    q = layers.apply_rope(q, positions, inv_freq)
    k = layers.apply_rope(k, positions, inv_freq)
    if cache_k is not None:
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, end, 0, 0))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, end, 0, 0))
        k, v = cache_k.astype(dt), cache_v.astype(dt)
    attn = layers.attention(q, k, v, allowed)
    # contracting (h, e) in storage order: einsum may order them (e, h) and transpose the weight
    x = x + jax.lax.dot_general(attn, p["o"].astype(dt), (((2, 3), (0, 1)), ((), ())), precision=prec)
    h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    x = x + layers.swiglu(h, p["gate"], p["up"], p["down"])
    return x, cache_k, cache_v


def _end_that_fits(cache: Cache, T: int):
    """cache["end"], after checking that T new tokens fit the cache (module docstring)."""
    S, end = cache["segment_ids"].shape[1], cache["end"]
    if T > S:
        raise ValueError(f"{T} tokens do not fit a cache of {S} slots; allowed: at most {S} tokens per call "
                         "(init_cache max_len)")
    if not isinstance(end, jax.core.Tracer) and int(end) + T > S:
        raise ValueError(f"{T} tokens at cache end={int(end)} overflow its {S} slots; allowed: end + T <= {S}")
    return end


def hidden_states(params: Params, cfg: ModelConfig, tokens, positions, segment_ids,
                  cache: Cache | None = None, remat: bool = False, mesh=None):
    """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache. With a `mesh`, every
    layer's input keeps its rows over the batch axes (the weights are then gathered, as in FSDP).
    Unconstrained, XLA may settle the clash of rows over fsdp with the weights' hidden dim over fsdp
    by gathering every row onto every device and all-reducing partial sums: at the paper configs'
    shapes, float32 logits of all 256 rollout rows on each device (80 GB)."""
    T = tokens.shape[1]
    x = shd.constrain_rows(layers.embed(params["embed"], tokens, cfg.dtype), mesh)
    inv_freq = layers.rope_frequencies(cfg)
    if cache is None:
        slots = jnp.arange(T)
        allowed = _allowed(segment_ids, segment_ids, slots, slots)
        end = None
    else:
        end = _end_that_fits(cache, T)
        key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, end))
        allowed = _allowed(segment_ids, key_segments, end + jnp.arange(T), jnp.arange(key_segments.shape[1]))

    def step(x, xs):
        p, ck, cv = xs
        x, ck, cv = _block(cfg, inv_freq, x, positions, allowed, p, ck, cv, end)
        return shd.constrain_rows(x, mesh), (ck, cv)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False)
    xs = (params["layers"], None, None) if cache is None else (params["layers"], cache["k"], cache["v"])
    x, (new_k, new_v) = jax.lax.scan(step, x, xs)
    x = layers.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    if cache is not None:
        x = jnp.where(end + T <= key_segments.shape[1], x, jnp.nan)  # overflow under jit: NaN, not clamped slots
        cache = {"k": new_k, "v": new_v, "segment_ids": key_segments, "end": end + T}
    return x, cache


def logits_from_hidden(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
    """Float32 logits [..., V] from final hidden states."""
    prec = layers.precision(h.dtype)
    if cfg.tie_embeddings:
        return jnp.einsum("...d,vd->...v", h, params["embed"].astype(h.dtype), preferred_element_type=jnp.float32,
                          precision=prec)
    return jnp.einsum("...d,dv->...v", h, params["lm_head"].astype(h.dtype), preferred_element_type=jnp.float32,
                      precision=prec)


def forward(params: Params, cfg: ModelConfig, tokens, positions, segment_ids, cache: Cache | None = None):
    """Logits [B, T, V] float32 for `tokens` [B, T] at rope `positions` [B, T], and the new cache."""
    h, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache)
    return logits_from_hidden(params, cfg, h), cache


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Rope positions 0, 1, ... restarting at every segment; padding gets 0.

    Left-padded rows give the real tokens positions 0..n-1, as an unpadded forward would.
    """
    real = (segment_ids != 0).astype(jnp.int32)
    new_segment = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    index = jnp.arange(segment_ids.shape[1])[None, :]
    starts = jax.lax.cummax(jnp.where(new_segment, index, 0), axis=1)
    return (index - starts) * real


def next_token_map(params: Params, cfg: ModelConfig, tokens, segment_ids, fn, positions=None, *,
                   chunk: int = 512, remat: bool = False, last: int | None = None, mesh=None):
    """fn(logits [B, c, V] f32, next tokens [B, c]) -> pytree of [B, c] arrays, evaluated at every
    position t < T-1 (the one predicting tokens[:, t+1]) or, with `last`, at the last `last` of them
    (the vocabulary projection then skips the positions before, e.g. a prompt's); returns that
    pytree at [B, T-1] (or [B, last]).

    The projection onto the vocabulary runs over `chunk` positions at a time (rematerialized in the
    backward pass), so the full [B, T, V] logits never exist at once. With a `mesh`, rows stay over
    its batch axes throughout (`hidden_states`), the logits' vocabulary over its tensor axis.
    """
    scored = tokens.shape[1] - 1
    if scored < 1 or last is not None and not 1 <= last <= scored:
        raise ValueError(f"next_token_map: `last`={last} for tokens of length {tokens.shape[1]}; allowed: None or an "
                         f"integer in [1, {scored}] (a length >= 2 has a next token to score)")
    if positions is None:
        positions = positions_from_segments(segment_ids)
    h, _ = hidden_states(params, cfg, tokens, positions, segment_ids, remat=remat, mesh=mesh)
    h, targets = h[:, :-1], tokens[:, 1:]
    if last is not None:
        h, targets = h[:, h.shape[1] - last:], targets[:, targets.shape[1] - last:]
    B, T1, D = h.shape
    chunk = min(chunk, T1)  # a shorter sequence is one chunk, not padded to `chunk` positions
    n = -(-T1 // chunk)
    pad = n * chunk - T1
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D).swapaxes(0, 1)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)
    def project(args):
        logits = shd.constrain(logits_from_hidden(params, cfg, args[0]), mesh, ("batch", None, "vocab"))
        return fn(logits, args[1])

    out = jax.lax.map(jax.checkpoint(project), (h, targets))  # [n, B, chunk] leaves
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(B, n * chunk)[:, :T1], out)


def picked_logprob(logits, targets) -> jax.Array:
    """log softmax(logits)[..., targets] = z_y - logsumexp(z) for logits [..., V], targets [...], without
    the [..., V] log-softmax. Teacher forcing and the sampler both use it, so their log-probs agree."""
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)


def token_logprobs(params: Params, cfg: ModelConfig, tokens, segment_ids, positions=None, *,
                   chunk: int = 512, remat: bool = False, last: int | None = None, mesh=None) -> jax.Array:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) in float32, shape [B, T-1], teacher-forced; with
    `last`, only those of the last `last` tokens, [B, last] (`next_token_map`, chunked)."""
    return next_token_map(params, cfg, tokens, segment_ids, picked_logprob, positions, chunk=chunk, remat=remat,
                          last=last, mesh=mesh)
