"""Hugging Face parity of the pure-functional decoders, checkpoint I/O, presets and causality."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rl_sharpen import models
from tests import hf_models

FAMILIES = models.FAMILIES  # a new family gets every parity test here (and needs a tiny config in hf_models)


def _left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad, np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        segments[i, width - len(r):] = 1
    return jnp.asarray(tokens), jnp.asarray(segments)


def _hf_logits(model, tokens, segments):
    with torch.no_grad():
        mask = torch.tensor(np.asarray(segments) != 0, dtype=torch.long)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long), attention_mask=mask,
                    position_ids=pos)
    return out.logits.float().numpy()


@pytest.fixture(scope="module", params=[(f, tie) for f in FAMILIES for tie in (False, True)],
                ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}")
def tiny(request, tmp_path_factory):
    family, tie = request.param
    path = str(tmp_path_factory.mktemp(f"{family}{tie}"))
    hf = hf_models.save_tiny_hf_model(family, tie, path)
    cfg, params = models.load_hf(path)
    assert cfg.family == family and cfg.tie_embeddings == tie
    return hf, cfg, params, path


ROWS = [[5, 17, 3, 44, 9, 60, 22, 8, 31, 12, 7], [70, 4, 11, 90], [1, 2, 3, 4, 5, 6, 7, 8]]


def test_full_forward_matches_transformers_with_left_padding(tiny):
    hf, cfg, params, _ = tiny
    tokens, segments = _left_padded(ROWS)
    positions = models.positions_from_segments(segments)
    logits, _ = models.forward(params, cfg, tokens, positions, segments)
    ref = _hf_logits(hf, tokens, segments)
    real = np.asarray(segments) != 0
    err = np.abs(np.asarray(logits) - ref)[real].max()
    assert err <= 1e-4, err
    # Padding changes nothing: each row alone, unpadded, gives the same logits.
    for i, row in enumerate(ROWS):
        t, s = _left_padded([row])
        alone, _ = models.forward(params, cfg, t, models.positions_from_segments(s), s)
        np.testing.assert_allclose(np.asarray(logits)[i][real[i]], np.asarray(alone)[0], atol=1e-5)


def test_prefill_then_decode_matches_full_forward(tiny):
    hf, cfg, params, _ = tiny
    tokens, segments = _left_padded(ROWS)
    positions = models.positions_from_segments(segments)
    full = _hf_logits(hf, tokens, segments)
    prefill = 5
    cache = models.init_cache(cfg, tokens.shape[0], tokens.shape[1] + 3)
    logits, cache = models.forward(params, cfg, tokens[:, :prefill], positions[:, :prefill],
                                   segments[:, :prefill], cache)
    steps = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = models.forward(params, cfg, tokens[:, t:t + 1], positions[:, t:t + 1],
                                       segments[:, t:t + 1], cache)
        steps.append(logits)
    assert int(cache["end"]) == tokens.shape[1]
    stepped = np.concatenate([np.asarray(s) for s in steps], axis=1)
    real = np.asarray(segments) != 0
    assert np.abs(stepped - full)[real].max() <= 1e-4


def test_save_round_trip_loads_in_transformers(tiny, tmp_path):
    _, cfg, params, _ = tiny
    import transformers

    models.save_hf(params, cfg, str(tmp_path))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    tokens, segments = _left_padded(ROWS)
    ours, _ = models.forward(params, cfg, tokens, models.positions_from_segments(segments), segments)
    real = np.asarray(segments) != 0
    assert np.abs(_hf_logits(reloaded, tokens, segments) - np.asarray(ours))[real].max() <= 1e-4
    cfg2, params2 = models.load_hf(str(tmp_path))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_save_to_an_object_store_url_writes_there(tiny, tmp_path, monkeypatch):
    """A gs:// destination is written locally, then copied through etils.epath (here onto a folder)."""
    from etils import epath

    _, cfg, params, _ = tiny
    local_path = epath.Path
    monkeypatch.setattr(epath, "Path", lambda p, *rest: local_path(str(p).replace("gs://", f"{tmp_path}/"), *rest))
    monkeypatch.chdir(tmp_path)
    models.save_hf(params, cfg, "gs://bucket/run/sft_model")
    assert not (tmp_path / "gs:").exists()  # not a local folder named after the URL
    cfg2, params2 = models.load_hf(str(tmp_path / "bucket" / "run" / "sft_model"))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.parametrize("url", [False, True])
def test_saving_over_a_checkpoint_split_otherwise_leaves_no_stale_weights(tiny, tmp_path, monkeypatch, url):
    """A save into a folder holding an earlier save, split into other files, replaces its weights."""
    from etils import epath

    _, cfg, params, _ = tiny
    folder = tmp_path / "bucket" / "model"
    target = "gs://bucket/model" if url else str(folder)
    local_path = epath.Path
    monkeypatch.setattr(epath, "Path", lambda p, *rest: local_path(str(p).replace("gs://", f"{tmp_path}/"), *rest))
    other = jax.tree.map(lambda x: x + 1, params)
    split, whole = 1 << 12, 4 << 30  # shard sizes: several files and an index, or one file
    for first, second in ((split, whole), (whole, split)):
        models.save_hf(other, cfg, target, max_shard_bytes=first)
        models.save_hf(params, cfg, target, max_shard_bytes=second)
        names = sorted(os.listdir(folder))
        assert ("model.safetensors" in names) == (second == whole), names
        assert ("model.safetensors.index.json" in names) == (second == split), names
        assert len(names) == (2 if second == whole else 2 + sum("-of-" in n for n in names)), names
        jax.tree.map(np.testing.assert_array_equal, models.load_hf(str(folder))[1], params)


def test_a_folder_holding_one_file_and_an_index_is_read_as_transformers_reads_it(tiny, tmp_path):
    """Some hub repositories ship model.safetensors beside index + shards: transformers reads the one file."""
    import shutil

    import transformers

    _, cfg, params, _ = tiny
    models.save_hf(params, cfg, str(tmp_path / "whole"))
    models.save_hf(jax.tree.map(lambda x: x + 1, params), cfg, str(tmp_path / "split"), max_shard_bytes=1 << 12)
    for name in os.listdir(tmp_path / "split"):
        if name.endswith((".safetensors", ".index.json")):
            shutil.copy(tmp_path / "split" / name, tmp_path / "whole" / name)
    jax.tree.map(np.testing.assert_array_equal, models.load_hf(str(tmp_path / "whole"))[1], params)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "whole"))
    np.testing.assert_array_equal(reference.model.embed_tokens.weight.detach().numpy(), params["embed"])


def test_scoring_a_window_longer_than_the_sequence_is_refused(tiny):
    _, cfg, params, _ = tiny
    tokens = jnp.ones((2, 5), jnp.int32)
    for last in (0, 5, 7):
        with pytest.raises(ValueError, match=rf"`last`={last} for tokens of length 5; "
                                             r"allowed: None or an integer in \[1, 4\]"):
            models.token_logprobs(params, cfg, tokens, jnp.ones_like(tokens), last=last)
    with pytest.raises(ValueError, match="a length >= 2 has a next token to score"):
        models.token_logprobs(params, cfg, tokens[:, :1], jnp.ones((2, 1), jnp.int32))
    assert models.token_logprobs(params, cfg, tokens, jnp.ones_like(tokens), last=4).shape == (2, 4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_rms_norm_rounds_as_transformers_does(dtype):
    """Equal to transformers' RMSNorm: normalized in float32, rounded to the input's dtype, then times the
    weight. Bitwise in bfloat16 (rounding only after the weight differed in 27% of the entries); in
    float32 the mean and rsqrt of the two libraries differ in the last bit."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from rl_sharpen.models import layers

    rng = np.random.default_rng(0)
    torch_dtype = getattr(torch, dtype)
    norm = LlamaRMSNorm(576, eps=1e-5).to(torch_dtype)
    norm.weight.data = torch.tensor(rng.normal(size=576), dtype=torch.float32).to(torch_dtype)
    x = torch.tensor(3 * rng.normal(size=(64, 576)), dtype=torch.float32).to(torch_dtype)
    with torch.no_grad():
        expected = norm(x).float().numpy()
    ours = layers.rms_norm(jnp.asarray(x.float().numpy()).astype(dtype),
                           jnp.asarray(norm.weight.detach().float().numpy()).astype(dtype), 1e-5)
    assert ours.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(ours.astype(jnp.float32)), expected, rtol=0 if dtype == "bfloat16" else 1e-6)


def test_causality_gradient_is_exactly_zero():
    cfg = models.ModelConfig("qwen3", 50, 32, 48, 2, 4, 2, 8)
    params = models.init_params(cfg, jax.random.key(0))
    T = 7
    seg = jnp.ones((1, T), jnp.int32)
    pos = models.positions_from_segments(seg)

    def logits_per_position(x):  # x: the embeddings of the T input tokens
        p = dict(params, embed=params["embed"].at[:T].set(x))
        out, _ = models.forward(p, cfg, jnp.arange(T)[None], pos, seg)
        return out[0].sum(-1)  # [T]

    jac = np.asarray(jax.jacrev(logits_per_position)(params["embed"][:T]))  # [T out, T in, D]
    influence = np.abs(jac).sum(-1)
    assert np.all(influence[np.triu_indices(T, 1)] == 0.0)  # nothing flows back from later inputs
    assert np.all(influence[np.tril_indices(T)] > 0.0)


@pytest.mark.parametrize("tied", [True, False])
def test_bfloat16_compute_sums_a_frequent_tokens_embedding_gradient_in_float32(tied):
    """A token at half of 2 x 2048 positions: the gradient of its embedding row under bfloat16 matmuls
    stays within bfloat16 rounding of the float32 one (summed in bfloat16, it was 21-42% off)."""
    cfg = models.ModelConfig("llama", 97, 64, 128, 1, 4, 2, 16, tie_embeddings=tied, max_position_embeddings=2048)
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(np.where(np.arange(2048) % 2 == 0, 7, rng.integers(0, 97, (2, 2048))), jnp.int32)
    segments = jnp.ones_like(tokens)

    def row_gradient(compute_dtype):
        c = cfg.replace(compute_dtype=compute_dtype)
        grad = jax.grad(lambda p: models.token_logprobs(p, c, tokens, segments).mean())(params)
        return np.asarray(grad["embed"][7], np.float64)

    exact, bf16 = row_gradient("float32"), row_gradient("bfloat16")
    assert np.linalg.norm(bf16 - exact) / np.linalg.norm(exact) < 0.03


def test_forward_mode_derivatives_agree_with_reverse_mode():
    """jax.jvp through the model (the forward mode that jacfwd and Hessian-vector products build on)
    equals the gradient's inner product with the direction: along every parameter, and along the
    embedding alone."""
    cfg = models.ModelConfig("llama", 97, 64, 128, 1, 4, 2, 16)
    params = models.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 97)
    segments = jnp.ones_like(tokens)
    keys = jax.random.split(jax.random.key(2), len(jax.tree.leaves(params)))
    direction = jax.tree.unflatten(jax.tree.structure(params), [
        jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, jax.tree.leaves(params))])

    def objective(p):
        return models.token_logprobs(p, cfg, tokens, segments).mean()

    gradient = jax.jit(jax.grad(objective))(params)
    directional = jax.jit(lambda p, d: jax.jvp(objective, (p,), (d,))[1])
    np.testing.assert_allclose(directional(params, direction), sum(
        jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction))), rtol=1e-4)
    embed_only = jax.tree.map(jnp.zeros_like, direction) | {"embed": direction["embed"]}
    np.testing.assert_allclose(directional(params, embed_only), jnp.vdot(gradient["embed"], direction["embed"]),
                               rtol=1e-4)


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_preset_parameter_counts(name):
    cfg, published = models.PRESETS[name]
    n = models.count_params(cfg)
    assert abs(n - published) / published < 0.01, (n, published)


def test_config_reads_both_rope_key_styles():
    old = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {"rope_theta": 500000.0, **old["rope_scaling"]}
    a, b = models.from_hf_config(old), models.from_hf_config(new)
    assert a == b and a.rope_scaling.factor == 32.0 and a.rope_theta == 500000.0
    no_low = dict(old, rope_scaling={k: v for k, v in old["rope_scaling"].items() if k != "low_freq_factor"})
    with pytest.raises(ValueError, match=r"rope_scaling \(rope_type 'llama3'\) is missing 'low_freq_factor'"):
        models.from_hf_config(no_low)
    with pytest.raises(ValueError, match=r"config.json: num_attention_heads=2 is not a multiple of "
                                         r"num_key_value_heads=3"):
        models.from_hf_config(dict(old, num_key_value_heads=3))


L3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("family,rope", [
    ("llama", dict(rope_theta=10000.0, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    ("llama", dict(rope_scaling={"rope_type": "llama3", **L3_SCALING, "rope_theta": 500000.0})),
    ("llama", dict(rope_theta=20000.0, rope_scaling={"type": "llama3", **L3_SCALING})),
    ("llama", dict(rope_parameters={"type": "llama3", **L3_SCALING, "rope_theta": 500000.0})),
    ("llama", dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0})),  # original max: max positions
    ("llama", dict(rope_scaling={"rope_type": "default", "rope_theta": 40000.0})),
    ("qwen3", dict(head_dim=16, rope_theta=1e6)),
    ("qwen2", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
])
def test_config_reads_rope_settings_as_transformers_does(family, rope):
    """Every config.json rope layout transformers accepts gives its rotary frequencies: theta inside
    the rope dict wins over the top-level key, `type` stands for `rope_type`, and llama3's missing
    original_max_position_embeddings is max_position_embeddings."""
    import transformers

    from rl_sharpen.models import layers

    hf = {"vocab_size": 50, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, **rope}
    arch = {f: a for a, f in models.config.ARCHITECTURES.items()}[family]
    ours = models.from_hf_config({"architectures": [arch], **hf})
    config = transformers.AutoConfig.for_model(family, **hf)
    rotary = transformers.AutoModelForCausalLM.from_config(config).model.rotary_emb
    np.testing.assert_allclose(np.asarray(layers.rope_frequencies(ours)), rotary.inv_freq.numpy(), rtol=1e-6)
    assert (ours.rope_scaling is not None) == (config.rope_parameters["rope_type"] == "llama3")


def test_config_defaults_and_refusals_follow_transformers():
    base = {"vocab_size": 50, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 64, "head_dim": 8}
    for arch, kv_heads in (("Qwen2ForCausalLM", 32), ("Qwen3ForCausalLM", 32), ("LlamaForCausalLM", 64)):
        assert models.from_hf_config({"architectures": [arch], **base}).num_kv_heads == kv_heads, arch
        assert models.from_hf_config({"architectures": [arch], **base, "num_key_value_heads": None}).num_kv_heads == 64
    per_layer = {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    with pytest.raises(ValueError, match=r"rope_parameters per layer type \('full_attention'\) is not supported; "
                                         r"allowed: one dict for every layer"):
        models.from_hf_config({"architectures": ["Qwen3ForCausalLM"], **base, "rope_parameters": per_layer})


def test_bad_inputs_name_the_file_and_tensor(tmp_path, tiny):
    _, cfg, params, path = tiny
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_hf(str(tmp_path))
    bad = dict(models.to_hf_config(cfg), architectures=["GPT2LMHeadModel"])
    import json
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        models.load_hf(str(tmp_path))
    wrong = dict(models.to_hf_config(cfg), intermediate_size=cfg.intermediate_size + 2)
    (tmp_path / "config.json").write_text(json.dumps(wrong))
    import shutil
    shutil.copy(f"{path}/model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(models.CheckpointError, match=r"model\.safetensors.*gate_proj.weight"):
        models.load_hf(str(tmp_path))


def _hf_dict(arch, **overrides):
    base = {"architectures": [arch], "vocab_size": 10, "hidden_size": 64, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 4096}
    return {**base, **overrides}


@pytest.mark.parametrize("arch, key, value, allowed", [
    ("LlamaForCausalLM", "attention_bias", True, "False"), ("LlamaForCausalLM", "mlp_bias", True, "False"),
    ("Qwen3ForCausalLM", "attention_bias", True, "False"), ("Qwen2ForCausalLM", "hidden_act", "gelu", "'silu'"),
    ("LlamaForCausalLM", "hidden_act", "relu", "'silu'"),
])
def test_unsupported_hf_settings_name_the_key_value_and_allowed(arch, key, value, allowed):
    with pytest.raises(ValueError, match=rf"config.json: {key}={value!r} is not supported; allowed: {allowed}"):
        models.from_hf_config(_hf_dict(arch, **{key: value}))


def test_sliding_window_is_refused_only_where_it_changes_attention():
    qwen = dict(use_sliding_window=True, sliding_window=1024, max_window_layers=0)
    for arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        with pytest.raises(ValueError, match=r"use_sliding_window=True with sliding_window=1024 < "
                                             r"max_position_embeddings=4096 is not supported; allowed: False"):
            models.from_hf_config(_hf_dict(arch, **qwen))
        with pytest.raises(ValueError, match="use_sliding_window"):
            models.from_hf_config(_hf_dict(arch, **dict(qwen, max_window_layers=5),
                                           layer_types=["full_attention", "sliding_attention"]))
        # No sliding_window key: transformers' 4096, shorter than this context.
        no_key = {k: v for k, v in qwen.items() if k != "sliding_window"}
        with pytest.raises(ValueError, match=r"sliding_window=4096 < max_position_embeddings=8192"):
            models.from_hf_config(_hf_dict(arch, **no_key, max_position_embeddings=8192))
        models.from_hf_config(_hf_dict(arch, **dict(qwen, sliding_window=None), max_position_embeddings=8192))
    # Off, a window as long as the context, or no layer that uses it: plain causal attention.
    for ok in (dict(qwen, use_sliding_window=False), dict(qwen, sliding_window=4096), dict(qwen, max_window_layers=2)):
        models.from_hf_config(_hf_dict("Qwen2ForCausalLM", **ok))
    # Qwen2 always has q/k/v biases; transformers ignores its attention_bias, and so do we.
    assert models.from_hf_config(_hf_dict("Qwen2ForCausalLM", attention_bias=False)).qkv_bias


def test_head_dim_defaults_follow_transformers():
    import transformers

    no_head_dim = dict(hidden_size=64, num_attention_heads=4)
    assert transformers.Qwen3Config(**no_head_dim).head_dim == 128
    assert models.from_hf_config(_hf_dict("Qwen3ForCausalLM")).head_dim == 128
    llama = transformers.LlamaConfig(**no_head_dim)
    assert models.from_hf_config(_hf_dict("LlamaForCausalLM")).head_dim == llama.head_dim == 16
    assert models.from_hf_config(_hf_dict("Qwen2ForCausalLM")).head_dim == 16
    for arch, config in (("LlamaForCausalLM", transformers.LlamaConfig), ("Qwen2ForCausalLM", transformers.Qwen2Config),
                         ("Qwen3ForCausalLM", transformers.Qwen3Config)):  # and so do the context lengths
        hf = _hf_dict(arch)
        hf.pop("max_position_embeddings", None)
        assert models.from_hf_config(hf).max_position_embeddings == config().max_position_embeddings
    with pytest.raises(ValueError, match=r"ModelConfig.head_dim=7; allowed: an even integer >= 2"):
        models.ModelConfig("llama", 50, 28, 64, 1, 4, 2, 7)
    with pytest.raises(ValueError, match=r"ModelConfig.num_kv_heads=0; allowed: an integer >= 1"):
        models.ModelConfig("llama", 50, 28, 64, 1, 4, 0, 8)
    with pytest.raises(ValueError, match=r"ModelConfig.num_heads=0; allowed: an integer >= 1"):
        models.ModelConfig("llama", 50, 28, 64, 1, 0, 2, 8)


def test_norm_eps_and_tied_embeddings_default_as_in_transformers():
    import transformers

    for arch, config in (("LlamaForCausalLM", transformers.LlamaConfig), ("Qwen2ForCausalLM", transformers.Qwen2Config),
                         ("Qwen3ForCausalLM", transformers.Qwen3Config)):
        cfg = models.from_hf_config(_hf_dict(arch))  # neither rms_norm_eps nor tie_word_embeddings given
        assert (cfg.rms_norm_eps, cfg.tie_embeddings) == (config().rms_norm_eps, config().tie_word_embeddings), arch


def test_llama3_rope_frequencies_match_transformers():
    """Llama-3.2's rope scaling: frequencies with wavelengths above original_max / low_freq_factor are
    divided by the factor, those below original_max / high_freq_factor kept, and the 6 between them
    interpolated (the test models are too small to have any there)."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from rl_sharpen.models import layers

    cfg = models.preset("llama-3.2-3b-instruct")
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](transformers.LlamaConfig(**models.to_hf_config(cfg)), "cpu")
    np.testing.assert_allclose(np.asarray(layers.rope_frequencies(cfg)), want.numpy(), rtol=1e-6)
    s = cfg.rope_scaling
    wavelengths = 2 * np.pi * cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)  # unscaled
    between = (wavelengths > s.original_max_position_embeddings / s.high_freq_factor) & (
        wavelengths < s.original_max_position_embeddings / s.low_freq_factor)
    assert between.sum() == 6


def test_packed_segments_restart_positions_and_attend_only_within_themselves(tiny):
    """Two sequences packed in one row (segments 1 1 2 2 2) give the logits of each run alone."""
    _, cfg, params, _ = tiny
    segments = jnp.array([[1, 1, 2, 2, 2], [0, 1, 1, 2, 2]], jnp.int32)
    positions = models.positions_from_segments(segments)
    np.testing.assert_array_equal(positions, [[0, 1, 0, 1, 2], [0, 0, 1, 0, 1]])
    tokens = jnp.array([[5, 17, 3, 44, 9], [0, 70, 4, 11, 90]], jnp.int32)
    packed, _ = models.forward(params, cfg, tokens, positions, segments)
    for row, cols in ((0, slice(0, 2)), (0, slice(2, 5)), (1, slice(1, 3)), (1, slice(3, 5))):
        t, s = _left_padded([np.asarray(tokens[row, cols]).tolist()])
        alone, _ = models.forward(params, cfg, t, models.positions_from_segments(s), s)
        np.testing.assert_allclose(np.asarray(packed)[row, cols], np.asarray(alone)[0], atol=1e-5)


def test_a_query_with_no_key_to_attend_to_gets_zeros():
    from rl_sharpen.models import layers

    q, k, v = (jax.random.normal(jax.random.key(i), shape) for i, shape in
               enumerate([(1, 2, 4, 8), (1, 3, 2, 8), (1, 3, 2, 8)]))
    allowed = jnp.array([[[False, False, False], [True, True, False]]])
    out = np.asarray(layers.attention(q, k, v, allowed))
    np.testing.assert_array_equal(out[0, 0], 0.0)
    assert np.abs(out[0, 1]).min() > 0


def test_load_hf_casts_every_parameter_to_the_requested_dtype(tiny):
    _, cfg, _, path = tiny
    cfg16, params16 = models.load_hf(path, dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(params16)} == {jnp.dtype(jnp.bfloat16)}
    assert cfg16.weight_dtype == jnp.bfloat16


def test_missing_required_key_names_the_file_and_key(tmp_path):
    import json

    hf = _hf_dict("LlamaForCausalLM")
    del hf["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=rf"{tmp_path}/config.json: missing required key 'intermediate_size'"):
        models.from_hf_config(str(tmp_path))


def test_leftover_checkpoint_tensors_are_an_error(tmp_path):
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    for tie in (False, True):
        src, dst = tmp_path / f"src{tie}", tmp_path / f"dst{tie}"
        hf = hf_models.save_tiny_hf_model("llama", tie, str(src))
        shutil.copytree(src, dst)
        tensors = load_file(str(dst / "model.safetensors"))
        assert ("lm_head.weight" in tensors) != tie
        # A tied lm_head stored anyway (as some exports do) and old rope buffers are not leftovers.
        tensors["lm_head.weight"] = hf.lm_head.weight.detach().numpy()
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
        models.load_hf(str(dst))
        if tie:  # a tied config with a stored head of other values: transformers would use that head
            different = dict(tensors, **{"lm_head.weight": tensors["lm_head.weight"] + 1.0})
            save_file(different, str(dst / "model.safetensors"), metadata={"format": "pt"})
            with pytest.raises(models.CheckpointError, match=r"tie_word_embeddings: true, but the stored lm_head"):
                models.load_hf(str(dst))
        # A config that drops a setting leaves its tensors unused, e.g. the biases of attention_bias=True.
        tensors["model.layers.1.self_attn.q_proj.bias"] = np.ones(64, np.float32)
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(models.CheckpointError, match=r"does not use: model\.layers\.1\.self_attn\.q_proj\.bias$"):
            models.load_hf(str(dst))
        assert json.loads((dst / "config.json").read_text())["tie_word_embeddings"] == tie


def test_cache_overflow_is_an_error_or_nan_never_clamped():
    cfg = models.ModelConfig("llama", 50, 32, 64, 1, 4, 2, 8)
    rng = np.random.default_rng(0)  # host random weights: init_params would compile a random generator
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), models.abstract_params(cfg))
    tokens = jnp.array([[3, 4, 5]])
    seg = jnp.ones_like(tokens)
    with pytest.raises(ValueError, match=r"3 tokens do not fit a cache of 2 slots"):
        models.forward(params, cfg, tokens, jnp.arange(3)[None], seg, models.init_cache(cfg, 1, 2))
    step = jax.jit(models.forward, static_argnums=1)
    _, cache = step(params, cfg, tokens, jnp.arange(3)[None], seg, models.init_cache(cfg, 1, 4))
    with pytest.raises(ValueError, match=r"3 tokens at cache end=3 overflow its 4 slots; allowed: end \+ T <= 4"):
        models.forward(params, cfg, tokens, jnp.arange(3, 6)[None], seg, cache)  # eager: `end` is concrete
    # Under jit `end` is traced: the call that fits is finite, the one that overflows returns NaN.
    fits, cache = step(params, cfg, tokens[:, :1], jnp.array([[3]]), seg[:, :1], cache)
    over, cache = step(params, cfg, tokens[:, :1], jnp.array([[4]]), seg[:, :1], cache)
    assert bool(jnp.isfinite(fits).all()) and bool(jnp.isnan(over).all()) and int(cache["end"]) == 5


def test_every_family_has_traits_and_a_parameter_file():
    from rl_sharpen.models import config, registry

    assert set(registry.FAMILIES) == set(config.FAMILY_TRAITS) == set(models.FAMILIES)
    assert sorted(config.ARCHITECTURES.values()) == sorted(config.FAMILY_TRAITS)  # one architecture each
