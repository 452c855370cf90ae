"""One decode step, one new token per row, laid out for fast matrix-vector work.

It computes the decoder of `models.transformer` (same norms, rotary embedding, grouped-query
attention, SwiGLU, float32 logits) for T = 1, but with the weights re-laid out once per sampling
call by `prepare`:

  * one array per layer (a Python loop over layers) instead of `lax.scan` over stacked weights,
    which copies every layer's weight slice out of the stack at every step;
  * every projection stored as W [out, in] and, on CPU, applied as y = (W x^T)^T: XLA's CPU matmul
    runs this orientation 1.5-2.5x faster than x W for a few rows (batch 8-32), and no slower for one;
  * on CPU, attention scores computed as one fused multiply-reduce over the head dim along the
    contiguous slots of the keys, and attention over a short prefix of the cache (S/8 or S/4 slots,
    a `lax.switch` per layer) while the filled part fits in one (`attention_lengths`).

It is a second implementation of the decoder, and the default one for sampling (`fast_decode`):
it shares the norm, rope, bias / qk-norm and activation functions of `models.layers` with
`transformer._block`, but a change to the block itself (a new family's embedding scale, norm or
layer order) must be made in `_layer` and `step` too. `tests/test_sampling.py` checks, for every
family in `models.FAMILIES`, that the log-probs of both paths equal teacher forcing's.

The cache is the per-layer layout of `kv.prefill(per_layer=True)`: lists of L arrays, keys
[R, K, E, S] and values [R, K, S, E], heads before slots, so attention reads it with no copy (the
[R, S, K, E] layout of `models.forward` costs a transpose of every layer's cache per token, which
dominates decoding at batch 32).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_sharpen.models import layers
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.sampling import kv
from rl_sharpen.sharding import constrain_rows

PREFIX_DIVISORS = (8, 4)  # on CPU, attention over an S-slot cache may read its first S/8 or S/4 slots


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
    """Whether the step takes its CPU forms: projections as (W x^T)^T (XLA's CPU matmul streams its
    left operand and repacks its right one at every call), attention scores as a multiply-reduce
    (XLA runs a batched matmul as one small product per (row, kv head)), and attention over a
    prefix of the cache (a `lax.switch`, cheap on CPU; on a GPU each one would wait for the device)."""
    return jax.default_backend() == "cpu"


def attention_lengths(num_slots: int) -> tuple[int, ...]:
    """The cache prefixes attention may read on CPU: num_slots / d for d in PREFIX_DIVISORS, rounded
    up to a multiple of 8 slots, and the whole cache.

    Reading a prefix of n slots copies it first (XLA materializes the slice): n slots read and
    written, then read again by attention, about 3n slot reads against num_slots for the whole
    cache, so only prefixes under a third of the cache are worth a branch."""
    lengths = {min(num_slots, (-(-num_slots // d) + 7) & ~7) for d in PREFIX_DIVISORS}
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


def _attention(q, keys, values, allowed):
    """Grouped-query attention of one query per row: q [R, H, E], keys [R, K, E, S], values
    [R, K, S, E], allowed [R, S].

    softmax(q k^T / sqrt(E)) v with float32 scores; query head h reads kv head h // (H / K). Same
    arithmetic as `layers.attention` for T = 1. On CPU the scores [R, K, G, S] (G = H / K query
    heads per kv head) are sum_e q[r, k, g, e] keys[r, k, e, s] as one fused loop vectorized along
    the slots, which reads the keys once at memory speed; elsewhere a batched matmul.
    """
    R, H, E = q.shape
    K = keys.shape[1]
    q = q.reshape(R, K, H // K, E)
    precision = layers.precision(q.dtype)
    if _cpu_kernels():
        f32 = jnp.float32
        scores = jnp.sum(q[..., None].astype(f32) * keys[:, :, None].astype(f32), axis=3)
    else:
        scores = jnp.einsum("rkge,rkes->rkgs", q, keys, preferred_element_type=jnp.float32, precision=precision)
    mask = allowed[:, None, None, :]
    scores = jnp.where(mask, scores / math.sqrt(E), jnp.finfo(jnp.float32).min)
    probs = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(values.dtype)
    out = jnp.einsum("rkgs,rkse->rkge", probs, values, preferred_element_type=jnp.float32, precision=precision)
    return out.reshape(R, H * E).astype(q.dtype)


def _filled_attention(q, keys, values, allowed, end):
    """`_attention` over the shortest of `attention_lengths` slots that holds slot `end` (the new
    token's; later slots are masked out anyway). Off CPU, over the whole cache."""
    if not _cpu_kernels():
        return _attention(q, keys, values, allowed)
    lengths = attention_lengths(values.shape[2])

    def over_prefix(n):  # slicing the whole length is no op; a shorter slice is a copy of n slots
        return lambda q, k, v, allowed: _attention(q, k[..., :n], v[:, :, :n], allowed[:, :n])

    bucket = jnp.searchsorted(jnp.asarray(lengths), end, side="right")
    return jax.lax.switch(bucket, [over_prefix(n) for n in lengths], q, keys, values, allowed)


def _layer(cfg: ModelConfig, rope, x, allowed, p, cache_k, cache_v, end):
    """One pre-norm decoder layer for x [R, D] (one token per row); cache_k [R, K, E, S], cache_v
    [R, K, S, E]; rope = (cos, sin) [R, 1, E/2] of the rows' positions."""
    R = x.shape[0]
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = _linear(p["q"], h).reshape(R, H, E)
    k = _linear(p["k"], h).reshape(R, K, E)
    v = _linear(p["v"], h).reshape(R, K, E)
    q, k, v = layers.qkv_bias_and_norm(cfg, p, q, k, v)
    q, k = layers.rotate(q, *rope), layers.rotate(k, *rope)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k[..., None].astype(cache_k.dtype), (0, 0, 0, end))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v[:, :, None].astype(cache_v.dtype), (0, 0, end, 0))
    attn = _filled_attention(q, cache_k.astype(x.dtype), cache_v.astype(x.dtype), allowed, end)
    x = x + _linear(p["o"], attn)
    h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    return x + _linear(p["down"], layers.gated_activation(_linear(p["gate"], h), _linear(p["up"], h))), cache_k, cache_v


def step(weights: dict, cfg: ModelConfig, cache: dict, tokens, positions, segments, mesh=None):
    """Feeds one token per row ([R] each); returns (logits [R, V] f32 for the next token, cache)."""
    end = cache["end"]
    key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segments[:, None].astype(jnp.int32), (0, end))
    slots = jnp.arange(key_segments.shape[1])
    allowed = (key_segments == segments[:, None]) & (key_segments != 0) & (slots <= end)[None, :]
    x = weights["embed"][tokens].astype(cfg.dtype)
    rope = weights["rope_cos"][positions][:, None], weights["rope_sin"][positions][:, None]
    new_k, new_v = [], []
    for p, ck, cv in zip(weights["layers"], cache["k"], cache["v"]):
        x, ck, cv = _layer(cfg, rope, x, allowed, p, ck, cv, end)
        new_k.append(ck)
        new_v.append(cv)
    h = layers.rms_norm(x, weights["final_norm"], cfg.rms_norm_eps)
    logits = _linear(weights["unembed"], h, jnp.float32)
    cache = {"k": new_k, "v": new_v, "segment_ids": key_segments, "end": end + 1}
    return constrain_rows(logits, mesh), kv.constrain_cache(cache, mesh)
