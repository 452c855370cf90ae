"""The README's quick-start job end to end, at its tiny size: warm start, every regime from it, the
evaluations, and the files a user reads afterwards (on the suite's 8 fake devices, data-sharded)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rl_sharpen import experiment
from rl_sharpen.config import SourceError
from tests.experiment_configs import get_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _reward_record(run_dir) -> dict:
    """The reward config a regime's last checkpoint says it trained with."""
    manager = ocp.CheckpointManager(run_dir / "checkpoints")
    record = manager.restore(manager.latest_step(), args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return record["record"]["config"]["reward"]


def test_tiny_demo_writes_its_results_and_trains_each_regime_with_the_configured_reward(tmp_path, monkeypatch):
    from rl_sharpen import evaluation

    c = get_config("demo", "tiny")
    c.demo.regimes = ("task_reward", "sharpening")
    c.reward.normalization = "mean"  # every regime keeps it: sharpening with N = S_ref / L
    c.eval.verify_timeout = 3.5
    timeouts, evaluate = [], evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: timeouts.append(k["verify_timeout"]) or evaluate(*a, **k))
    table = experiment.run(c, str(tmp_path))
    assert timeouts == [3.5] * 3  # the warm start and each regime, graded with the configured timeout

    assert list(table) == ["sft_start", "task_reward", "sharpening"]
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["headline"] == json.loads(json.dumps(table))
    start = saved["summaries"]["sft_start"]
    for regime in ("task_reward", "sharpening"):  # same problems on both sides: the paired mean is the change
        change, summary = saved["change_from_start"][regime], saved["summaries"][regime]
        assert change["num_problems"] == c.data.validation_limit
        for k, value in change["pass@k"].items():
            assert value == pytest.approx(summary["pass@k"][k] - start["pass@k"][k], abs=1e-12)
        assert saved["headline_stderr"][regime]["pass@1"] == summary["stderr"]["pass@k"]["1"]
    for name in table:
        report = json.loads((tmp_path / "eval" / name / "eval.json").read_text())
        assert len(report["problems"]) == c.data.validation_limit
        assert all(len(p["rewards"]) == c.eval.num_samples for p in report["problems"])
    for png in ("pass_at_k.png", "learning_curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sft_model" / "config.json").exists()  # the warm start a rerun reuses
    assert json.loads((tmp_path / "config.json").read_text())["demo"]["regimes"] == ["task_reward", "sharpening"]
    for regime in ("task_reward", "sharpening"):  # each regime records its own reward; no empty validation logs
        assert json.loads((tmp_path / regime / "config.json").read_text())["reward"] == _reward_record(
            tmp_path / regime)
        assert sorted(p.name for p in (tmp_path / regime / "tb").iterdir()) == [regime]
        assert not (tmp_path / regime / f"{regime}_eval.jsonl").exists()  # train.eval_every = 0
    from rl_sharpen import models

    trained = models.load_hf(str(tmp_path / "sharpening" / "policy_model"))[1]  # train.save_policy
    warm = models.load_hf(str(tmp_path / "sft_model"))[1]
    assert not np.array_equal(trained["embed"], warm["embed"])

    sharpening = _reward_record(tmp_path / "sharpening")
    assert (sharpening["mode"], sharpening["alpha"], sharpening["beta_inv"]) == ("optimization", 1.0, 0.0)
    assert sharpening["normalization"] == "mean"
    task = _reward_record(tmp_path / "task_reward")
    assert (task["alpha"], task["beta_inv"]) == (0.0, 1.0)
    rows = [json.loads(line) for line in (tmp_path / "sharpening" / "sharpening.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, c.train.steps + 1))

    # Run again with fewer regimes: the warm start and the finished regimes are reused, not retrained.
    c.demo.regimes = ("sharpening",)
    again = experiment.run(c, str(tmp_path))
    assert list(again) == ["sft_start", "sharpening"] and again["sharpening"] == table["sharpening"]
    assert (tmp_path / "sharpening" / "sharpening.jsonl").read_text().splitlines() == [json.dumps(r) for r in rows]
    # Another seed shares the warm start (one warm start, several RL seeds), other SFT settings do not;
    # nor do data fields the warm start does not read.
    from rl_sharpen.demo import sft_start
    from rl_sharpen.task_setup import build_task

    c.seed = 1
    exp = experiment.parse(c)
    _, reused = sft_start(exp, str(tmp_path), build_task(exp.data, exp.model, exp.seed), None)
    jax.tree.map(np.testing.assert_array_equal, reused, models.load_hf(str(tmp_path / "sft_model"))[1])
    c.data.train_limit, c.data.synthetic_train_problems = 50, 300  # the RL problems
    sft_start(experiment.parse(c), str(tmp_path), build_task(exp.data, exp.model, exp.seed), None)
    c.data.train_limit, c.data.synthetic_train_problems = 0, 20000
    c.optim.b2, c.optim.clip_norm = 0.99, 0.5  # the RL runs' optimizer: the warm start has its own
    sft_start(experiment.parse(c), str(tmp_path), build_task(exp.data, exp.model, exp.seed), None)
    c.optim.b2, c.optim.clip_norm = 0.999, 1.0
    # Its regimes' checkpoints were made with seed 0: the refused resume leaves every result file as it was.
    from rl_sharpen.checkpoint import CheckpointMismatch

    results = {p: p.read_bytes() for p in tmp_path.rglob("*.json*") if "checkpoints" not in p.parts}
    with pytest.raises(CheckpointMismatch, match=r"seed: 0 -> 1"):
        experiment.run(c, str(tmp_path))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json*") if "checkpoints" not in p.parts} == results
    # No RL steps (the warm start evaluated as each regime): the curves are empty, not a missing file.
    # With train.eval_every, each regime also validates on its own schedule (here: at its start).
    shutil.copytree(tmp_path / "sft_model", tmp_path / "no_steps" / "sft_model")
    steps, c.train.steps, c.train.eval_every, c.train.save_policy = c.train.steps, 0, 1, False
    assert experiment.run(c, str(tmp_path / "no_steps"))["sharpening"]["pass@1"] is not None
    assert (tmp_path / "no_steps" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [json.loads(r)["step"] for r in (tmp_path / "no_steps" / "sharpening" / "sharpening_eval.jsonl")
            .read_text().splitlines()] == [0]
    assert not (tmp_path / "no_steps" / "sharpening" / "policy_model").exists()
    c.train.steps, c.train.eval_every, c.train.save_policy = steps, 0, True
    c.demo.sft_steps += 1
    with pytest.raises(ValueError, match=r"sft_model was trained with other settings \(optim.total_steps: 10 -> 11, "
                                         r"optim.warmup_steps: 10 -> 11, sft.steps: 10 -> 11\)"):
        experiment.run(c, str(tmp_path))


def test_an_sft_run_refused_by_its_checkpoint_leaves_its_config_file(tmp_path):
    from rl_sharpen.checkpoint import CheckpointMismatch

    c = get_config("demo", "tiny")
    c.mode, c.sft.steps, c.sft.checkpoint_every = "sft", 2, 2
    c.eval.num_samples, c.data.validation_limit, c.eval.greedy = 1, 2, False
    experiment.run(c, str(tmp_path))
    recorded = (tmp_path / "config.json").read_text()
    c.sft.batch_size = 4
    with pytest.raises(CheckpointMismatch, match=r"sft.batch_size: 8 -> 4"):
        experiment.run(c, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == recorded


def _main(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m rl_sharpen.main FLAGS` on the CPU, from the repository root, its output captured."""
    return subprocess.run([sys.executable, "-m", "rl_sharpen.main", *flags], cwd=ROOT, capture_output=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), text=True, timeout=timeout)


def test_main_reports_a_wrong_config_value_in_one_line(tmp_path):
    """`python -m rl_sharpen.main` with a bad --config value exits non-zero with the field and the
    allowed values, not a traceback."""
    done = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--config.rl.prompt_padding=wrong")
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == "config error: config.rl.prompt_padding='wrong'; allowed: 'dataset', 'batch'"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flags, last_line", [
    (["--config=configs/demo.py:tiny", "--config.rl.prompt_per_step=8"],
     'Did you mean "prompts_per_step" instead of "prompt_per_step"?'),
    (["--config=configs/demo.py:tinyy"],
     "FATAL Flags parsing error: flag --config=configs/demo.py:tinyy: ValueError: config argument 'tinyy': "
     "allowed: '' (the full run) or 'tiny'"),
    (["--config=configs/binary_rewards.py:tiny2"], "config argument 'tiny2': allowed: '' (the full run) or 'tiny'"),
    (["--config=configs/nonexistent.py"], "No such file or directory: 'configs/nonexistent.py'"),
])
def test_main_reports_a_wrong_config_name_or_file_without_a_traceback(tmp_path, flags, last_line):
    done = _main(f"--workdir={tmp_path / 'run'}", *flags)
    assert done.returncode != 0
    assert done.stderr.rstrip().splitlines()[-1].endswith(last_line)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_host_other_than_process_0_neither_writes_nor_moves_the_warm_start(tmp_path, monkeypatch):
    """Only process 0 saves the warm start and renames it into place; the others train alongside."""
    import jax

    from rl_sharpen.demo import sft_start
    from rl_sharpen.task_setup import build_task

    c = get_config("demo", "tiny")
    c.demo.sft_steps = 2
    c.sft.checkpoint_every = 0  # orbax would wait for a process 0 that a faked process index does not have
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    cfg, params = sft_start(exp, str(tmp_path), task, None)
    assert cfg.num_layers == 1 and params["embed"].shape == (52, 32)
    assert not (tmp_path / "sft_model").exists() and not (tmp_path / "sft_model.tmp").exists()


def test_a_warm_start_from_before_the_hold_out_serves_only_runs_without_it(tmp_path):
    """warm_start.json written before `data.synthetic_hold_out` existed: that warm start saw the
    validation problems, so it is refused for a run that holds them out, and kept for one that does not."""
    from rl_sharpen.checkpoint import CheckpointMismatch
    from rl_sharpen.demo import _check_warm_start

    (tmp_path / "warm_start.json").write_text(json.dumps({"data": {"train": "synthetic"}, "sft": {"steps": 600}}))

    def record(hold_out):
        return {"data": {"train": "synthetic", "synthetic_hold_out": hold_out, "synthetic_validation_seed": 0},
                "sft": {"steps": 600}}

    _check_warm_start(str(tmp_path), record(False))
    with pytest.raises(CheckpointMismatch, match="data.synthetic_hold_out: False -> True"):
        _check_warm_start(str(tmp_path), record(True))
    changed = record(False)
    changed["sft"]["steps"] = 100  # every changed field is named, with both values
    with pytest.raises(CheckpointMismatch, match=r"\(sft.steps: 600 -> 100\); use a new --workdir"):
        _check_warm_start(str(tmp_path), changed)


def test_headline_takes_the_smallest_and_largest_k_and_leaves_an_absent_greedy_empty():
    from rl_sharpen.demo import _format_headlines, _headline

    summary = {"pass@k": {2: 0.5, 4: 0.75}, "maj@k": {2: 0.25, 4: 0.5}, "mean_response_tokens": 3.0,
               "mean_distinct_answers": 2.0}
    row = _headline(summary)
    assert row == {"pass@2": 0.5, "pass@4": 0.75, "maj@4": 0.5, "greedy": None, "length": 3.0, "distinct": 2.0}
    assert json.loads(json.dumps(row))["greedy"] is None  # valid JSON, no NaN
    assert _format_headlines({"start": row}).splitlines()[1].split("|")[4].strip() == "-"
    errors = {"start": _headline({"pass@k": {2: 0.1, 4: None}, "maj@k": {2: 0.0, 4: 0.05}})}
    cells = [c.strip() for c in _format_headlines({"start": row}, errors, signed=True).splitlines()[1].split("|")]
    assert cells[1:5] == ["+0.500±0.100", "+0.750", "+0.500±0.050", "-"]


def test_main_reports_a_refused_resume_in_one_line_and_keeps_the_recorded_config(tmp_path):
    base = ["--config=configs/qwen3_4b_math.py:sharpening,tiny", f"--workdir={tmp_path}", "--config.train.steps=1",
            "--config.train.eval_every=0"]
    first = _main(*base, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    recorded = (tmp_path / "config.json").read_text()
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.json")) == ["eval_step0.json", "eval_step1.json"]
    change = subprocess.run([sys.executable, "-m", "rl_sharpen.compare", str(tmp_path / "eval" / "eval_step1.json"),
                             str(tmp_path / "eval" / "eval_step0.json")], capture_output=True, text=True, timeout=120)
    assert change.returncode == 0 and "pass@1" in change.stdout, change.stderr
    again = _main(*base, "--config.optim.learning_rate=0.5", timeout=600)
    assert again.returncode != 0
    assert again.stderr.rstrip().splitlines()[-1].startswith("cannot resume: ")
    assert "optim.learning_rate" in again.stderr.splitlines()[-1] and "Traceback" not in again.stderr
    assert (tmp_path / "config.json").read_text() == recorded


def test_a_bug_inside_a_config_file_keeps_its_traceback(tmp_path):
    """Only an override's unknown field is shortened to one line; a config file's own error shows where it is."""
    config = tmp_path / "broken.py"
    config.write_text("from rl_sharpen.experiment import default_config\n\n\ndef get_config(arg=''):\n"
                      "    c = default_config()\n    c.modle.checkpoint = 'x'\n    return c\n")
    done = _main(f"--config={config}", f"--workdir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "broken.py" in done.stderr and "modle" in done.stderr
    assert "a --config override names an unknown field" not in done.stderr


def test_a_demo_into_an_object_store_is_refused_in_one_line(tmp_path):
    done = _main("--config=configs/demo.py:tiny", "--workdir=gs://bucket/demo")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("config error: --workdir=gs://bucket/demo: the demo needs a local "
                                                    "workdir (RL, SFT and eval runs take gs:// URLs)")


@pytest.mark.parametrize("override", ["--config.train.save_polcy=False", "--noconfig.train.save_polcy"])
def test_a_misspelt_override_is_one_line(tmp_path, override):
    done = _main("--config=configs/demo.py", f"--workdir={tmp_path}", override)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "FATAL Flags parsing error: a --config override names an unknown field: 'save_polcy'")


def test_an_unset_model_custom_key_names_the_whole_dict_override(tmp_path):
    done = _main("--config=configs/qwen25_3b_math.py:tiny", f"--workdir={tmp_path}",
                 "--config.model.custom.rope_theta=500000.0")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL Flags parsing error: a --config override names an unknown field: 'rope_theta'")
    assert "model.custom holds only the keys its config file sets; to add one, pass the whole dict" in last


def test_an_eval_run_whose_data_cannot_load_writes_nothing(tmp_path, smollm2_tokenizer_dir):
    done = _main(f"--config=configs/eval_smollm2_gsm8k.py:{smollm2_tokenizer_dir},tiny",
                 f"--workdir={tmp_path / 'run'}", f"--config.data.validation={tmp_path / 'missing.jsonl'}")
    assert done.returncode != 0
    assert done.stderr.rstrip().splitlines()[-1].startswith("config error: unknown problem source")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["missing.jsonl", "folder", "notes.md"])
@pytest.mark.parametrize("mode,field", [("eval", "validation"), ("rl", "train"), ("rl", "validation")])
def test_a_data_error_shows_before_the_model_loads(tmp_path, smollm2_tokenizer_dir, monkeypatch, mode, field, bad):
    """A missing file, a folder or a file of another type is a config error naming the field."""
    def build_model(*args, **kwargs):
        raise AssertionError("the model was built before the data loaded")

    monkeypatch.setattr(experiment, "build_model", build_model)
    c = get_config("eval_smollm2_gsm8k", f"{smollm2_tokenizer_dir},tiny")
    c.mode = mode
    c.data.train = c.data.validation = str(tmp_path / "gsm8k.jsonl")
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.md").write_text("# problems\n")
    setattr(c.data, field, str(tmp_path / bad))
    with pytest.raises(SourceError, match=f"data.{field}"):
        experiment.run(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_synthetic_task_mixed_with_a_data_file_is_a_config_error(tmp_path):
    from rl_sharpen.config import ConfigError

    c = get_config("demo", "tiny")
    c.data.validation = str(tmp_path / "test.jsonl")
    with pytest.raises(ConfigError, match=r"the synthetic task cannot be mixed with a real dataset \(different "
                                          r"tokenizers\); allowed: both 'synthetic', or neither"):
        experiment.run(c, str(tmp_path / "run"))


def test_a_math_task_reads_each_split_once(smollm2_tokenizer_dir, monkeypatch):
    from rl_sharpen import task_setup

    reads, stats = [], types.SimpleNamespace(num_loaded=1, num_skipped=0, skipped={})
    monkeypatch.setattr(task_setup, "load_problems", lambda *a, **k: reads.append(a) or ([object()], stats))
    exp = experiment.parse(get_config("eval_smollm2_gsm8k", f"{smollm2_tokenizer_dir},tiny"))
    task = task_setup.build_task(exp.data, exp.model)
    first = task.problems("validation")
    first.append("a caller's own edit")
    assert task.problems("validation") == first[:1] and len(reads) == 1
    task.problems("train")
    task.problems("train")
    assert len(reads) == 2


def test_demo_seeds_summarizes_a_campaign_at_the_k_its_runs_evaluated(tmp_path, monkeypatch):
    """A finished campaign evaluated with 4 samples (`--flags='--config.eval.num_samples=4'`): the script
    reports pass@1 / pass@4 / maj@4, each comparison's change per seed equal to `paired_difference`."""
    from rl_sharpen import evaluation
    from rl_sharpen.tasks import Problem

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import demo_seeds

    rng = np.random.default_rng(0)
    for seed in (0, 1):
        for run, (_, models) in demo_seeds.RUNS.items():
            headline = {}
            for model in models:
                results = [evaluation.ProblemResult(Problem(f"p{i}", "q", "3"), ["3" if x else "5" for x in rewards],
                                                    rewards, np.full(4, 7.0))
                           for i, rewards in enumerate(rng.random((6, 4)).round().astype(np.float32))]
                folder = tmp_path / f"s{seed}_{run}" / "eval" / model
                folder.mkdir(parents=True)
                evaluation.save_json(evaluation.EvalReport(evaluation.summarize(results), results, []),
                                     str(folder / "eval.json"))
                headline[model] = {"pass@1": 0.1, "pass@4": 0.2, "maj@4": 0.3, "greedy": None}
            (tmp_path / f"s{seed}_{run}" / "demo_results.json").write_text(json.dumps({"headline": headline}))
    assert demo_seeds.main(["--root", str(tmp_path), "--seeds", "0,1", "--out", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    change = out["paired_comparisons"]["task reward - warm start"]
    assert list(change) == ["pass@1", "pass@4", "maj@4"]
    for seed in (0, 1):
        eval_file = str(tmp_path / f"s{seed}_base" / "eval" / "{}" / "eval.json")
        expected = evaluation.paired_difference(evaluation.load_results(eval_file.format("task_reward")),
                                                evaluation.load_results(eval_file.format("sft_start")), [1, 4])
        assert change["pass@4"]["per_seed"][seed] == pytest.approx(expected["pass@k"][4])
        assert change["maj@4"]["per_seed"][seed] == pytest.approx(expected["maj@k"][4])


def test_the_warm_start_record_holds_every_data_field_its_examples_depend_on():
    """A data field left out of `WARM_START_DATA` must not change the warm start's examples (a field that
    did would let a changed setting reuse a warm start trained without it); each listed one changes them."""
    import dataclasses

    from rl_sharpen.demo import WARM_START_DATA
    from rl_sharpen.task_setup import DataConfig, SyntheticTask

    base = DataConfig(synthetic_validation_problems=20)
    other = {"train_split": "test", "train_limit": 7, "validation_split": "train", "validation_limit": 3,
             "tokenizer": "somewhere", "template": "Solve: {problem}", "system_prompt": "Be brief.",
             "use_chat_template": False, "thinking": "on", "max_prompt_tokens": 100, "synthetic_train_problems": 50,
             "synthetic_max_steps": 2, "synthetic_max_value": 15, "synthetic_max_operand": 4, "sft_correct": 0.9,
             "sft_guess": 0.0, "sft_wrong_step": 0.8, "synthetic_validation_problems": 40,
             "synthetic_validation_seed": 5, "synthetic_hold_out": False, "synthetic_hold_out_openings": True}
    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"task", "train", "validation"}  # the synthetic task
    assert set(other) == fields, "give the new DataConfig field a changed value here"

    def examples(data):
        return SyntheticTask(data).sft_pairs(np.random.default_rng(0), 300)

    reference, refused = examples(base), []
    for name, value in other.items():
        try:
            changed = dataclasses.replace(base, **{name: value})
        except ValueError:  # not settable with the synthetic task
            refused.append(name)
            continue
        assert (examples(changed) != reference) == (name in WARM_START_DATA), name
    assert not set(refused) & set(WARM_START_DATA) and len(refused) < 6, refused


def test_a_warm_start_killed_under_the_older_record_resumes(tmp_path):
    """sft_checkpoints whose record holds every data field (as before WARM_START_DATA) resume under the
    record of the fields the warm start reads, and are still refused for a field it reads."""
    import dataclasses

    from rl_sharpen.checkpoint import CheckpointMismatch
    from rl_sharpen.demo import WARM_START_DATA, _warm_start_allows
    from rl_sharpen.sft import train_sft
    from rl_sharpen.task_setup import build_task
    from tests.test_trainer import interrupted_at

    exp = experiment.parse(get_config("demo", "tiny"))
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    sft_cfg = dataclasses.replace(exp.sft, steps=4, checkpoint_every=2)
    record = {"sft": dataclasses.asdict(sft_cfg), "data": {k: getattr(exp.data, k) for k in WARM_START_DATA}}
    every = dataclasses.asdict(exp.data)
    older = {**record, "data": {k: v for k, v in every.items() if not k.startswith("validation")}}

    def train(pairs, record, **kwargs):
        return train_sft(jax.tree.map(lambda x: x.copy(), params), cfg, pairs, sft_cfg, exp.optim, task.pad_id,
                         str(tmp_path), config_record=json.loads(json.dumps(record)), **kwargs)

    with pytest.raises(KeyboardInterrupt):
        train(interrupted_at(3, task.sft_pairs), older)
    with pytest.raises(CheckpointMismatch, match=r"data.train_limit: 0 -> None"):  # the strict default
        train(task.sft_pairs, record)
    changed = {**record, "data": {**record["data"], "sft_guess": 0.5}}
    with pytest.raises(CheckpointMismatch, match=r"data.sft_guess: 0.4 -> 0.5"):
        train(task.sft_pairs, changed, config_allows=_warm_start_allows(changed))
    train(task.sft_pairs, record, config_allows=_warm_start_allows(record))
    assert [json.loads(r)["step"] for r in (tmp_path / "sft.jsonl").read_text().splitlines()][-1] == 4
