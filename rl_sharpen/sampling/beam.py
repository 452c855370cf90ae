"""Beam search, the inference-time sharpening baseline: approximately argmax_y log p(y | x).

Each prompt keeps W beams. A step scores every extension of every live beam,

    logp(y_1..t) = logp(y_1..t-1) + log p(y_t | x, y_<t)        (temperature 1, float32)

and keeps the W best of {live extensions} U {finished beams, unchanged} by

    score = logp / lp(len),   lp(n) = ((5 + n) / 6) ** alpha      (GNMT; alpha = 0 gives logp)

where len counts generated tokens including the EOS. A beam that emits an EOS, or the token that
completes one of `stop_strings` in its text (`stops.py`, as in sampling), is finished: it keeps its
score and competes with the live beams at every later step. The search stops after
max_new_tokens steps or when every kept beam is finished. With W at least the number of candidates
at every step nothing is pruned and the first beam is the exact argmax of `score`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from rl_sharpen.models.config import ModelConfig
from rl_sharpen.sampling import decode, kv, prompts as prompt_lib
from rl_sharpen.sampling.stops import StopStrings, checked_stops, is_stop_strings, stop_tuple


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """width W beams per prompt; length_penalty is alpha in lp(n) = ((5 + n) / 6) ** alpha.

    max_new_tokens, eos_ids, stop_strings, pad_id, prompt_width and fast_decode mean what they do in
    `SamplingConfig`.
    """

    width: int
    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    length_penalty: float = 0.0
    pad_id: int = 0
    prompt_width: int | None = None
    fast_decode: bool = True
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        integer, real = prompt_lib.is_integer, prompt_lib.is_real
        prompt_lib.check_fields(self, [("eos_ids", prompt_lib.is_eos_ids(self.eos_ids),
                                        "a token id or a tuple of token ids"),
                                       ("stop_strings", is_stop_strings(self.stop_strings),
                                        "a string or a tuple of non-empty strings")])
        object.__setattr__(self, "eos_ids", prompt_lib.eos_tuple(self.eos_ids))
        object.__setattr__(self, "stop_strings", stop_tuple(self.stop_strings))
        checks = [
            ("width", integer(self.width) and self.width >= 1, "an integer >= 1"),
            ("max_new_tokens", integer(self.max_new_tokens) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("length_penalty", real(self.length_penalty) and math.isfinite(self.length_penalty),
             "a finite float (0 disables)"),
            ("pad_id", integer(self.pad_id) and self.pad_id >= 0, "a token id >= 0"),
            ("prompt_width", self.prompt_width is None or integer(self.prompt_width) and self.prompt_width >= 1,
             "None or an integer >= 1"),
            ("fast_decode", isinstance(self.fast_decode, bool), "True or False"),
        ]
        prompt_lib.check_fields(self, checks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BeamOutput:
    """W beams for each of B prompts, best first (by `scores`).

    tokens     [B, W, N] int32  pad_id after the EOS.
    logprobs   [B, W, N] f32    per-token log p at temperature 1; 0 at padding.
    seq_logprobs [B, W] f32     sum of `logprobs` (-inf for a beam that never had a candidate: its
                                tokens are then pad_id, its logprobs 0, length 0, not finished).
    scores     [B, W] f32       seq_logprobs / lp(lengths), the ranking criterion.
    lengths    [B, W] int32     tokens generated, EOS included.
    finished   [B, W] bool      the beam ended with an EOS.
    """

    tokens: jax.Array
    logprobs: jax.Array
    seq_logprobs: jax.Array
    scores: jax.Array
    lengths: jax.Array
    finished: jax.Array


def length_penalty(lengths, alpha: float):
    """GNMT length normalizer lp(n) = ((5 + n) / 6) ** alpha (float32)."""
    return ((5.0 + jnp.asarray(lengths, jnp.float32)) / 6.0) ** alpha


def _select(s, bc: BeamConfig, B: int, W: int, stops: StopStrings | None):
    """One beam step: extend live beams by every token, keep the W best candidates per prompt."""
    t = s["t"]
    V = s["logits"].shape[-1]
    logp = jax.nn.log_softmax(s["logits"], axis=-1).reshape(B, W, V)
    done = s["finished"] | (s["seq_logprobs"] == -jnp.inf)  # dead beams (-inf) cannot extend
    extended = s["seq_logprobs"][..., None] + logp
    # A finished beam has exactly one candidate, itself (slot 0), with its score unchanged.
    itself = jnp.where(jnp.arange(V) == 0, s["seq_logprobs"][..., None], -jnp.inf)
    cand_logp = jnp.where(done[..., None], itself, extended)
    cand_len = jnp.where(done, s["lengths"], s["lengths"] + 1)[..., None]
    cand_score = cand_logp / length_penalty(cand_len, bc.length_penalty)
    scores, flat = jax.lax.top_k(cand_score.reshape(B, W * V), W)
    parent, token = flat // V, (flat % V).astype(jnp.int32)

    def gather(x):
        return jnp.take_along_axis(x, parent.reshape(parent.shape + (1,) * (x.ndim - 2)), axis=1)

    seq_logprobs = jnp.take_along_axis(cand_logp.reshape(B, W * V), flat, axis=1)
    empty = seq_logprobs == -jnp.inf  # fewer than W candidates: this beam has no parent to copy
    was_done = gather(done)
    token = jnp.where(was_done | empty, bc.pad_id, token)
    step_logp = jnp.where(was_done | empty, 0.0, jnp.take_along_axis(logp.reshape(B, W * V), flat, axis=1))
    extends = ~(was_done | empty)
    eos = jnp.isin(token, jnp.asarray(bc.eos_ids, jnp.int32)) & extends
    if stops is not None:  # the parent's automaton state, moved by the token it appends
        stop_state, stopped = stops.step(gather(s["stop_state"]), token)
        s = dict(s, stop_state=jnp.where(extends, stop_state, 0))
        eos = eos | (stopped & extends)

    def put(buf, x, blank):
        written = jax.lax.dynamic_update_slice(gather(buf), x[..., None].astype(buf.dtype), (0, 0, t))
        return jnp.where(empty[..., None], jnp.asarray(blank, buf.dtype), written)

    rows = (jnp.arange(B)[:, None] * W + parent).reshape(B * W)
    return dict(s, token=token.reshape(B * W), rows=rows, scores=scores, seq_logprobs=seq_logprobs,
                tokens=put(s["tokens"], token, bc.pad_id), logprobs=put(s["logprobs"], step_logp, 0.0),
                lengths=jnp.where(empty, 0, gather(s["lengths"]) + ~was_done),
                finished=~empty & (gather(s["finished"]) | eos))


@functools.partial(jax.jit, static_argnames=("cfg", "bc", "mesh"), donate_argnames=("cache",))
def _search(params, cache, logits, positions, segments, stops, *, cfg: ModelConfig, bc: BeamConfig, mesh):
    R, N, W = logits.shape[0], bc.max_new_tokens, bc.width
    B = R // W
    weights, decode_step = decode.decoder(params, cfg, bc.fast_decode, cache)
    # Only beam 0 of each prompt is alive at the start, so the first step does not pick duplicates.
    seq = jnp.where(jnp.arange(W)[None, :] == 0, 0.0, -jnp.inf) * jnp.ones((B, 1))
    state = dict(t=jnp.zeros((), jnp.int32), cache=cache, logits=logits, positions=positions,
                 token=jnp.zeros((R,), jnp.int32), rows=jnp.arange(R), seq_logprobs=seq, scores=seq,
                 tokens=jnp.full((B, W, N), bc.pad_id, jnp.int32), logprobs=jnp.zeros((B, W, N), jnp.float32),
                 lengths=jnp.zeros((B, W), jnp.int32), finished=jnp.zeros((B, W), bool))
    if stops is not None:
        state["stop_state"] = stops.initial_state(R).reshape(B, W)

    def cond(s):
        return (s["t"] < N - 1) & ~jnp.all(s["finished"] | (s["seq_logprobs"] == -jnp.inf))

    def body(s):
        s = _select(s, bc, B, W, stops)
        cache = kv.take_rows(s["cache"], s["rows"], mesh)
        logits, cache = decode_step(weights, cfg, cache, s["token"], s["positions"], segments, mesh)
        return dict(s, t=s["t"] + 1, cache=cache, logits=logits, positions=s["positions"] + 1)

    s = _select(jax.lax.while_loop(cond, body, state), bc, B, W, stops)
    out = BeamOutput(tokens=s["tokens"], logprobs=s["logprobs"], seq_logprobs=s["seq_logprobs"],
                     scores=s["scores"], lengths=s["lengths"], finished=s["finished"])
    return out, s["cache"]  # returned to alias the donated input cache (updated in place)


def beam_search(params, cfg: ModelConfig, prompts, beam_cfg: BeamConfig, mesh=None,
                stops: StopStrings | None = None) -> BeamOutput:
    """The W best continuations of every prompt under `score` (module docstring).

    prompts: a left-padded `PromptBatch` or a list of token-id lists. stops: the automaton of
    `beam_cfg.stop_strings` (`sampling.compile_stops`), given with them.
    """
    bc = beam_cfg
    prompt_lib.check_token_ids(cfg, "BeamConfig", bc.pad_id, bc.eos_ids)
    stops = checked_stops(stops, bc.stop_strings, cfg.vocab_size, "BeamConfig", mesh)
    tokens, segments = prompt_lib.prepare(prompts, cfg, max_new_tokens=bc.max_new_tokens, pad_id=bc.pad_id,
                                          width=bc.prompt_width, owner="BeamConfig")
    tokens, segments = kv.place_rows(tokens, mesh), kv.place_rows(segments, mesh)
    cache, logits, positions, seg, _, _ = kv.prefill(
        params, tokens, segments, cfg=cfg, copies=bc.width, cache_len=tokens.shape[1] + bc.max_new_tokens,
        per_layer=bc.fast_decode, mesh=mesh)
    out, _ = _search(params, cache, logits, positions, seg, stops, cfg=cfg, bc=bc, mesh=mesh)
    return out
