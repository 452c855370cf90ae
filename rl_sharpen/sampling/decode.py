"""One decode step, one new token per row, laid out for fast matrix-vector work.

It computes the decoder of `models.transformer` (same norms, rotary embedding, grouped-query
attention, SwiGLU, float32 logits) for T = 1, but with the weights re-laid out once per sampling
call by `prepare`:

  * one array per layer (a Python loop over layers) instead of `lax.scan` over stacked weights,
    which copies every layer's weight slice out of the stack at every step;
  * every projection stored as W [out, in] and, on CPU, applied as y = (W x^T)^T: XLA's CPU matmul
    runs this orientation 1.5-2.5x faster than x W for a few rows (batch 8-32), and no slower for one;
  * on CPU, attention scores likewise computed as K q^T, the cache as the matmul's left operand
    (about 2x faster than q K^T at batch 32, where attention is a third of a step), and attention
    reads only the filled part of the cache rounded up to one of `ATTENTION_BUCKETS` lengths
    (a `lax.switch` per layer), so its cost grows with the tokens so far, not the cache size.

The cache is the per-layer layout of `kv.prefill(per_layer=True)`: lists of L arrays [R, K, S, E],
heads before slots, so attention is two batched matrix-vector products over (R, K) with no copy of
the cache (the [R, S, K, E] layout of `models.forward` costs a transpose of every layer's cache per
token, which dominates decoding at batch 32).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_sharpen.models import layers
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.sampling import kv

ATTENTION_BUCKETS = 8  # attention lengths per cache on CPU: S/8, 2S/8, ..., S (rounded up to 8 slots)


def _out_in(w, n_in: int):
    """A stored projection [in..., out...] with `n_in` input dims as a matrix [out, in]."""
    rows = 1
    for d in w.shape[:n_in]:
        rows *= d
    return w.reshape(rows, -1).T


def prepare(params: dict, cfg: ModelConfig, num_positions: int) -> dict:
    """Decode weights: compute dtype, projections [out, in], one dict per layer (a copy of the
    weights), and the rotary (cos, sin) of positions 0 .. num_positions-1, [num_positions, E/2] each
    (computed in the loop, XLA would evaluate them again for every head of every layer)."""
    dt = cfg.dtype
    stacked = params["layers"]
    matrices = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
    per_layer = []
    for i in range(cfg.num_layers):
        p = {name: w[i] for name, w in stacked.items()}
        p.update({name: _out_in(p[name].astype(dt), n_in) for name, n_in in matrices.items()})
        per_layer.append(p)
    unembed = params["embed"] if cfg.tie_embeddings else params["lm_head"].T
    cos, sin = layers.rope_angles(jnp.arange(num_positions)[None], layers.rope_frequencies(cfg))
    return {"embed": params["embed"], "unembed": unembed.astype(dt), "final_norm": params["final_norm"],
            "layers": per_layer, "rope_cos": cos[0, :, 0], "rope_sin": sin[0, :, 0]}


def decoder(params: dict, cfg: ModelConfig, fast: bool, cache: dict):
    """(weights, step function) for a decode loop over `cache`: `prepare` + `step`, or the stacked
    params + `kv.decode_step` (`models.forward` scanned over layers)."""
    if not fast:
        return params, kv.decode_step
    return prepare(params, cfg, num_positions=cache["segment_ids"].shape[1]), step


def _cpu_kernels() -> bool:
    """Whether the step takes its CPU forms: projections as (W x^T)^T and attention scores as K q^T
    (XLA's CPU matmul streams its left operand and repacks its right one at every call), and
    attention over the filled prefix of the cache (a `lax.switch`, cheap on CPU; on a GPU each one
    would wait for the device)."""
    return jax.default_backend() == "cpu"


def attention_lengths(num_slots: int) -> tuple[int, ...]:
    """The cache prefixes attention may read: ceil(num_slots * b / ATTENTION_BUCKETS) rounded up to
    a multiple of 8, for b = 1 .. ATTENTION_BUCKETS, the last one num_slots."""
    n = ATTENTION_BUCKETS
    lengths = {min(num_slots, (-(-num_slots * b // n) + 7) & ~7) for b in range(1, n)}
    return tuple(sorted(lengths | {num_slots}))


def _linear(w, x, out_dtype=None):
    """x [R, in] -> x W^T [R, out] for W [out, in].

    On CPU it is evaluated as (W x^T)^T, with barriers that keep XLA from folding the two small
    transposes back into the matmul (which would restore the slow orientation). Elsewhere the
    transposed operand is left to the matmul library: on a GPU the barriers would cost two transpose
    kernels per projection (17% of a batch-32 decode step of a Qwen2.5-0.5B-shaped model on an H100).
    """
    precision = layers.precision(x.dtype)
    if not _cpu_kernels():
        return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=precision,
                                   preferred_element_type=out_dtype)
    y = jnp.matmul(w, jax.lax.optimization_barrier(x.T), preferred_element_type=out_dtype, precision=precision)
    return jax.lax.optimization_barrier(y).T


def _attention(q, cache_k, cache_v, allowed):
    """Grouped-query attention of one query per row: q [R, H, E], cache [R, K, S, E], allowed [R, S].

    softmax(q k^T / sqrt(E)) v with float32 scores; query head h reads kv head h // (H / K). Same
    arithmetic as `layers.attention` for T = 1. On CPU the scores are computed as K q^T, laid out
    [R, K, S, G] (slots before the G = H / K query heads of a kv head): each (row, kv head) is then
    one product that streams the cache instead of repacking it. They are then transposed to
    [R, K, G, S] (a barrier keeps XLA from folding that back into the product), so that the softmax
    reduces over the minor dimension: 4x faster than over slots in the middle.
    """
    R, H, E = q.shape
    K = cache_k.shape[1]
    q = q.reshape(R, K, H // K, E)
    precision = layers.precision(q.dtype)
    if _cpu_kernels():
        scores = jnp.einsum("rkse,rkge->rksg", cache_k, q, preferred_element_type=jnp.float32, precision=precision)
        scores = jax.lax.optimization_barrier(scores).transpose(0, 1, 3, 2)
    else:
        scores = jnp.einsum("rkse,rkge->rkgs", cache_k, q, preferred_element_type=jnp.float32, precision=precision)
    mask = allowed[:, None, None, :]
    scores = jnp.where(mask, scores / math.sqrt(E), jnp.finfo(jnp.float32).min)
    probs = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(cache_v.dtype)
    out = jnp.einsum("rkgs,rkse->rkge", probs, cache_v, preferred_element_type=jnp.float32, precision=precision)
    return out.reshape(R, H * E).astype(q.dtype)


def _filled_attention(q, cache_k, cache_v, allowed, end):
    """`_attention` over the shortest of `attention_lengths` slots that holds slot `end` (the new
    token's; later slots are masked out anyway). Off CPU, over the whole cache."""
    if not _cpu_kernels():
        return _attention(q, cache_k, cache_v, allowed)
    lengths = attention_lengths(cache_k.shape[2])

    def over_prefix(n):  # slicing the whole length is no op; a shorter slice is a copy of n slots
        return lambda q, k, v, allowed: _attention(q, k[:, :, :n], v[:, :, :n], allowed[:, :n])

    bucket = jnp.searchsorted(jnp.asarray(lengths), end, side="right")
    return jax.lax.switch(bucket, [over_prefix(n) for n in lengths], q, cache_k, cache_v, allowed)


def _layer(cfg: ModelConfig, rope, x, allowed, p, cache_k, cache_v, end):
    """One pre-norm decoder layer for x [R, D] (one token per row); cache_k/v [R, K, S, E]; rope =
    (cos, sin) [R, 1, E/2] of the rows' positions."""
    R = x.shape[0]
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = _linear(p["q"], h).reshape(R, H, E)
    k = _linear(p["k"], h).reshape(R, K, E)
    v = _linear(p["v"], h).reshape(R, K, E)
    q, k, v = layers.qkv_bias_and_norm(cfg, p, q, k, v)
    q, k = layers.rotate(q, *rope), layers.rotate(k, *rope)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k[:, :, None].astype(cache_k.dtype), (0, 0, end, 0))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v[:, :, None].astype(cache_v.dtype), (0, 0, end, 0))
    attn = _filled_attention(q, cache_k.astype(x.dtype), cache_v.astype(x.dtype), allowed, end)
    x = x + _linear(p["o"], attn)
    h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    return x + _linear(p["down"], jax.nn.silu(_linear(p["gate"], h)) * _linear(p["up"], h)), cache_k, cache_v


def step(weights: dict, cfg: ModelConfig, cache: dict, tokens, positions, segments, mesh=None):
    """Feeds one token per row ([R] each); returns (logits [R, V] f32 for the next token, cache)."""
    end = cache["end"]
    key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segments[:, None].astype(jnp.int32), (0, end))
    slots = jnp.arange(key_segments.shape[1])
    allowed = (key_segments == segments[:, None]) & (key_segments != 0) & (slots <= end)[None, :]
    x = weights["embed"].astype(cfg.dtype)[tokens]
    rope = weights["rope_cos"][positions][:, None], weights["rope_sin"][positions][:, None]
    new_k, new_v = [], []
    for p, ck, cv in zip(weights["layers"], cache["k"], cache["v"]):
        x, ck, cv = _layer(cfg, rope, x, allowed, p, ck, cv, end)
        new_k.append(ck)
        new_v.append(cv)
    h = layers.rms_norm(x, weights["final_norm"], cfg.rms_norm_eps)
    logits = _linear(weights["unembed"], h, jnp.float32)
    cache = {"k": new_k, "v": new_v, "segment_ids": key_segments, "end": end + 1}
    return kv.constrain_rows(logits, mesh), kv.constrain_cache(cache, mesh)
