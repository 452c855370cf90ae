"""The CPU demo's regimes over several seeds from one warm start, with paired changes.

    python benchmarks/demo_seeds.py --root /tmp/demo_seeds --seeds 0,1,2 --out benchmarks/results_demo_seeds.json

For each seed S it runs `configs/demo.py` four times (task reward and sum sharpening; mean
sharpening; tempered and tilted; calibrated sum sharpening), each in <root>/s<S>_<run>. Seed 0's
first run trains the warm start; every other run gets a copy of it, so the seeds differ in the RL
problems drawn and their order, sampling and the evaluation's samples, not in the starting model or
the validation problems. A run already finished (its demo_results.json exists) is not run again, so
a killed campaign resumes. The JSON holds each
run's headline and time, and for each comparison (e.g. task reward - warm start) the per-seed paired
change on the shared validation problems (`evaluation.paired_scores`) with its standard error, and
the mean over seeds with the standard error of that mean: each problem's change averaged over the
seeds, its spread over the N problems, / sqrt(N). Every seed validates on the same problems, so their
spread counts once; combining the seeds' errors as if independent (sqrt(sum se^2) / #seeds, as this
script did before) understates it by up to sqrt(#seeds). The error covers problem and sample noise,
and the training's in so far as the seeds average it.

`--pool-with ROOT` (repeatable) adds the runs of finished campaigns on the same validation problems
(e.g. from another warm start) as further replicates, in a "pooled" section computed the same way,
and each such campaign's difference from this one (per problem: this campaign's change averaged over
its seeds minus that campaign's).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
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


def headline_metrics(headline: dict) -> list[str]:
    """The pass@ / maj@ names of a demo headline, ["pass@1", "pass@8", "maj@8"] with 8 samples: the
    smallest and largest k the runs evaluated (`--flags='--config.eval.num_samples=4'` gives k = 4)."""
    return [name for name in headline if name.startswith(("pass@", "maj@"))]


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
    parser.add_argument("--pool-with", action="append", default=[], metavar="ROOT",
                        help="a finished campaign's root (same seeds' runs, same validation problems) to pool with")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.root, exist_ok=True)
    sys.path.insert(0, ROOT)
    flags = args.flags.split()
    runs = {f"s{seed}_{run}": run_demo(args.root, seed, run, flags) for seed in seeds for run in RUNS}

    metrics = headline_metrics(runs[f"s{seeds[0]}_base"]["headline"]["sft_start"])
    table = {}
    for label, (run, model) in ROWS.items():
        table[label] = {str(seed): runs[f"s{seed}_{run}"]["headline"][model] for seed in seeds}
    roots = [args.root, *args.pool_with]
    changes = changes_by_problem([(root, seed) for root in roots for seed in seeds], metrics)  # each campaign's, once
    campaign = {root: slice(i * len(seeds), (i + 1) * len(seeds)) for i, root in enumerate(roots)}
    comparisons = replicated_changes(changes, campaign[args.root])
    out = {**run_info(seeds=seeds, root=args.root, flags=flags), "warm_start": "s0_base/sft_model, copied into every other run",
           "runs": runs, "table": table, "paired_comparisons": comparisons}
    if args.pool_with:
        out["pooled"] = {"roots": roots, "comparisons": replicated_changes(changes, slice(None)),
                         "differences": {root: campaign_difference(changes, campaign[args.root], campaign[root])
                                         for root in args.pool_with}}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)

    print(f"\n{' / '.join(metrics)} (%) per seed, then the mean")
    for label, per_seed in table.items():
        cells = [" / ".join(f"{100 * h[m]:.1f}" for m in metrics) for h in per_seed.values()]
        means = [sum(h[m] for h in per_seed.values()) / len(per_seed) for m in metrics]
        print(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(f"{100 * v:.1f}" for v in means) + " |")
    sections = [("", comparisons)] + ([(f" pooled over {len(out['pooled']['roots'])} campaigns",
                                        out["pooled"]["comparisons"])] if args.pool_with else [])
    for title, section in sections:
        print(f"\nA - B, points{title}: mean of the seeds ± the standard error of the problems' mean change "
              "(per-seed changes)")
        for label, metrics in section.items():
            cells = [f"{100 * m['mean']:+.1f} ± {100 * m['stderr_of_mean']:.1f} ("
                     + ", ".join(f"{100 * v:+.1f}" for v in m["per_seed"]) + ")" for m in metrics.values()]
            print(f"| {label} | " + " | ".join(cells) + " |")
    for root, differences in out.get("pooled", {}).get("differences", {}).items():
        print(f"\nthis campaign's mean change minus that of {root}, points, ± its error over the problems")
        for label, metrics in differences.items():
            print(f"| {label} | " + " | ".join(f"{100 * m['mean']:+.1f} ± {100 * m['stderr']:.1f}"
                                              for m in metrics.values()) + " |")
    return 0


def changes_by_problem(replicates: list[tuple[str, int]], metrics: list[str]) -> dict:
    """{comparison: {metric: [{problem id: paired change} per replicate]}} for the (root, seed) pairs
    `replicates` and the `metrics` ("pass@1", "maj@8"); each evaluation file is read once."""
    from rl_sharpen import evaluation

    @functools.lru_cache(maxsize=None)
    def results(root, seed, run, model):
        return evaluation.load_results(os.path.join(root, f"s{seed}_{run}", "eval", model, "eval.json"))

    out = {}
    for label, (a, b) in COMPARISONS.items():
        out[label] = {metric: [] for metric in metrics}
        tables = {metric: (metric.split("@")[0] + "@k", int(metric.split("@")[1])) for metric in metrics}  # pass@k, 8
        k_list = sorted({k for _, k in tables.values()})
        for root, seed in replicates:
            ids, new, old = evaluation.paired_scores(results(root, seed, *a), results(root, seed, *b), k_list)
            for metric, (table, k) in tables.items():
                change = np.asarray(new[table][k]) - np.asarray(old[table][k])
                out[label][metric].append(dict(zip(ids, change)))
    return out


def _matrix(changes: list[dict]) -> np.ndarray:
    """[replicates, problems] on the problems every replicate evaluated, in one order."""
    shared = [i for i in changes[0] if all(i in c for c in changes)]
    return np.array([[c[i] for i in shared] for c in changes])


def replicated_changes(changes: dict, replicates: slice) -> dict:
    """Every comparison over the `replicates` of `changes_by_problem`: per replicate the paired change
    and its standard error; over them the mean and the standard error of the per-problem changes
    averaged over the replicates (`evaluation.replicated_change`)."""
    from rl_sharpen import evaluation

    return {label: {metric: evaluation.replicated_change(_matrix(per_replicate[replicates]))
                    for metric, per_replicate in metrics.items()} for label, metrics in changes.items()}


def campaign_difference(changes: dict, a: slice, b: slice) -> dict:
    """Per comparison and metric, campaign A's mean change minus campaign B's (the replicates `a` and `b`
    of `changes_by_problem`, on the same problems): each problem's change averaged over each
    campaign's seeds, A's minus B's, its mean and standard error over the problems."""
    from rl_sharpen import evaluation

    out = {}
    for label, metrics in changes.items():
        out[label] = {}
        for metric, per_replicate in metrics.items():
            first = per_replicate[a]
            d = _matrix(first + per_replicate[b])  # on the problems both campaigns evaluated
            gap = d[:len(first)].mean(0) - d[len(first):].mean(0)
            out[label][metric] = {"mean": float(gap.mean()), "stderr": evaluation.standard_error(gap)}
    return out


if __name__ == "__main__":
    sys.exit(main())
