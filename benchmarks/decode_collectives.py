"""What one decode step sends between devices when the weights are sharded: the collectives XLA puts
inside the sampler's decode loop, counted in its compiled program.

    python benchmarks/decode_collectives.py --preset qwen2.5-0.5b-instruct --layers 4 --out collectives.json

Runs on fake CPU devices (--devices, 8 by default), random weights of a preset cut to --layers layers,
--prompts prompts x --samples samples. For each mesh and decode path (`SamplingConfig.fast_decode`
True: `decode.step` over weights laid out once per call; False: `models.forward` scanned over the
stacked layers) it compiles `generate`'s decode loop and sums, over the loop body and everything it
calls, each collective's count and result bytes, with the scan's per-layer body counted once per
layer. A weight all-gather is one whose result has as many elements as a weight (one layer's slice
of a stacked one), or as its shard over the mesh's tensor axis: the weights travel every step
instead of the activations. Counts and bytes, not timings: fake CPU devices share one machine, so
their collectives cost nothing like an interconnect's.
"""

from __future__ import annotations

import argparse
import json
import os
import re


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-0.5b-instruct", help="rl_sharpen.models preset")
    p.add_argument("--layers", type=int, default=4, help="decoder layers kept (the widths stay the preset's)")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices")
    p.add_argument("--meshes", default='{"fsdp": 8};{"data": 2, "fsdp": 2, "tensor": 2};{"fsdp": 4, "tensor": 2}',
                   help="';'-separated JSON meshes")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--paths", default="fast,scan", help="decode paths: fast (fast_decode=True), scan (False)")
    p.add_argument("--out", default="", help="JSON file for the results")
    return p.parse_args()


_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}
_KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _result_bytes(line: str) -> int:
    """Bytes of an HLO instruction's result (the sum over a tuple's parts)."""
    lhs = line.split("=", 1)[1].split("(", 1)[0] if "=" in line else ""
    return sum(_BYTES.get(t, 4) * eval("*".join(d.split(",")) or "1")  # noqa: S307 (digits and commas)
               for t, d in re.findall(r"(\w+)\[([\d,]*)\]", lhs))


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line.strip())
    return comps


def _callees(line: str) -> list[str]:
    names = []
    for group in re.findall(r"(?:to_apply|calls|body|condition|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)", line):
        names += [n.strip(" {}%") for n in group.split(",") if n.strip(" {}")]
    return names


def _trip_count(line: str) -> int:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    return int(known.group(1)) if known else 1


def _elements(line: str) -> int:
    lhs = line.split("=", 1)[1].split("(", 1)[0]
    dims = re.search(r"\w+\[([\d,]*)\]", lhs)
    return eval("*".join(dims.group(1).split(",")) or "1") if dims else 0  # noqa: S307 (digits and commas)


def collectives(hlo: str, weight_sizes: set[int]) -> dict:
    """Collectives per decode step: the outermost while loop with the most instructions is the decode
    loop; nested while loops of known trip count (the layer scan) are counted that many times."""
    comps = _computations(hlo)
    totals: dict = {k: {"count": 0, "bytes": 0} for k in _KINDS}
    totals["weight_all_gathers"] = 0

    def size(name, seen=()):
        return len(comps.get(name, [])) + sum(size(c, seen + (name,)) for line in comps.get(name, [])
                                               for c in _callees(line) if c not in seen)

    loops = [re.search(r"body=%?([\w.\-]+)", line).group(1) for lines in comps.values() for line in lines
             if " while(" in line]
    body = max(loops, key=size)

    def walk(name, times, seen):
        for line in comps.get(name, []):
            op = re.search(r"= [^ ]+ ([\w\-]+)\(", line)
            kind = op and op.group(1).removesuffix("-start")
            if kind in _KINDS:
                totals[kind]["count"] += times
                totals[kind]["bytes"] += times * _result_bytes(line)
                if kind == "all-gather" and _elements(line) in weight_sizes:
                    totals["weight_all_gathers"] += times
            inner = _trip_count(line) if " while(" in line else 1
            for callee in _callees(line):
                if callee not in seen:
                    walk(callee, times * inner, seen | {callee})

    walk(body, 1, {body})
    return totals


def main():
    args = parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax

    from rl_sharpen import models, sampling
    from rl_sharpen import sharding as shd
    from rl_sharpen.sampling import ancestral

    cfg = models.preset(args.preset, num_layers=args.layers)
    shapes = models.abstract_params(cfg)
    weight_sizes = {x.size // cfg.num_layers for x in jax.tree.leaves(shapes["layers"])}
    weight_sizes |= {x.size for name, x in shapes.items() if name != "layers"}
    prompts = [list(range(1, 20 + 7 * i)) for i in range(args.prompts)]
    compiled = {}
    original = ancestral._decode

    def capture(*a, **k):
        compiled["hlo"] = original.lower(*a, **k).compile().as_text()
        return original(*a, **k)

    results = []
    ancestral._decode = capture
    try:
        for text in args.meshes.split(";"):
            mesh = shd.make_mesh(json.loads(text))
            params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
            for fast in [{"fast": True, "scan": False}[p] for p in args.paths.split(",")]:
                sc = sampling.SamplingConfig(max_new_tokens=args.new_tokens, num_samples=args.samples,
                                             ignore_eos=True, fast_decode=fast)
                jax.block_until_ready(sampling.generate(params, cfg, prompts, jax.random.key(1), sc, mesh=mesh).tokens)
                shards = {1, mesh.shape.get("tensor", 1)}
                found = collectives(compiled["hlo"], {n // d for n in weight_sizes for d in shards})
                row = {"mesh": dict(mesh.shape), "fast_decode": fast, **found}
                results.append(row)
                print(f"{json.dumps(dict(mesh.shape)):<40} fast_decode={fast!s:<5} "
                      + "  ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.2f} MiB)"
                                  for k, v in found.items() if isinstance(v, dict) and v["count"])
                      + f"  weight all-gathers {found['weight_all_gathers']}")
    finally:
        ancestral._decode = original
    info = {"preset": args.preset, "layers": args.layers, "devices": args.devices, "dtype": "float32",
            "rows": args.prompts * args.samples, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
