"""Greedy decoding throughput of `rl_sharpen.sampling.generate` next to transformers `generate`.

    python benchmarks/sampler.py --checkpoint /path/to/SmolLM2-135M-Instruct --out sampler.json
    python benchmarks/sampler.py --preset qwen2.5-0.5b-instruct --dtype bfloat16 --out gpu.json  # GPU

Same checkpoint on both sides (float32 on CPU by default), one chat-formatted prompt of ~64 tokens
repeated `batch` times, 128 new tokens without early stop. With --preset instead of --checkpoint the
weights are random (std 0.02) for a published architecture, written once as a Hugging Face folder so
that transformers loads the same ones, and the prompt is fixed random token ids. tokens/s = batch *
new_tokens / wall time of one generate call (prefill included, compilation excluded and reported
separately), best of --repeats, the repeats of all contenders interleaved so that a slow spell of a
shared machine does not favour one of them. On CPU both sides use --threads threads:
torch.set_num_threads, and XLA's CPU client, which sizes its thread pool to the cores it may run on
(pinned here with os.sched_setaffinity when --threads is smaller). transformers is also timed with 1
thread (OpenMP threads that spin at barriers slow down badly on a shared machine) and the ratio is
taken against its faster setting.

Batch-1 decode is compared with the memory-bandwidth roofline: every step reads all weights once,

    roofline step time = weight bytes / read bandwidth,

where the read bandwidth is the fastest of the rates measured over 1 GiB: a numpy copy (bytes / time,
the read side of the copy) and an XLA reduction (`jnp.sum`, on the threads XLA decodes with),
each sampled at the start and again after every round of repeats, since a shared machine's
memory bandwidth drifts within minutes (the XLA sum read at 30 and at 48 GB/s within one run on a 2-core VM)
and a roofline taken in a slow moment flatters the fraction. Counting a copy's read and write,
STREAM-style, would double the numpy figure; taking the fastest rate seen keeps the roofline
fraction from being flattered. On a GPU both rates are taken on the device
(an XLA copy in place of the numpy one) and transformers runs there too, timed to a synchronize.
Every call is also compared with the compute roofline, the time its matrix products would take at
the machine's matmul rate (XLA, a square product of the benchmark dtype, best of 5):

    FLOPs = 2 B [P M + U + 2 L H E P(P+1)/2] + 2 B sum_{t=1}^{N-1} [M + U + 2 L H E (P + t)]

for B rows, a P-token prompt, N new tokens, M weights in the layers' projections, U = V D in the
unembedding and 2 L H E attention multiply-adds per query and key (scores and values; the prompt
is causal).
The compute-roofline fraction is floor / wall time, and transformers' time / floor is the highest
ratio any implementation could reach against it on this machine.
The decode step is the marginal cost of a token, (T(128 tokens) - T(3 tokens)) / 125 for the best
times T of whole calls, so prefill and the per-call weight re-layout are not counted in it (with 2
tokens the decode loop runs once and XLA drops it, and with it the re-layout, which the loop's
matrix products then read in place: T(2) would leave the re-layout in the step). Also
reported: |sampler log-prob - teacher-forced log-prob| on sampled completions, float32 and bfloat16,
next to float32 teacher forcing against itself on a shifted padding (the float32 rounding floor).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Hugging Face folder (weights + tokenizer)")
    source.add_argument("--preset", help="random weights of this rl_sharpen.models preset (no tokenizer)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights and matmuls")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-transformers", action="store_true")
    return p.parse_args()


ARGS = parse_args()
BASELINE_TOKENS = 3  # the shortest call that keeps the decode loop, and the weight re-layout before it
if ARGS.new_tokens <= BASELINE_TOKENS:
    raise SystemExit(f"--new-tokens={ARGS.new_tokens}: at least {BASELINE_TOKENS + 1} (the decode step is "
                     f"(T(n) - T({BASELINE_TOKENS})) / (n - {BASELINE_TOKENS}))")
if ARGS.threads < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:ARGS.threads])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from rl_sharpen import models, sampling  # noqa: E402
from run_info import run_info  # noqa: E402

ON_GPU = jax.default_backend() == "gpu"

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May? Think step by step.")


def prompt_ids(tokenizer, n: int) -> list[int]:
    """A chat-formatted prompt, cut or extended (by repeating the question) to n tokens."""
    text = QUESTION
    while True:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if len(ids) >= n:
            return ids[-n:]
        text += " " + QUESTION


def best_time(fn, repeats: int):
    """(fastest wall time, the result of the last call)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def read_bandwidth_sampler(nbytes: int = 1 << 30):
    """A function returning one sample of {rate name: bytes per second}, each the best of 5, over
    buffers allocated once: a large copy (numpy on CPU, XLA on a GPU) and an XLA sum."""
    a = np.ones(nbytes // 4, np.float32)
    x = jnp.asarray(a)
    total = jax.jit(jnp.sum)
    timed = {"xla_sum": lambda: total(x).block_until_ready()}
    if ON_GPU:
        copy = jax.jit(lambda v: v + 0)  # not elided: a fresh output buffer is written
        timed["xla_copy"] = lambda: copy(x).block_until_ready()
    else:
        b = np.empty_like(a)
        timed["numpy_copy"] = lambda: np.copyto(b, a)
    for run in timed.values():
        run()
    return lambda: {name: nbytes / best_time(run, 5)[0] for name, run in timed.items()}


def matmul_rate(dtype: str) -> float:
    """FLOP/s of an XLA [n, n] x [n, n] product in `dtype` (n = 2048 on CPU, 8192 on a GPU), best of 5."""
    n = 8192 if ON_GPU else 2048
    a = jnp.ones((n, n), dtype)
    product = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    product(a).block_until_ready()
    return 2 * n**3 / best_time(lambda: product(a).block_until_ready(), 5)[0]


def call_flops(cfg, params, batch: int, prompt: int, new_tokens: int) -> float:
    """FLOPs of one generate call's matrix products (the formula in the module docstring)."""
    projections = sum(params["layers"][name].size for name in ("q", "k", "v", "o", "gate", "up", "down"))
    unembed = cfg.vocab_size * cfg.hidden_size
    attention = 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim  # multiply-adds per query per key
    prefill = prompt * projections + unembed + attention * prompt * (prompt + 1) // 2
    decode = sum(projections + unembed + attention * (prompt + t) for t in range(1, new_tokens))
    return 2.0 * batch * (prefill + decode)


def rl_sharpen_runner(params, cfg, ids, batch, new_tokens):
    """A function timing one `generate` call of `new_tokens` greedy tokens (seconds, tokens)."""
    sc = sampling.SamplingConfig(max_new_tokens=new_tokens, greedy=True, ignore_eos=True)
    rng = jax.random.key(0)

    def run():
        t = time.perf_counter()
        out = jax.block_until_ready(sampling.generate(params, cfg, [ids] * batch, rng, sc))
        return time.perf_counter() - t, np.asarray(out.tokens)

    return run


def transformers_runner(model, ids, batch, new_tokens, threads):
    """A function timing one transformers `generate` call of exactly `new_tokens` greedy tokens.

    generate() fills every field left at None from the model's own generation config, so the model's
    EOS is cleared where it is loaded (`load_models`; EOS is then an ordinary token, as with
    rl_sharpen's ignore_eos) and the processors a checkpoint may switch on (repetition penalty, ...)
    are set to their neutral values here. Each call's length is checked."""
    x = torch.tensor([ids] * batch, dtype=torch.long, device=model.device)
    config = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                           num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                                           temperature=None, top_k=None, top_p=None, pad_token_id=0)

    def run():
        torch.set_num_threads(threads)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
        if ON_GPU:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        if out.shape[1] != len(ids) + new_tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - len(ids)} tokens, not {new_tokens}")
        return seconds, out[:, len(ids):].cpu().numpy()

    return run


def bench_batch(params, cfg, hf, ids, batch, after_round):
    """Best-of-`repeats` wall time of every contender, their repeats interleaved so that a slow
    spell of the machine hits all of them alike; `after_round()` runs after each round of repeats.

    rl_sharpen's decode step is the marginal cost of a token: (T(N) - T(3)) / (N - 3), T(n) the
    call generating n tokens (prefill, weight re-layout and the first tokens cancel out).
    """
    N = ARGS.new_tokens
    runners = {"rl_sharpen": rl_sharpen_runner(params, cfg, ids, batch, N),
               "rl_sharpen_baseline": rl_sharpen_runner(params, cfg, ids, batch, BASELINE_TOKENS)}
    hf_threads = [] if hf is None else [ARGS.threads] if ON_GPU else sorted({ARGS.threads, 1})
    runners.update({f"transformers_{n}": transformers_runner(hf, ids, batch, N, n) for n in hf_threads})
    compile_seconds = runners["rl_sharpen"]()[0]
    runners["rl_sharpen_baseline"]()
    if hf is not None:
        transformers_runner(hf, ids, batch, 4, ARGS.threads)()
    best, tokens = {name: float("inf") for name in runners}, {}
    for _ in range(ARGS.repeats):
        for name, run in runners.items():
            seconds, tokens[name] = run()
            best[name] = min(best[name], seconds)
        after_round()
    step = (best["rl_sharpen"] - best["rl_sharpen_baseline"]) / (N - BASELINE_TOKENS)
    entry = {"batch": batch, "rl_sharpen": {
        "tokens_per_s": batch * N / best["rl_sharpen"], "seconds": best["rl_sharpen"],
        "compile_seconds": compile_seconds - best["rl_sharpen"], "three_token_call_seconds": best["rl_sharpen_baseline"],
        "decode_step_seconds": step}}
    if hf is not None:
        by_threads = {n: {"tokens_per_s": batch * N / best[f"transformers_{n}"], "seconds": best[f"transformers_{n}"]}
                      for n in hf_threads}
        fastest = max(by_threads, key=lambda n: by_threads[n]["tokens_per_s"])
        entry.update(transformers_by_threads=by_threads, transformers=dict(by_threads[fastest], threads=fastest),
                     ratio=entry["rl_sharpen"]["tokens_per_s"] / by_threads[fastest]["tokens_per_s"],
                     same_tokens=bool(np.array_equal(tokens["rl_sharpen"], tokens[f"transformers_{fastest}"])))
    return entry


def logprob_gaps(path, ids, new_tokens, batch=8, shift=16):
    """|sampler log-prob - teacher-forced log-prob| (max, mean) over temperature-1 samples: float32,
    bfloat16 against bfloat16 teacher forcing (what a trainer recomputes), and bfloat16 against float32.
    Also float32 teacher forcing against itself on the same sequences with `shift` more pad columns on
    the left: the same function on another shape, the rounding floor any two float32 paths share."""
    sc = sampling.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True, num_samples=batch)
    token_logprobs = jax.jit(models.token_logprobs, static_argnums=1)
    models32 = models.load_hf(path, dtype="float32")
    gaps = {}
    for dtype in ("float32", "bfloat16"):
        cfg, params = models32 if dtype == "float32" else models.load_hf(path, dtype=dtype)
        out = sampling.generate(params, cfg, [ids], jax.random.key(1), sc)
        seq, seg = out.sequences()
        P = out.prompt_tokens.shape[1]
        for name, (c, p) in {dtype: (cfg, params), f"{dtype}_vs_float32_model": models32}.items():
            if name == "float32_vs_float32_model":
                continue
            teacher_forced = token_logprobs(p, c, seq, seg)[:, P - 1:]
            gaps[name] = max_mean(teacher_forced - out.logprobs)
            if name == "float32":
                padded = [jnp.pad(x, ((0, 0), (shift, 0))) for x in (seq, seg)]
                gaps["float32_teacher_forcing_shifted"] = max_mean(
                    token_logprobs(p, c, *padded)[:, P - 1 + shift:] - teacher_forced)
    return gaps


def max_mean(diff) -> dict:
    diff = np.abs(np.asarray(diff))
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def random_checkpoint(name: str, dtype: str) -> str:
    """A Hugging Face folder holding random weights of preset `name` (made once, then reused)."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rl_sharpen_bench_{name}_{dtype}")
    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = models.preset(name, param_dtype=dtype, compute_dtype=dtype)
        models.save_hf(models.init_params(cfg, jax.random.key(0)), cfg, path)
    return path


def load_models():
    """(checkpoint folder, prompt ids, cfg, params, transformers model or None)."""
    path = random_checkpoint(ARGS.preset, ARGS.dtype) if ARGS.preset else ARGS.checkpoint
    cfg, params = models.load_hf(path, dtype=ARGS.dtype)
    if ARGS.preset:
        ids = np.random.default_rng(0).integers(1000, cfg.vocab_size - 1000, ARGS.prompt_tokens).tolist()
    else:
        ids = prompt_ids(transformers.AutoTokenizer.from_pretrained(path), ARGS.prompt_tokens)
    hf = None if ARGS.skip_transformers else transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, ARGS.dtype)).to("cuda" if ON_GPU else "cpu").eval()
    if hf is not None:  # no early stop: generate() would otherwise take these for a None eos_token_id
        hf.generation_config.eos_token_id = hf.config.eos_token_id = None
    return path, ids, cfg, params, hf


def decode_step_weight_bytes(params) -> int:
    """Bytes of weights one decode step reads: every layer, the final norm and the unembedding; of the
    embedding only a row per sequence, so an untied embedding is not counted (a tied one is the unembedding)."""
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    return total if "lm_head" not in params else total - params["embed"].nbytes


def main():
    path, ids, cfg, params, hf = load_models()
    weight_bytes = decode_step_weight_bytes(params)
    sample_read_rates = read_bandwidth_sampler()
    rate_samples = [sample_read_rates()]
    flop_rate = matmul_rate(ARGS.dtype)
    result = run_info(
        checkpoint=ARGS.checkpoint, preset=ARGS.preset, dtype=ARGS.dtype, prompt_tokens=len(ids),
        batch_sizes=ARGS.batch_sizes, repeats=ARGS.repeats, new_tokens=ARGS.new_tokens, threads=ARGS.threads,
        torch=torch.__version__, transformers=transformers.__version__, weight_bytes=weight_bytes,
        matmul_flops_per_s=flop_rate, batches=[])
    print(f"{result['device']}, {ARGS.dtype}, {len(ids)}-token prompt, {ARGS.new_tokens} new tokens, "
          f"{ARGS.threads} threads, load average {os.getloadavg()[0]:.1f}, weights {weight_bytes / 1e6:.0f} MB, "
          f"matmul {flop_rate / 1e9:.0f} GFLOP/s")
    print(f"{'batch':>5} {'rl_sharpen tok/s':>17} {'transformers tok/s':>24} {'ratio':>6} {'compile s':>9} "
          f"{'decode ms/step':>14} {'same tokens':>11} {'compute roofline':>16} {'ratio ceiling':>13}")
    for batch in (int(b) for b in ARGS.batch_sizes.split(",")):
        entry = bench_batch(params, cfg, hf, ids, batch, lambda: rate_samples.append(sample_read_rates()))
        ours = entry["rl_sharpen"]
        floor = call_flops(cfg, params, batch, len(ids), ARGS.new_tokens) / flop_rate
        entry.update(compute_floor_seconds=floor, compute_roofline_fraction=floor / ours["seconds"])
        if "transformers" in entry:
            entry["ratio_ceiling"] = entry["transformers"]["seconds"] / floor
        result["batches"].append(entry)
        hf_text = " / ".join(f"{r['tokens_per_s']:.1f} ({n} thr)" for n, r in entry.get(
            "transformers_by_threads", {}).items()) or "-"
        print(f"{batch:>5} {ours['tokens_per_s']:>17.1f} {hf_text:>24} {entry.get('ratio', float('nan')):>6.2f} "
              f"{ours['compile_seconds']:>9.1f} {ours['decode_step_seconds'] * 1e3:>14.1f} "
              f"{str(entry.get('same_tokens', '-')):>11} {100 * entry['compute_roofline_fraction']:>15.0f}% "
              f"{entry.get('ratio_ceiling', float('nan')):>13.2f}", flush=True)
    bandwidths = {name: max(sample[name] for sample in rate_samples) for name in rate_samples[0]}
    roofline_step = weight_bytes / max(bandwidths.values())
    result.update(read_bandwidth_bytes_per_s=bandwidths, read_bandwidth_samples=rate_samples,
                  roofline_decode_step_seconds=roofline_step)
    print(f"read bandwidth, fastest (slowest) of {len(rate_samples)} samples: " + ", ".join(
        f"{name} {rate / 1e9:.1f} ({min(sample[name] for sample in rate_samples) / 1e9:.1f}) GB/s"
        for name, rate in bandwidths.items()) + f" -> roofline {roofline_step * 1e3:.1f} ms/step")
    for entry in result["batches"]:
        if entry["batch"] == 1:
            step = entry["rl_sharpen"]["decode_step_seconds"]
            entry["decode_roofline_fraction"] = result["batch1_decode_roofline_fraction"] = roofline_step / step
            print(f"batch-1 decode: {step * 1e3:.1f} ms/step = {100 * roofline_step / step:.0f}% of the roofline")
    result["logprob_gap"] = logprob_gaps(path, ids, ARGS.new_tokens)
    print("max |sampler - teacher-forced| log-prob:", json.dumps(result["logprob_gap"]))
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
