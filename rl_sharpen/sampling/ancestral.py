"""Batched ancestral sampling with a KV cache: one jitted prefill, then one jitted `lax.while_loop`.

    out = generate(params, cfg, prompts, jax.random.key(0), SamplingConfig(max_new_tokens=256, num_samples=8))

Per step, with logits z over the vocabulary (float32):

    logprobs          log softmax(z)[y]        the model at temperature 1, what the trainer recomputes
    sampled_logprobs  log q(y),  q = softmax(top_p(top_k(z' / temperature)))   the law y was drawn from

where z' = z, or z - mu z_m with a `Contrast` (a second model's logits z_m on the same prefix, e.g.
the memory network of distribution-level calibration, rl/calibration.py), which changes what is
sampled but not `logprobs`.

top_k keeps logits >= the k-th largest; top_p then keeps, in decreasing order, the fewest tokens
whose probability under softmax(top_k(z / T)) sums to >= top_p (tokens tied with the last one kept
are kept too). Removed logits become -inf. y is drawn from q by Gumbel-max in two stages, a block
of the vocabulary then an entry of it (`gumbel_max`). Greedy decoding (greedy=True or
temperature=0) takes argmax z' and reports sampled_logprobs = 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rl_sharpen.models import transformer
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.sampling import decode, kv, prompts as prompt_lib
from rl_sharpen.sampling.stops import StopStrings, checked_stops, is_stop_strings, stop_tuple

_MIN_TEMPERATURE = float(jnp.finfo(jnp.float32).tiny)  # below it, T is 0 or subnormal in float32
TEMPERATURES = f"0 (greedy) or a finite float >= {_MIN_TEMPERATURE:.3g} (float32's smallest normal number)"


def valid_temperature(temperature) -> bool:
    """Whether the sampler takes `temperature` (see TEMPERATURES)."""
    return prompt_lib.is_real(temperature) and (temperature == 0 or _MIN_TEMPERATURE <= temperature < math.inf)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """What to sample. Hashable: each distinct config compiles its own decode loop.

    max_new_tokens  N, tokens generated per sample (the last one may be an EOS).
    temperature     T >= 0; logits are divided by T before top-k / top-p. T = 0 means greedy;
                    a T > 0 must be a normal float32 (>= 1.2e-38).
    top_p           nucleus mass in (0, 1]; 1 disables.
    top_k           keep the k most likely tokens; 0 disables.
    greedy          argmax decoding (sampled_logprobs are then 0).
    eos_ids         ids that end a sample; the EOS itself is part of the sample.
    stop_strings    texts that end a sample at the token completing one, whatever the tokenization
                    (`stops.py`; the stop string is part of the sample); `generate` then takes their
                    automaton, `stops=compile_stops(stop_strings, token texts, vocab size)`.
    ignore_eos      generate exactly N tokens per sample (fixed-length rollouts).
    num_samples     G samples per prompt, drawn from one shared prefill.
    pad_id          fills prompt padding and the positions after a sample's EOS.
    prompt_width    fixed padded prompt width (one compile for every batch); None pads the batch
                    to the bucket width of its longest prompt (`prompts.bucket_width`: 16, 24, 32, 48, ...).
    fast_decode     decode with `decode.step` (per-layer weights laid out [out, in], unrolled):
                    2-4x faster on CPU, for a copy of the weights during the call and a compile time
                    that grows with depth. False decodes with `models.forward` scanned over layers,
                    which all-gathers weights sharded over fsdp at every step; the default moves
                    only activations (benchmarks/decode_collectives.py).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False
    num_samples: int = 1
    pad_id: int = 0
    prompt_width: int | None = None
    fast_decode: bool = True

    def __post_init__(self):
        integer, real = prompt_lib.is_integer, prompt_lib.is_real
        prompt_lib.check_fields(self, [("eos_ids", prompt_lib.is_eos_ids(self.eos_ids),
                                        "a token id or a tuple of token ids")])
        object.__setattr__(self, "eos_ids", prompt_lib.eos_tuple(self.eos_ids))
        prompt_lib.check_fields(self, [("stop_strings", is_stop_strings(self.stop_strings),
                                        "a string or a tuple of non-empty strings")])
        object.__setattr__(self, "stop_strings", stop_tuple(self.stop_strings))
        checks = [
            *[(name, isinstance(getattr(self, name), bool), "True or False")
              for name in ("greedy", "ignore_eos", "fast_decode")],
            ("max_new_tokens", integer(self.max_new_tokens) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", valid_temperature(self.temperature), TEMPERATURES),
            ("top_p", real(self.top_p) and 0 < self.top_p <= 1, "a float in (0, 1]"),
            ("top_k", integer(self.top_k) and self.top_k >= 0, "an integer >= 0 (0 disables top-k)"),
            ("num_samples", integer(self.num_samples) and self.num_samples >= 1, "an integer >= 1"),
            ("pad_id", integer(self.pad_id) and self.pad_id >= 0, "a token id >= 0"),
            ("prompt_width", self.prompt_width is None or integer(self.prompt_width) and self.prompt_width >= 1,
             "None or an integer >= 1"),
            ("stop_strings", not (self.stop_strings and self.ignore_eos),
             "() with ignore_eos=True (every sample is N tokens long)"),
        ]
        prompt_lib.check_fields(self, checks)

    @property
    def is_greedy(self) -> bool:
        """Greedy decoding: `greedy`, or temperature 0 (derived, so `dataclasses.replace` of the
        temperature alone does what it says)."""
        return self.greedy or self.temperature == 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Samples of B prompts x G samples, R = B * G rows; row b * G + g is sample g of prompt b.

    tokens            [R, N] int32   generated tokens; pad_id after the EOS (unless ignore_eos).
    logprobs          [R, N] f32     log p(token | prefix) at temperature 1; 0 at padding.
    sampled_logprobs  [R, N] f32     log q(token | prefix) under the sampled law; 0 at padding / greedy.
    lengths           [R] int32      tokens generated, EOS included (N with ignore_eos).
    finished          [R] bool       an EOS id or a stop string was generated.
    prompt_tokens     [R, P] int32   the left-padded prompt of each row (P = bucketed width).
    prompt_segment_ids [R, P] int32  its segment ids (0 = padding).

    Prompt and completion concatenate to the sequence the model saw: see `sequences`.
    """

    tokens: jax.Array
    logprobs: jax.Array
    sampled_logprobs: jax.Array
    lengths: jax.Array
    finished: jax.Array
    prompt_tokens: jax.Array
    prompt_segment_ids: jax.Array

    @property
    def completion_mask(self) -> jax.Array:
        """[R, N] bool, True at generated tokens (EOS included), False at padding."""
        return jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

    def sequences(self) -> tuple[jax.Array, jax.Array]:
        """(tokens, segment_ids) [R, P + N]: prompt + completion, completion continuing the prompt's
        last segment, padding after the EOS. Teacher-forced `models.token_logprobs` on these gives
        `logprobs` at columns P-1 .. P+N-2."""
        segments = jnp.where(self.completion_mask, self.prompt_segment_ids[:, -1:], 0)
        return (jnp.concatenate([self.prompt_tokens, self.tokens], axis=1),
                jnp.concatenate([self.prompt_segment_ids, segments], axis=1))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Contrast:
    """A model whose logits are subtracted before sampling: z' = z - weight * z_m. Its vocabulary
    must be the policy's; its depth and width may differ."""

    params: dict
    cfg: ModelConfig = dataclasses.field(metadata=dict(static=True))
    weight: jax.Array | float  # mu >= 0


def _order_keys(z: jax.Array) -> jax.Array:
    """uint32 keys that order float32 values like the values (-0.0 as +0.0; -inf lowest)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(z == 0, 0.0, z), jnp.uint32)  # XLA drops a `z + 0.0`
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _threshold(keys: jax.Array, weights: jax.Array, target) -> jax.Array:
    """Per row of keys [..., V]: the largest key t with sum(weights[keys >= t]) >= target (the row's
    smallest key if none), by bisection over the 2^32 keys: 32 passes over the row instead of a sort."""
    lo, hi = keys.min(axis=-1), keys.max(axis=-1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2
        enough = jnp.sum(jnp.where(keys >= mid[..., None], weights, 0), axis=-1) >= target
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

    return jax.lax.fori_loop(0, 32, halve, (lo, hi))[0]


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """z = (l - max l) / T with top-k then top-p applied (removed entries -inf), float32 [..., V].

    The shift by the row's maximum changes no softmax and keeps the order of the entries; it keeps
    z's maximum at exactly 0 at any temperature. Without it, l / T near float32's largest values
    (T = 1e-9 with logits of 3) rounds differently in the max and in exp(z - max) of a fused
    program, and the draw and its log-prob are wrong (+-inf).

    Both keep an upper set {z >= cutoff}, ties with the cutoff included: top-k's cutoff is the k-th
    largest z; top-p's is the largest c with sum(softmax(z)[z >= c]) >= top_p, z after top-k. Each
    cutoff is found by bisection on the order of float32 values (`_threshold`), no sort of the vocabulary.
    """
    logits = logits.astype(jnp.float32)
    top = jnp.max(logits, axis=-1, keepdims=True)
    z = jnp.where(logits == top, 0.0, logits - top) / temperature
    keys = _order_keys(z)  # entries top-k removes weigh 0 in top-p's sums, and its cutoff is above them
    if 0 < top_k < z.shape[-1]:
        z = jnp.where(keys >= _threshold(keys, jnp.ones_like(z), top_k)[..., None], z, -jnp.inf)
    if top_p < 1:
        z = jnp.where(keys >= _threshold(keys, jax.nn.softmax(z, axis=-1), top_p)[..., None], z, -jnp.inf)
    return z


def argmax(z: jax.Array) -> jax.Array:
    """`jnp.argmax(z, axis=-1)` (the first maximal index, NaN counting as maximal), int32, as a max and
    then a min over the indices that reach it, held as float32 (exact below 2^24 entries). XLA's CPU
    backend runs argmax as one (value, index) reduction that does not vectorize, and a min over int32
    indices falls off a cliff at [32, 151936]. float32 [32, 49152]: 3.5 ms for argmax, 0.8 ms for this."""
    n = z.shape[-1]
    if n >= 2**24:
        return jnp.argmax(z, axis=-1).astype(jnp.int32)
    top = jnp.max(z, axis=-1, keepdims=True)
    hit = (z == top) | jnp.isnan(z)
    index = jax.lax.broadcasted_iota(jnp.float32, z.shape, z.ndim - 1)
    return jnp.min(jnp.where(hit, index, jnp.inf), axis=-1).astype(jnp.int32)


def _block_size(vocab: int) -> int:
    """Entries per block of `gumbel_max`: the divisor B of the vocabulary with the fewest variates
    B + V / B (the smaller B on a tie), or ceil(sqrt(V)) with padding when no divisor comes within
    twice the 2 sqrt(V) optimum (padding copies the logits)."""
    divisors = [b for b in range(1, math.isqrt(vocab) + 1) if vocab % b == 0]
    best = min(divisors + [vocab // b for b in divisors], key=lambda b: (b + vocab // b, b))
    return best if best + vocab // best <= 4 * math.sqrt(vocab) else math.isqrt(vocab - 1) + 1


def gumbel_max(key: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(y, log softmax(z)_y), int32 and float32 [R]: one draw per row of z [R, V], by Gumbel-max in two
    stages over blocks of B consecutive entries (`_block_size`): a block b with probability
    softmax(lse)_b, lse_b = logsumexp of the block, then an entry v of it with probability
    exp(z_v - lse_b), so

        P(v) = exp(lse_b) / sum_b' exp(lse_b') * exp(z_v - lse_b) = softmax(z)_v,

    and log P(y) = z_y - logsumexp_b(lse_b), from the block sums already at hand.

    It draws V / B + B Gumbel variates per row instead of V: the random bits dominate sampling on
    CPU (float32 [32, 49152]: 16.8 ms for `jax.random.categorical`, 8.0 ms for `argmax` of z + g over
    the whole vocabulary, 0.6 ms for this; [32, 151936]: 85, 52 and 3.3 ms). Blocks that are
    entirely -inf (truncated) are never drawn."""
    R, V = z.shape
    B = _block_size(V)
    num_blocks = -(-V // B)
    if num_blocks * B > V:
        z = jnp.pad(z, ((0, 0), (0, num_blocks * B - V)), constant_values=-jnp.inf)
    blocks = z.reshape(R, num_blocks, B)
    block_key, entry_key = jax.random.split(key)
    lse = jax.nn.logsumexp(blocks, axis=-1)
    block = argmax(lse + jax.random.gumbel(block_key, lse.shape, z.dtype))
    entries = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    entry = argmax(entries + jax.random.gumbel(entry_key, entries.shape, z.dtype))
    logprob = jnp.take_along_axis(entries, entry[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(lse, axis=-1)
    return block * B + entry, logprob


def _pick(logits, sample_logits, key, sc: SamplingConfig):
    """(token, temperature-1 log-prob under `logits`, log-prob under the law sampled from
    `sample_logits`) for each row of [R, V] logits."""
    if sc.is_greedy:
        token = argmax(sample_logits)
        sampled = jnp.zeros(logits.shape[:1], jnp.float32)
    else:
        token, sampled = gumbel_max(key, filter_logits(sample_logits, sc.temperature, sc.top_k, sc.top_p))
    return token, transformer.picked_logprob(logits, token), sampled


def _record(state, sc: SamplingConfig, stops: StopStrings | None):
    """Draws step t's token for every row and writes it (pad after an EOS) into the outputs."""
    t = state["t"]
    logits = state["logits"]
    sample_logits = logits - state["contrast_shift"] if "contrast_shift" in state else logits
    token, logp, sampled = _pick(logits, sample_logits, jax.random.fold_in(state["rng"], t), sc)
    live = ~state["finished"] | sc.ignore_eos
    token = jnp.where(live, token, sc.pad_id)
    eos = jnp.isin(token, jnp.asarray(sc.eos_ids, jnp.int32)) & live if sc.eos_ids else jnp.zeros_like(live)
    if stops is not None:
        stop_state, stopped = stops.step(state["stop_state"], token)
        state = dict(state, stop_state=stop_state)
        eos = eos | (stopped & live)

    def put(buf, x):
        return jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, t))

    return dict(state, token=token, tokens=put(state["tokens"], token),
                logprobs=put(state["logprobs"], jnp.where(live, logp, 0.0)),
                sampled_logprobs=put(state["sampled_logprobs"], jnp.where(live, sampled, 0.0)),
                lengths=state["lengths"] + live, finished=state["finished"] | eos)


@functools.partial(jax.jit, static_argnames=("cfg", "sc", "mesh"), donate_argnames=("cache", "contrast_cache"))
def _decode(params, cache, logits, positions, segments, rng, contrast: Contrast | None = None, contrast_cache=None,
            contrast_logits=None, stops: StopStrings | None = None, *, cfg: ModelConfig, sc: SamplingConfig,
            mesh):
    R, N = logits.shape[0], sc.max_new_tokens
    weights, decode_step = decode.decoder(params, cfg, sc.fast_decode, cache)
    zeros = jnp.zeros((R, N), jnp.float32)
    state = dict(t=jnp.zeros((), jnp.int32), cache=cache, logits=logits, positions=positions, rng=rng,
                 token=jnp.zeros((R,), jnp.int32), tokens=jnp.full((R, N), sc.pad_id, jnp.int32), logprobs=zeros,
                 sampled_logprobs=zeros, lengths=jnp.zeros((R,), jnp.int32), finished=jnp.zeros((R,), bool))
    if contrast is not None:  # state["contrast_shift"] = mu z_m, what _record subtracts
        contrast_weights, contrast_step = decode.decoder(contrast.params, contrast.cfg, sc.fast_decode, contrast_cache)
        state.update(contrast_cache=contrast_cache, contrast_shift=contrast.weight * contrast_logits)
    if stops is not None:
        state["stop_state"] = stops.initial_state(R)

    def cond(s):
        going = s["t"] < N - 1
        return going if sc.ignore_eos else going & ~jnp.all(s["finished"])

    def body(s):
        s = _record(s, sc, stops)
        logits, cache = decode_step(weights, cfg, s["cache"], s["token"], s["positions"], segments, mesh)
        if contrast is not None:
            z, c = contrast_step(contrast_weights, contrast.cfg, s["contrast_cache"], s["token"], s["positions"],
                                 segments, mesh)
            s = dict(s, contrast_shift=contrast.weight * z, contrast_cache=c)
        return dict(s, t=s["t"] + 1, cache=cache, logits=logits, positions=s["positions"] + 1)

    state = _record(jax.lax.while_loop(cond, body, state), sc, stops)
    # The caches are returned so that they alias the donated inputs: the loop then updates them in place.
    outputs = {k: state[k] for k in ("tokens", "logprobs", "sampled_logprobs", "lengths", "finished")}
    return outputs, state["cache"], state.get("contrast_cache")


def generate(params, cfg: ModelConfig, prompts, rng: jax.Array, sampling_cfg: SamplingConfig,
             mesh=None, contrast: Contrast | None = None, stops: StopStrings | None = None) -> SampleOutput:
    """Samples `sampling_cfg.num_samples` completions of every prompt; see `SampleOutput`.

    prompts: a left-padded `PromptBatch` or a list of token-id lists. params may be sharded over
    `mesh`; rows are then sharded over its data axes and the cache by `models.CACHE_AXES`.
    contrast: sample from z - mu z_m instead of z (module docstring); `logprobs` stay the policy's.
    stops: the automaton of `sampling_cfg.stop_strings` (`stops.compile_stops`), given with them.
    """
    sc = sampling_cfg
    prompt_lib.check_token_ids(cfg, "SamplingConfig", sc.pad_id, sc.eos_ids)
    stops = checked_stops(stops, sc.stop_strings, cfg.vocab_size, "SamplingConfig", mesh)
    if contrast is not None and contrast.cfg.vocab_size != cfg.vocab_size:
        raise ValueError(f"Contrast.cfg.vocab_size={contrast.cfg.vocab_size}; must equal the policy's "
                         f"vocab_size={cfg.vocab_size}")
    if contrast is not None and not (np.ndim(contrast.weight) == 0 and 0 <= float(contrast.weight) < math.inf):
        raise ValueError(f"Contrast.weight={contrast.weight!r}; allowed: a finite scalar mu >= 0")
    tokens, segments = prompt_lib.prepare(prompts, cfg, max_new_tokens=sc.max_new_tokens, pad_id=sc.pad_id,
                                          width=sc.prompt_width, owner="SamplingConfig")
    if contrast is not None:
        needed = int(np.max(np.sum(segments != 0, axis=1))) + sc.max_new_tokens
        if needed > contrast.cfg.max_position_embeddings:
            raise ValueError(f"the longest prompt with SamplingConfig.max_new_tokens={sc.max_new_tokens} needs "
                             f"{needed} positions > Contrast.cfg.max_position_embeddings="
                             f"{contrast.cfg.max_position_embeddings}")
    tokens, segments = kv.place_rows(tokens, mesh), kv.place_rows(segments, mesh)
    cache_len = tokens.shape[1] + sc.max_new_tokens

    def prefill(p, c):
        return kv.prefill(p, tokens, segments, cfg=c, copies=sc.num_samples, cache_len=cache_len,
                          per_layer=sc.fast_decode, mesh=mesh)

    cache, logits, positions, seg, prompt_tokens, prompt_segments = prefill(params, cfg)
    contrast_cache = contrast_logits = None
    if contrast is not None:
        contrast = dataclasses.replace(contrast, weight=jnp.asarray(contrast.weight, jnp.float32))  # traced
        contrast_cache, contrast_logits = prefill(contrast.params, contrast.cfg)[:2]
    out, _, _ = _decode(params, cache, logits, positions, seg, rng, contrast, contrast_cache, contrast_logits,
                        stops, cfg=cfg, sc=sc, mesh=mesh)
    return SampleOutput(**out, prompt_tokens=prompt_tokens, prompt_segment_ids=prompt_segments)
