"""bfloat16 forward against transformers' bfloat16 and float32 forwards, on one prompt.

    python benchmarks/bfloat16_parity.py --checkpoint <SmolLM2-135M-Instruct HF folder>

Loads the checkpoint in bfloat16 (weights and compute) in both libraries and in float32 in
transformers, runs the prompt teacher-forced, and prints the largest and mean |difference| of the
logits and of the next-token log-probs: rl_sharpen against transformers' bfloat16, and each
bfloat16 forward against transformers' float32 one.
"""

import argparse

import jax.numpy as jnp
import numpy as np

from rl_sharpen import models

PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May? Let's think step by step.")


def next_token_logprobs(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]


def gap(a: np.ndarray, b: np.ndarray) -> str:
    return f"max {np.abs(a - b).max():.4f}, mean {np.abs(a - b).mean():.5f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a local HF folder (weights and tokenizer)")
    args = parser.parse_args()
    import torch
    import transformers

    ids = transformers.AutoTokenizer.from_pretrained(args.checkpoint)(PROMPT)["input_ids"]
    with torch.no_grad():
        hf = {dtype: transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).eval()(
            torch.tensor([ids])).logits.float().numpy()[0] for dtype in (torch.bfloat16, torch.float32)}
    cfg, params = models.load_hf(args.checkpoint, dtype="bfloat16", compute_dtype="bfloat16")
    tokens = jnp.asarray([ids], jnp.int32)
    segments = jnp.ones_like(tokens)
    ours = np.asarray(models.forward(params, cfg, tokens, models.positions_from_segments(segments), segments)[0][0],
                      np.float32)
    lp = {name: next_token_logprobs(z, ids) for name, z in
          (("ours", ours), ("hf_bf16", hf[torch.bfloat16]), ("hf_f32", hf[torch.float32]))}
    print(f"{len(ids)} tokens")
    print(f"rl_sharpen bf16 vs transformers bf16: logits {gap(ours, hf[torch.bfloat16])}; "
          f"log-probs {gap(lp['ours'], lp['hf_bf16'])}")
    print(f"against transformers float32, log-probs: rl_sharpen bf16 {gap(lp['ours'], lp['hf_f32'])}; "
          f"transformers bf16 {gap(lp['hf_bf16'], lp['hf_f32'])}")


if __name__ == "__main__":
    main()
