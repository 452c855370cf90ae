"""Llama 3.x and SmolLM2 (LlamaForCausalLM): parameter declarations and Hugging Face names.

The forward pass is the shared pre-norm decoder of `transformer.py`: RMSNorm, rotary attention with
grouped-query heads (Llama-3 frequency scaling when configured), SwiGLU MLP.
"""

from rl_sharpen.models import layers
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.models.hf_names import COPY, LINEAR

# our parameter path -> (Hugging Face tensor name, transform); "{}" is the layer index.
HF_NAMES = {
    "embed": ("model.embed_tokens.weight", COPY),
    "final_norm": ("model.norm.weight", COPY),
    "lm_head": ("lm_head.weight", LINEAR(1)),
    "layers/attn_norm": ("model.layers.{}.input_layernorm.weight", COPY),
    "layers/q": ("model.layers.{}.self_attn.q_proj.weight", LINEAR(1)),
    "layers/k": ("model.layers.{}.self_attn.k_proj.weight", LINEAR(1)),
    "layers/v": ("model.layers.{}.self_attn.v_proj.weight", LINEAR(1)),
    "layers/o": ("model.layers.{}.self_attn.o_proj.weight", LINEAR(2)),
    "layers/mlp_norm": ("model.layers.{}.post_attention_layernorm.weight", COPY),
    "layers/gate": ("model.layers.{}.mlp.gate_proj.weight", LINEAR(1)),
    "layers/up": ("model.layers.{}.mlp.up_proj.weight", LINEAR(1)),
    "layers/down": ("model.layers.{}.mlp.down_proj.weight", LINEAR(1)),
}


def param_specs(cfg: ModelConfig) -> dict:
    return layers.decoder_specs(cfg)
