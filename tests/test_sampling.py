"""The sampler against brute force: sequence laws by enumeration, log-probs by teacher forcing,
greedy decoding by transformers, sharded runs by single-device runs, and its error messages."""

import collections
import dataclasses
import itertools
import math

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rl_sharpen import models, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.sampling import ancestral, decode
from tests import hf_models

V, EOS, N = 5, 1, 3  # vocabulary, end-of-sequence id, new tokens per sample
forward = jax.jit(models.forward, static_argnums=1)


def random_params(cfg, seed: int, std: float = 0.02, mesh=None):
    """Normal(0, std) weights, unit norms, zero biases (numpy, so nothing compiles)."""
    rng = np.random.default_rng(seed)
    specs = models.param_specs(cfg)
    is_spec = lambda x: hasattr(x, "init")
    make = {"ones": np.ones, "zeros": np.zeros}
    params = jax.tree.map(lambda s: make[s.init](s.shape, np.float32) if s.init in make
                          else (std * rng.standard_normal(s.shape)).astype(np.float32), specs, is_leaf=is_spec)
    shardings = models.param_shardings(cfg, mesh) if mesh is not None else jax.tree.map(lambda _: None, params)
    return jax.tree.map(jax.device_put, params, shardings)


def peaky_model(seed: int = 0, num_layers: int = 2):
    """A model over 5 tokens whose next-token law depends on the whole prefix."""
    cfg = models.ModelConfig("llama", V, 16, 32, num_layers, 2, 1, 8, max_position_embeddings=64)
    params = random_params(cfg, seed)
    layers = {k: v * (1.0 if k.endswith("norm") else 20.0) for k, v in params["layers"].items()}
    return cfg, dict(params, layers=layers, lm_head=params["lm_head"] * 8.0)


def truncated_law(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """q = softmax(top_p(top_k(z / T))) for one step, written as the textbook loop over ranks."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(len(z), bool)
    keep[order[:top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        mass, nucleus = 0.0, np.zeros(len(z), bool)
        for i in order:
            if mass >= top_p or not keep[i]:
                break
            nucleus[i] = True
            mass += p[i]
        p = np.where(nucleus, p, 0.0)
        p /= p.sum()
    return p


def enumerate_law(params, cfg, prompt, temperature=1.0, top_k=0, top_p=1.0, n=N, eos=EOS, contrast=None):
    """{completion: probability} over every completion of <= n tokens ending at the first EOS; with a
    `sampling.Contrast`, of the law of z - mu z_m."""
    seqs = np.array(list(itertools.product(range(cfg.vocab_size), repeat=n)), np.int32)
    tokens = jnp.asarray(np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], axis=1))
    segments = jnp.ones_like(tokens)
    logits, _ = forward(params, cfg, tokens, models.positions_from_segments(segments), segments)
    logits = np.asarray(logits, np.float64)[:, len(prompt) - 1:-1]
    if contrast is not None:
        memory, _ = forward(contrast.params, contrast.cfg, tokens, models.positions_from_segments(segments), segments)
        logits = logits - float(contrast.weight) * np.asarray(memory, np.float64)[:, len(prompt) - 1:-1]
    law = {}
    for seq, steps in zip(seqs, logits):
        prob, out = 1.0, []
        for token, z in zip(seq, steps):
            prob *= truncated_law(z, temperature, top_k, top_p)[token]
            out.append(int(token))
            if token == eos:
                break
        law[tuple(out)] = prob
    return law


def empirical(out: sampling.SampleOutput, rows: slice) -> dict:
    counts = {}
    for toks, n in zip(np.asarray(out.tokens)[rows], np.asarray(out.lengths)[rows]):
        key = tuple(int(t) for t in toks[:n])
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square_pvalue(counts: dict, law: dict) -> float:
    """Pearson chi-square goodness of fit, outcomes with expected count < 5 pooled into one bin."""
    n = sum(counts.values())
    assert set(counts) <= {k for k, p in law.items() if p > 0}, "sampled an outcome of probability 0"
    small = [k for k in law if n * law[k] < 5]
    observed = [counts.get(k, 0) for k in law if k not in small] + [sum(counts.get(k, 0) for k in small)]
    expected = [n * law[k] for k in law if k not in small] + [n * sum(law[k] for k in small)]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    return float(scipy.stats.chi2.sf(stat, df=sum(e > 0 for e in expected) - 1))


PROMPTS = [[3, 2, 4], [0, 4]]  # different lengths: the second is left-padded


def kept_by_sorting(z: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """The documented truncation of float32 z [R, V] through a full sort per row (float64 masses):
    keep z >= the k-th largest, then z >= the value at which the descending cumulative mass first
    reaches top_p (ties with a kept value kept)."""
    keep = np.ones(z.shape, bool)
    for r, row in enumerate(z):
        ranked = np.sort(row)[::-1]
        if 0 < top_k < len(row):
            keep[r] &= row >= ranked[top_k - 1]
        if top_p < 1:
            p = np.where(keep[r], np.exp(row.astype(np.float64) - row.max()), 0.0)
            p_ranked = np.sort(p)[::-1] / p.sum()
            kept = int(np.sum(np.cumsum(p_ranked) - p_ranked < top_p))
            keep[r] &= row >= ranked[kept - 1]
    return keep


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (1.0, 1, 1.0), (0.7, 0, 0.3), (1.0, 0, 0.05),
                                                     (1.3, 40, 0.9), (1.0, 300, 0.62), (0.5, 2, 0.999)])
def test_filter_logits_keeps_the_sorted_cutoffs(temperature, top_k, top_p):
    rng = np.random.default_rng(top_k)
    logits = np.round(2 * rng.standard_normal((48, 257)).astype(np.float32)) / 2  # many ties
    logits[:8] *= 8  # peaked rows: top-p keeps one value
    logits[8:12] = 0.25  # flat rows: everything is tied
    logits[12:16, ::3] = -np.inf
    logits[16:20] = -20.0  # below, a cluster of values 1 ulp apart that the cutoffs split
    logits[16:20, :60] = 1.5 + rng.integers(0, 6, (4, 60)) * np.spacing(np.float32(1.5))
    truncate = jax.jit(sampling.filter_logits, static_argnums=(1, 2, 3))
    z = truncate(logits, temperature, top_k, top_p)
    expected_z = np.asarray(truncate(logits, temperature, 0, 1.0))  # (l - max l) / T, as XLA rounds it
    keep = kept_by_sorting(expected_z, top_k, top_p)
    assert 0 < keep.sum() < np.isfinite(logits).sum()  # the truncation bites
    np.testing.assert_array_equal(np.isfinite(np.asarray(z)), keep)
    np.testing.assert_array_equal(np.asarray(z)[keep], expected_z[keep])


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.3, 0, 0.75),
                                                     (0.8, 4, 0.9)])
def test_sample_law_matches_enumeration(temperature, top_k, top_p):
    cfg, params = peaky_model()
    G = 6000
    sc = sampling.SamplingConfig(max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=(EOS,),
                                 num_samples=G, pad_id=0)
    out = sampling.generate(params, cfg, PROMPTS, jax.random.key(7), sc)
    assert out.tokens.shape == (len(PROMPTS) * G, N)
    laws = [enumerate_law(params, cfg, prompt, temperature, top_k, top_p) for prompt in PROMPTS]
    for b, (prompt, law) in enumerate(zip(PROMPTS, laws)):
        assert abs(sum(law.values()) - 1) < 1e-9
        if top_k or top_p < 1:  # the truncation must bite, or this case tests nothing new
            assert sum(p == 0 for p in law.values()) > 0
        pvalue = chi_square_pvalue(empirical(out, slice(b * G, (b + 1) * G)), law)
        assert pvalue > 1e-3, (prompt, pvalue)
    # sampled_logprobs sum to log q(completion) of the law that was sampled
    for r in range(0, len(PROMPTS) * G, 997):
        toks, n = np.asarray(out.tokens[r]), int(out.lengths[r])
        law = laws[r // G]
        np.testing.assert_allclose(float(out.sampled_logprobs[r].sum()), np.log(law[tuple(toks[:n].tolist())]),
                                   atol=1e-4)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 3, 0.9)])
def test_contrast_law_matches_enumeration(temperature, top_k, top_p):
    """Sampling from z - mu z_m (a second model of another depth) matches the enumerated law of z - mu z_m,
    sampled_logprobs are log q of that law, and logprobs stay the policy's own."""
    cfg, params = peaky_model()
    memory_cfg, memory_params = peaky_model(seed=3, num_layers=1)
    contrast = sampling.Contrast(memory_params, memory_cfg, 1.0)
    G = 6000
    sc = sampling.SamplingConfig(max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=(EOS,),
                                 num_samples=G, pad_id=0)
    out = sampling.generate(params, cfg, PROMPTS, jax.random.key(5), sc, contrast=contrast)
    for b, prompt in enumerate(PROMPTS):
        law = enumerate_law(params, cfg, prompt, temperature, top_k, top_p, contrast=contrast)
        plain = enumerate_law(params, cfg, prompt, temperature, top_k, top_p)
        assert sum(abs(law.get(k, 0) - plain.get(k, 0)) for k in set(law) | set(plain)) / 2 > 0.1  # it bites
        pvalue = chi_square_pvalue(empirical(out, slice(b * G, (b + 1) * G)), law)
        assert pvalue > 1e-3, (prompt, pvalue)
        for r in range(b * G, (b + 1) * G, 701):
            toks, n = np.asarray(out.tokens[r]), int(out.lengths[r])
            np.testing.assert_allclose(float(out.sampled_logprobs[r].sum()), np.log(law[tuple(toks[:n].tolist())]),
                                       atol=1e-4)
    assert _teacher_forced_gap(params, cfg, out) < 1e-5
    unweighted = sampling.generate(params, cfg, PROMPTS, jax.random.key(5), sc,
                                   contrast=sampling.Contrast(memory_params, memory_cfg, 0.0))
    plain = sampling.generate(params, cfg, PROMPTS, jax.random.key(5), sc)
    np.testing.assert_array_equal(np.asarray(unweighted.tokens), np.asarray(plain.tokens))


def test_contrast_with_another_vocabulary_is_refused():
    cfg, params = peaky_model()
    other = models.ModelConfig("llama", V + 1, 16, 32, 1, 2, 1, 8, max_position_embeddings=64)
    with pytest.raises(ValueError, match="Contrast.cfg.vocab_size=6"):
        sampling.generate(params, cfg, PROMPTS, jax.random.key(0), sampling.SamplingConfig(max_new_tokens=N),
                          contrast=sampling.Contrast(random_params(other, 0), other, 0.5))


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), np.ones(2)])
def test_contrast_weight_must_be_a_finite_scalar_at_least_zero(weight):
    cfg, params = peaky_model()
    memory_cfg, memory_params = peaky_model(seed=3, num_layers=1)
    with pytest.raises(ValueError, match=r"Contrast.weight=.*allowed: a finite scalar mu >= 0"):
        sampling.generate(params, cfg, PROMPTS, jax.random.key(0), sampling.SamplingConfig(max_new_tokens=N),
                          contrast=sampling.Contrast(memory_params, memory_cfg, weight))


def test_contrast_shorter_than_the_samples_is_refused():
    cfg, params = peaky_model()
    memory_cfg, memory_params = peaky_model(seed=3, num_layers=1)
    needed = max(map(len, PROMPTS)) + N
    short = memory_cfg.replace(max_position_embeddings=needed - 1)
    with pytest.raises(ValueError, match=f"needs {needed} positions > Contrast.cfg.max_position_embeddings"):
        sampling.generate(params, cfg, PROMPTS, jax.random.key(0), sampling.SamplingConfig(max_new_tokens=N),
                          contrast=sampling.Contrast(memory_params, short, 0.5))
    enough = short.replace(max_position_embeddings=needed)
    out = sampling.generate(params, cfg, PROMPTS, jax.random.key(0), sampling.SamplingConfig(max_new_tokens=N),
                            contrast=sampling.Contrast(memory_params, enough, 0.5))
    assert out.tokens.shape == (len(PROMPTS), N)


def test_greedy_takes_the_argmax_path():
    cfg, params = peaky_model()
    out = sampling.generate(params, cfg, PROMPTS, jax.random.key(0),
                            sampling.SamplingConfig(max_new_tokens=N, greedy=True, eos_ids=(EOS,)))
    for b, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for _ in range(N):
            batch = sampling.left_pad([seq], width=8)
            logits, _ = forward(params, cfg, batch.tokens, models.positions_from_segments(batch.segment_ids),
                                batch.segment_ids)
            seq.append(int(jnp.argmax(logits[0, -1])))
            if seq[-1] == EOS:
                break
        n = int(out.lengths[b])
        assert np.asarray(out.tokens[b, :n]).tolist() == seq[len(prompt):]
        assert np.all(np.asarray(out.tokens[b, n:]) == 0) and np.all(np.asarray(out.sampled_logprobs[b]) == 0)


def test_temperature_zero_is_greedy_until_the_temperature_is_replaced():
    """T = 0 decodes greedily without storing greedy=True, so `replace(temperature=1)` samples."""
    cfg, params = peaky_model()
    cold = sampling.SamplingConfig(max_new_tokens=N, temperature=0, num_samples=16, eos_ids=(EOS,))
    greedy = sampling.generate(params, cfg, PROMPTS, jax.random.key(1), cold)
    assert cold.is_greedy and not cold.greedy and np.all(np.asarray(greedy.sampled_logprobs) == 0)
    assert len({tuple(row) for row in np.asarray(greedy.tokens)[:16].tolist()}) == 1
    warm = dataclasses.replace(cold, temperature=1.0)
    sampled = sampling.generate(params, cfg, PROMPTS, jax.random.key(1), warm)
    assert not warm.is_greedy and len({tuple(row) for row in np.asarray(sampled.tokens)[:16].tolist()}) > 1


@pytest.mark.parametrize("temperature", [1e-9, 1e-20, 1e-37])
def test_tiny_temperatures_sample_the_argmax(temperature):
    """T -> 0 is greedy: logits / T near float32's largest values must not turn the draw or its
    log-prob into +-inf or NaN (`filter_logits` subtracts the row's maximum first)."""
    cfg, params = peaky_model()
    greedy = sampling.generate(params, cfg, PROMPTS, jax.random.key(0),
                               sampling.SamplingConfig(max_new_tokens=N, greedy=True, eos_ids=(EOS,)))
    cold = sampling.generate(params, cfg, PROMPTS * 8, jax.random.key(1),
                             sampling.SamplingConfig(max_new_tokens=N, temperature=temperature, eos_ids=(EOS,)))
    np.testing.assert_array_equal(np.asarray(cold.tokens), np.tile(np.asarray(greedy.tokens), (8, 1)))
    np.testing.assert_array_equal(np.asarray(cold.sampled_logprobs), 0.0)
    for bad in (1e-40, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"SamplingConfig\.temperature={bad}; allowed: 0 \(greedy\) or a finite "
                                             r"float >= 1.18e-38"):
            sampling.SamplingConfig(max_new_tokens=N, temperature=bad)


def test_signed_zeros_are_one_value_under_jit():
    """-0.0 ties with +0.0 at a cutoff (XLA folds away the `z + 0.0` that would merge them)."""
    z = jnp.asarray([[-0.0, 0.0, -1.0, -2.0], [-1.0, -0.0, 0.0, -0.0]])
    keys = np.asarray(jax.jit(ancestral._order_keys)(z))
    assert keys[0, 0] == keys[0, 1] and keys[1, 1] == keys[1, 2] == keys[1, 3]
    kept = jax.jit(sampling.filter_logits, static_argnums=(1, 2, 3))(z, 1.0, 1, 1.0)
    assert np.isfinite(np.asarray(kept)).tolist() == [[True, True, False, False], [False, True, True, True]]


def test_vocabulary_reductions_match_jax():
    """The per-step reductions: `argmax` is jnp.argmax (first maximal index, NaN counting as maximal)
    and `picked_logprob` the chosen entry of jax.nn.log_softmax."""
    rng = np.random.default_rng(0)
    z = np.round(4 * rng.standard_normal((64, 300))).astype(np.float32)  # many ties at the top
    z[1, [7, 200]], z[2, [3, 9]], z[3], z[4, ::2], z[5] = np.nan, np.inf, -np.inf, -np.inf, 0.0
    np.testing.assert_array_equal(jax.jit(ancestral.argmax)(z), jnp.argmax(z, axis=-1))
    finite = z[6:]
    token = jnp.asarray(rng.integers(0, 300, len(finite)), jnp.int32)
    expected = jnp.take_along_axis(jax.nn.log_softmax(finite, axis=-1), token[:, None], axis=-1)[:, 0]
    np.testing.assert_array_max_ulp(np.asarray(jax.jit(models.picked_logprob)(finite, token)), np.asarray(expected),
                                    maxulp=2)  # z_y - logsumexp(z) and log_softmax round apart by an ulp


@pytest.mark.parametrize("vocab,blocks", [(12, 4), (29, 5), (49152, 256)])
def test_two_stage_gumbel_max_draws_softmax(vocab, blocks):
    """Blocks of a divisor (12 = 4 x 3), padded blocks (29 -> 5 x 6) and the SmolLM2 vocabulary; the
    first block of each law and a few entries are -inf (truncated) and must never be drawn."""
    B = ancestral._block_size(vocab)
    assert -(-vocab // B) == blocks
    rng = np.random.default_rng(vocab)
    logits = 1.5 * rng.standard_normal(vocab)
    logits[:B] = -np.inf
    logits[rng.choice(np.arange(B, vocab), 2, replace=False)] = -np.inf
    if vocab > 100:  # a law that chi-square can check with 2 x 10^4 draws: a few likely tokens
        logits[B:] -= 6.0
        logits[rng.choice(np.arange(B, vocab), 6, replace=False)] = rng.standard_normal(6)
    draws = 100_000 if vocab < 100 else 20_000
    draw = jax.jit(lambda keys, z: jax.lax.map(lambda key: [x[0] for x in ancestral.gumbel_max(key, z[None])], keys))
    tokens, logprobs = map(np.asarray, draw(jax.random.split(jax.random.key(vocab), draws), logits.astype(np.float32)))
    log_p = logits - np.logaddexp.reduce(logits)
    np.testing.assert_allclose(logprobs, log_p[tokens], atol=1e-5)  # the log-prob of the token drawn
    p = np.exp(log_p)
    counts = np.bincount(tokens, minlength=vocab)
    assert counts[p == 0].sum() == 0
    likely = p * draws >= 5  # the rest pooled into one cell
    observed = np.append(counts[likely], counts[~likely].sum())
    expected = np.append(p[likely], p[~likely].sum()) * draws
    pvalue = scipy.stats.chisquare(observed[expected > 0], expected[expected > 0]).pvalue
    assert pvalue > 1e-3, pvalue


token_logprobs = jax.jit(models.token_logprobs, static_argnums=1)


def _teacher_forced_gap(params, cfg, out):
    seq, seg = out.sequences()
    P = out.prompt_tokens.shape[1]
    forced = token_logprobs(params, cfg, seq, seg)[:, P - 1:]
    mask = np.asarray(out.completion_mask)
    assert mask.sum() > 0
    return float(np.abs(np.where(mask, np.asarray(forced) - np.asarray(out.logprobs), 0.0)).max())


LOGPROB_PROMPTS = [[5, 17, 3, 44, 9, 60, 22], [70, 4], [8, 8, 8, 8]]
LOGPROB_CFG = sampling.SamplingConfig(max_new_tokens=12, temperature=1.0, num_samples=3, eos_ids=(2, 11, 30))


@pytest.mark.parametrize("fast_decode", [True, False], ids=["fast_decode", "scanned"])
@pytest.mark.parametrize("family", models.FAMILIES)
def test_logprobs_equal_teacher_forcing(family, fast_decode, tmp_path):
    """Both decoders (`decode.step`, the default, and `models.forward` scanned) against teacher
    forcing, for every family: `decode._layer` repeats the transformer block in its own layout."""
    hf_models.save_tiny_hf_model(family, tie=family == "qwen2", path=str(tmp_path))
    cfg, params = models.load_hf(str(tmp_path))
    out = sampling.generate(params, cfg, LOGPROB_PROMPTS, jax.random.key(3),
                            dataclasses.replace(LOGPROB_CFG, fast_decode=fast_decode))
    assert 0 < int(out.finished.sum()) < 9 and np.all(np.asarray(out.lengths)[~np.asarray(out.finished)] == 12)
    assert _teacher_forced_gap(params, cfg, out) <= 1e-5
    # untruncated temperature-1 sampling: the sampled law is the model
    np.testing.assert_allclose(np.asarray(out.sampled_logprobs), np.asarray(out.logprobs), atol=1e-6)
    # rows of one prompt share its prompt; the padding after EOS is pad_id with log-prob 0
    np.testing.assert_array_equal(np.asarray(out.prompt_tokens[3:6]), np.repeat(out.prompt_tokens[3:4], 3, 0))
    pad = ~np.asarray(out.completion_mask)
    assert np.all(np.asarray(out.tokens)[pad] == 0) and np.all(np.asarray(out.logprobs)[pad] == 0)


@pytest.mark.parametrize("family,cpu_kernels", [("qwen2", True), ("qwen3", True), ("qwen3", False)])
def test_fast_and_scanned_decode_agree(family, cpu_kernels, tmp_path, monkeypatch, request):
    """`decode.step` (per-layer [out, in] weights, heads-first cache) and `models.forward` scanned over
    the stacked layers are two layouts of one decoder: same tokens, log-probs within float32 noise.
    Both forms of `decode.step` are checked: its CPU kernels and the ones used elsewhere."""
    monkeypatch.setattr(decode, "_cpu_kernels", lambda: cpu_kernels)
    jax.clear_caches()  # the jit caches do not see the patched choice
    request.addfinalizer(jax.clear_caches)
    hf_models.save_tiny_hf_model(family, tie=False, path=str(tmp_path))
    cfg, params = models.load_hf(str(tmp_path))
    fast = sampling.generate(params, cfg, LOGPROB_PROMPTS, jax.random.key(5), LOGPROB_CFG)
    scanned = sampling.generate(params, cfg, LOGPROB_PROMPTS, jax.random.key(5),
                                dataclasses.replace(LOGPROB_CFG, fast_decode=False))
    np.testing.assert_array_equal(np.asarray(fast.tokens), np.asarray(scanned.tokens))
    np.testing.assert_allclose(np.asarray(fast.logprobs), np.asarray(scanned.logprobs), atol=1e-5)


def test_attention_reads_only_the_filled_cache(tmp_path, monkeypatch, request):
    """Attention over a prefix of the cache (one of `attention_lengths`) equals attention over the
    whole cache: same tokens, same log-probs to float32 rounding. The prompts (width 16) and 112 new
    tokens fill slots 16..127 of 128, so the step moves from the 32-slot prefix to the full cache."""
    assert decode.attention_lengths(128) == (16, 32, 128)
    assert decode.attention_lengths(192) == (24, 48, 192)
    assert decode.attention_lengths(28) == (8, 28)
    assert decode.attention_lengths(5) == (5,)
    hf_models.save_tiny_hf_model("qwen2", tie=True, path=str(tmp_path))
    cfg, params = models.load_hf(str(tmp_path))
    sc = dataclasses.replace(LOGPROB_CFG, max_new_tokens=112, ignore_eos=True)
    request.addfinalizer(jax.clear_caches)
    outs = []
    for divisors in (decode.PREFIX_DIVISORS, ()):
        monkeypatch.setattr(decode, "PREFIX_DIVISORS", divisors)
        jax.clear_caches()
        outs.append(sampling.generate(params, cfg, LOGPROB_PROMPTS, jax.random.key(4), sc))
    assert outs[0].prompt_tokens.shape[1] == 16
    np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))
    np.testing.assert_allclose(np.asarray(outs[0].logprobs), np.asarray(outs[1].logprobs), atol=1e-6)
    assert _teacher_forced_gap(params, cfg, outs[0]) < 1e-5


def test_bfloat16_logprob_gap_is_small(tmp_path):
    """bfloat16 decoding and bfloat16 teacher forcing round differently; the gap is measured, and bounded."""
    hf_models.save_tiny_hf_model("llama", tie=False, path=str(tmp_path))
    cfg, params = models.load_hf(str(tmp_path), dtype="bfloat16")
    out = sampling.generate(params, cfg, LOGPROB_PROMPTS, jax.random.key(3), LOGPROB_CFG)
    gap = _teacher_forced_gap(params, cfg, out)
    print(f"bfloat16 sampler vs bfloat16 teacher forcing: max |dlogp| = {gap:.2e}")
    assert 0 < gap < 0.1


def test_matches_transformers_greedy_on_smollm2():
    try:
        path = hf_models.smollm2_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg, params = models.load_hf(path)
    questions = ["What is 12 times 7? Answer briefly.", "Name the largest planet in the solar system."]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for q in questions]
    # the scanned decoder compiles in a fraction of decode.step's time; the two agree (test above)
    sc = sampling.SamplingConfig(max_new_tokens=64, greedy=True, eos_ids=cfg.eos_token_ids, fast_decode=False)
    out = sampling.generate(params, cfg, prompts, jax.random.key(0), sc)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spinning OpenMP threads are slow on a busy machine
    try:
        with torch.no_grad():
            refs = [hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=64, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
                    for ids in prompts]
    finally:
        torch.set_num_threads(threads)
    for b, ref in enumerate(refs):
        n = int(out.lengths[b])
        assert np.asarray(out.tokens[b, :n]).tolist() == ref[:n] and len(ref) >= n
        assert n == 64 or ref[n - 1] in cfg.eos_token_ids


def test_smollm2_logprobs_are_at_the_float32_floor():
    """On real weights (logits up to ~40) the sampler's float32 log-probs differ from teacher forcing
    by rounding alone: no more than teacher forcing differs from itself when the same sequences are
    shifted by 16 pad columns (the same function on another shape)."""
    try:
        path = hf_models.smollm2_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    import transformers

    cfg, params = models.load_hf(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 times 7? Think step by step."}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    sc = sampling.SamplingConfig(max_new_tokens=32, temperature=1.0, ignore_eos=True, num_samples=4)
    out = sampling.generate(params, cfg, [prompt], jax.random.key(1), sc)
    seq, seg = out.sequences()
    P = out.prompt_tokens.shape[1]
    forced = np.asarray(token_logprobs(params, cfg, seq, seg)[:, P - 1:])
    shift = 16
    padded = [jnp.pad(x, ((0, 0), (shift, 0))) for x in (seq, seg)]
    shifted = np.asarray(token_logprobs(params, cfg, *padded)[:, P - 1 + shift:])
    gap, floor = np.abs(forced - np.asarray(out.logprobs)), np.abs(forced - shifted)
    print(f"sampler vs teacher forcing {gap.max():.1e} max / {gap.mean():.1e} mean; "
          f"teacher forcing shifted {floor.max():.1e} / {floor.mean():.1e}")
    assert gap.mean() <= 2 * floor.mean() + 1e-6 and gap.max() <= 1e-4


def _tiny(mesh=None, std=0.02):
    cfg = models.ModelConfig("qwen2", 64, 32, 64, 2, 4, 2, 8, max_position_embeddings=128)
    return cfg, random_params(cfg, 1, std, mesh)


def test_sharded_generation_equals_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg, params = _tiny(std=0.2)
    _, sharded = _tiny(mesh, std=0.2)
    assert sharded["layers"]["q"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    prompts = [[3, 9, 27], [5], [7, 7, 7, 7, 7], [1, 2]]
    sc = sampling.SamplingConfig(max_new_tokens=10, temperature=0.9, top_p=0.95, num_samples=2, eos_ids=(4,))
    ref = sampling.generate(params, cfg, prompts, jax.random.key(5), sc)
    out = sampling.generate(sharded, cfg, prompts, jax.random.key(5), sc, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), atol=1e-4)
    assert len(np.unique(np.asarray(ref.tokens))) > 3
    # with a sharded contrast model (a 1-layer memory network) in the loop too
    memory_cfg = cfg.replace(num_layers=1)
    memory, sharded_memory = random_params(memory_cfg, 2, 0.2), random_params(memory_cfg, 2, 0.2, mesh)
    ref_c = sampling.generate(params, cfg, prompts, jax.random.key(5), sc,
                              contrast=sampling.Contrast(memory, memory_cfg, 1.0))
    out_c = sampling.generate(sharded, cfg, prompts, jax.random.key(5), sc, mesh=mesh,
                              contrast=sampling.Contrast(sharded_memory, memory_cfg, 1.0))
    np.testing.assert_array_equal(np.asarray(out_c.tokens), np.asarray(ref_c.tokens))
    np.testing.assert_allclose(np.asarray(out_c.sampled_logprobs), np.asarray(ref_c.sampled_logprobs), atol=1e-4)
    assert np.any(np.asarray(ref_c.tokens) != np.asarray(ref.tokens))


def test_repeated_calls_do_not_recompile():
    cfg, params = _tiny()
    sc = sampling.SamplingConfig(max_new_tokens=4, num_samples=2, eos_ids=(4,))
    traces = []
    listener = lambda event, duration, **kw: traces.append(event) if event.endswith("jaxpr_trace_duration") else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sampling.generate(params, cfg, [[1, 2, 3]], jax.random.key(0), sc)
        traces.clear()
        # another prompt length in the same width bucket (16), other tokens, another rng
        for i, prompt in enumerate([[5] * 9, [6] * 16, [7]]):
            sampling.generate(params, cfg, [prompt], jax.random.key(i + 1), sc)
        assert traces == []
        sampling.generate(params, cfg, [[5] * 17], jax.random.key(0), sc)  # next bucket: 32
        assert traces
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("field,value,allowed", [
    ("temperature", -0.5, r"0 \(greedy\) or a finite float"), ("top_p", 0.0, r"\(0, 1\]"), ("top_p", 1.5, r"\(0, 1\]"),
    ("top_k", -1, ">= 0"), ("num_samples", 0, ">= 1"), ("max_new_tokens", 0, ">= 1"), ("prompt_width", 0, "None"),
    ("max_new_tokens", None, ">= 1"), ("top_k", 2.5, "integer >= 0"), ("eos_ids", None, "token id"),
    ("greedy", 2, "True or False"), ("ignore_eos", None, "True or False"), ("fast_decode", 1, "True or False"),
])
def test_bad_config_names_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=rf"SamplingConfig\.{field}={value}.*allowed: .*{allowed}"):
        sampling.SamplingConfig(**{"max_new_tokens": 4, field: value})


def test_bad_prompts_are_refused_clearly():
    cfg, params = _tiny()
    sc = sampling.SamplingConfig(max_new_tokens=8)
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampling.generate(params, cfg, [[1, 2], []], rng, sc)
    with pytest.raises(ValueError, match="prompts is empty"):
        sampling.generate(params, cfg, [], rng, sc)
    encoded = collections.UserDict({"input_ids": [1, 2], "attention_mask": [1, 1]})  # what tokenizers return
    with pytest.raises(ValueError, match="prompt 0 is a UserDict, not a list of integer token ids"):
        sampling.generate(params, cfg, [encoded], rng, sc)
    with pytest.raises(ValueError, match="prompt 1 is a list, not a list of integer token ids"):
        sampling.generate(params, cfg, [[1, 2], [[1, 2]]], rng, sc)
    with pytest.raises(ValueError, match=r"prompt 0 has 125 tokens.*133 positions > ModelConfig.max_position_embeddings=128"):
        sampling.generate(params, cfg, [[1] * 125], rng, sc)
    with pytest.raises(ValueError, match=r"prompt 0 has 20 tokens > SamplingConfig.prompt_width=16"):
        sampling.generate(params, cfg, [[1] * 20], rng, sampling.SamplingConfig(max_new_tokens=8, prompt_width=16))
    right_padded = sampling.PromptBatch(np.array([[3, 4, 0]]), np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="prompt 0 is not left-padded"):
        sampling.generate(params, cfg, right_padded, rng, sc)
    with pytest.raises(ValueError, match=r"token ids outside \[0, vocab_size=64\)"):
        sampling.generate(params, cfg, [[3, 64]], rng, sc)
    with pytest.raises(ValueError, match=r"SamplingConfig.eos_ids contains 99"):
        sampling.generate(params, cfg, [[3]], rng, sampling.SamplingConfig(max_new_tokens=8, eos_ids=(99,)))
    with pytest.raises(ValueError, match=r"SamplingConfig.eos_ids contains 64; allowed: ids in \[0, vocab_size=64\)"):
        sampling.generate(params, cfg, [[3]], rng, sampling.SamplingConfig(max_new_tokens=8, eos_ids=(64,)))
    # exactly max_position_embeddings positions: allowed
    out = sampling.generate(params, cfg, [[1] * 120], rng, sampling.SamplingConfig(max_new_tokens=8, ignore_eos=True))
    assert out.tokens.shape == (1, 8)


def test_a_prompt_batch_s_padding_tokens_become_pad_id_and_its_segment_number_carries_on():
    """Padding columns of a PromptBatch may hold any id; they are written as pad_id. A prompt numbered
    2 (not 1) is continued by its completion in segment 2: teacher forcing `sequences()` reproduces
    the sampler's log-probs only if the completion attends to its prompt."""
    cfg, params = _tiny()
    sc = sampling.SamplingConfig(max_new_tokens=4, temperature=1.0, num_samples=2, pad_id=0, ignore_eos=True)
    batch = sampling.PromptBatch(np.array([[9, 9, 3, 4, 5], [9, 7, 7, 2, 6]]), np.array([[0, 0, 2, 2, 2],
                                                                                          [0, 2, 2, 2, 2]]))
    out = sampling.generate(params, cfg, batch, jax.random.key(3), sc)
    prompt_segments = np.asarray(out.prompt_segment_ids)
    assert np.all(np.asarray(out.prompt_tokens)[prompt_segments == 0] == 0)
    tokens, segments = out.sequences()
    assert set(np.unique(np.asarray(segments))) == {0, 2}
    lp = np.asarray(models.token_logprobs(params, cfg, tokens, segments))[:, -out.tokens.shape[1]:]
    np.testing.assert_allclose(lp, np.asarray(out.logprobs), atol=2e-5)


def test_prompt_batch_and_lists_agree():
    cfg, params = _tiny()
    sc = sampling.SamplingConfig(max_new_tokens=5, temperature=0.8, num_samples=2)
    rows = [[3, 9, 27], [5]]
    a = sampling.generate(params, cfg, rows, jax.random.key(2), sc)
    b = sampling.generate(params, cfg, sampling.left_pad(rows, width=7), jax.random.key(2), sc)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert a.prompt_tokens.shape == (4, 16) and sampling.bucket_width(17) == 24 and sampling.bucket_width(3) == 16


def _matmul_precisions(jaxpr) -> list:
    """The `precision` of every dot_general in a jaxpr and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
                    found += _matmul_precisions(getattr(sub, "jaxpr", sub))
    return found


@pytest.mark.parametrize("fast_decode,cpu_kernels", [(True, True), (True, False), (False, True)])
def test_float32_matmuls_ask_for_full_precision(fast_decode, cpu_kernels, monkeypatch, request):
    """Backends may run a default-precision float32 matmul in TF32 (GPU) or one bfloat16 pass (TPU);
    the float32 log-prob exactness needs every matmul of sampling and teacher forcing at HIGHEST,
    while bfloat16 models keep the backend default. The fast decoder's kernels for other backends than
    the CPU are traced here too."""
    monkeypatch.setattr(decode, "_cpu_kernels", lambda: cpu_kernels)
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)
    for dtype, expected in (("float32", jax.lax.Precision.HIGHEST), ("bfloat16", None)):
        cfg = models.ModelConfig("qwen3", 64, 16, 32, 2, 2, 1, 8, tie_embeddings=True, param_dtype=dtype,
                                 compute_dtype=dtype)
        params = random_params(cfg, 0)
        sc = sampling.SamplingConfig(max_new_tokens=3, temperature=1.0, num_samples=2, fast_decode=fast_decode)
        tokens, segments = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32)
        sample = lambda p: sampling.generate(p, cfg, [[5, 6, 7]], jax.random.key(0), sc).logprobs
        teacher_force = lambda p: models.token_logprobs(p, cfg, tokens, segments)
        for fn in (sample, teacher_force):
            precisions = _matmul_precisions(jax.make_jaxpr(fn)(params).jaxpr)
            assert len(precisions) >= 9, precisions  # q, k, v, 2 in attention, o, gate, up, down (+ logits)
            for p in precisions:  # None or one entry per operand
                assert (p if isinstance(p, tuple) else (p, p)) == (expected, expected), (dtype, p)
