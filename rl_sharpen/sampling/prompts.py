"""Prompt batches for the sampler: left padding, width bucketing and validation.

A `PromptBatch` holds left-padded tokens [B, P] and segment ids [B, P] (0 = padding, as in
`models.transformer`). The sampler pads P up to a bucket width (`bucket_width`) so that prompts of
a new length reuse an already compiled program.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Sequence

import jax
import numpy as np

from rl_sharpen.models.config import ModelConfig

MIN_WIDTH = 16


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts: `tokens` [B, P] int32, `segment_ids` [B, P] int32 (0 = padding).

    A 0/1 attention mask is a valid `segment_ids`. Real tokens must form a suffix of each row.
    """

    tokens: jax.Array
    segment_ids: jax.Array


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0, width: int | None = None) -> PromptBatch:
    """Left-pads token lists to `width` (default: the longest row) as a numpy `PromptBatch`."""
    width = max(len(r) for r in rows) if width is None else width
    tokens = np.full((len(rows), width), pad_id, np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"prompt {i} has {len(row)} tokens; the padded width is {width}")
        if len(row):
            tokens[i, width - len(row):] = row
            segments[i, width - len(row):] = 1
    return PromptBatch(tokens, segments)


def bucket_width(n: int) -> int:
    """The padded prompt width used for a longest prompt of n tokens: the smallest of 16, 24, 32, 48,
    64, 96, ... (2^k and 3 * 2^(k-1)) that is >= n. Padding is then at most a third of the width
    (half with powers of two alone), for two compiled widths per doubling of the prompt length."""
    width = MIN_WIDTH
    while width < n:
        width = width * 3 // 2 if width & (width - 1) == 0 else width * 4 // 3
    return width


def prepare(prompts, cfg: ModelConfig, *, max_new_tokens: int, pad_id: int, width: int | None,
            owner: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated host arrays (tokens, segment_ids), left-padded to `width` or to the bucket width.

    `owner` names the config class in error messages (e.g. "SamplingConfig").
    """
    if isinstance(prompts, PromptBatch):
        tokens = np.asarray(prompts.tokens)
        segments = np.asarray(prompts.segment_ids).astype(np.int32)
        if tokens.ndim != 2 or tokens.shape != segments.shape:
            raise ValueError(f"PromptBatch.tokens {tokens.shape} and segment_ids {segments.shape} must both be "
                             "[batch, width]")
    elif isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)):
        if not prompts:
            raise ValueError("prompts is empty; pass at least one prompt")
        rows = [np.asarray(r) for r in prompts]
        for i, row in enumerate(rows):
            if row.ndim != 1 or (row.size and not np.issubdtype(row.dtype, np.integer)):
                raise ValueError(f"prompt {i} is a {type(prompts[i]).__name__}, not a list of integer token ids; "
                                 "prompts must be a PromptBatch or a list of token-id lists (from a tokenizer's "
                                 "dict output, take its input_ids)")
        batch = left_pad([r.tolist() for r in rows], pad_id)
        tokens, segments = batch.tokens, batch.segment_ids
    else:
        raise TypeError(f"prompts is a {type(prompts).__name__}; pass a PromptBatch or a list of token-id lists")
    if tokens.shape[0] == 0:
        raise ValueError("prompts is empty; pass at least one prompt")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt tokens have dtype {tokens.dtype}; integer token ids are required")

    real = segments != 0
    lengths = real.sum(axis=1)
    for i in np.flatnonzero(lengths == 0):
        raise ValueError(f"prompt {i} is empty; every prompt needs at least 1 token")
    left_padded = np.all(real[:, 1:] >= real[:, :-1], axis=1)
    for i in np.flatnonzero(~left_padded):
        raise ValueError(f"prompt {i} is not left-padded: segment_ids must be 0 (padding) first, then the "
                         "real tokens up to the last column")
    bad = real & ((tokens < 0) | (tokens >= cfg.vocab_size))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"prompt {i} has token ids outside [0, vocab_size={cfg.vocab_size})")
    longest = int(lengths.max())
    if longest + max_new_tokens > cfg.max_position_embeddings:
        i = int(lengths.argmax())
        raise ValueError(f"prompt {i} has {longest} tokens; with {owner}.max_new_tokens={max_new_tokens} it needs "
                         f"{longest + max_new_tokens} positions > ModelConfig.max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    if width is None:
        width = bucket_width(longest)
    elif longest > width:
        i = int(lengths.argmax())
        raise ValueError(f"prompt {i} has {longest} tokens > {owner}.prompt_width={width}; allowed: prompts of at "
                         f"most {width} tokens, or prompt_width=None (bucketed automatically)")
    keep = min(tokens.shape[1], width)  # columns of real tokens, all within the last `longest`
    out_tokens = np.full((tokens.shape[0], width), pad_id, np.int32)
    out_segments = np.zeros((tokens.shape[0], width), np.int32)
    out_tokens[:, width - keep:] = np.where(real, tokens, pad_id)[:, tokens.shape[1] - keep:]
    out_segments[:, width - keep:] = segments[:, tokens.shape[1] - keep:]
    return out_tokens, out_segments


def check_token_ids(cfg: ModelConfig, owner: str, pad_id: int, eos_ids: tuple[int, ...]) -> None:
    """Errors for pad / EOS ids outside the vocabulary."""
    if not 0 <= pad_id < cfg.vocab_size:
        raise ValueError(f"{owner}.pad_id={pad_id}; allowed: 0 <= pad_id < vocab_size={cfg.vocab_size}")
    for e in eos_ids:
        if not 0 <= e < cfg.vocab_size:
            raise ValueError(f"{owner}.eos_ids contains {e}; allowed: ids in [0, vocab_size={cfg.vocab_size})")


def is_integer(x) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """An int, float or numpy number, not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_eos_ids(x) -> bool:
    """A token id or a collection of token ids."""
    return is_integer(x) or (isinstance(x, (tuple, list, set, frozenset)) and all(is_integer(e) for e in x))


def eos_tuple(eos_ids) -> tuple[int, ...]:
    """One id or a collection of ids as a sorted tuple without repeats."""
    eos = (eos_ids,) if isinstance(eos_ids, (int, np.integer)) else eos_ids
    return tuple(sorted({int(e) for e in eos}))


def check_fields(config, checks) -> None:
    """Raises naming `Owner.field=value` and the allowed values for the first (field, ok, allowed) not ok."""
    for field, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}.{field}={getattr(config, field)!r}; allowed: {allowed}")
