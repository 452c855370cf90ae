"""Qwen3 (Qwen3ForCausalLM): the Llama decoder plus a per-head RMSNorm on q and k before rope,
with an explicit head_dim (hidden_size need not equal heads x head_dim)."""

from rl_sharpen.models import layers, llama
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.models.hf_names import COPY

HF_NAMES = {
    **llama.HF_NAMES,
    "layers/q_norm": ("model.layers.{}.self_attn.q_norm.weight", COPY),
    "layers/k_norm": ("model.layers.{}.self_attn.k_norm.weight", COPY),
}


def param_specs(cfg: ModelConfig) -> dict:
    specs = layers.decoder_specs(cfg)
    L, E = cfg.num_layers, cfg.head_dim
    specs["layers"].update(
        q_norm=layers.ParamSpec((L, E), ("layers", "head_dim"), "ones", decay=False),
        k_norm=layers.ParamSpec((L, E), ("layers", "head_dim"), "ones", decay=False),
    )
    return specs
