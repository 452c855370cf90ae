"""Whole-call throughput of this checkout's sampler against another git revision's, in one process.

    python benchmarks/sampler_ab.py --checkpoint /path/to/SmolLM2-135M-Instruct --base HEAD~1 \
        --batch 100 --prompt-tokens 256 --new-tokens 128 --repeats 3 --out ab.json

The base revision's `rl_sharpen` package is extracted with `git archive` into a temporary folder and
imported under another name (`rl_sharpen_base`), so both samplers run on the same weights in the
same process, their calls interleaved (a slow spell of a shared machine hits both alike). Each row
gets its own prompt of --prompt-tokens ids; decoding is greedy, or sampled at --temperature with the
same rng on both sides. Reported: whether both produced the same tokens (they must when greedy; sampled
tokens differ where the two revisions draw differently from the same law), the best and median wall
time of a `generate` call (prefill included, compilation excluded), tokens/s, and new / base time
ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from run_info import git, run_info

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="Hugging Face folder")
    p.add_argument("--base", default="HEAD", help="git revision to compare this checkout against")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampled at this temperature")
    p.add_argument("--out", help="JSON file for the results")
    return p.parse_args()


def import_revision(rev: str, folder: pathlib.Path):
    """`rl_sharpen` as of git revision `rev`, imported as the package `rl_sharpen_base`."""
    archive = subprocess.run(["git", "archive", rev, "rl_sharpen"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    package = folder / "rl_sharpen_base"
    (folder / "rl_sharpen").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\brl_sharpen\b", "rl_sharpen_base", path.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module("rl_sharpen_base")


def main():
    args = parse_args()
    from rl_sharpen import models, sampling

    with tempfile.TemporaryDirectory() as tmp:
        import_revision(args.base, pathlib.Path(tmp))
        from rl_sharpen_base import sampling as base_sampling

        cfg, params = models.load_hf(args.checkpoint, dtype=args.dtype)
        prompts = [list(range(1000 + i, 1000 + i + args.prompt_tokens)) for i in range(args.batch)]

        def runner(module):
            sc = module.SamplingConfig(max_new_tokens=args.new_tokens, temperature=args.temperature, ignore_eos=True)

            def run():
                t = time.perf_counter()
                out = jax.block_until_ready(module.generate(params, cfg, prompts, jax.random.key(0), sc))
                return time.perf_counter() - t, np.asarray(out.tokens)

            return run

        runs = {"base": runner(base_sampling), "new": runner(sampling)}
        tokens = {name: run()[1] for name, run in runs.items()}  # compiles
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(run()[0])

    n = args.batch * args.new_tokens
    result = {**run_info(), "base_revision": args.base, "base_commit": git("rev-parse", args.base), "batch": args.batch, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "temperature": args.temperature, "dtype": args.dtype,
              "same_tokens": bool(np.array_equal(tokens["base"], tokens["new"])),
              **{name: {"best_seconds": min(t), "median_seconds": float(np.median(t)), "tokens_per_s": n / min(t),
                        "seconds": t} for name, t in times.items()},
              "ratio_best": min(times["new"]) / min(times["base"]),
              "ratio_median": float(np.median(times["new"]) / np.median(times["base"]))}
    for name in runs:
        r = result[name]
        print(f"{name:>4}: best {r['best_seconds']:.2f} s, median {r['median_seconds']:.2f} s, "
              f"{r['tokens_per_s']:.1f} tok/s")
    print(f"new / base time: best {result['ratio_best']:.3f}, median {result['ratio_median']:.3f}; "
          f"same tokens: {result['same_tokens']}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
