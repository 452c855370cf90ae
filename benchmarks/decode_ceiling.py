"""Where one decode step's time goes, and the floor its parts put under it on this machine.

    python benchmarks/decode_ceiling.py --preset smollm2-135m-instruct --rows 1,8,32 --out ceiling.json
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/decode_ceiling.py ...   # another matmul library

Random float32 weights of a preset, laid out once by `decode.prepare`, R rows, a cache of
S = prompt + new tokens slots filled up to its middle (the mean over a call). Timed apart, each
jitted on its own, best of --repeats, their repeats interleaved:

    step         `decode.step`: every layer, attention over the cache, the float32 unembedding
    projections  the step's matrix products only: per layer q, k, v, o, gate, up, down, then the
                 unembedding, chained as in the step through the same `decode._linear`
    attention    the step's attention only (`decode._filled_attention`), every layer's cache
    weight read  an XLA sum over the same weights: the rate they can stream in at
    pick         the loop's work on the vocabulary after the step, over [R, V] float32 logits: the
                 token (greedy argmax, or a draw at temperature 1) and its log-prob(s)

FLOP/s of the projections = 2 R (M + V D) / time, M the layers' projection weights; their GB/s =
weight bytes / time. Attention's GB/s counts its keys and values once. The rest of the step (norms,
rotary, cache writes, residuals) is step - projections - attention; every timing holds one dispatch
of a jitted call (a fraction of a millisecond), so at one row the rest can come out below 0. A
token of the decode loop costs step + pick. The step cannot go below projections + attention unless
the matmul kernels themselves get faster: this is the floor quoted against the sampler's targets in
BENCHMARKS.md. --threads pins the process to that many cores, to see how the kernels scale with them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-135m-instruct", help="rl_sharpen.models preset")
    p.add_argument("--rows", default="1,8,32", help="comma-separated row counts R")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", required=True, help="JSON file for the results")
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:ARGS.threads])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rl_sharpen import models  # noqa: E402
from rl_sharpen.sampling import ancestral, decode, kv  # noqa: E402
from run_info import run_info  # noqa: E402

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def projections_only(weights, cfg, x):
    """The step's matrix products on x [R, D], in its order; k and v are returned so that they are computed."""
    kv_out = []
    for p in weights["layers"]:
        q = decode._linear(p["q"], x)
        kv_out += [decode._linear(p["k"], x), decode._linear(p["v"], x)]
        x = x + decode._linear(p["o"], q)
        x = x + decode._linear(p["down"], jax.nn.silu(decode._linear(p["gate"], x)) * decode._linear(p["up"], x))
    return decode._linear(weights["unembed"], x, jnp.float32), kv_out


def attention_only(cache, q, allowed):
    end = cache["end"]
    return [decode._filled_attention(q, k, v, allowed, end) for k, v in zip(cache["k"], cache["v"])]


def measure(cfg, params, rows: int) -> dict:
    P, S = ARGS.prompt_tokens, ARGS.prompt_tokens + ARGS.new_tokens
    weights = jax.jit(decode.prepare, static_argnums=(1, 2))(params, cfg, S)
    tokens = np.random.default_rng(0).integers(1000, cfg.vocab_size - 1000, (rows, P)).astype(np.int32)
    cache = kv.prefill(params, tokens, np.ones_like(tokens), cfg=cfg, copies=1, cache_len=S, per_layer=True)[0]
    middle = P + ARGS.new_tokens // 2  # the new token's slot; the slots after the prompt are masked out
    cache = dict(cache, end=jnp.int32(middle))
    last = jnp.asarray(tokens[:, -1])
    positions, segments = jnp.full((rows,), middle, jnp.int32), jnp.ones((rows,), jnp.int32)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, cfg.hidden_size)), cfg.dtype)
    q = jnp.asarray(np.random.default_rng(2).standard_normal((rows, cfg.num_heads, cfg.head_dim)), cfg.dtype)
    allowed = jnp.arange(S)[None, :].repeat(rows, 0) <= middle
    layer_weights = [w for p in weights["layers"] for w in p.values()] + [weights["unembed"]]
    step = jax.jit(decode.step, static_argnums=1, donate_argnums=2)  # the cache updated in place, as in the loop
    projections = jax.jit(projections_only, static_argnums=1)
    attention = jax.jit(attention_only)
    weight_read = jax.jit(lambda ws: sum(jnp.sum(w) for w in ws))
    logits = jnp.asarray(np.random.default_rng(3).standard_normal((rows, cfg.vocab_size)), jnp.float32)
    pick = {name: jax.jit(lambda z, key, sc=sampling_cfg: ancestral._pick(z, z, key, sc))
            for name, sampling_cfg in (("pick_greedy", ancestral.SamplingConfig(1, greedy=True)),
                                       ("pick_sampled", ancestral.SamplingConfig(1, temperature=1.0)))}
    state = {"cache": cache}

    def run_step():
        logits, new_cache = step(weights, cfg, state["cache"], last, positions, segments)
        state["cache"] = dict(new_cache, end=jnp.int32(middle))
        return logits

    calls = {"step": run_step,
             "projections": lambda: projections(weights, cfg, x),
             "attention": lambda: attention(state["cache"], q, allowed),
             "weight_read": lambda: weight_read(layer_weights),
             **{name: functools.partial(fn, logits, jax.random.key(0)) for name, fn in pick.items()}}
    best = {name: float("inf") for name in calls}
    for name, call in calls.items():
        jax.block_until_ready(call())
    for _ in range(ARGS.repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(call())
            best[name] = min(best[name], time.perf_counter() - t)
    matrices = sum(params["layers"][n].size for n in PROJECTIONS) + cfg.vocab_size * cfg.hidden_size
    weight_bytes = matrices * jnp.dtype(cfg.dtype).itemsize
    cache_bytes = sum(a.nbytes for a in state["cache"]["k"] + state["cache"]["v"])
    read_bytes = sum(w.nbytes for w in layer_weights)
    return {
        "rows": rows, "cache_slots": S, "seconds": best,
        "projections_flops_per_s": 2 * rows * matrices / best["projections"],
        "projections_bytes_per_s": weight_bytes / best["projections"],
        "attention_bytes_per_s": cache_bytes / best["attention"],
        "weight_read_bytes_per_s": read_bytes / best["weight_read"],
        "rest_seconds": best["step"] - best["projections"] - best["attention"],
        "floor_seconds": best["projections"] + best["attention"],
    }


def main():
    cfg = models.preset(ARGS.preset, param_dtype="float32", compute_dtype="float32")
    params = models.init_params(cfg, jax.random.key(0))
    result = run_info(preset=ARGS.preset, threads=ARGS.threads, repeats=ARGS.repeats,
                      xla_flags=os.environ.get("XLA_FLAGS", ""), rows=[])
    print(f"{ARGS.preset}, float32, {ARGS.threads} threads, {result['device']}, XLA_FLAGS={result['xla_flags']!r}")
    print(f"{'rows':>4} {'step ms':>8} {'projections ms':>14} {'GFLOP/s':>7} {'GB/s':>5} {'attention ms':>12} "
          f"{'GB/s':>5} {'rest ms':>7} {'floor ms':>8} {'weight read GB/s':>16} {'pick ms greedy / T=1':>20}")
    for rows in (int(r) for r in ARGS.rows.split(",")):
        r = measure(cfg, params, rows)
        s = r["seconds"]
        print(f"{rows:>4} {s['step'] * 1e3:>8.1f} {s['projections'] * 1e3:>14.1f} "
              f"{r['projections_flops_per_s'] / 1e9:>7.0f} {r['projections_bytes_per_s'] / 1e9:>5.1f} "
              f"{s['attention'] * 1e3:>12.1f} {r['attention_bytes_per_s'] / 1e9:>5.1f} "
              f"{r['rest_seconds'] * 1e3:>7.1f} {r['floor_seconds'] * 1e3:>8.1f} "
              f"{r['weight_read_bytes_per_s'] / 1e9:>16.1f} "
              f"{s['pick_greedy'] * 1e3:>11.2f} / {s['pick_sampled'] * 1e3:>5.2f}", flush=True)
        result["rows"].append(r)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
