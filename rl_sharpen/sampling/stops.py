"""Stop strings: a sample ends at the first token whose text completes one of them, as at an EOS.

The check runs inside the jitted decode loop, on the text of the tokens, whatever their
tokenization: "\\n\\nQuestion:" stops a sample written as "\\n\\n" + "Question" + ":" or as
"\\n" + "\\nQuestion:" alike. It is the Aho-Corasick automaton of the stop strings, whose state after
text u is the longest suffix of u that is a prefix of a stop string; a stop string ends in u exactly
when the state reached has it as a suffix. `compile_stops` runs the automaton over each token's text
from each state once, so that a decode step reads two tables:

    state' = next_state[state, token]    hit = hit[state, token]  (a stop string ends within the token)

The text of a token is `token_texts[token]`, its text decoded alone. A character that a byte-level
tokenizer splits over two tokens decodes as U+FFFD in each, so a stop string holding one is matched
only where a single token holds the character (`compile_stops` warns of a character no token holds:
SmolLM2's tokens hold no "∞" or "答"). Matching starts with the completion: text the prompt
ends with does not count towards a stop string. The stop string is part of the sample (tokens,
log-probs, text), as an EOS is.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StopStrings:
    """The automaton of `strings` over a vocabulary: next_state int32 [S, V], hit bool [S, V]."""

    next_state: jax.Array | np.ndarray
    hit: jax.Array | np.ndarray
    strings: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

    def placed(self, mesh=None) -> StopStrings:
        """On the device, or replicated over `mesh` (a no-op once there)."""
        if mesh is None:
            return jax.tree.map(jnp.asarray, self)
        return jax.device_put(self, NamedSharding(mesh, PartitionSpec()))

    def step(self, state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(next state, whether a stop string ends with `token`) for each row."""
        return self.next_state[state, token], self.hit[state, token]

    def initial_state(self, rows: int) -> jax.Array:
        return jnp.zeros((rows,), jnp.int32)


def _automaton(strings: Sequence[str]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(character classes (others: len(classes)); delta int32 [S, C + 1] over the states, the
    prefixes of the strings, "" first; accepting bool [S]: a string is a suffix of the state)."""
    states = sorted({s[:i] for s in strings for i in range(len(s) + 1)}, key=lambda u: (len(u), u))
    index = {u: i for i, u in enumerate(states)}
    classes = {c: i for i, c in enumerate(sorted({c for s in strings for c in s}))}
    delta = np.zeros((len(states), len(classes) + 1), np.int32)  # the last class: a character in no string
    for u, i in index.items():
        for c, k in classes.items():
            text = u + c
            delta[i, k] = next(index[text[j:]] for j in range(len(text) + 1) if text[j:] in index)
    accepting = np.array([any(u.endswith(s) for s in strings) for u in states])
    return classes, delta, accepting


def compile_stops(strings: Sequence[str], token_texts: Sequence[str], vocab_size: int) -> StopStrings:
    """The automaton of `strings` over token ids 0 .. vocab_size - 1, token i's text token_texts[i]
    (ids beyond the list have no text, as the padding rows of an embedding table)."""
    if not strings or not is_stop_strings(strings):
        raise ValueError(f"stop strings: a non-empty string or tuple of non-empty strings, got {strings!r}")
    strings = stop_tuple(strings)
    if len(token_texts) > vocab_size:
        raise ValueError(f"{len(token_texts)} token texts for a vocabulary of {vocab_size} ids")
    classes, delta, accepting = _automaton(strings)
    other = len(classes)
    lengths = np.zeros(vocab_size, np.int64)
    lengths[:len(token_texts)] = [len(t) for t in token_texts]
    chars = np.full((vocab_size, int(lengths.max(initial=0))), other, np.int32)
    for i, text in enumerate(token_texts):
        chars[i, :len(text)] = [classes.get(c, other) for c in text]
    if missing := sorted(set(classes) - {c for text in token_texts for c in text}):
        logging.warning("stop strings %r: no token's text holds %r (a character a byte-level tokenizer "
                        "splits over tokens), so the strings holding it never stop a sample", strings, missing)
    order = np.argsort(-lengths, kind="stable")  # longest first: at character p, the first going[p] go on
    going = [int(np.sum(lengths > p)) for p in range(chars.shape[1])]
    next_state = np.empty((len(delta), vocab_size), np.int32)
    hit = np.zeros((len(delta), vocab_size), bool)
    sorted_chars = chars[order]
    for start in range(len(delta)):
        state = np.full(vocab_size, start, np.int32)
        found = np.zeros(vocab_size, bool)
        for p, n in enumerate(going):
            state[:n] = delta[state[:n], sorted_chars[:n, p]]
            found[:n] |= accepting[state[:n]]
        next_state[start, order], hit[start, order] = state, found
    return StopStrings(next_state, hit, strings)


def is_stop_strings(x) -> bool:
    """A non-empty string or a collection of them."""
    if isinstance(x, str):
        return bool(x)
    return isinstance(x, (tuple, list)) and all(isinstance(e, str) and e for e in x)


def stop_tuple(strings) -> tuple[str, ...]:
    """One string or a collection of them as a tuple without repeats, in their order."""
    return (strings,) if isinstance(strings, str) else tuple(dict.fromkeys(strings))


def checked_stops(stops: StopStrings | None, strings: tuple[str, ...], vocab_size: int, owner: str,
                  mesh=None) -> StopStrings | None:
    """`stops` on the devices, once they are the automaton of the config's `strings` over the model's
    vocabulary (None without strings)."""
    if (stops.strings if stops is not None else ()) != strings:
        raise ValueError(f"{owner}.stop_strings={strings!r} with stops for "
                         f"{None if stops is None else stops.strings!r}: pass "
                         "stops=sampling.compile_stops(stop_strings, token_texts, vocab_size) for the same strings "
                         "(tasks.prompts.token_texts gives a tokenizer's), and none without stop strings")
    if stops is None:
        return None
    if stops.hit.shape[1] != vocab_size:
        raise ValueError(f"stops cover {stops.hit.shape[1]} token ids; the model has vocab_size={vocab_size}")
    return stops.placed(mesh)


def first_stop(text: str, strings: Sequence[str]) -> int | None:
    """The end of the earliest stop string in `text` (the index after it), None without one: where
    the sampler ends a sample written as `text`."""
    ends = [text.find(s) + len(s) for s in strings if s in text]
    return min(ends) if ends else None
