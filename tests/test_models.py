"""Hugging Face parity of the pure-functional decoders, checkpoint I/O, presets and causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rl_sharpen import models
from tests import hf_models

FAMILIES = ["llama", "qwen2", "qwen3"]


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
