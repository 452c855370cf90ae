"""The CPU demo of the paper's question: from one warm-started model, does task-reward RL teach
more than distribution sharpening?

1. Warm-start (SFT) a small Llama-architecture model on synthetic arithmetic whose worked
   solutions mix correct chains, guesses and chains with a wrong step (tunable base pass@1).
2. From that same start, run each reward regime (`demo.regimes`, presets of rl/rewards.py, with the
   normalization, extra components and KL penalty of `reward`) with the same budget.
3. Report pass@1, pass@k, maj@k and mean length before and after each regime, each with its
   standard error over the validation problems, and each regime's change from the warm start with
   a paired standard error (table, JSON); learning curves (PNG).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from rl_sharpen import evaluation, models
from rl_sharpen.checkpoint import CheckpointMismatch, config_changes, resumable_change
from rl_sharpen.metrics import read_jsonl, save_png, workdir_path, write_json
from rl_sharpen.optim import OptimConfig
from rl_sharpen.rl import rewards as rw
from rl_sharpen.sft import train_sft
from rl_sharpen.task_setup import make_generate_fn, prompt_width


_WARM_START_RECORD = "warm_start.json"  # in sft_model/: the settings it was trained with
# the data fields the warm start reads: the task, the arithmetic, the solution mix and the held-out problems
WARM_START_DATA = ("task", "train", "synthetic_max_steps", "synthetic_max_value", "synthetic_max_operand",
                   "sft_correct", "sft_guess", "sft_wrong_step", "synthetic_validation_problems",
                   "synthetic_validation_seed", "synthetic_hold_out", "synthetic_hold_out_openings")


def _warm_start_allows(record: dict):
    """The fields a warm start's record may differ in: sft.log_every, sft.checkpoint_every, and data
    fields it does not read (records written before WARM_START_DATA hold every data field)."""
    recorded = {f"data.{k}" for k in record["data"]}
    return lambda field: resumable_change(field) or field.startswith("data.") and field not in recorded


def _check_warm_start(path: str, record: dict) -> None:
    saved = os.path.join(path, _WARM_START_RECORD)
    if not os.path.exists(saved):
        raise CheckpointMismatch(f"{path} has no {_WARM_START_RECORD} to tell what it was trained with; "
                                 "use a new --workdir")
    with open(saved) as f:
        detail = config_changes(json.load(f), record, _warm_start_allows(record))
    if detail:
        raise CheckpointMismatch(f"{path} was trained with other settings ({detail}); use a new --workdir, "
                                 "or delete sft_model, sft_checkpoints and the regime folders to start over")


def sft_start(exp, workdir, task, mesh):
    """The warm-started model, trained once and reused from `<workdir>/sft_model` afterwards, as long
    as the settings it was trained with (model, training data, SFT and its optimizer) hold; a copy of
    it in another workdir may serve runs with other seeds (one warm start, several RL seeds)."""
    from rl_sharpen.experiment import build_model

    path = os.path.join(workdir, "sft_model")
    sft_cfg = dataclasses.replace(exp.sft, steps=exp.demo.sft_steps)
    sft_optim = OptimConfig(learning_rate=3e-3, warmup_steps=min(50, exp.demo.sft_steps), schedule="cosine",
                            total_steps=max(exp.demo.sft_steps, 1), min_lr_ratio=0.1)  # none of the RL run's optim.*
    record = json.loads(json.dumps({
        "model": dataclasses.asdict(exp.model), "sft": dataclasses.asdict(sft_cfg),
        "optim": dataclasses.asdict(sft_optim),
        "data": {k: getattr(exp.data, k) for k in WARM_START_DATA}}))
    if multihost_utils.broadcast_one_to_all(os.path.exists(path)):  # one folder all hosts see (experiment.run)
        _check_warm_start(path, record)  # on every process, so that all of them raise alike
        logging.info("reusing the warm start in %s (an RL seed may differ from the one it was trained with)", path)
        return models.load_hf(path, dtype=exp.model.param_dtype, mesh=mesh, compute_dtype=exp.model.compute_dtype)
    cfg, params = build_model(exp, mesh, task.tokenizer)
    params = train_sft(params, cfg, task.sft_pairs, sft_cfg, sft_optim, task.pad_id, workdir, exp.seed,
                       config_record=record, config_allows=_warm_start_allows(record))
    models.save_hf(params, cfg, path + ".tmp")
    if jax.process_index() == 0:
        with open(os.path.join(path + ".tmp", _WARM_START_RECORD), "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
    multihost_utils.sync_global_devices("rl_sharpen.demo.sft_start")
    return cfg, params


def _headline(summary: dict) -> dict:
    """pass@ and maj@ at the smallest and largest k evaluated; greedy accuracy is None when not run.
    Takes a `summarize` or a `paired_difference` result, or the "stderr" part of either."""
    lo, n = min(summary["pass@k"]), max(summary["pass@k"])
    return {f"pass@{lo}": summary["pass@k"][lo], f"pass@{n}": summary["pass@k"][n], f"maj@{n}": summary["maj@k"][n],
            "greedy": summary.get("greedy_accuracy"), "length": summary.get("mean_response_tokens"),
            "distinct": summary.get("mean_distinct_answers")}


_CURVES = (("accuracy", "task reward, mean over samples"), ("s_ref", "log p_ref(y), nats per sample"),
           ("response_length", "tokens per sample"))


def _plot_curves(workdir: str, regimes, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for regime in regimes:
        log = os.path.join(workdir, regime, f"{regime}.jsonl")
        rows = read_jsonl(log) if os.path.exists(log) else []  # none with train.steps = 0
        steps = [r["step"] for r in rows]
        for ax, (key, label) in zip(axes, _CURVES):
            ax.plot(steps, [r[key] for r in rows], label=regime)
            ax.set_title(f"rollout {key}")
            ax.set_xlabel("RL step (samples drawn before its update)")
            ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def run_demo(exp, workdir: str, task, mesh) -> dict:
    from rl_sharpen.config import ConfigError
    from rl_sharpen.experiment import make_rl_run, save_policy, to_record

    if "://" in workdir:
        raise ConfigError(f"--workdir={workdir}: the demo needs a local workdir "
                          "(RL, SFT and eval runs take gs:// URLs)")
    cfg, start = sft_start(exp, workdir, task, mesh)
    reports, summaries, results = {}, {}, {}

    problems = task.problems("validation")
    write = jax.process_index() == 0

    def evaluate(params, name):
        report = evaluation.evaluate(
            make_generate_fn(task, {"params": params}, cfg, exp.eval, exp.sampling, mesh, exp.seed,
                             prompt_width(task, problems)),
            problems, prompt_fn=task.prompt_text, grader=task.grader, **exp.eval.evaluate_options())
        reports[name], summaries[name], results[name] = report, report.summary, report.results

    evaluate(start, "sft_start")
    for regime in exp.demo.regimes:
        reward_cfg = rw.with_regime(exp.reward, regime)
        run = make_rl_run(exp, os.path.join(workdir, regime), cfg, jax.tree.map(lambda x: x.copy(), start), task,
                          mesh, name=regime, reward_cfg=reward_cfg)
        if not exp.train.eval_every:  # the demo evaluates at the end, on the same problems for every regime
            run.evaluate = None
        run.run()
        if exp.train.save_policy:
            save_policy(run.final_state["params"], cfg, exp, task, os.path.join(workdir, regime, "policy_model"))
        evaluate(run.final_state["params"], regime)

    table = {name: _headline(s) for name, s in summaries.items()}
    errors = {name: _headline(s["stderr"]) for name, s in summaries.items()}
    changes = {name: evaluation.paired_difference(results[name], results["sft_start"], exp.eval.ks)
               for name in exp.demo.regimes}
    if write:
        # written once the warm start and every regime's checkpoints accepted the settings (each regime
        # folder has its own config.json, with its reward), so that a refused resume changes no file
        write_json(to_record(exp), os.path.join(workdir, "config.json"))
        for name, report in reports.items():
            report_dir = workdir_path(workdir) / "eval" / name
            report_dir.mkdir(parents=True, exist_ok=True)
            evaluation.save_json(report, report_dir / "eval.json")
        print("\n" + evaluation.format_table(summaries))
        print(_format_headlines(table, errors))
        print(f"\nchange from sft_start, paired over the {len(problems)} validation problems:")
        print(_format_headlines({name: _headline(c) for name, c in changes.items()},
                                {name: _headline(c["stderr"]) for name, c in changes.items()}, signed=True))
        write_json({"headline": table, "headline_stderr": errors, "change_from_start": changes,
                    "summaries": summaries}, os.path.join(workdir, "demo_results.json"))
        evaluation.plot_pass_at_k(summaries, os.path.join(workdir, "pass_at_k.png"), "synthetic arithmetic")
        _plot_curves(workdir, exp.demo.regimes, os.path.join(workdir, "learning_curves.png"))
    return table


def _format_headlines(table: dict, errors: dict | None = None, signed: bool = False) -> str:
    """One row per model: value (± its standard error, where `errors` has one); "-" for None."""
    keys = list(next(iter(table.values())))

    def cell(name, key):
        value, error = table[name][key], (errors or {}).get(name, {}).get(key)
        if value is None:
            return "-"
        text = f"{value:+.3f}" if signed else f"{value:.3f}"
        return text if error is None else f"{text}±{error:.3f}"

    width = max(9, *(len(cell(name, key)) for name in table for key in keys))
    lines = [" | ".join([f"{'model':<22}"] + [f"{k:>{width}}" for k in keys])]
    for name in table:
        lines.append(" | ".join([f"{name:<22}"] + [f"{cell(name, key):>{width}}" for key in keys]))
    return "\n".join(lines)
