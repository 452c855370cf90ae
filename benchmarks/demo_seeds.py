"""The CPU demo's regimes over several seeds from one warm start, with paired changes.

    python benchmarks/demo_seeds.py --root /tmp/demo_seeds --seeds 0,1,2 --out benchmarks/results_demo_seeds.json

For each seed S it runs `configs/demo.py` four times (task reward and sum sharpening; mean
sharpening; tempered and tilted; calibrated sum sharpening), each in <root>/s<S>_<run>. Seed 0's
first run trains the warm start; every other run gets a copy of it, so the seeds differ in the RL
problems drawn and their order, sampling and the evaluation's samples, not in the starting model or
the validation problems. A run already finished (its demo_results.json exists) is not run again, so
a killed campaign resumes. The JSON holds each
run's headline and time, and for each comparison (e.g. task reward - warm start) the per-seed paired
change on the shared validation problems (`evaluation.paired_difference`), its standard error, the
mean over seeds and sqrt(sum se^2) / #seeds (problem and sample noise; the training's shows in the
spread of the seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from run_info import ROOT, run_info

CALIBRATION = ["--config.calibration.mu=0.5", "--config.calibration.memory_layers=1",
               "--config.calibration.learning_rate=3e-3", "--config.calibration.updates_per_step=4"]
RUNS = {  # run name: (flags after --config.seed, the models it evaluates under eval/)
    "base": ([], ("sft_start", "task_reward", "sharpening")),
    "mean": (["--config.demo.regimes=('sharpening',)", "--config.reward.normalization=mean"], ("sharpening",)),
    "tt": (["--config.demo.regimes=('tempered_a4','tilted_a4_b100')"], ("tempered_a4", "tilted_a4_b100")),
    "cal": (["--config.demo.regimes=('sharpening',)", *CALIBRATION], ("sharpening",)),
}
# label: (A, B) as (run, model); A - B per seed
COMPARISONS = {
    "task reward - warm start": (("base", "task_reward"), ("base", "sft_start")),
    "sharpening, mean - warm start": (("mean", "sharpening"), ("base", "sft_start")),
    "tilted - warm start": (("tt", "tilted_a4_b100"), ("base", "sft_start")),
    "sharpening, sum - warm start": (("base", "sharpening"), ("base", "sft_start")),
    "tempered - warm start": (("tt", "tempered_a4"), ("base", "sft_start")),
    "calibrated sum - warm start": (("cal", "sharpening"), ("base", "sft_start")),
    "sharpening, mean - task reward": (("mean", "sharpening"), ("base", "task_reward")),
    "tilted - task reward": (("tt", "tilted_a4_b100"), ("base", "task_reward")),
    "calibrated sum - sum": (("cal", "sharpening"), ("base", "sharpening")),
}
ROWS = {"warm start": ("base", "sft_start"), "task reward": ("base", "task_reward"),
        "sharpening, sum": ("base", "sharpening"), "sharpening, mean": ("mean", "sharpening"),
        "tempered, alpha = 4": ("tt", "tempered_a4"), "tilted, alpha = 4, beta_inv = 100": ("tt", "tilted_a4_b100"),
        "sharpening, sum, calibrated": ("cal", "sharpening")}
METRICS = (("pass@k", "1"), ("pass@k", "8"), ("maj@k", "8"))


def run_demo(root: str, seed: int, run: str, flags: list[str]) -> dict:
    workdir = os.path.join(root, f"s{seed}_{run}")
    results, timing = os.path.join(workdir, "demo_results.json"), os.path.join(root, f"s{seed}_{run}.time")
    if not os.path.exists(results):
        warm_start = os.path.join(root, "s0_base", "sft_model")
        if (seed, run) != (0, "base") and not os.path.exists(os.path.join(workdir, "sft_model")):
            shutil.copytree(warm_start, os.path.join(workdir, "sft_model"))
        command = [sys.executable, "-m", "rl_sharpen.main", "--config=configs/demo.py", f"--workdir={workdir}",
                   f"--config.seed={seed}", *RUNS[run][0], *flags]
        print(" ".join(command), flush=True)
        start = time.perf_counter()
        with open(os.path.join(root, f"s{seed}_{run}.log"), "w") as log:
            subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        with open(timing, "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}")
    with open(results) as f:
        headline = json.load(f)["headline"]
    seconds = float(pathlib.Path(timing).read_text()) if os.path.exists(timing) else None
    return {"headline": headline, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder of the runs' workdirs (reused: finished runs are kept)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--flags", default="", help="more config flags for every run, space-separated, e.g. "
                        "'--config.data.synthetic_hold_out=False'")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.root, exist_ok=True)
    sys.path.insert(0, ROOT)
    from rl_sharpen import evaluation

    flags = args.flags.split()
    runs = {f"s{seed}_{run}": run_demo(args.root, seed, run, flags) for seed in seeds for run in RUNS}

    def results(seed, run, model):
        return evaluation.load_results(os.path.join(args.root, f"s{seed}_{run}", "eval", model, "eval.json"))

    table = {}
    for label, (run, model) in ROWS.items():
        table[label] = {str(seed): runs[f"s{seed}_{run}"]["headline"][model] for seed in seeds}
    comparisons = {}
    for label, (a, b) in COMPARISONS.items():
        changes = [evaluation.paired_difference(results(seed, *a), results(seed, *b), [1, 8]) for seed in seeds]
        comparisons[label] = {}
        for table_name, k in METRICS:
            values = [c[table_name][int(k)] for c in changes]
            errors = [c["stderr"][table_name][int(k)] for c in changes]
            comparisons[label][f"{table_name[:-2]}@{k}"] = {
                "per_seed": values, "per_seed_stderr": errors, "mean": sum(values) / len(values),
                "stderr_of_mean": sum(e * e for e in errors) ** 0.5 / len(errors)}

    out = {**run_info(seeds=seeds, root=args.root, flags=flags), "warm_start": "s0_base/sft_model, copied into every other run",
           "runs": runs, "table": table, "paired_comparisons": comparisons}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)

    print("\npass@1 / pass@8 / maj@8 (%) per seed, then the mean")
    for label, per_seed in table.items():
        cells = [" / ".join(f"{100 * h[m]:.1f}" for m in ("pass@1", "pass@8", "maj@8")) for h in per_seed.values()]
        means = [sum(h[m] for h in per_seed.values()) / len(per_seed) for m in ("pass@1", "pass@8", "maj@8")]
        print(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(f"{100 * v:.1f}" for v in means) + " |")
    print("\nA - B, points: mean of the seeds ± sqrt(sum se^2) / #seeds (per-seed changes)")
    for label, metrics in comparisons.items():
        cells = [f"{100 * m['mean']:+.1f} ± {100 * m['stderr_of_mean']:.1f} ("
                 + ", ".join(f"{100 * v:+.1f}" for v in m["per_seed"]) + ")" for m in metrics.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
