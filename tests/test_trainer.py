"""The RL loop end to end on a tiny model: resumption after a kill reproduces an uninterrupted
run, a changed config refuses to resume, and config errors name the field."""

import dataclasses
import json
import math
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_sharpen import experiment
from rl_sharpen.checkpoint import CheckpointMismatch
from rl_sharpen.config import ConfigError
from rl_sharpen.rl.trainer import prompt_order
from rl_sharpen.sampling.prompts import bucket_width
from rl_sharpen.task_setup import build_task
from rl_sharpen.tasks import prompts as prompt_lib
from tests.experiment_configs import get_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rl_run(workdir, steps, mesh=None, **overrides):
    """`mesh`: axis sizes to shard the run over (None: one device)."""
    c = get_config("qwen3_4b_math", "sharpening,tiny")
    c.train.steps = steps
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if mesh is not None:
        c.mesh = mesh
    exp = experiment.parse(c)
    mesh = None if mesh is None else experiment.build_mesh(exp)
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, mesh, task.tokenizer)
    run = experiment.make_rl_run(exp, str(workdir), cfg, params, task, mesh)
    run.evaluate = None
    return run


def _rows(workdir):
    with open(os.path.join(workdir, "train.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time")} for r in rows}


CALIBRATED = {"calibration.mu": 0.5, "calibration.memory_layers": 1, "calibration.learning_rate": 1e-2}


@pytest.mark.parametrize("overrides", [{}, CALIBRATED, {"model.param_dtype": "bfloat16"}],
                         ids=["plain", "calibrated", "bfloat16"])
def test_killed_run_resumes_with_identical_metrics(tmp_path, overrides):
    """With calibration the memory network's params and optimizer state are in the checkpoint too;
    in bfloat16 the optimizer state keeps its dtypes from step 0 on, so it restores as saved."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    _rl_run(full, 4, **overrides).run()
    _rl_run(killed, 2, **overrides).run()  # stops after its step-2 checkpoint, as a kill after that save would
    resumed = _rl_run(killed, 4, **overrides)  # the same command again: resumes at step 2
    resumed.run()
    # the initial policy the run was handed is freed once the checkpoint replaces it; the reference stays
    assert all(x.is_deleted() for x in jax.tree.leaves(resumed.policy_params))
    assert not any(x.is_deleted() for x in jax.tree.leaves(resumed.ref_params))
    a, b = _rows(full), _rows(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    assert a[4]["update_grad_norm"] > 0
    if overrides == CALIBRATED:  # sampling from q != pi: the importance weights pi / q are no longer all 1
        assert all("memory_nll" in a[s] for s in a)
        assert abs(a[4]["update_is_weight_mean"] - 1) > 1e-3
    else:
        assert a[4]["update_is_weight_mean"] == pytest.approx(1.0, abs=1e-5)


def test_a_run_resumes_on_another_mesh_with_other_validation_and_memory_settings(tmp_path):
    """A preempted job restarted on another device layout: the state is resharded on restore and
    the continuation matches the uninterrupted single-device run (float summation order aside)."""
    full, moved = tmp_path / "full", tmp_path / "moved"
    _rl_run(full, 3).run()
    _rl_run(moved, 2).run()
    resumed = _rl_run(moved, 3, mesh={"data": 2, "fsdp": 2, "tensor": 2},  # and the memory settings of a smaller slice
                      **{"eval.num_samples": 2, "sampling.fast_decode": False, "rl.prompt_padding": "batch"})
    resumed.run()
    for leaf in jax.tree.leaves(resumed.final_state):  # params, Adam moments and counters
        assert len(leaf.sharding.device_set) == 8
    a, b = _rows(full), _rows(moved)
    assert sorted(b) == [1, 2, 3]
    assert a[3] == pytest.approx(b[3], rel=1e-4, abs=1e-5)
    with pytest.raises(CheckpointMismatch, match="eval.verify_timeout"):  # it grades the rollouts too
        _rl_run(moved, 4, **{"eval.verify_timeout": 1.0}).run()


def test_batch_prompt_padding_changes_shapes_not_results(tmp_path):
    """Padding each batch to its own bucket instead of the problem set's width gives the same step."""
    longer = {"data.synthetic_max_steps": 4, "seed": 3}  # prompts up to 71 tokens: set width 96, both batches 64
    runs = {mode: _rl_run(tmp_path / mode, 2, **{"rl.prompt_padding": mode}, **longer) for mode in ("dataset", "batch")}
    assert runs["batch"].sampling_cfg.prompt_width is None
    dataset_width = runs["dataset"].sampling_cfg.prompt_width
    run = runs["batch"]
    B = run.rl_cfg.prompts_per_step
    batch_widths = [bucket_width(max(len(run.task.prompt_ids(run.train_problems[i]))
                                     for i in prompt_order(len(run.train_problems), run.seed, step * B, B)))
                    for step in range(2)]
    assert max(batch_widths) < dataset_width  # the test would be vacuous otherwise
    for r in runs.values():
        r.run()
    a, b = _rows(tmp_path / "dataset"), _rows(tmp_path / "batch")
    for step in (1, 2):
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), step


def test_a_policy_that_is_the_reference_itself_trains_as_a_copy(tmp_path):
    """The update donates the policy's buffers; handed the reference's own arrays, the run copies them
    instead of deleting the reference, and trains as the usual run does."""
    copied = _rl_run(tmp_path / "copied", 2)
    shared = dataclasses.replace(_rl_run(tmp_path / "shared", 2), policy_params=copied.ref_params,
                                 ref_params=copied.ref_params)
    copied.run()
    shared.run()
    jax.tree.map(lambda x: x.block_until_ready(), shared.ref_params)  # still alive
    a, b = _rows(tmp_path / "copied"), _rows(tmp_path / "shared")
    for step in (1, 2):
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step


def test_changed_config_refuses_to_resume(tmp_path):
    _rl_run(tmp_path, 2).run()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["optim"]["learning_rate"] != 5e-4 and saved["train"]["steps"] == 2
    with pytest.raises(CheckpointMismatch, match="optim.learning_rate"):
        _rl_run(tmp_path, 4, **{"optim.learning_rate": 5e-4}).run()
    assert json.loads((tmp_path / "config.json").read_text()) == saved  # the refused config is not recorded
    with pytest.raises(CheckpointMismatch, match=r"checkpoints/2 is past train.steps=1: the run would report a "
                                                 r"model trained for 2 steps; set --config.train.steps=2 or more"):
        _rl_run(tmp_path, 1).run()
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    _rl_run(tmp_path, 2, **{"binary_rewards.restarts": 3}).run()  # a section RL runs do not read
    # how the update is computed may change (e.g. smaller micro-batches after running out of memory)
    _rl_run(tmp_path, 3, **{"rl.micro_batch": 4, "rl.remat": True, "rl.logprob_chunk": 8}).run()
    assert sorted(_rows(tmp_path)) == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 3  # an accepted change is


def test_config_errors_name_the_field_and_allowed_values():
    c = get_config("demo", "tiny")
    c.loss.name = "ppo"
    with pytest.raises(ConfigError, match=r"config.loss.*'ppo'.*alpha_dpg.*ppo_clip.*reinforce"):
        experiment.parse(c)
    d = get_config("demo", "tiny").to_dict()  # ConfigDict itself refuses a str for an int field
    d["rl"]["prompts_per_step"] = "many"
    with pytest.raises(ConfigError, match=r"config.rl.prompts_per_step='many'; expected an int"):
        experiment.parse(d)
    c = get_config("demo", "tiny")
    c.mode = "train"
    with pytest.raises(ConfigError, match=r"config.mode='train'; allowed: 'rl', 'sft', 'eval', 'demo'"):
        experiment.parse(c)
    d = get_config("demo", "tiny").to_dict()
    d["optim"]["lr"] = 1.0
    with pytest.raises(ConfigError, match=r"config.optim.lr: unknown field of OptimConfig; allowed: .*learning_rate"):
        experiment.parse(d)


@pytest.mark.parametrize("field, value, message", [
    ("rl.epochs", 0, r"RLConfig.epochs=0; allowed: an integer >= 1"),
    ("rl.minibatches", 0, r"RLConfig.minibatches=0; allowed"),
    ("train.log_every", 0, r"TrainConfig.log_every=0; allowed"),
    ("optim.learning_rate", -1.0, r"OptimConfig.learning_rate=-1.0; allowed: a float > 0"),
    ("optim.b2", 1.0, r"OptimConfig.b2=1.0; allowed: a float in \[0, 1\)"),
    ("demo.regimes", ("sharpenin",), r"DemoConfig.regimes=\('sharpenin',\); allowed: .*'task_reward'"),
    ("rl.minibatches", 3, r"RLConfig.minibatches=3; allowed: an integer >= 1 dividing prompts_per_step=2"),
    ("sft.log_every", 0, r"SFTConfig.log_every=0; allowed: an integer >= 1"),
    ("sft.steps", -1, r"SFTConfig.steps=-1; allowed: an integer >= 0"),
    ("data.train_limit", -1, r"DataConfig.train_limit=-1; allowed: an integer >= 0"),
    ("eval.k_list", (0, 2), r"EvalConfig.k_list=\(0, 2\); allowed: \(\) or integers >= 1"),
    ("eval.batch_size", 0, r"EvalConfig.batch_size=0; allowed: an integer >= 1"),
    ("seed", -1, r"ExperimentConfig.seed=-1; allowed: an integer >= 0"),
    ("data.synthetic_max_steps", 0, r"DataConfig.synthetic_max_steps=0; allowed: an integer >= 1"),
    ("data.synthetic_max_operand", 13, r"DataConfig.synthetic_max_operand=13; allowed: an integer in \[1, synthetic_max_value\]"),
    ("data.sft_guess", -0.5, r"DataConfig.sft_guess=-0.5; allowed: a float >= 0"),
    ("data.template", "Solve it.",
     r"DataConfig.template='Solve it.'; allowed: a string with '\{problem\}' exactly once"),
    ("model.arch", "llama", r"ModelSource.arch='llama'; allowed: '' \(with a checkpoint\), 'custom' or a preset: "
                            r".*qwen2.5-3b-instruct"),
    ("model.custom", {"family": "llama", "hiden_size": 8}, r"ModelSource.custom.hiden_size: not a ModelConfig field; "
                                                           r"allowed: .*hidden_size"),
    ("model.checkpoint", "/some/folder", r"ModelSource.arch='custom' with checkpoint='/some/folder': the checkpoint's "
                                         r"config.json sets the model, so arch would be ignored; allowed with a "
                                         r"checkpoint: arch empty \(--config.model.arch=\)"),
    ("data.system_prompt", "Be brief.", r"DataConfig.system_prompt='Be brief.': unused by the synthetic task \(its "
                                        r"prompts and character tokenizer are fixed\); allowed with it: the default, ''"),
    ("model.arch", "", r"ModelSource.custom is set with arch=''; it is read only with arch='custom'"),
    ("loss.eps_low", 1.0, r"LossConfig.eps_low=1.0, eps_high=0.2; allowed: eps_low in \[0, 1\)"),
    ("rl.micro_batch", 3, r"rl.micro_batch=3; allowed: 0 or a multiple of the 4 samples per prompt "
                          r"\(sampling.num_samples\) that divides the minibatch of 8 sequences"),
    ("eval.temperature", 1e-40, r"EvalConfig.temperature=1e-40; allowed: 0 \(greedy\) or a finite float >= 1.18e-38"),
    ("eval.temperature", float("inf"), r"EvalConfig.temperature=inf; allowed: 0 \(greedy\) or a finite float"),
    ("data.train", "gsm8k", r"ExperimentConfig.data.train='gsm8k' with mode='demo', whose warm start trains on "
                            r"worked solutions, which only the synthetic task has; allowed: data.train='synthetic'"),
    ("sampling.pad_id", 3, r"ExperimentConfig.sampling.pad_id=3; allowed: 0. Runs pad with the tokenizer's pad id"),
    ("reward.beta_inv", 5.0, r"ExperimentConfig.reward.beta_inv=5.0 with mode='demo', whose regimes \(task_reward, "
                             r"sharpening\) set it; allowed: its default, 1.0 \(choose the regimes with demo.regimes\)"),
    ("reward.mode", "sampling", r"ExperimentConfig.reward.mode='sampling' with mode='demo'"),
    ("sampling.num_samples", 1, r"ExperimentConfig.sampling.num_samples=1 with advantage.estimator='rloo', whose "
                                r"baseline comes from the other samples of a prompt; allowed: num_samples >= 2, or "
                                r"an estimator without one: reinforce_pp"),
])
def test_bad_values_are_refused_before_any_work(field, value, message):
    c = get_config("demo", "tiny")
    *section, name = field.split(".")
    (c[section[0]] if section else c)[name] = value
    with pytest.raises(ConfigError, match=message):
        experiment.parse(c)


@pytest.mark.parametrize("field, value", [("train_limit", 5), ("synthetic_train_problems", 300)])
def test_an_sft_run_refuses_the_rl_problem_set_fields(field, value):
    """The warm start draws fresh synthetic examples at every batch: a limit on the RL problems would be ignored."""
    c = get_config("demo", "tiny")
    c.mode = "sft"
    c.data[field] = value
    with pytest.raises(ConfigError, match=rf"ExperimentConfig.data.{field}={value} with mode='sft': it sets the RL "
                                          r"problems, and the warm start draws fresh synthetic examples"):
        experiment.parse(c)
    c.mode = "rl"
    assert getattr(experiment.parse(c).data, field) == value


def test_reward_extra_reads_pairs_or_a_python_dict_and_explains_a_flags_dict():
    c = get_config("demo", "tiny")
    c.mode = "rl"
    c.reward.extra = (("neg_entropy", 0.1),)
    assert experiment.parse(c).reward.extra == (("neg_entropy", 0.1),)
    d = c.to_dict()  # built in Python: a dict of weights
    d["reward"]["extra"] = {"neg_entropy": 0.1}
    assert experiment.parse(d).reward.extra == (("neg_entropy", 0.1),)
    c.reward.extra = ("neg_entropy",)  # what a dict given on the command line becomes
    with pytest.raises(ConfigError, match=r"config.reward.extra=\('neg_entropy',\); expected pairs .*on the command "
                                          r"line a dict keeps only its keys"):
        experiment.parse(c)


@pytest.mark.parametrize("mesh, message", [
    ({"data": 2, "fsdp": 1, "tensr": 4}, r"ExperimentConfig.mesh=.*'tensr'.*allowed: .*data, fsdp, tensor"),
    ({"data": -1, "fsdp": 0}, r"ExperimentConfig.mesh=.*allowed: sizes \(integers >= 1, or -1"),
])
def test_a_mesh_with_an_unknown_axis_or_size_is_refused(mesh, message):
    c = get_config("demo", "tiny")
    c.mesh = mesh  # as a config file sets it (the flag parser already refuses unknown names)
    with pytest.raises(ConfigError, match=message):
        experiment.parse(c)


def test_a_mesh_larger_than_one_device_is_refused_there(monkeypatch):
    """On a single device the run is unsharded, but only if the configured mesh fits one device."""
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    c = get_config("demo", "tiny")
    assert experiment.build_mesh(experiment.parse(c)) is None  # data = -1: the one device
    c.mesh.data = 8
    with pytest.raises(ValueError, match=r"needs 8 devices; 1 are available"):
        experiment.build_mesh(experiment.parse(c))


def test_data_splits_of_named_sources_are_checked_with_the_config():
    c = get_config("demo", "tiny")
    c.data.train, c.data.validation, c.data.train_split = "gsm8k", "math500", "validation"
    with pytest.raises(ConfigError,
                       match=r"DataConfig.train_split='validation'; allowed: a split of 'gsm8k': test, train"):
        experiment.parse(c)


def test_a_custom_model_missing_a_field_is_a_config_error():
    c = get_config("demo", "tiny")
    c.model.custom = {"family": "llama", "vocab_size": 52}
    with pytest.raises(ConfigError, match=r"config.model.custom: .*missing .*hidden_size"):
        experiment.build_model(experiment.parse(c))


def test_a_model_whose_vocabulary_does_not_fit_the_task_tokenizer_is_a_config_error(smollm2_tokenizer_dir):
    """A real checkpoint with the synthetic task sampled ids it has no character for (an IndexError in
    the first validation); a tokenizer with more ids than the model embeds fails the same way."""
    from rl_sharpen.task_setup import build_task

    exp = experiment.parse(get_config("qwen25_3b_math", "tiny"))
    task = build_task(exp.data, exp.model, exp.seed)
    wide = dataclasses.replace(exp, model=dataclasses.replace(exp.model, custom={**exp.model.custom, "vocab_size": 60}))
    with pytest.raises(ConfigError, match=r"model.arch='custom': a vocabulary of 60 token ids, against the 52 of "
                                          r"the task's tokenizer \(the synthetic task\), which the model's must equal"):
        experiment.build_model(wide, tokenizer=task.tokenizer)
    assert experiment.build_model(exp, tokenizer=task.tokenizer)[0].vocab_size == 52
    from rl_sharpen.tasks import load_tokenizer

    smol = load_tokenizer(smollm2_tokenizer_dir)
    with pytest.raises(ConfigError, match=r"against the 49152 of the task's tokenizer \(data.tokenizer\), which the "
                                          r"model's must cover"):
        experiment.build_model(exp, tokenizer=smol)


def test_seq_mean_token_sum_normalizer_follows_max_new_tokens_after_overrides():
    """loss.max_len = 0 (the paper configs) is sampling.max_new_tokens as finally set; a value set stays."""
    c = get_config("qwen25_3b_math", "tiny")
    assert experiment.parse(c).loss.max_len == c.sampling.max_new_tokens == 32
    c.sampling.max_new_tokens = 16  # as --config.sampling.max_new_tokens=16 does
    assert experiment.parse(c).loss.max_len == 16
    c.loss.max_len = 7
    assert (experiment.parse(c).loss.max_len, experiment.parse(c).sampling.max_new_tokens) == (7, 16)
    c.loss.max_len, c.sampling.max_new_tokens = 0, -7  # the error names the field set, not the one derived from it
    with pytest.raises(ConfigError, match=r"^config.sampling: SamplingConfig.max_new_tokens=-7; allowed"):
        experiment.parse(c)


def test_a_field_whose_default_is_none_can_be_set_from_the_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rl_sharpen.main", f"--config={ROOT / 'configs' / 'demo.py'}:tiny",
         "--config.sampling.prompt_width=64", "--config.mode=bogus", f"--workdir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    # the override is accepted by the flag parser; the run then stops at the (deliberately) wrong mode
    assert done.stderr.splitlines()[-1] == ("config error: config.mode='bogus'; allowed: 'rl', 'sft', 'eval', "
                                            "'demo', 'binary_rewards'"), done.stderr[-2000:]
    assert experiment.parse(get_config("demo", "tiny")).sampling.prompt_width is None


def test_a_broken_reward_component_fails_before_the_first_evaluation(tmp_path, monkeypatch):
    from rl_sharpen.rl import rewards

    @rewards.register_component("reads_entropy_undeclared_test")
    def reads_entropy(x, cfg):
        return x.token_entropy.sum(-1)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the evaluator was built before the reward was checked")

    monkeypatch.setattr(experiment, "make_evaluator", no_evaluation)
    try:
        with pytest.raises(ValueError, match="reward component 'reads_entropy_undeclared_test' fails"):
            _rl_run(tmp_path, 1, **{"reward.extra": (("reads_entropy_undeclared_test", 1.0),)})
    finally:
        del rewards.REWARD_COMPONENTS["reads_entropy_undeclared_test"]
        rewards.COMPONENT_NEEDS.pop("reads_entropy_undeclared_test")


def test_a_declared_reward_component_gets_its_statistics_in_a_run(tmp_path):
    """A component registered with needs=("token_entropy",) is handed the policy's per-token entropy."""
    from rl_sharpen.rl import rewards

    @rewards.register_component("peak_entropy_test", needs=("token_entropy",))
    def peak_entropy(x, cfg):
        return jnp.max(jnp.where(x.completion_mask > 0, rewards._field(x, "token_entropy", "peak_entropy_test"), 0), -1)

    try:
        _rl_run(tmp_path, 1, **{"reward.extra": (("peak_entropy_test", 0.01),)}).run()
    finally:
        del rewards.REWARD_COMPONENTS["peak_entropy_test"]
        rewards.COMPONENT_NEEDS.pop("peak_entropy_test")
    assert 0 < _rows(tmp_path)[1]["reward_peak_entropy_test"] <= math.log(52)  # the tiny model's 52-token vocabulary


def test_micro_batch_must_hold_whole_groups(tmp_path):
    with pytest.raises(ValueError, match=r"rl.micro_batch=2; allowed: 0 or a multiple of the 4 samples per prompt"):
        _rl_run(tmp_path, 2, **{"rl.micro_batch": 2})
    with pytest.raises(ValueError, match="one reward preset at most"):
        get_config("qwen3_4b_math", "sharpening,task_reward")


CONFIG_FILES = sorted(path.stem for path in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("arg", ["", "tiny"])
@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_parses(name, arg):
    """Every file in configs/ (a new one included), at full size and at its tiny / CPU switch."""
    exp = experiment.parse(get_config(name, arg))
    assert exp.mode in ("rl", "sft", "eval", "demo", "binary_rewards")


def test_config_files_are_found():
    assert {"demo", "llama32_3b_math", "qwen25_3b_math", "qwen3_4b_math", "eval_smollm2_gsm8k",
            "binary_rewards"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", ["llama32_3b_math", "qwen25_3b_math", "qwen3_4b_math"])
def test_paper_configs_follow_the_gradient_and_report_every_k(name):
    exp = experiment.parse(get_config(name))
    assert (exp.advantage.estimator, exp.loss.name, exp.loss.aggregation) == ("rloo", "reinforce", "seq-mean-token-sum")
    assert exp.loss.max_len == exp.sampling.max_new_tokens == 2048
    assert exp.eval.k_list == tuple(range(1, 17)) and exp.eval.num_samples == 16
    c = get_config(name)
    c.eval.num_samples = 8  # overridden alone: the k it allows remain
    assert experiment.parse(c).eval.ks == list(range(1, 9))


def test_eval_config_runs_tiny_on_smollm2(smollm2_tokenizer_dir, math_data_dir, tmp_path):
    c = get_config("eval_smollm2_gsm8k", f"{smollm2_tokenizer_dir},tiny")
    c.data.train = c.data.validation = str(math_data_dir / "gsm8k" / "test.jsonl")  # where the fixture found it
    result = experiment.run(c, str(tmp_path))
    assert set(result) >= {"pass@1", "pass@2", "maj@2", "greedy_accuracy"}
    assert json.loads((tmp_path / "result.json").read_text()) == pytest.approx(result)
    assert experiment.run(c, str(tmp_path)) == result  # the same evaluation again, into the same folder
    saved = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    c.data.validation_limit = 3  # other settings would replace the first evaluation's files: refused
    with pytest.raises(ConfigError, match=r"holds an evaluation with other settings \(data.validation_limit: "
                                          r"2 -> 3\).*allowed: a new --workdir"):
        experiment.run(c, str(tmp_path))
    record = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**record, "mode": "rl"}))  # as an RL run's folder
    with pytest.raises(ConfigError, match="holds a 'rl' run .*allowed: a new --workdir"):
        experiment.run(c, str(tmp_path))
    (tmp_path / "config.json").write_bytes(saved["config.json"])
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == saved  # nothing replaced
    with pytest.raises(ValueError, match="'<checkpoint folder>,tiny'"):
        get_config("eval_smollm2_gsm8k", f"{smollm2_tokenizer_dir},small")
    bare, hub = get_config("eval_smollm2_gsm8k", "tiny"), get_config("eval_smollm2_gsm8k", ",tiny")
    assert bare.model.checkpoint == "HuggingFaceTB/SmolLM2-135M-Instruct" and bare.to_dict() == hub.to_dict()
    assert get_config("eval_smollm2_gsm8k", "./tiny").model.checkpoint == "./tiny"


def test_an_rl_run_saves_its_policy_as_a_complete_hf_folder_that_eval_mode_loads(smollm2_tokenizer_dir,
                                                                                     math_data_dir, tmp_path):
    """A tiny random model with SmolLM2's tokenizer, trained one RL step on GSM8K rows: <workdir>/policy_model
    holds the trained weights, the tokenizer and the base checkpoint's generation config, and is the
    `model.checkpoint` of an evaluation with no `data.tokenizer`."""
    import transformers

    from rl_sharpen import models

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    cfg = models.ModelConfig("llama", len(tokenizer), 32, 64, 1, 4, 2, 8)
    base = str(tmp_path / "base")
    models.save_hf(models.init_params(cfg, jax.random.key(0)), cfg, base, tokenizer=tokenizer,
                   copy_from=smollm2_tokenizer_dir)
    c = get_config("qwen3_4b_math", "sharpening,tiny")  # a reward that differs between samples: an update
    c.model.checkpoint, c.model.arch, c.model.custom = base, "", {}
    c.data.train = c.data.validation = str(math_data_dir / "gsm8k" / "test.jsonl")
    c.data.train_limit, c.data.validation_limit = 4, 2
    c.sampling.max_new_tokens = c.eval.max_new_tokens = 6
    c.train.steps = 1
    experiment.run(c, str(tmp_path / "rl"))
    policy = tmp_path / "rl" / "policy_model"
    generation_config = "generation_config.json"
    assert (policy / generation_config).read_text() == (pathlib.Path(smollm2_tokenizer_dir) / generation_config).read_text()
    reloaded = transformers.AutoTokenizer.from_pretrained(policy)
    text = "Natalia sold clips to 48 of her friends. <|im_end|>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template
    _, trained = models.load_hf(str(policy))
    _, start = models.load_hf(base)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), trained, start)
    assert min(jax.tree.leaves(moved)) > 0  # one update moves every parameter
    c.mode, c.model.checkpoint = "eval", str(policy)
    result = experiment.run(c, str(tmp_path / "eval"))
    assert {"pass@1", "maj@4"} <= set(result)


def test_math_task_prompts_and_scores_real_data(smollm2_tokenizer_dir, math_data_dir, monkeypatch):
    from rl_sharpen.task_setup import DataConfig, MathTask

    data = DataConfig(train=str(math_data_dir / "gsm8k" / "test.jsonl"),
                      validation=str(math_data_dir / "gsm8k" / "test.jsonl"), validation_limit=3, train_limit=3)
    task = MathTask(data, smollm2_tokenizer_dir, verify_timeout=5.0)
    problems = task.problems("train")
    assert len(problems) == 3 and problems[0].answer == "18"
    ids = task.prompt_ids(problems[0])
    assert task.tokenizer.decode(ids).count("Janet") == 1 and ids[-1] != task.pad_id
    # A completion is read up to the end of its turn, not into turns the model goes on to invent.
    turn = task.tokenizer("so \\boxed{18}.<|im_end|>\n<|im_start|>user\nAnd 3+4?<|im_end|>\n<|im_start|>assistant\n"
                          "\\boxed{7}", add_special_tokens=False)["input_ids"]
    assert task.decode(turn) == "so \\boxed{18}."
    with_eos = MathTask(data, smollm2_tokenizer_dir, checkpoint=smollm2_tokenizer_dir)
    with_eos.tokenizer.eos_token = "<|endoftext|>"  # as in base-model tokenizers of chat checkpoints
    assert task.eos_ids == (2,) and set(prompt_lib.stop_token_ids(with_eos.tokenizer)) == {0, 2}
    completions = ["so she makes \\boxed{18} dollars", "The answer is 18.", "\\boxed{17}", "no idea"]
    correct, answers, stats = task.score(completions, [problems[0]] * 4)
    assert correct.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert answers[0] == answers[1] and answers[3] is None
    assert stats["timeouts"] == 0 and stats["errors"] == 0
    # Offline, the error names the field that chose the source (an eval run reads only data.validation).
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    hub_eval = MathTask(dataclasses.replace(data, validation="math500"), smollm2_tokenizer_dir)
    with pytest.raises(ValueError, match=r"'math500' \(split 'test'\).*set data.validation to a local"):
        hub_eval.problems("validation")


def test_rollout_reward_and_validation_grade_alike():
    """The synthetic task's reward is the validation grader's verdict and vote key, edge cases included."""
    from rl_sharpen import evaluation
    from rl_sharpen.task_setup import DataConfig, SyntheticTask

    task = SyntheticTask(DataConfig(synthetic_validation_problems=1))
    problem = task.problems("validation")[0]
    gold = problem.answer
    completions = [f"\\boxed{{{gold}}}", f"\\boxed{{0{gold}}}", f"\\boxed{{{gold}.0}}", f"so it is {gold}",
                   f"\\boxed{{{int(gold) + 1}}}", "no answer", f"\\boxed{{ {gold} }}", "\\boxed{"]
    correct, keys, _ = task.score(completions, [problem] * len(completions))

    def generate(prompts, n, greedy):
        return evaluation.Generations([completions[:n]] * len(prompts), np.ones((len(prompts), n), int))

    report = evaluation.evaluate(generate, [problem], prompt_fn=task.prompt_text, n_samples=len(completions),
                                 greedy=False)
    np.testing.assert_array_equal(correct, report.results[0].rewards)
    assert keys == report.results[0].keys
    assert correct[:3].tolist() == [1.0, 1.0, 1.0] and correct[4] == 0.0


def test_validation_stops_on_the_configured_eos_ids_as_rollouts_do(monkeypatch):
    from rl_sharpen import sampling
    from rl_sharpen.task_setup import DataConfig, EvalConfig, SyntheticTask, make_generate_fn

    task = SyntheticTask(DataConfig(synthetic_validation_problems=1))
    seen = []

    def fake_generate(params, cfg, prompts, key, scfg, mesh=None, stops=None):
        seen.append(scfg.eos_ids)
        return sampling.SampleOutput(*[np.zeros((1, 4), np.int32)] * 3, np.ones(1, np.int32), np.ones(1, bool),
                                     np.zeros((1, 16), np.int32), np.ones((1, 16), np.int32))

    monkeypatch.setattr(sampling, "generate", fake_generate)
    for eos, expected in [((), tuple(task.eos_ids)), ((5, 7), (5, 7))]:
        base = sampling.SamplingConfig(max_new_tokens=4, eos_ids=eos)
        make_generate_fn(task, {"params": None}, None, EvalConfig(max_new_tokens=4), base, None, 0)(["1+1="], 1, False)
        assert seen[-1] == expected


def test_validation_samples_depend_on_the_step_not_on_earlier_evaluations(tmp_path):
    """A resumed run's evaluator (fresh, first call at step 4) draws what the uninterrupted one does."""
    from rl_sharpen.task_setup import make_evaluator

    c = get_config("qwen3_4b_math", "sharpening,tiny")
    c.eval.num_samples, c.data.validation_limit, c.eval.batch_size, c.eval.max_new_tokens = 4, 4, 2, 12
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)

    def lengths(workdir, steps):
        evaluate = make_evaluator(exp.eval, task, cfg, exp.sampling, None, exp.seed, str(workdir))
        for step in steps:
            evaluate(params, step)
        with open(os.path.join(workdir, f"eval_step{steps[-1]}.json")) as f:
            records = json.load(f)["problems"]
        for p in records:  # eval.keep_texts = 1: each problem's first completion and its greedy one, to read
            assert len(p["texts"]) == 1 and isinstance(p["greedy_text"], str)
            assert len(task.tokenizer.encode(p["texts"][0])) <= p["num_tokens"][0]
        return [p["num_tokens"] for p in records]

    uninterrupted = lengths(tmp_path / "a", [2, 4])
    assert lengths(tmp_path / "b", [4]) == uninterrupted
    assert lengths(tmp_path / "c", [2]) != uninterrupted  # another step, other samples


def test_logged_learning_rate_is_the_optimizer_s_at_the_step_s_last_update(tmp_path):
    run = _rl_run(tmp_path, 2, **{"optim.warmup_steps": 10, "rl.minibatches": 2, "rl.epochs": 2})
    peak = run.optim_cfg.learning_rate
    assert run._lr(0) == pytest.approx(peak * 4 / 10)  # updates 0..3 in step 0; update t warms at (t + 1) / 10
    assert run._lr(2) == pytest.approx(peak)


def test_logged_update_metrics_average_the_step_s_optimizer_updates(tmp_path):
    run = _rl_run(tmp_path, 1, **{"rl.minibatches": 2, "rl.epochs": 2, "loss.name": "ppo_clip"})
    seen, train_step = [], run.train_step

    def recording_step(state, mb):  # the state is donated: one call per update
        state, metrics = train_step(state, mb)
        seen.append(jax.device_get(metrics))
        return state, metrics

    run.train_step = recording_step
    run.run()
    row = _rows(tmp_path)[1]
    assert len(seen) == 4
    for name in ("loss", "grad_norm", "ratio_mean", "clip_frac"):
        per_update = [float(m[name]) for m in seen]
        assert row[f"update_{name}"] == pytest.approx(np.mean(per_update), rel=1e-6), name
    assert len({round(float(m["loss"]), 6) for m in seen}) > 1  # the mean is not the last update's value


def test_data_limits_keep_the_first_synthetic_problems():
    from rl_sharpen.task_setup import DataConfig, SyntheticTask

    full = SyntheticTask(DataConfig(synthetic_train_problems=40, synthetic_validation_problems=30))
    cut = SyntheticTask(DataConfig(synthetic_train_problems=40, synthetic_validation_problems=30, train_limit=7,
                                   validation_limit=3))
    assert cut.problems("train") == full.problems("train")[:7]
    assert cut.problems("validation") == full.problems("validation")[:3]
    over = SyntheticTask(DataConfig(synthetic_train_problems=5, train_limit=8))  # a limit above the pool
    assert len(over.problems("train")) == 5


def test_synthetic_training_and_validation_draw_from_their_own_streams():
    """Training problems come from default_rng([seed, 0]), validation from [validation seed, 1]: the
    two sets are different draws even at seed 0 = validation seed 0."""
    from rl_sharpen.task_setup import DataConfig, SyntheticTask
    from rl_sharpen.tasks import synthetic

    task = SyntheticTask(DataConfig(synthetic_train_problems=6, synthetic_validation_problems=6), seed=0)
    train = synthetic.make_problems(6, [0, 0], task.arith)
    validation = synthetic.make_problems(6, [0, 1], task.arith)
    assert task.problems("train") == [p.to_problem(i) for i, p in enumerate(train)]
    assert task.problems("validation") == [p.to_problem(i) for i, p in enumerate(validation)]
    assert train != validation


def test_a_math_task_limit_of_0_reads_every_row(smollm2_tokenizer_dir, tmp_path):
    from rl_sharpen.task_setup import DataConfig, MathTask

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(3)))
    task = MathTask(DataConfig(train=str(path), validation=str(path), train_limit=0), smollm2_tokenizer_dir)
    assert [p.answer for p in task.problems("train")] == ["0", "1", "2"]


@pytest.mark.parametrize("seed", [0, 3])
def test_synthetic_validation_problems_are_held_out_of_training_and_the_warm_start(seed):
    """No training problem or warm-start example asks what a validation problem asks (same start and
    steps, whatever the name or item), and every run seed validates on the same problems."""
    from rl_sharpen.task_setup import DataConfig, SyntheticTask, shared_problems

    data = DataConfig(synthetic_max_value=12, synthetic_max_operand=5, synthetic_validation_problems=100,
                      synthetic_train_problems=5000, validation_limit=40)
    task = SyntheticTask(data, seed=seed)
    validation, train = task.problems("validation"), task.problems("train")
    assert validation == SyntheticTask(data, seed=seed + 1).problems("validation")
    assert len(validation) == 40 and len(train) == 5000

    def asks(text):  # independent reader: the numbers of the text and its verbs, without name and item
        return tuple(re.sub(r"^\S+ has (\d+) \S+\.", r"\1", text).split())

    full_set = {asks(p.problem) for p in SyntheticTask(dataclasses.replace(data, validation_limit=0)).problems("validation")}
    assert not any(asks(p.problem) in full_set for p in train)  # all 100 held out, not only the 40 evaluated
    prompts = {task.tokenizer.decode(prompt) for prompt, _ in task.sft_pairs(np.random.default_rng(seed), 3000)}
    assert prompts and not any(asks(text.removeprefix("q: ").split("\na:")[0]) in full_set for text in prompts)
    assert shared_problems(train, validation) == 0
    leaky = SyntheticTask(dataclasses.replace(data, synthetic_hold_out=False), seed=seed)
    assert shared_problems(leaky.problems("train"), validation) >= 3  # what the hold-out removes
    assert leaky.problems("validation") == validation


def test_the_stricter_hold_out_also_keeps_out_problems_that_open_with_a_validation_problem():
    """By default a 3-step training problem may open with a 1- or 2-step validation problem's text (and
    its correct chain with that problem's chain); `synthetic_hold_out_openings` redraws those too."""
    from rl_sharpen.task_setup import DataConfig, SyntheticTask

    data = DataConfig(synthetic_max_value=12, synthetic_max_operand=5, synthetic_validation_problems=100,
                      synthetic_train_problems=3000)

    def sentences(text):  # independent reader: the start and the steps' phrases, without name, item and question
        return tuple(re.sub(r"^\S+ has (\d+) \S+\.", r"\1.", text).removesuffix(" how many?").rstrip(".").split(". "))

    validation = {sentences(p.problem) for p in SyntheticTask(data).problems("validation")}

    def opened(task):  # training problems and warm-start prompts that open with a validation problem
        texts = [p.problem for p in task.problems("train")]
        texts += [task.tokenizer.decode(prompt).removeprefix("q: ").split("\na:")[0]
                  for prompt, _ in task.sft_pairs(np.random.default_rng(0), 2000)]
        return sum(any(sentences(t)[:j] in validation for j in range(2, len(sentences(t)) + 1)) for t in texts)

    assert opened(SyntheticTask(data)) > 100
    strict = SyntheticTask(dataclasses.replace(data, synthetic_hold_out_openings=True))
    assert opened(strict) == 0 and strict.problems("validation") == SyntheticTask(data).problems("validation")
    with pytest.raises(ValueError, match=r"DataConfig.synthetic_hold_out_openings=True; allowed: True or False "
                                         r"\(True only with synthetic_hold_out=True\)"):
        DataConfig(synthetic_hold_out=False, synthetic_hold_out_openings=True)


def test_settings_alpha_dpg_ignores_are_reported(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "a", 1, **{"loss.name": "alpha_dpg"})  # the config's sharpening reward
    assert "loss.name='alpha_dpg' fits p* = p_ref(. | correct)" in caplog.text and "alpha=1.0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "b", 1, **{"loss.name": "alpha_dpg", "reward.alpha": 0.0, "reward.beta_inv": 1.0})
    assert "alpha_dpg" not in caplog.text  # the default task reward and advantages: nothing ignored


def test_grpo_on_a_mixed_reward_is_reported(tmp_path, caplog):
    """grpo's per-group std rescales the terms of R besides the task reward (a tilted reward's, a KL in
    the reward); task reward alone, or rloo, is fine."""
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "a", 1, **{"advantage.estimator": "grpo", "reward.alpha": 4.0, "reward.beta_inv": 100.0,
                                      "reward.mode": "sampling"})
    assert "advantage.estimator='grpo' divides by each group's reward std" in caplog.text
    assert "'sharpening': 0.03, 'log_ratio': 0.01" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "b", 1, **{"advantage.estimator": "grpo", "reward.alpha": 0.0, "reward.beta_inv": 1.0})
        _rl_run(tmp_path / "c", 1, **{"reward.alpha": 4.0, "reward.beta_inv": 100.0, "reward.mode": "sampling"})
    assert "divides by each group's reward std" not in caplog.text
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "d", 1, **{"advantage.estimator": "grpo", "reward.alpha": 0.0, "reward.beta_inv": 1.0,
                                      "reward.kl_coef": 0.05})
    assert "the reward's other terms ({'kl_coef': 0.05})" in caplog.text


def test_truncated_rollouts_are_reported_and_greedy_ones_refused(tmp_path, caplog):
    """top-k / top-p rollouts never draw the tokens they cut: the policy cannot reach the optimum on them."""
    for overrides in ({"sampling.top_k": 5}, {"sampling.top_p": 0.9}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _rl_run(tmp_path / "cut", 1, **overrides)
        assert "rollouts never draw the tokens these cut" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _rl_run(tmp_path / "whole", 1, **{"sampling.temperature": 0.7})
    assert "never draw" not in caplog.text
    for overrides in ({"sampling.greedy": True}, {"sampling.temperature": 0.0}):
        with pytest.raises(ConfigError, match=r"ExperimentConfig.sampling.greedy=.*greedy rollouts give every sample "
                                              r"of a prompt the same completion"):
            _rl_run(tmp_path / "greedy", 1, **overrides)


def test_held_out_problems_covering_the_whole_space_are_an_error():
    from rl_sharpen.tasks import synthetic

    tiny = synthetic.ArithmeticConfig(max_steps=1, max_value=1, max_operand=1)  # "0+1" and "1-1" only
    every = {(0, (("+", 1),)), (1, (("-", 1),))}
    assert {synthetic.sample_problem(np.random.default_rng(i), tiny).arithmetic for i in range(50)} == every
    assert synthetic.sample_problem(np.random.default_rng(0), tiny, {(0, (("+", 1),))}).arithmetic == (1, (("-", 1),))
    with pytest.raises(ValueError, match="held out"):
        synthetic.sample_problem(np.random.default_rng(0), tiny, every)


def test_validation_problems_seen_in_training_are_reported(tmp_path, caplog):
    """A run whose validation problems appear among its training problems says how many."""
    c = get_config("demo", "tiny")
    c.data.synthetic_hold_out, c.data.validation_limit = False, 30
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    texts = {p.problem for p in task.problems("train")}
    shared = sum(p.problem in texts for p in task.problems("validation"))
    assert shared > 0
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    with caplog.at_level(logging.WARNING):
        experiment.make_rl_run(exp, str(tmp_path), cfg, params, task)
    assert f"{shared} of 30 validation problems also appear, word for word" in caplog.text


def test_a_cosine_horizon_other_than_the_run_s_updates_is_reported(tmp_path, caplog):
    c = get_config("demo", "tiny")
    c.optim.schedule, c.optim.total_steps = "cosine", 5  # the run: 3 steps x 1 epoch x 1 minibatch
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    with caplog.at_level(logging.WARNING):
        experiment.make_rl_run(exp, str(tmp_path), cfg, params, task)
    assert "optim.total_steps=5, but the run makes 3 optimizer updates" in caplog.text
    assert "will not reach its floor" in caplog.text
    c.rl.minibatches = 2  # 3 steps x 1 epoch x 2 minibatches
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        experiment.make_rl_run(experiment.parse(c), str(tmp_path), cfg, params, task)
    assert "optim.total_steps=5, but the run makes 6 optimizer updates" in caplog.text
    assert "ends early" in caplog.text


def test_prompt_order_is_a_fresh_seeded_permutation_each_epoch_read_across_epochs():
    from rl_sharpen.rl.trainer import ORDER_STREAM

    epochs = [np.random.default_rng([0, ORDER_STREAM, e]).permutation(5) for e in range(4)]
    stream = np.concatenate(epochs)
    for position, count in ((0, 4), (3, 4), (4, 10), (9, 7)):
        np.testing.assert_array_equal(prompt_order(5, 0, position, count), stream[position:position + count])
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # each epoch its own order


def test_minibatches_hold_whole_groups_in_a_seeded_shuffled_order():
    from rl_sharpen.rl.trainer import _minibatches
    from rl_sharpen.rl.update import TrainBatch

    rows = np.arange(8)
    batch = TrainBatch(*[rows[:, None]] * 6, rows, rows)
    order = np.random.default_rng(0).permutation(4)  # 4 groups of 2 rows
    got = [np.asarray(mb.tokens)[:, 0].tolist() for mb in _minibatches(batch, 2, 2, np.random.default_rng(0))]
    want = [[int(r) for g in order[:2] for r in (2 * g, 2 * g + 1)], [int(r) for g in order[2:] for r in (2 * g, 2 * g + 1)]]
    assert got == want and sorted(got[0] + got[1]) == list(range(8))
    assert got != [[0, 1, 2, 3], [4, 5, 6, 7]]  # shuffled


def test_each_step_draws_its_own_rollout_key_and_minibatch_split_and_logs_and_validates_on_cadence(
        tmp_path, monkeypatch):
    """train.log_every = eval_every = 2 over 3 steps: metric rows at steps 2 and 3 (the last),
    validations at 0, 2 and 3. Step s samples with fold_in(key(seed), s) and splits its minibatches
    with default_rng([seed, shuffle stream, s])."""
    from rl_sharpen.rl import trainer

    keys, splits, evaluated = [], [], []
    real_rollout, real_minibatches = trainer.rollout, trainer._minibatches

    def rollout(*args, **kw):
        keys.append(jax.random.key_data(args[5]))
        return real_rollout(*args, **kw)

    def minibatches(batch, count, group_size, rng):
        splits.append(rng.bit_generator.state["state"])
        return real_minibatches(batch, count, group_size, rng)

    monkeypatch.setattr(trainer, "rollout", rollout)
    monkeypatch.setattr(trainer, "_minibatches", minibatches)
    run = _rl_run(tmp_path, 3, **{"train.log_every": 2, "train.eval_every": 2, "rl.minibatches": 2})
    run.evaluate = lambda params, step: evaluated.append(step) or {"score": float(step)}
    run.run()
    assert sorted(_rows(tmp_path)) == [2, 3] and evaluated == [0, 2, 3]
    base = jax.random.key(run.seed)
    for step in range(3):
        np.testing.assert_array_equal(keys[step], jax.random.key_data(jax.random.fold_in(base, step)))
        want = np.random.default_rng([run.seed, trainer._SHUFFLE_STREAM, step]).bit_generator.state["state"]
        assert splits[step] == want
    assert run.sampling_cfg.eos_ids == tuple(run.task.eos_ids) != ()  # the config sets none: the task's


def test_paper_config_pins_the_paper_s_settings():
    c = get_config("qwen25_3b_math", "task_reward")
    assert (c.optim.learning_rate, c.optim.warmup_steps, c.loss.name, c.loss.is_cap, c.advantage.estimator) == (
        1e-6, 10, "reinforce", 20.0, "rloo")
    assert (c.rl.prompts_per_step, c.sampling.num_samples, c.sampling.max_new_tokens, c.sampling.temperature) == (
        32, 8, 2048, 1.0)
    assert c.eval.k_list == tuple(range(1, 17)) and c.eval.num_samples == 16


def test_checkpoints_are_saved_every_n_steps_and_at_the_end_only(tmp_path):
    """Not also at a run's first step (orbax's default policy adds that save)."""
    from rl_sharpen.checkpoint import Checkpointer

    ckpt = Checkpointer(str(tmp_path), every=3, keep=10)
    state = {"x": np.zeros(2, np.float32)}
    for step in range(1, 6):
        ckpt.save(step, state, {"step": step}, force=step == 5)
    assert ckpt.manager.all_steps() == [3, 5]
    ckpt.close()


def test_an_unreadable_last_checkpoint_names_the_step_to_resume_from(tmp_path):
    from rl_sharpen.checkpoint import Checkpointer

    ckpt = Checkpointer(str(tmp_path), every=1, keep=3)
    state = {"x": np.arange(4096, dtype=np.float32)}
    for step in (1, 2, 3):
        ckpt.save(step, state, {"step": step, "config": {}})
    ckpt.close()
    data = [f for f in (tmp_path / "3" / "state").rglob("*") if f.is_file() and "/d/" in str(f)]
    for f in data:
        f.write_bytes(f.read_bytes()[:100])  # a disk that lost the end of the step's arrays
    ckpt = Checkpointer(str(tmp_path), every=1, keep=3)
    with pytest.raises(CheckpointMismatch, match=rf"/3: cannot restore the train state .*the steps kept before it "
                                                 rf"are \[1, 2\]: move {tmp_path}/3 out of the directory to resume "
                                                 rf"from step 2") as error:
        ckpt.restore(state, {})
    assert len(str(error.value)) < 1000
    ckpt.close()


def test_a_finished_run_started_again_returns_its_last_validation(tmp_path):
    runs = [_rl_run(tmp_path, 2) for _ in range(2)]
    for run in runs:
        run.evaluate = lambda params, step: {"accuracy": 0.25 * step}
    assert runs[0].run() == {"step": 2, "accuracy": 0.5}
    assert runs[1].run() == {"step": 2, "accuracy": 0.5}  # nothing left to train: the logged result


def test_a_finished_run_started_again_with_other_validation_settings_validates_again(tmp_path):
    """eval.* and data.validation* may change on resume; a logged result computed under other settings
    is replaced, not reused (config.json would name settings it never had), also when the launch that
    should have replaced it was killed first."""
    def run(fail=False, **overrides):
        r = _rl_run(tmp_path, 2, **overrides)

        def evaluate(params, step):
            if fail:
                raise KeyboardInterrupt("preempted during the validation")
            return {"accuracy": 0.25 * step, "num_samples": r.config_record["eval"]["num_samples"]}

        r.evaluate = evaluate
        return r.run()

    first = run()
    assert run() == first  # the same settings: the logged result
    more = {"eval.num_samples": int(first["num_samples"]) + 1}
    with pytest.raises(KeyboardInterrupt):
        run(fail=True, **more)
    again = run(**more)
    assert again == {"step": 2, "accuracy": 0.5, "num_samples": more["eval.num_samples"]}
    assert json.loads((tmp_path / "config.json").read_text())["eval"]["num_samples"] == again["num_samples"]
    with open(tmp_path / "train_eval.jsonl") as f:  # step 2's row replaced, each row with its settings
        rows = [json.loads(line) for line in f]
    assert [(r["step"], r["num_samples"]) for r in rows] == [(0, first["num_samples"]), (2, again["num_samples"])]
    assert rows[0]["validation_settings"] != rows[1]["validation_settings"]
    assert run(**more) == again


def test_a_run_resumed_at_its_lowered_last_step_validates_that_step(tmp_path):
    """Killed after its step-2 checkpoint, with validation only at the start and the end (step 4), and
    started again with train.steps=2: its result is the step-2 policy's validation, not step 0's."""
    import shutil

    def run(steps):
        r = _rl_run(tmp_path, steps)
        r.evaluate = lambda params, step: {"accuracy": 0.25 * step}
        return r.run()

    assert run(4) == {"step": 4, "accuracy": 1.0}
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    assert run(2) == {"step": 2, "accuracy": 0.5}
    assert run(2) == {"step": 2, "accuracy": 0.5}  # validated now: the logged result again
    with open(tmp_path / "train_eval.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 2]


def test_sft_started_again_logs_each_step_once(tmp_path):
    from rl_sharpen.sft import train_sft

    exp = experiment.parse(get_config("demo", "tiny"))
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    sft_cfg = dataclasses.replace(exp.sft, steps=2, log_every=1)
    for _ in range(2):
        train_sft(jax.tree.map(jnp.copy, params), cfg, task.sft_pairs, sft_cfg, exp.optim, task.pad_id, str(tmp_path))
    with open(tmp_path / "sft.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]


def test_sft_logs_every_n_steps_and_the_last_and_checkpoints_the_last(tmp_path):
    from rl_sharpen.checkpoint import Checkpointer
    from rl_sharpen.sft import SFT_STREAM, train_sft

    exp = experiment.parse(get_config("demo", "tiny"))
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    draws = []

    def sample_pairs(rng, n):
        draws.append(rng.bit_generator.state["state"])
        return task.sft_pairs(rng, n)

    sft_cfg = dataclasses.replace(exp.sft, steps=3, log_every=2, checkpoint_every=2)
    train_sft(params, cfg, sample_pairs, sft_cfg, exp.optim, task.pad_id, str(tmp_path), seed=exp.seed)
    with open(tmp_path / "sft.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [2, 3]
    assert Checkpointer(str(tmp_path / "sft_checkpoints"), 2).latest_step() == 3
    # the batch stream is its own, not the synthetic problem draw's default_rng([seed, 0])
    assert draws[0] == np.random.default_rng([exp.seed, SFT_STREAM]).bit_generator.state["state"]


def test_sft_batches_put_the_completion_eos_included_under_the_mask_and_average_over_its_tokens():
    from rl_sharpen import models
    from rl_sharpen.rl.update import completion_logprobs
    from rl_sharpen.sft import make_batch, make_sft_step

    tokens, segments, mask = make_batch([([1, 2], [3, 4, 5]), ([6], [7])], 0, 2, 4)
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 4, 5, 0], [0, 6, 7, 0, 0, 0]])
    np.testing.assert_array_equal(segments, [[1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    cfg = models.ModelConfig("llama", 16, 16, 32, 1, 2, 1, 8)
    params = models.init_params(cfg, jax.random.key(0))
    lp = np.asarray(completion_logprobs(params, cfg, tokens, segments, 4))
    import optax

    opt = optax.sgd(0.0)
    _, _, nll, _ = make_sft_step(cfg, opt)(params, opt.init(params), tokens, segments, mask)
    np.testing.assert_allclose(nll, -(lp * mask).sum() / 4, rtol=1e-6)  # 4 completion tokens, not 2 rows


def interrupted_at(call: int, sample_pairs):
    """sample_pairs that raises KeyboardInterrupt at its `call`-th call (a run killed drawing that batch)."""
    calls = []

    def sample(rng, n):
        calls.append(n)
        if len(calls) == call:
            raise KeyboardInterrupt
        return sample_pairs(rng, n)
    return sample


def test_a_killed_sft_run_resumes_from_its_checkpoint_with_the_same_batches(tmp_path, caplog):
    """Killed while drawing step 4's batch (after the step-2 checkpoint and step 3's row): the rerun
    restores params, optimizer state and the batch stream at step 2 and ends where an uninterrupted
    run ends, bit for bit, each step logged once; a changed learning rate is refused."""
    from rl_sharpen.sft import train_sft

    exp = experiment.parse(get_config("demo", "tiny"))
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    sft_cfg = dataclasses.replace(exp.sft, steps=5, log_every=1, checkpoint_every=2)

    def train(workdir, sample_pairs=task.sft_pairs, optim=exp.optim, handed=None):
        handed = jax.tree.map(jnp.copy, params) if handed is None else handed
        return train_sft(handed, cfg, sample_pairs, sft_cfg, optim, task.pad_id, str(workdir))

    killed_at_step_4 = interrupted_at(4, task.sft_pairs)
    full = train(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "killed", killed_at_step_4)
    with pytest.raises(CheckpointMismatch, match=r"optim.learning_rate"):
        train(tmp_path / "killed", optim=dataclasses.replace(exp.optim, learning_rate=1e-2))
    handed = jax.tree.map(jnp.copy, params)
    with caplog.at_level(logging.INFO):
        resumed = train(tmp_path / "killed", handed=handed)
    assert f"resumed the warm start in {tmp_path / 'killed'}/sft_checkpoints from step 2" in caplog.text
    assert all(x.is_deleted() for x in jax.tree.leaves(handed))  # replaced by the checkpoint's, not kept beside
    jax.tree.map(np.testing.assert_array_equal, resumed, full)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "sft.jsonl").read_text().splitlines()]
            for name in ("full", "killed")}
    assert [r["step"] for r in rows["killed"]] == [1, 2, 3, 4, 5] and rows["killed"] == rows["full"]


def test_steps_after_the_last_checkpoint_are_logged_once_after_a_resume(tmp_path):
    """A kill after step 3's metrics but before its checkpoint: the rerun replaces rows 3, not adds them."""
    import shutil

    _rl_run(tmp_path, 3).run()  # checkpoints at 2 and (final) 3
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    _rl_run(tmp_path, 4).run()
    with open(tmp_path / "train.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_discard_reports_after_removes_only_later_steps_reports(tmp_path):
    from rl_sharpen.task_setup import discard_reports_after

    names = ["eval_step1.json", "eval_step2.json", "eval_step10.json", "pass_at_k_step2.png", "pass_at_k_step10.png",
             "eval_step10.txt", "eval_stepx.json", "eval_step\u00b2.json", "summary.json"]
    for name in names:
        (tmp_path / name).write_text("{}")
    assert discard_reports_after(str(tmp_path), 2) == ["eval_step10.json", "pass_at_k_step10.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {"eval_step10.json",
                                                                             "pass_at_k_step10.png"})
    assert discard_reports_after(str(tmp_path / "missing"), 0) == []


def test_a_resumed_run_validates_later_steps_again_without_the_killed_run_s_reports(tmp_path):
    """A kill after step 3's validation but before its checkpoint: until step 3 is validated again, its
    folder holds no report of the killed run, whose eval settings may have differed."""
    import shutil

    from rl_sharpen.task_setup import make_evaluator

    def run_with_validation(steps, num_samples):
        run = _rl_run(tmp_path, steps, **{"train.eval_every": 1})
        c = get_config("qwen3_4b_math", "sharpening,tiny")
        c.eval.num_samples, c.data.validation_limit, c.eval.batch_size, c.eval.max_new_tokens = num_samples, 2, 4, 4
        exp = experiment.parse(c)
        evaluate = make_evaluator(exp.eval, run.task, run.model_cfg, exp.sampling, None, exp.seed,
                                  str(tmp_path / "eval"))
        seen = {}

        def recording(params, step):
            seen[step] = sorted(p.name for p in (tmp_path / "eval").glob("*.json"))
            return evaluate(params, step)

        recording.discard_after = evaluate.discard_after
        run.evaluate = recording
        run.run()
        return seen

    run_with_validation(3, num_samples=1)  # checkpoints 2 and (final) 3
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    seen = run_with_validation(4, num_samples=2)
    assert seen[3] == ["eval_step0.json", "eval_step1.json", "eval_step2.json"]
    for step in range(5):
        with open(tmp_path / "eval" / f"eval_step{step}.json") as f:
            samples = {len(p["rewards"]) for p in json.load(f)["problems"]}
        assert samples == ({1} if step <= 2 else {2}), step


def test_a_run_s_weight_decay_leaves_norm_scales_alone(tmp_path):
    """One RL step (one optimizer update) with weight decay, norms decayed or not: both runs see the same
    gradients, so their params differ only by the decay term, -lr wd theta_0 on the norm scales
    (Qwen3's four kinds) and 0 on every weight matrix."""
    from rl_sharpen.checkpoint import Checkpointer
    from rl_sharpen.optim import schedule

    final = {}
    for decay_norms in (False, True):
        over = {"optim.weight_decay": 0.1, "optim.learning_rate": 1e-2, "optim.warmup_steps": 0,
                "optim.decay_norms_and_biases": decay_norms}
        _rl_run(tmp_path / str(decay_norms), 1, **over).run()
        run = _rl_run(tmp_path / str(decay_norms), 1, **over)
        ckpt = Checkpointer(str(tmp_path / str(decay_norms) / "checkpoints"), 1)
        final[decay_norms] = ckpt.restore(run.initial_state(), run.config_record)[0]["params"]
        ckpt.close()
    start = run.policy_params
    shrink = float(schedule(run.optim_cfg)(0)) * 0.1  # 1e-3, against rounding steps of 1.2e-7 near 1
    norms = {"final_norm", "attn_norm", "mlp_norm", "q_norm", "k_norm"}
    for path, p0 in jax.tree_util.tree_leaves_with_path(start):
        name = path[-1].key
        diff = _leaf(final[True], path) - _leaf(final[False], path)
        np.testing.assert_allclose(diff, -shrink * p0 if name in norms else 0.0, atol=2.5e-7, err_msg=name)
    assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(start)} >= norms


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return np.asarray(tree, np.float64)


def test_a_checkpoint_from_before_a_config_field_was_added_resumes_with_its_old_behaviour(tmp_path):
    """A record without `loss.is_level` (written before it existed) resumes with the value that does
    what that run did, "token", and is refused with another."""
    from rl_sharpen.checkpoint import CheckpointMismatch, Checkpointer

    ckpt = Checkpointer(str(tmp_path), every=1)
    state = {"x": np.arange(2, dtype=np.float32)}
    ckpt.save(1, state, {"step": 1, "config": {"loss": {"name": "reinforce", "is_cap": 20.0},
                                               "data": {"train": "synthetic"}}})

    def config(is_level="token", hold_out=False, validation_seed=0):
        return {"loss": {"name": "reinforce", "is_cap": 20.0, "is_level": is_level},
                "data": {"train": "synthetic", "synthetic_hold_out": hold_out,
                         "synthetic_validation_seed": validation_seed}}

    restored, record = ckpt.restore(state, config())
    np.testing.assert_array_equal(restored["x"], state["x"])
    with pytest.raises(CheckpointMismatch, match="loss.is_level: 'token' -> 'sequence'"):
        ckpt.restore(state, config(is_level="sequence"))
    with pytest.raises(CheckpointMismatch, match="data.synthetic_hold_out: False -> True"):
        ckpt.restore(state, config(hold_out=True))  # the run trained on problems it now validates on
    ckpt.close()


@pytest.mark.parametrize("name, arg", [("demo", ""), ("qwen3_4b_math", "sharpening"), ("binary_rewards", "")])
def test_every_config_field_added_since_a_saved_record_lets_its_runs_resume(name, arg):
    """A field added to the config must say, in checkpoint.ADDED_FIELDS, what older runs did (or be one
    that may change on resume): else every run checkpointed before it is refused. The field list of
    tests/data is the config record of commit 432f497."""
    from rl_sharpen.checkpoint import ADDED_FIELDS, config_changes, flatten_config, resumable_change

    with open(ROOT / "tests" / "data" / "config_fields_432f497.json") as f:
        saved = set(json.load(f)["fields"])

    def mappings(node, prefix=""):  # the fields whose value is a dict (model.custom, ...): their keys are values
        return [p for k, v in node.items() if isinstance(v, dict) for p in
                (mappings(v, f"{prefix}{k}.") if v else [f"{prefix}{k}."])]

    free = tuple(mappings(experiment.to_record(experiment.parse(experiment.default_config()))))
    record = experiment.to_record(experiment.parse(get_config(name, arg)))
    new = flatten_config(record)
    added = sorted(k for k in set(new) - saved if not k.startswith(free))
    assert added and not [k for k in added if k not in ADDED_FIELDS and not resumable_change(k)], added
    old = {k: v for k, v in new.items() if k not in added}  # the record such a run wrote, at today's values
    for field, value in ADDED_FIELDS.items():
        if field in added and not callable(value):
            assert new[field] == value, f"{field}: the config's default {new[field]!r} is not what older runs did"
    assert config_changes(old, record, resumable_change) == ""  # it reads flattened records too


def test_config_changes_allow_validation_and_cadence_fields_and_name_at_most_8():
    from rl_sharpen.checkpoint import config_changes, resumable_change

    old = {"train": {"eval_every": 5, "steps": 10}, "data": {"validation": "a.jsonl", "validation_limit": 10}}
    new = {"train": {"eval_every": 2, "steps": 20}, "data": {"validation": "b.jsonl", "validation_limit": 20}}
    assert config_changes(old, new, resumable_change) == ""
    assert config_changes(old, new) == ("data.validation: 'a.jsonl' -> 'b.jsonl', data.validation_limit: 10 -> 20, "
                                        "train.eval_every: 5 -> 2, train.steps: 10 -> 20")
    nine = config_changes({"x": {str(i): 0 for i in range(9)}}, {"x": {str(i): 1 for i in range(9)}})
    assert nine.count("->") == 8 and nine.endswith(", and 1 more")


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_a_checkpoint_from_before_norms_were_spared_weight_decay_resumes_only_as_it_ran(tmp_path, weight_decay):
    """Runs checkpointed before `optim.decay_norms_and_biases` existed decayed every parameter: with
    weight decay they resume only with the field set True; without it, with the default False."""
    from rl_sharpen.checkpoint import CheckpointMismatch, Checkpointer

    ckpt = Checkpointer(str(tmp_path), every=1)
    state = {"x": np.arange(2, dtype=np.float32)}
    ckpt.save(1, state, {"step": 1, "config": {"optim": {"weight_decay": weight_decay}}})

    def config(decay_norms):
        return {"optim": {"weight_decay": weight_decay, "decay_norms_and_biases": decay_norms}}

    ckpt.restore(state, config(decay_norms=weight_decay > 0))
    if weight_decay > 0:
        with pytest.raises(CheckpointMismatch, match="optim.decay_norms_and_biases: True -> False"):
            ckpt.restore(state, config(decay_norms=False))
    ckpt.close()


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_bfloat16_weights_report_the_updates_they_lose(tmp_path, caplog, param_dtype):
    """bfloat16 weights keep no remainder of an update under half their spacing: the run says which
    weights an update the size of the learning rate cannot move (|w| >= 512 lr), and that bound holds."""
    c = get_config("demo", "tiny")
    c.model.param_dtype, c.optim.learning_rate = param_dtype, 1e-6
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    cfg, params = experiment.build_model(exp, None, task.tokenizer)
    with caplog.at_level(logging.WARNING):
        experiment.make_rl_run(exp, str(tmp_path), cfg, params, task)
    reported = "optim.learning_rate=1e-06 (about the size of Adam's steps) weights of magnitude 0.00051"
    assert (reported in caplog.text) == (param_dtype == "bfloat16")
    lr = 1e-6
    w = jnp.asarray(np.geomspace(1e-5, 1.0, 20001), jnp.bfloat16)
    moved = np.asarray((w.astype(jnp.float32) + lr).astype(jnp.bfloat16) != w)
    magnitude = np.asarray(w, np.float64)
    assert not moved[magnitude >= 512 * lr].any() and moved[magnitude < 128 * lr].all()


@pytest.mark.parametrize("field", ["param_dtype", "compute_dtype"])
def test_a_model_source_built_directly_names_its_bad_dtype(field):
    with pytest.raises(ValueError, match=rf"ModelSource.{field}='bf16'; allowed: 'float32' or 'bfloat16'"):
        experiment.ModelSource(arch="custom", custom={"family": "llama"}, **{field: "bf16"})
