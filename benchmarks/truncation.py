"""Cost of top-k / top-p truncation per decode step: `sampling.filter_logits` next to sorting.

    python benchmarks/truncation.py --out truncation.json

`filter_logits` finds each cutoff by bisection on the order of float32 values (32 passes over the
logits, no sort); the reference is the textbook way, a descending sort of each row (`jax.lax.top_k`
for top-k, a full sort and a cumulative sum for top-p), with the same kept sets. Both are jitted and
timed on random logits [rows, vocab] (float32, best of --repeats after a warm-up call), by default
for the vocabularies of SmolLM2 (49152) and Qwen2.5 / Qwen3 (151936).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_sharpen import sampling
from run_info import run_info

SETTINGS = {"top_k=50": (50, 1.0), "top_p=0.95": (0, 0.95), "top_k=20,top_p=0.8": (20, 0.8)}


def sorted_truncation(logits, top_k: int, top_p: float):
    """The same truncation through a sort of the vocabulary (ties with a cutoff kept)."""
    z = logits
    if top_k:
        ranked = jax.lax.top_k(z, top_k)[0]
        z = jnp.where(z >= ranked[..., -1:], z, -jnp.inf)
    else:
        ranked = -jnp.sort(-z, axis=-1)
    if top_p < 1:
        probs = jax.nn.softmax(ranked, axis=-1)
        kept = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
        z = jnp.where(z >= jnp.take_along_axis(ranked, kept - 1, axis=-1), z, -jnp.inf)
    return z


def best_seconds(fn, x, repeats: int) -> float:
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--vocabs", default="49152,151936")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    results = run_info(repeats=args.repeats, timings=[])
    print(f"{'vocab':>7} {'rows':>4} {'setting':>20} {'bisection ms':>12} {'sort ms':>9} {'speed-up':>8} {'same':>5}")
    for vocab in (int(v) for v in args.vocabs.split(",")):
        for rows in (int(r) for r in args.rows.split(",")):
            logits = jnp.asarray(3 * np.random.default_rng(0).standard_normal((rows, vocab)), jnp.float32)
            for name, (top_k, top_p) in SETTINGS.items():
                ours = jax.jit(lambda z: sampling.filter_logits(z, 1.0, top_k, top_p))
                sort = jax.jit(lambda z: sorted_truncation(z, top_k, top_p))
                same = bool(jnp.array_equal(jnp.isfinite(ours(logits)), jnp.isfinite(sort(logits))))
                t_ours, t_sort = best_seconds(ours, logits, args.repeats), best_seconds(sort, logits, args.repeats)
                results["timings"].append(dict(vocab=vocab, rows=rows, setting=name, bisection_seconds=t_ours,
                                               sort_seconds=t_sort, same_kept_sets=same))
                print(f"{vocab:>7} {rows:>4} {name:>20} {t_ours * 1e3:>12.2f} {t_sort * 1e3:>9.2f} "
                      f"{t_sort / t_ours:>7.1f}× {str(same):>5}", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
