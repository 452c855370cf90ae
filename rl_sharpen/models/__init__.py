"""Pure-functional Llama / Qwen2.5 / Qwen3 decoders over parameter pytrees.

    cfg, params = load_hf("/path/to/hf_folder", dtype="bfloat16", mesh=mesh)
    logits, cache = forward(params, cfg, tokens, positions, segment_ids, cache)
    save_hf(params, cfg, "/path/to/out")
"""

from rl_sharpen.models.config import (FAMILIES, PRESETS, ModelConfig, RopeScaling, from_hf_config, preset,
                                      to_hf_config)
from rl_sharpen.models.hf_io import CheckpointError, load_hf, save_hf
from rl_sharpen.models.registry import (abstract_params, count_params, init_params, param_axes, param_shardings,
                                        param_specs, weight_decay_mask)
from rl_sharpen.models.transformer import (CACHE_AXES, forward, hidden_states, init_cache, logits_from_hidden,
                                           next_token_map, picked_logprob, positions_from_segments,
                                           token_logprobs)

__all__ = [
    "FAMILIES", "PRESETS", "ModelConfig", "RopeScaling", "from_hf_config", "preset", "to_hf_config",
    "CheckpointError", "load_hf", "save_hf", "abstract_params", "count_params", "init_params", "param_axes",
    "param_shardings", "param_specs", "weight_decay_mask", "CACHE_AXES", "forward", "hidden_states", "init_cache",
    "logits_from_hidden", "next_token_map", "picked_logprob", "positions_from_segments", "token_logprobs",
]
