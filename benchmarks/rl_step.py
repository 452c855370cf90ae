"""Time RL steps, split into sample / score / update, for the CPU demo model and for a real
checkpoint (SmolLM2-135M-Instruct on GSM8K prompts).

  python benchmarks/rl_step.py --out /tmp/rl_step.json [--checkpoint /path/to/SmolLM2-135M-Instruct]

Each setting runs `--steps` RL steps; the first (compilation) is reported separately and the
rest are averaged. The SmolLM2 setting runs once per `--prompt-padding` mode (`rl.prompt_padding`:
one width for the whole problem set, or each batch's own bucket width) and `--remat` choice
(`rl.remat`: recompute each decoder layer's activations in the backward pass, or keep them), and once per
`--calibration-layers` depth of a memory network (distribution-level calibration, mu = 0.5, with the
first `--prompt-padding` mode and `--remat` value), whose cost shows in the sample split (a second model in the decode loop) and in its own memory split.
"""

import argparse
import json
import os
import tempfile

import numpy as np

from rl_sharpen import experiment
from rl_sharpen.config import load_config_file
from rl_sharpen.metrics import read_jsonl
from rl_sharpen.task_setup import build_task
from run_info import run_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("time_sample", "time_score", "time_update", "time_memory", "time_step")


def _demo_config():
    c = load_config_file(os.path.join(ROOT, "configs", "demo.py"))
    c.mode = "rl"
    return c


def _smollm2_config(checkpoint: str, data: str):
    c = experiment.default_config()
    c.mode = "rl"
    c.model.checkpoint = checkpoint
    c.data.train = c.data.validation = data
    c.sampling.max_new_tokens = 64
    c.sampling.num_samples = 4
    c.rl.prompts_per_step = 2
    c.optim.learning_rate = 1e-6
    return c


def time_steps(c, steps: int) -> dict:
    c.train.steps = steps
    c.train.checkpoint_every = 10**6
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    with tempfile.TemporaryDirectory() as workdir:
        run = experiment.make_rl_run(exp, workdir, cfg, params, task)
        run.evaluate = None
        run.run()
        rows = read_jsonl(os.path.join(workdir, "train.jsonl"))
    first, rest = rows[0], rows[1:]
    return {
        "sequences_per_step": exp.rl.prompts_per_step * exp.sampling.num_samples,
        "max_new_tokens": exp.sampling.max_new_tokens,
        "mean_response_tokens": float(np.mean([r["response_length"] for r in rest])),
        "prompt_padding": exp.rl.prompt_padding,
        "remat": exp.rl.remat,
        "calibration_memory_layers": exp.calibration.memory_layers if exp.calibration.enabled else None,
        "first_step_s (with compilation)": {k: first[k] for k in SPLITS if k in first},
        "step_s": {k: float(np.mean([r[k] for r in rest])) for k in SPLITS if k in first},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpoint", default="", help="HF folder of SmolLM2-135M-Instruct (skipped if empty)")
    parser.add_argument("--prompt-padding", default="dataset,batch", help="comma list of rl.prompt_padding modes")
    parser.add_argument("--remat", default="true", help="comma list of rl.remat values (true, false) for SmolLM2")
    parser.add_argument("--calibration-layers", default="",
                        help="comma list of memory-network depths to time with calibration on (SmolLM2)")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "gsm8k", "test.jsonl"))
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps={args.steps}: at least 2 (the first compiles; the others are averaged)")
    remats, remat_values = {"true": True, "false": False}, []
    for value in args.remat.split(","):
        if value not in remats:
            parser.error(f"--remat: {value!r}; allowed: a comma list of {sorted(remats)}")
        remat_values.append(remats[value])
    results = run_info(steps=args.steps)
    results["demo"] = time_steps(_demo_config(), args.steps)
    print("demo", json.dumps(results["demo"], indent=1))
    for padding in args.prompt_padding.split(",") if args.checkpoint else ():
        for remat in remat_values:
            c = _smollm2_config(args.checkpoint, args.data)
            c.rl.prompt_padding, c.rl.remat = padding, remat
            name = f"smollm2_135m_{padding}_padding" + ("" if remat else "_no_remat")
            results[name] = timed = time_steps(c, args.steps)
            print(f"smollm2, {padding} padding, remat={remat}", json.dumps(timed, indent=1))
    for layers in [int(n) for n in args.calibration_layers.split(",") if n] if args.checkpoint else ():
        c = _smollm2_config(args.checkpoint, args.data)  # the first padding mode and remat value asked for
        c.rl.prompt_padding, c.rl.remat = args.prompt_padding.split(",")[0], remat_values[0]
        c.calibration.mu, c.calibration.memory_layers = 0.5, layers
        results[f"smollm2_135m_calibrated_{layers}_layers"] = timed = time_steps(c, args.steps)
        print(f"smollm2, calibrated, {layers}-layer memory", json.dumps(timed, indent=1))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
