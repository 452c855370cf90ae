"""Beam search against exhaustive enumeration and against a plain-Python beam search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen import sampling
from rl_sharpen.models import positions_from_segments
from tests.test_sampling import EOS, PROMPTS, V, enumerate_law, forward, peaky_model


def lp(n, alpha):
    return ((5 + n) / 6) ** alpha


def next_logprobs(params, cfg, prompt, n):
    """{prefix: log p(. | prompt, prefix)} for every prefix of < n tokens (teacher forced, float64)."""
    seqs = np.array(list(itertools.product(range(V), repeat=n)), np.int32)
    tokens = jnp.asarray(np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], axis=1))
    segments = jnp.ones_like(tokens)
    logits, _ = forward(params, cfg, tokens, positions_from_segments(segments), segments)
    logits = np.asarray(logits, np.float64)[:, len(prompt) - 1:-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    return {tuple(s[:j].tolist()): logp[i, j] for i, s in enumerate(seqs) for j in range(n)}


def python_beam_search(table, width, n, alpha, ends=lambda tokens: tokens[-1] == EOS):
    """The textbook algorithm: beams are (tokens, logp, finished); finished beams stay and compete.
    A beam finishes when `ends(its tokens)`."""
    beams = [((), 0.0, False)]
    for _ in range(n):
        candidates = []
        for tokens, logp, finished in beams:
            if finished:
                candidates.append((tokens, logp, True))
            else:
                candidates += [(tokens + (y,), logp + table[tokens][y], ends(tokens + (y,))) for y in range(V)]
        beams = sorted(candidates, key=lambda c: -c[1] / lp(len(c[0]), alpha))[:width]
    return beams


def beams_of(out, b):
    rows = []
    for w in range(out.tokens.shape[1]):
        if np.isfinite(float(out.scores[b, w])):
            n = int(out.lengths[b, w])
            rows.append((tuple(np.asarray(out.tokens[b, w, :n]).tolist()), float(out.seq_logprobs[b, w])))
    return rows


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_wide_beam_is_exhaustive_search(alpha):
    """Width 128 >= the 85 completions of <= 3 tokens: every completion survives, ranked exactly."""
    cfg, params = peaky_model()
    n = 3
    out = sampling.beam_search(params, cfg, PROMPTS,
                               sampling.BeamConfig(width=128, max_new_tokens=n, eos_ids=(EOS,), length_penalty=alpha))
    for b, prompt in enumerate(PROMPTS):
        law = enumerate_law(params, cfg, prompt, n=n)
        best = max(law, key=lambda y: np.log(law[y]) / lp(len(y), alpha))
        found = beams_of(out, b)
        assert len(found) == len(law) == 85
        assert found[0][0] == best
        for tokens, seq_logp in found:
            np.testing.assert_allclose(seq_logp, np.log(law[tokens]), atol=1e-5)
        scores = np.asarray(out.scores[b, :85])
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, [s / lp(len(t), alpha) for t, s in found], rtol=1e-6)
        finished = np.asarray(out.finished[b, :85])
        assert finished.tolist() == [t[-1] == EOS for t, _ in found]
    if alpha == 0:  # the argmax ends early for one prompt: finished beams do win
        assert any(len(beams_of(out, b)[0][0]) < n for b in range(len(PROMPTS)))


@pytest.mark.parametrize("width,alpha", [(2, 0.0), (3, 0.8)])
def test_narrow_beam_matches_python_beam_search(width, alpha):
    cfg, params = peaky_model(seed=1)
    n = 4
    out = sampling.beam_search(params, cfg, PROMPTS, sampling.BeamConfig(width=width, max_new_tokens=n,
                                                                         eos_ids=(EOS,), length_penalty=alpha))
    for b, prompt in enumerate(PROMPTS):
        ref = python_beam_search(next_logprobs(params, cfg, prompt, n), width, n, alpha)
        found = beams_of(out, b)
        assert [t for t, _ in found] == [t for t, _, _ in ref]
        np.testing.assert_allclose([s for _, s in found], [s for _, s, _ in ref], atol=1e-5)
        per_token = np.asarray(out.logprobs[b]).sum(-1)
        np.testing.assert_allclose(per_token, np.asarray(out.seq_logprobs[b]), atol=1e-5)


TOKEN_TEXTS = ["b", "", "a", "ab", "ba"]  # id 1 is the EOS: no text


@pytest.mark.parametrize("strings,eos_ids", [(("ab",), (EOS,)), (("ab", "bb"), ()), (("aa",), (EOS,))])
def test_stop_strings_end_beams_where_their_text_first_holds_one(strings, eos_ids):
    """Against the textbook search whose beams end at the EOS or at the token whose text completes a
    stop string, however the tokens split it ("a" + "b", "ab", "ba" + "b", ...)."""
    from rl_sharpen.sampling.stops import compile_stops, first_stop

    cfg, params = peaky_model(seed=2)
    n, width = 4, 3
    stops = compile_stops(strings, TOKEN_TEXTS, V)
    out = sampling.beam_search(params, cfg, PROMPTS, sampling.BeamConfig(
        width=width, max_new_tokens=n, eos_ids=eos_ids, stop_strings=strings), stops=stops)

    def ends(tokens):
        text = "".join(TOKEN_TEXTS[t] for t in tokens)
        return tokens[-1] in eos_ids or first_stop(text, strings) is not None

    stopped = 0
    for b, prompt in enumerate(PROMPTS):
        ref = python_beam_search(next_logprobs(params, cfg, prompt, n), width, n, 0.0, ends)
        assert [t for t, _ in beams_of(out, b)] == [t for t, _, _ in ref]
        np.testing.assert_allclose([s for _, s in beams_of(out, b)], [s for _, s, _ in ref], atol=1e-5)
        assert np.asarray(out.finished[b]).tolist() == [f for _, _, f in ref]
        stopped += sum(f and t[-1] not in eos_ids for t, _, f in ref)
    assert stopped  # some beam ended on a stop string, else nothing is checked
    with pytest.raises(ValueError, match=r"BeamConfig.stop_strings=\(\) with stops for"):
        sampling.beam_search(params, cfg, PROMPTS, sampling.BeamConfig(width=2, max_new_tokens=2), stops=stops)


def test_beams_without_a_candidate_are_empty_rows():
    """Width 30 > the 21 completions of <= 2 tokens: the 9 beams left over have seq_logprob -inf and
    nothing else (pad tokens, zero log-probs, length 0, not finished), not a copy of a finished beam."""
    cfg, params = peaky_model()
    out = sampling.beam_search(params, cfg, PROMPTS, sampling.BeamConfig(width=30, max_new_tokens=2, eos_ids=(EOS,)))
    seq = np.asarray(out.seq_logprobs)
    empty = ~np.isfinite(seq)
    assert empty.sum(axis=1).tolist() == [30 - (1 + (V - 1) * V)] * len(PROMPTS)
    assert np.all(np.asarray(out.tokens)[empty] == 0) and np.all(np.asarray(out.logprobs)[empty] == 0)
    assert not np.asarray(out.lengths)[empty].any() and not np.asarray(out.finished)[empty].any()
    np.testing.assert_allclose(np.asarray(out.logprobs).sum(-1)[~empty], seq[~empty], atol=1e-5)


def test_width_one_is_greedy():
    cfg, params = peaky_model()
    beam = sampling.beam_search(params, cfg, PROMPTS, sampling.BeamConfig(width=1, max_new_tokens=6, eos_ids=(EOS,)))
    greedy = sampling.generate(params, cfg, PROMPTS, jax.random.key(0),
                               sampling.SamplingConfig(max_new_tokens=6, greedy=True, eos_ids=(EOS,)))
    np.testing.assert_array_equal(np.asarray(beam.tokens[:, 0]), np.asarray(greedy.tokens))
    np.testing.assert_array_equal(np.asarray(beam.lengths[:, 0]), np.asarray(greedy.lengths))
    np.testing.assert_allclose(np.asarray(beam.seq_logprobs[:, 0]), np.asarray(greedy.logprobs).sum(-1), atol=1e-5)


@pytest.mark.parametrize("field,value,allowed", [
    ("width", 0, ">= 1"), ("max_new_tokens", 0, ">= 1"), ("length_penalty", float("nan"), "finite"),
    ("width", 2.5, "integer"), ("width", True, "integer"), ("max_new_tokens", 2.0, "integer"),
    ("eos_ids", None, "token id"), ("pad_id", 2.5, "token id"), ("length_penalty", "1", "finite float"),
    ("fast_decode", "no", "True or False"),
])
def test_bad_beam_config_names_the_field(field, value, allowed):
    kwargs = {"width": 2, "max_new_tokens": 4, field: value}
    with pytest.raises(ValueError, match=rf"BeamConfig\.{field}=.*allowed: .*{allowed}"):
        sampling.BeamConfig(**kwargs)


def test_take_rows_reorders_every_part_of_the_cache_and_keeps_its_end():
    from rl_sharpen.sampling import kv

    cache = {"k": jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(1, 2, 3, 2)[..., None, :],
             "v": -jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(1, 2, 3, 2)[..., None, :],
             "segment_ids": jnp.array([[1, 1, 0], [2, 2, 2]], jnp.int32), "end": jnp.array(3, jnp.int32)}
    out = kv.take_rows(cache, jnp.array([1, 0, 1]))
    for name in ("k", "v"):
        np.testing.assert_array_equal(out[name], cache[name][:, [1, 0, 1]])
    np.testing.assert_array_equal(out["segment_ids"], [[2, 2, 2], [1, 1, 0], [2, 2, 2]])
    assert int(out["end"]) == 3
