"""What stop strings change when a model is prompted with plain text (no chat template): evaluation
of a checkpoint on GSM8K test with a one-shot "Question: ... Answer: ..." prompt, with and without
`sampling.stop_strings=("\\nQuestion:",)`.

    python benchmarks/stop_strings.py --checkpoint /path/to/SmolLM2-135M-Instruct --out results.json

Without a stop string a completion can run on into questions it invents and answers, and the grader
reads the last answer it finds. For each setting it reports pass@1 and maj@k, the mean completion
length in tokens, the share of sampled completions that go on after a "\\nQuestion:" (an invented
question), the share that end with it (stopped there), and the wall-clock seconds of the evaluation
(`experiment.run` in eval mode, compile included).

It also measures what the check costs: `compile_stops` on the checkpoint's vocabulary and on one three
times as large (about Qwen's 151,936 ids), and greedy decoding of 128 tokens at batch 8 and 32 with a
stop string that never occurs against none (no EOS either, so both run every step), interleaved,
best of `--repeats`.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax

from rl_sharpen import experiment, models, sampling
from rl_sharpen.config import load_config_file
from rl_sharpen.tasks.prompts import load_tokenizer, token_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_SHOT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
            "May. How many clips did Natalia sell altogether in April and May?\nAnswer: In May she sold 48 / 2 = 24 "
            "clips, so 48 + 24 = 72 in all. The answer is \\boxed{72}.\n\nQuestion: {problem}\nAnswer:")
STOP = "\nQuestion:"


def evaluate(checkpoint: str, stop: bool, problems: int, samples: int, max_new_tokens: int) -> dict:
    c = load_config_file(os.path.join(ROOT, "configs", "eval_smollm2_gsm8k.py") + ":" + checkpoint)
    c.data.use_chat_template, c.data.template = False, ONE_SHOT
    c.data.validation_limit, c.eval.batch_size = problems, problems
    c.eval.num_samples, c.eval.k_list, c.eval.keep_texts = samples, (1, samples), samples
    c.eval.max_new_tokens = max_new_tokens
    c.sampling.stop_strings = (STOP,) if stop else ()
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        result = experiment.run(c, workdir)
        seconds = time.perf_counter() - t0
        with open(os.path.join(workdir, "eval_step0.json")) as f:
            saved = json.load(f)
    texts = [t for p in saved["problems"] for t in p["texts"]]
    return {"stop_strings": list(c.sampling.stop_strings), "pass@1": result["pass@1"],
            f"maj@{samples}": result[f"maj@{samples}"], "greedy_accuracy": result["greedy_accuracy"],
            "mean_response_tokens": result["mean_response_tokens"],
            "invented_question_rate": sum(t.find(STOP) not in (-1, len(t) - len(STOP)) for t in texts) / len(texts),
            "stopped_rate": sum(t.endswith(STOP) for t in texts) / len(texts),
            "seconds": seconds, "example": texts[0]}


def check_cost(checkpoint: str, repeats: int) -> dict:
    tokenizer = load_tokenizer(checkpoint)
    texts = token_texts(tokenizer)
    strings = (STOP, "\x00never\x00")
    out = {}
    for name, vocab_texts in (("vocab", texts), ("vocab_x3", texts * 3)):
        t0 = time.perf_counter()
        stops = sampling.compile_stops(strings, vocab_texts, len(vocab_texts))
        out[f"compile_seconds_{name}"] = time.perf_counter() - t0
        out[f"table_megabytes_{name}"] = (stops.next_state.nbytes + stops.hit.nbytes) / 2**20
        out[f"states_{name}"] = stops.hit.shape[0]
    cfg, params = models.load_hf(checkpoint, dtype="float32")
    never = ("\x00never\x00",)
    stops = sampling.compile_stops(never, texts, cfg.vocab_size).placed()
    prompt = tokenizer.encode(ONE_SHOT.replace("{problem}", "How many legs do 3 cats have?"))
    for batch in (8, 32):
        base = sampling.SamplingConfig(max_new_tokens=128, greedy=True, prompt_width=256)
        with_stop = sampling.SamplingConfig(max_new_tokens=128, greedy=True, prompt_width=256, stop_strings=never)
        times = {"none": [], "stop": []}
        for _ in range(repeats + 1):  # the first round compiles
            for name, sc, st in (("none", base, None), ("stop", with_stop, stops)):
                t0 = time.perf_counter()
                result = sampling.generate(params, cfg, [prompt] * batch, jax.random.key(0), sc, stops=st)
                jax.block_until_ready(result.tokens)
                times[name].append(time.perf_counter() - t0)
        best = {name: min(t[1:]) for name, t in times.items()}
        out[f"batch_{batch}"] = {"seconds_without": best["none"], "seconds_with": best["stop"],
                                 "overhead": best["stop"] / best["none"] - 1,
                                 "tokens_per_second_without": 128 * batch / best["none"],
                                 "tokens_per_second_with": 128 * batch / best["stop"]}
    return out


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True, help="a local Hugging Face folder")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-eval", action="store_true", help="measure the check's cost only")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cost = check_cost(args.checkpoint, args.repeats)
    print(cost)
    rows = [] if args.skip_eval else [evaluate(args.checkpoint, stop, args.problems, args.samples,
                                               args.max_new_tokens) for stop in (False, True)]
    for row in rows:
        print({k: v for k, v in row.items() if k != "example"})
    with open(args.out, "w") as f:
        json.dump({"checkpoint": os.path.basename(os.path.normpath(args.checkpoint)), "problems": args.problems,
                   "samples": args.samples, "max_new_tokens": args.max_new_tokens, "template": ONE_SHOT,
                   "cost": cost, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
