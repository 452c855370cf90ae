"""How busy the CPU's threads are during the decode loop, from a profiler trace of one `generate` call.

    python benchmarks/decode_profile.py --checkpoint /path/to/SmolLM2-135M-Instruct --rows 1,8,32 --out profile.json

One greedy call (--prompt-tokens, --new-tokens, one distinct random prompt per row) is compiled, timed
once, then run again under `jax.profiler` with a Perfetto trace. XLA's CPU runtime records every
thunk it executes (a fused loop, a matrix product, a conditional) on the thread that runs it, and
every stretch a pool worker spends helping a parallel thunk (`ThreadpoolListener::StartRegion` /
`StopRegion`). Over the middle half of the decode loop (the longest execution of the call) this script
reports, per generated token:

    busy          thread-milliseconds inside thunks or helping one, per thread
    both / one    wall time with both threads busy / with only one busy (2-core machines; with more
                  threads, "one" is time with exactly one busy)
    single-thread the "one" time attributed to the thunk running then, by kind: projection (a matrix
                  product outside attention), attention (the per-layer `lax.switch` and its cache
                  writes), vocabulary (work over [rows, vocab] logits), other, and worker task (a
                  pool worker busy on a task no thunk event covers)
    join latency  for thunks of 50 us or more started while the other thread was idle and joined by
                  it, the time until it starts helping (median, mean, p90 in microseconds, and the sum
                  per token); unhelped: the time per token of such thunks that it never joined

Profiling slows the loop, so the shares matter here, not the absolute times. The longest execution
also holds the per-call weight re-layout (`decode.prepare`, ~0.17 s for SmolLM2 on the 2-core VM),
counted here as if it were decode steps: per-token times come out ~5% high at one row, ~1.5% at 32. The event names
are those of the jaxlib this was written against (0.10); another version may name them otherwise.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Hugging Face folder")
    source.add_argument("--preset", help="random float32 weights of this rl_sharpen.models preset")
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", required=True, help="JSON file for the results")
    return p.parse_args()


ARGS = parse_args()
# XLA writes the optimized HLO of every decode loop it compiles here; its instruction names are the
# thunk names of the trace, and its op_name metadata says what each one computes.
HLO_DUMP = tempfile.mkdtemp(prefix="decode_profile_hlo_")
os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={HLO_DUMP} --xla_dump_hlo_as_text "
                           "--xla_dump_hlo_module_re=_decode").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rl_sharpen import models, sampling  # noqa: E402
from run_info import run_info  # noqa: E402

SKIP = ("$", "end:", "ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "Wait for")


def is_thunk(event) -> bool:
    """An event of one thunk's own work (a conditional's time is that of the thunks nested in it)."""
    return event["dur"] > 0 and not event["name"].startswith(SKIP + ("cond",))


def op_kinds(hlo_text: str, vocab: int) -> dict[str, str]:
    """HLO instruction name -> projection / attention / vocabulary / other, from its op_name metadata."""
    kinds = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name="([^"]*)"', hlo_text, re.M):
        name, shape, op = m.groups()
        if "/cond/" in op or ("dynamic_update_slice" in op and shape.count(",") >= 3):
            kinds[name] = "attention"
        elif "dot_general" in op:
            kinds[name] = "projection"
        elif f",{vocab}]" in shape:
            kinds[name] = "vocabulary"
        else:
            kinds[name] = "other"
    return kinds


def timeline(events, t0, t1, kinds):
    """One thread's (busy, label), one entry per microsecond of [t0, t1): busy inside a thunk or helping
    one; label the kind of the thunk running ("" while helping)."""
    busy, label, start = np.zeros(int(t1 - t0) + 1, bool), np.full(int(t1 - t0) + 1, "", object), None
    for e in events:
        if e["name"] == "ThreadpoolListener::StartRegion":
            start = e["ts"]
        elif e["name"] == "ThreadpoolListener::StopRegion" and start is not None:
            busy[int(start - t0):int(e["ts"] - t0)] = True
            start = None
        elif is_thunk(e):
            span = slice(int(e["ts"] - t0), int(e["ts"] + e["dur"] - t0))
            busy[span], label[span] = True, kinds.get(e["name"], "other")
    return busy, label


def analyse(trace: dict, kinds: dict[str, str], tokens: int) -> dict:
    events = sorted((e for e in trace["traceEvents"] if e.get("ph") == "X"), key=lambda e: e["ts"])
    executions = [e for e in events if e["name"] == "ThunkExecutor::Execute (wait for completion)"]
    if not executions:
        raise SystemExit("no XLA CPU executions in the trace: this script reads the CPU runtime's event "
                         "names of jaxlib 0.10 (run it on a CPU backend)")
    loop = max(executions, key=lambda e: e["dur"])
    t0, t1 = loop["ts"] + 0.25 * loop["dur"], loop["ts"] + 0.75 * loop["dur"]
    window = [e for e in events if t0 <= e["ts"] < t1]
    by_thread = collections.defaultdict(list)
    for e in window:
        by_thread[e["tid"]].append(e)
    threads = [t for t in by_thread if any(not e["name"].startswith(SKIP) for e in by_thread[t])]
    lines = {tid: timeline(by_thread[tid], t0, t1, kinds) for tid in threads}
    masks = {tid: busy for tid, (busy, _) in lines.items()}
    count = sum(m.astype(int) for m in masks.values())
    single = collections.Counter()
    for tid, (busy, label) in lines.items():
        alone = busy & (count == 1)
        for kind, n in zip(*np.unique(label[alone], return_counts=True)):
            single[kind or "worker task"] += int(n)
    starts = {t: np.array([e["ts"] for e in by_thread[t] if e["name"] == "ThreadpoolListener::StartRegion"])
              for t in threads}
    latencies, unhelped = [], 0.0
    for tid in threads:
        others = [t for t in threads if t != tid]
        for e in by_thread[tid]:
            if e["dur"] < 50 or not is_thunk(e) or not others:
                continue
            i = int(e["ts"] - t0)
            idle = [t for t in others if not masks[t][i:i + 5].any()]
            if idle:
                s = starts[idle[0]]
                s = s[(s >= e["ts"]) & (s <= e["ts"] + e["dur"])]
                if len(s):
                    latencies.append(s[0] - e["ts"])
                else:
                    unhelped += e["dur"]
    lat = np.array(latencies or [0.0])
    n_tokens = tokens * (t1 - t0) / loop["dur"]  # decode steps in the window
    return {
        "token_ms_profiled": loop["dur"] / 1e3 / tokens,
        "threads": len(threads),
        "busy_ms_per_token": [float(m.sum()) / 1e3 / n_tokens for m in masks.values()],
        "all_busy_fraction": float((count == len(threads)).mean()),
        "one_busy_fraction": float((count == 1).mean()),
        "none_busy_fraction": float((count == 0).mean()),
        "single_thread_ms_per_token": {k: v / 1e3 / n_tokens for k, v in single.most_common()},
        "join_latency_us": {"median": float(np.median(lat)), "mean": float(lat.mean()),
                            "p90": float(np.percentile(lat, 90)), "count_per_token": len(latencies) / n_tokens,
                            "sum_ms_per_token": float(lat.sum()) / 1e3 / n_tokens},
        "unhelped_ms_per_token": unhelped / 1e3 / n_tokens,
    }


def profile(cfg, params, rows: int) -> dict:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1000, cfg.vocab_size - 1000, ARGS.prompt_tokens).tolist() for _ in range(rows)]
    sc = sampling.SamplingConfig(max_new_tokens=ARGS.new_tokens, greedy=True, ignore_eos=True)

    def call():
        return jax.block_until_ready(sampling.generate(params, cfg, prompts, jax.random.key(0), sc).tokens)

    def dumped():
        return set(glob.glob(os.path.join(HLO_DUMP, "*_decode*after_optimizations.txt")))

    before = dumped()
    call()  # compiles this row count's decode loop, whose HLO XLA dumps
    (hlo_file,) = dumped() - before
    with open(hlo_file) as f:
        hlo = f.read()
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            call()
        path = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            trace = json.load(f)
    return {"rows": rows, "call_seconds": seconds,
            **analyse(trace, op_kinds(hlo, cfg.vocab_size), ARGS.new_tokens - 1)}


def main():
    if ARGS.preset:
        cfg = models.preset(ARGS.preset, param_dtype="float32", compute_dtype="float32")
        params = models.init_params(cfg, jax.random.key(0))
    else:
        cfg, params = models.load_hf(ARGS.checkpoint, dtype="float32")
    result = run_info(checkpoint=ARGS.checkpoint, preset=ARGS.preset, rows=[])
    for rows in dict.fromkeys(int(r) for r in ARGS.rows.split(",")):  # each once: one compile, one HLO dump
        r = profile(cfg, params, rows)
        result["rows"].append(r)
        single = ", ".join(f"{k} {v:.1f}" for k, v in r["single_thread_ms_per_token"].items())
        lat = r["join_latency_us"]
        print(f"rows {rows}: {r['token_ms_profiled']:.1f} ms/token profiled "
              f"({r['call_seconds']:.2f} s a call unprofiled); "
              f"busy {' / '.join(f'{b:.1f}' for b in r['busy_ms_per_token'])} ms; all threads busy "
              f"{100 * r['all_busy_fraction']:.0f}%, one {100 * r['one_busy_fraction']:.0f}%; single-thread ms: "
              f"{single}; join latency median {lat['median']:.0f} / mean {lat['mean']:.0f} / p90 {lat['p90']:.0f} us, "
              f"{lat['sum_ms_per_token']:.1f} ms per token; unhelped {r['unhelped_ms_per_token']:.1f} ms per token",
              flush=True)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
