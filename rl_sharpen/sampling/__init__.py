"""Jitted sampling from the decoders: ancestral sampling with exact log-probs, and beam search.

    out = generate(params, cfg, [[1, 5, 9], [1, 7]], jax.random.key(0),
                   SamplingConfig(max_new_tokens=128, temperature=0.7, num_samples=8, eos_ids=(2,)))
    beams = beam_search(params, cfg, [[1, 5, 9]], BeamConfig(width=4, max_new_tokens=64, eos_ids=(2,)))
"""

from rl_sharpen.sampling.beam import BeamConfig, BeamOutput, beam_search, length_penalty
from rl_sharpen.sampling.ancestral import Contrast, SampleOutput, SamplingConfig, filter_logits, generate
from rl_sharpen.sampling.prompts import PromptBatch, bucket_width, left_pad
from rl_sharpen.sampling.stops import StopStrings, compile_stops

__all__ = ["BeamConfig", "BeamOutput", "beam_search", "length_penalty", "Contrast", "SampleOutput", "SamplingConfig",
           "filter_logits", "generate", "PromptBatch", "bucket_width", "left_pad", "StopStrings", "compile_stops"]
