"""Qwen2.5 (Qwen2ForCausalLM): the Llama decoder plus biases on the q, k and v projections."""

from rl_sharpen.models import layers, llama
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.models.hf_names import RESHAPE

HF_NAMES = {
    **llama.HF_NAMES,
    "layers/q_bias": ("model.layers.{}.self_attn.q_proj.bias", RESHAPE),
    "layers/k_bias": ("model.layers.{}.self_attn.k_proj.bias", RESHAPE),
    "layers/v_bias": ("model.layers.{}.self_attn.v_proj.bias", RESHAPE),
}


def param_specs(cfg: ModelConfig) -> dict:
    specs = layers.decoder_specs(cfg)
    L, H, K, E = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    specs["layers"].update(
        q_bias=layers.ParamSpec((L, H, E), ("layers", "heads", "head_dim"), "zeros", decay=False),
        k_bias=layers.ParamSpec((L, K, E), ("layers", "kv_heads", "head_dim"), "zeros", decay=False),
        v_bias=layers.ParamSpec((L, K, E), ("layers", "kv_heads", "head_dim"), "zeros", decay=False),
    )
    return specs
