"""Layers shared by every decoder family: parameter declarations, RMSNorm, rotary embeddings,
grouped-query attention over an explicit KV cache, and the SwiGLU MLP.

Shapes: B batch, T new tokens, S cache slots, D hidden, H query heads, K kv heads, E head dim,
F MLP width, V vocab, L layers. Matmuls run in `cfg.dtype`; norms, softmax and logits in float32.
Float32 matmuls ask for full float32 precision (see `precision`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from rl_sharpen.models.config import ModelConfig

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def precision(dtype) -> jax.lax.Precision | None:
    """HIGHEST for float32 operands, else the backend default.

    The default float32 matmul is TF32 on NVIDIA GPUs and one bfloat16 pass on TPUs (relative error
    ~1e-3), which breaks the sampler's float32 log-prob exactness against teacher forcing: on an H100
    the gap for a Qwen2.5-0.5B-shaped model is 2.2e-3 at the default and 8.6e-6 at HIGHEST. On CPU
    both settings are the same float32 product.
    """
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A parameter declared once: its shape, logical axes, initializer (dtype = cfg.param_dtype) and
    whether AdamW's decoupled weight decay applies to it."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str = "normal"  # "normal" (std 0.02), "ones" or "zeros"
    decay: bool = True  # weight decay shrinks it; False for norm scales and biases (their 1 and 0 are not "small")

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")

    def initialize(self, key: jax.Array, dtype) -> jax.Array:
        if self.init == "ones":
            return jnp.ones(self.shape, dtype)
        if self.init == "zeros":
            return jnp.zeros(self.shape, dtype)
        return (0.02 * jax.random.normal(key, self.shape, jnp.float32)).astype(dtype)


def decoder_specs(cfg: ModelConfig) -> dict:
    """Parameter declarations common to all families; layer weights are stacked over `layers`."""
    L, D, H, K, E, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
    layer = {
        "attn_norm": ParamSpec((L, D), ("layers", None), "ones", decay=False),
        "q": ParamSpec((L, D, H, E), ("layers", "embed", "heads", "head_dim")),
        "k": ParamSpec((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim")),
        "v": ParamSpec((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim")),
        "o": ParamSpec((L, H, E, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ParamSpec((L, D), ("layers", None), "ones", decay=False),
        "gate": ParamSpec((L, D, F), ("layers", "embed", "mlp")),
        "up": ParamSpec((L, D, F), ("layers", "embed", "mlp")),
        "down": ParamSpec((L, F, D), ("layers", "mlp", "embed")),
    }
    specs = {
        "embed": ParamSpec((V, D), ("vocab", "embed")),
        "layers": layer,
        "final_norm": ParamSpec((D,), (None,), "ones", decay=False),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"))
    return specs


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def embed(table: jax.Array, tokens: jax.Array, dtype) -> jax.Array:
    """table[tokens] in `dtype`. Its gradient sums each token's rows in float32 before casting to the
    table's dtype: a bfloat16 sum (the gradient of `table.astype(bfloat16)[tokens]`) drops additions
    once a row holds ~256 of them, and a frequent token (a space, a digit) occurs thousands of times
    in a batch of rollouts (its gradient was 26-54% off at 4096 occurrences). The rule is a JVP whose
    tangent gathers in float32, so reverse mode (its transpose: a float32 scatter-add) and forward
    mode (`jax.jvp`, `jax.hessian`) both work."""
    return table[tokens].astype(dtype)


@embed.defjvp
def _embed_jvp(dtype, primals, tangents):
    table, tokens = primals
    table_dot = tangents[0]
    return embed(table, tokens, dtype), table_dot.astype(jnp.float32)[tokens].astype(dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * w: the normalization in float32, rounded to x's dtype, then
    times the weight, as transformers does it (bitwise equal in bfloat16; in float32 nothing rounds)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * weight.astype(x.dtype)


def qkv_bias_and_norm(cfg: ModelConfig, p: dict, q: jax.Array, k: jax.Array, v: jax.Array):
    """The family steps between the q/k/v projections and rotary: biases (Qwen2) and RMS norm of
    each head's q and k over head_dim (Qwen3). q [..., H, E], k and v [..., K, E]."""
    if cfg.qkv_bias:
        q, k, v = (a + p[f"{name}_bias"].astype(a.dtype) for a, name in ((q, "q"), (k, "k"), (v, "v")))
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    return q, k, v


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies theta^(-2i/E), with Llama-3 scaling applied when configured."""
    E = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, E, 2, dtype=jnp.float32) / E))
    s = cfg.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
    mid = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_mid, mid, scaled)


def rope_angles(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of positions * inv_freq, float32 [B, T, 1, E/2] for positions [B, T]."""
    angles = positions[..., None, None].astype(jnp.float32) * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding in the half-split layout of HF checkpoints: (x1, x2) -> (x1 cos - x2 sin,
    x2 cos + x1 sin) for x [B, T, N, E] = (x1, x2) and (cos, sin) from `rope_angles`."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding of x [B, T, N, E] at positions [B, T]."""
    return rotate(x, *rope_angles(positions, inv_freq))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
    """Grouped-query softmax attention.

    q: [B, T, H, E]; k, v: [B, S, K, E]; allowed: [B, T, S] bool. Returns [B, T, H, E].
    Query head h reads kv head h // (H / K). Scores and softmax are float32; a row with no allowed
    key (padding) returns zeros. Heads are moved in front of positions so both matmuls are plain
    batched matmuls over (B, K), which XLA runs several times faster on CPU than mixed layouts.
    """
    B, T, H, E = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    q = q.reshape(B, T, K, G, E).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, E)
    scores = jnp.einsum("bkqe,bkse->bkqs", q, k.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32,
                        precision=precision(q.dtype))
    scores = scores.reshape(B, K, G, T, S) / math.sqrt(E)
    mask = allowed[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(v.dtype)
    out = jnp.einsum("bkqs,bkse->bkqe", probs.reshape(B, K, G * T, S), v.transpose(0, 2, 1, 3),
                     preferred_element_type=jnp.float32, precision=precision(v.dtype))
    return out.reshape(B, K, G, T, E).transpose(0, 3, 1, 2, 4).reshape(B, T, H, E).astype(q.dtype)


def gated_activation(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(x W_gate) * (x W_up) from the two projections: the MLP's nonlinearity in `swiglu` and in
    the sampler's decode step (sampling/decode.py), which must agree."""
    return jax.nn.silu(gate) * up


def swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    dt, prec = x.dtype, precision(x.dtype)
    h = gated_activation(jnp.matmul(x, gate.astype(dt), precision=prec), jnp.matmul(x, up.astype(dt), precision=prec))
    return jnp.matmul(h, down.astype(dt), precision=prec)
