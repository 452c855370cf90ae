"""Experiments: the typed config of a run and the builders that turn it into models, tasks and
a trainer. `run(config, workdir)` is what `python -m rl_sharpen.main` calls; notebooks call the
builders directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Literal, Mapping

import jax
import ml_collections
from absl import logging

from rl_sharpen import models, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.binary_rewards import BinaryRewardsConfig
from rl_sharpen.checkpoint import config_changes
from rl_sharpen.config import ConfigError, from_config_dict, to_config_dict
from rl_sharpen.metrics import check_shared_workdir, workdir_path, write_json
from rl_sharpen.models.hf_io import checkpoint_folder
from rl_sharpen.optim import OptimConfig
from rl_sharpen.rl import advantages as adv
from rl_sharpen.rl import losses
from rl_sharpen.rl import rewards as rw
from rl_sharpen.rl.calibration import CalibrationConfig
from rl_sharpen.rl.trainer import RLConfig, RLRun, TrainConfig, batch_layout
from rl_sharpen.sampling.prompts import check_fields
from rl_sharpen.sft import SFTConfig
from rl_sharpen.tasks.synthetic import CharTokenizer
from rl_sharpen.task_setup import (BUILT_IN_TASKS, SYNTHETIC, DataConfig, EvalConfig, build_task, drop_long_prompts,
                                   make_evaluator, prompt_width, shared_problems, task_stops)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    checkpoint: str = ""  # local HF folder or hub id; "" initializes `arch` at random
    arch: str = ""  # a preset name (models.PRESETS) when there is no checkpoint, or "custom"
    custom: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields when arch == "custom"
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # weights (bfloat16 loses updates below |w| / 512)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmuls and activations

    def __post_init__(self):
        check_fields(self, [("arch", self.arch in ("", "custom", *models.PRESETS),
                             f"'' (with a checkpoint), 'custom' or a preset: {', '.join(sorted(models.PRESETS))}"),
                            *[(name, getattr(self, name) in ("float32", "bfloat16"), "'float32' or 'bfloat16'")
                              for name in ("param_dtype", "compute_dtype")]])
        if self.checkpoint and (self.arch or self.custom):  # the checkpoint's config.json sets the architecture
            field = "arch" if self.arch else "custom"
            raise ValueError(f"ModelSource.{field}={getattr(self, field)!r} with checkpoint={self.checkpoint!r}: "
                             f"the checkpoint's config.json sets the model, so {field} would be ignored; "
                             f"allowed with a checkpoint: {field} empty (--config.model.{field}="
                             f"{'' if field == 'arch' else '{}'})")
        if self.custom and self.arch != "custom":
            raise ValueError(f"ModelSource.custom is set with arch={self.arch!r}; it is read only with arch='custom'")
        if self.arch == "custom":
            allowed = {f.name for f in dataclasses.fields(models.ModelConfig)} - {"param_dtype", "compute_dtype"}
            if unknown := sorted(set(self.custom) - allowed):
                raise ValueError(f"ModelSource.custom.{unknown[0]}: not a ModelConfig field; allowed: "
                                 f"{', '.join(sorted(allowed))} (dtypes are model.param_dtype / model.compute_dtype)")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    regimes: tuple[str, ...] = ("task_reward", "sharpening")  # SFT-start presets; each sets reward.mode/alpha/beta_inv
    sft_steps: int = 600  # warm-start steps (in place of sft.steps); its optimizer settings are its own, not optim.*

    def __post_init__(self):
        check_fields(self, [
            ("regimes", bool(self.regimes) and set(self.regimes) <= set(rw.PRESET_NAMES),
             f"a non-empty tuple of {list(rw.PRESET_NAMES)}"),
            ("sft_steps", self.sft_steps >= 0, "an integer >= 0"),
        ])


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    mode: Literal["rl", "sft", "eval", "demo", "binary_rewards"] = "rl"  # what main runs
    seed: int = 0  # model init, training data (synthetic problems drawn, order), sampling
    model: ModelSource = ModelSource()
    mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})  # axis sizes
    data: DataConfig = DataConfig()
    sampling: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=1024, num_samples=8)  # G = 8 per prompt
    reward: rw.RewardConfig = rw.RewardConfig()
    advantage: adv.AdvantageConfig = adv.AdvantageConfig()
    calibration: CalibrationConfig = CalibrationConfig()  # sampling against a memory of past rollouts (mu = 0: off)
    loss: losses.LossConfig = losses.LossConfig()
    optim: OptimConfig = OptimConfig()
    rl: RLConfig = RLConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    demo: DemoConfig = DemoConfig()
    binary_rewards: BinaryRewardsConfig = BinaryRewardsConfig()  # the toy model of mode binary_rewards

    def __post_init__(self):
        check_fields(self, [
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("mesh", isinstance(self.mesh, Mapping) and set(self.mesh) <= set(shd.MESH_AXES)
             and all(isinstance(v, int) and (v == -1 or v >= 1) for v in self.mesh.values()),
             f"sizes (integers >= 1, or -1 for the rest of the devices) of the axes {', '.join(shd.MESH_AXES)}"),
        ])
        if self.mode in ("rl", "demo"):
            if self.sampling.greedy or self.sampling.temperature == 0:
                raise ValueError(f"ExperimentConfig.sampling.greedy={self.sampling.greedy}, temperature="
                                 f"{self.sampling.temperature}: greedy rollouts give every sample of a prompt the same "
                                 "completion (zero advantages) and no policy gradient; allowed: greedy=False and "
                                 "temperature > 0 (eval.* sets validation's decoding)")
            if self.sampling.num_samples < 2 and self.advantage.estimator in adv.GROUP_BASELINE_ESTIMATORS:
                others = sorted(set(adv.ADVANTAGE_ESTIMATORS) - set(adv.GROUP_BASELINE_ESTIMATORS))
                raise ValueError(
                    f"ExperimentConfig.sampling.num_samples={self.sampling.num_samples} with advantage.estimator="
                    f"{self.advantage.estimator!r}, whose baseline comes from the other samples of a prompt; allowed: "
                    f"num_samples >= 2, or an estimator without one: {', '.join(others)}")
            batch_layout(self.rl, self.sampling.num_samples)
        if self.mode in ("sft", "demo") and self.data.train != SYNTHETIC and self.data.task in ("", *BUILT_IN_TASKS):
            raise ValueError(f"ExperimentConfig.data.train={self.data.train!r} with mode={self.mode!r}, whose warm "
                             "start trains on worked solutions, which only the synthetic task has; allowed: "
                             f"data.train={SYNTHETIC!r} (and data.validation={SYNTHETIC!r}), or a registered task "
                             "(data.task) with its own `sft_pairs`")
        if self.mode == "sft":  # the warm start draws fresh synthetic examples at every batch
            for name in ("train_limit", "max_prompt_tokens", "synthetic_train_problems"):
                if (value := getattr(self.data, name)) != getattr(DataConfig(), name):
                    raise ValueError(f"ExperimentConfig.data.{name}={value} with mode='sft': it sets the RL "
                                     "problems, and the warm start draws fresh synthetic examples at every batch; "
                                     f"allowed: its default, {getattr(DataConfig(), name)}")
        if self.mode == "demo":  # each of demo.regimes sets the reward's mode, alpha and beta_inv
            for name in ("mode", "alpha", "beta_inv"):
                if (value := getattr(self.reward, name)) != getattr(rw.RewardConfig(), name):
                    raise ValueError(f"ExperimentConfig.reward.{name}={value!r} with mode='demo', whose regimes "
                                     f"({', '.join(self.demo.regimes)}) set it; allowed: its default, "
                                     f"{getattr(rw.RewardConfig(), name)!r} (choose the regimes with demo.regimes)")
        if self.sampling.pad_id != 0:
            raise ValueError(f"ExperimentConfig.sampling.pad_id={self.sampling.pad_id}; allowed: 0. Runs pad with "
                             "the tokenizer's pad id; the field is for direct sampling.generate calls")


def parse(config: ml_collections.ConfigDict | dict) -> ExperimentConfig:
    """The typed config; `loss.max_len` = 0 with the seq-mean-token-sum aggregation becomes
    `sampling.max_new_tokens`, after any command-line override of either."""
    data = dict(config.to_dict() if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict))
                else config)  # a shallow copy: only its "loss" entry is replaced, never changed in place
    loss = data.get("loss")
    if isinstance(loss, Mapping) and loss.get("aggregation") == "seq-mean-token-sum" and loss.get("max_len", 0) == 0:
        sampling_fields = data.get("sampling")
        max_new = (sampling_fields.get("max_new_tokens") if isinstance(sampling_fields, Mapping) else None)
        valid = isinstance(max_new, int) and not isinstance(max_new, bool) and max_new > 0  # else sampling's error
        data["loss"] = {**loss, "max_len": max_new if valid else ExperimentConfig().sampling.max_new_tokens}
    return from_config_dict(ExperimentConfig, data)


def to_record(exp) -> dict:
    """JSON-able form of the config, or of one of its parts (stored with checkpoints and results)."""
    return json.loads(json.dumps(dataclasses.asdict(exp), default=str))


def build_mesh(exp: ExperimentConfig):
    """The configured mesh; None on a single device (no sharding), once the mesh is known to fit it."""
    try:
        mesh = shd.make_mesh(exp.mesh)
    except ValueError as e:  # sizes that do not fit the devices
        raise ConfigError(f"config.mesh: {e}") from e
    return mesh if jax.device_count() > 1 else None


def build_model(exp: ExperimentConfig, mesh=None, tokenizer=None):
    """(ModelConfig, params): loaded from the checkpoint, or initialized from `arch`; a ConfigError if
    the model and the task's `tokenizer` disagree on the token ids."""
    cfg, params = _build_model(exp, mesh, tokenizer)
    if tokenizer is not None:
        vocab, ids = cfg.vocab_size, len(tokenizer)
        synthetic = isinstance(tokenizer, CharTokenizer)  # it decodes no id beyond its characters
        if vocab < ids or (synthetic and vocab != ids):
            source = (f"model.checkpoint={exp.model.checkpoint!r}" if exp.model.checkpoint
                      else f"model.arch={exp.model.arch!r}")
            raise ConfigError(f"{source}: a vocabulary of {vocab} token ids, against the {ids} of the task's "
                              f"tokenizer ({'the synthetic task' if synthetic else 'data.tokenizer'}), which the "
                              f"model's must {'equal' if synthetic else 'cover'}")
    return cfg, params


def _build_model(exp: ExperimentConfig, mesh=None, tokenizer=None):
    src = exp.model
    if src.checkpoint:
        path = checkpoint_folder(src.checkpoint)
        return models.load_hf(path, dtype=src.param_dtype, mesh=mesh, compute_dtype=src.compute_dtype)
    if src.arch == "custom":
        fields = dict(src.custom)
        if tokenizer is not None and "vocab_size" not in fields:
            fields["vocab_size"] = len(tokenizer)  # HF's .vocab_size leaves out added special tokens
        try:
            cfg = models.ModelConfig(**fields, param_dtype=src.param_dtype, compute_dtype=src.compute_dtype)
        except (TypeError, ValueError) as e:  # a missing or invalid field of model.custom
            raise ConfigError(f"config.model.custom: {e}") from e
    elif src.arch:
        cfg = models.preset(src.arch, param_dtype=src.param_dtype, compute_dtype=src.compute_dtype)
    else:
        raise ValueError("config.model: set `checkpoint` (HF folder or hub id) or `arch` "
                         f"(one of {sorted(models.PRESETS)} or 'custom')")
    return cfg, models.init_params(cfg, jax.random.key(exp.seed), mesh=mesh)


def make_rl_run(exp: ExperimentConfig, workdir: str, model_cfg, params, task, mesh=None, name="train",
                reward_cfg: rw.RewardConfig | None = None) -> RLRun:
    reward_cfg = reward_cfg or exp.reward
    rw.check_components(reward_cfg, exp.sampling.num_samples, model_cfg.vocab_size)  # before any evaluation
    train_problems = drop_long_prompts(task, task.problems("train"), exp.data.max_prompt_tokens)
    stops = task_stops(task, exp.sampling.stop_strings, model_cfg, mesh)  # one copy for rollouts and validation
    # each validation's per-problem results, plot and table in <workdir>/eval (rl_sharpen.compare reads them)
    evaluate = make_evaluator(exp.eval, task, model_cfg, exp.sampling, mesh, seed=exp.seed,
                              workdir=os.path.join(workdir, "eval"), stops=stops)
    if shared := shared_problems(train_problems, evaluate.problems):
        logging.warning("%d of %d validation problems also appear, word for word, among the %d training problems: "
                        "validation measures them as seen in training", shared, len(evaluate.problems),
                        len(train_problems))
    if model_cfg.param_dtype == "bfloat16":  # a weight in [2^e, 2^(e+1)) is 2^(e-7) from its neighbours
        logging.warning("model.param_dtype='bfloat16': an update below half a weight's bfloat16 spacing is "
                        "rounded away and nothing keeps it, so at optim.learning_rate=%g (about the size of "
                        "Adam's steps) weights of magnitude %.2g (512 x the rate) or more do not move; "
                        "model.param_dtype='float32' with model.compute_dtype='bfloat16' keeps float32 weights "
                        "and runs the matmuls in bfloat16", exp.optim.learning_rate, 512 * exp.optim.learning_rate)
    updates = exp.train.steps * exp.rl.epochs * exp.rl.minibatches
    if exp.optim.schedule == "cosine" and exp.optim.total_steps != updates:
        logging.warning("optim.total_steps=%d, but the run makes %d optimizer updates (train.steps x rl.epochs x "
                        "rl.minibatches): the cosine %s", exp.optim.total_steps, updates,
                        "ends early; later updates stay at its floor" if exp.optim.total_steps < updates
                        else "will not reach its floor")
    if mesh is not None:
        rows = {"rl.micro_batch": batch_layout(exp.rl, exp.sampling.num_samples)[1],
                "rl.prompts_per_step x sampling.num_samples": exp.rl.prompts_per_step * exp.sampling.num_samples}
        shards = math.prod(mesh.shape.get(axis, 1) for axis in shd.LOGICAL_RULES["batch"])
        for field, count in rows.items():
            if count % shards:
                used = shd.batch_sharding(mesh, 1, (count,)).spec[0]  # the batch axes that divide the count
                used = () if used is None else (used,) if isinstance(used, str) else used
                held = count // math.prod(mesh.shape[axis] for axis in used)
                logging.warning("%s: %d sequences do not divide over the %d batch shards of the mesh (%s), so "
                                "devices compute the same rows, each device holding the activations of %d of them: "
                                "use a multiple of %d", field, count, shards, dict(mesh.shape), held, shards)
    ref_params = jax.tree.map(lambda x: x.copy(), params)  # frozen reference: the initial policy
    width = exp.sampling.prompt_width
    if width is None and exp.rl.prompt_padding == "dataset":
        width = prompt_width(task, train_problems)
    sampling_cfg = dataclasses.replace(exp.sampling, eos_ids=exp.sampling.eos_ids or tuple(task.eos_ids),
                                       pad_id=task.pad_id, prompt_width=width)
    if exp.loss.name == "alpha_dpg" and (reward_cfg != rw.RewardConfig() or exp.advantage != adv.AdvantageConfig()):
        logging.warning("loss.name='alpha_dpg' fits p* = p_ref(. | correct) from the verified correctness and the "
                        "log-probs alone: the reward (%s) and advantage (%s) settings do not enter its update (they "
                        "are still computed and logged)", reward_cfg, exp.advantage)
    if exp.sampling.top_k or exp.sampling.top_p < 1:
        logging.warning("sampling.top_k=%d, sampling.top_p=%g: rollouts never draw the tokens these cut, and no "
                        "importance weight restores them, so the policy cannot reach the objective's optimum on "
                        "them (top_k=0, top_p=1 sample from the whole vocabulary; a temperature is corrected)",
                        exp.sampling.top_k, exp.sampling.top_p)
    weights = rw.mixture_weights(reward_cfg)
    others = {k: v for k, v in weights.items() if k != "task"}
    if reward_cfg.kl_coef > 0:
        others["kl_coef"] = reward_cfg.kl_coef
    if exp.advantage.estimator in adv.GROUP_STD_ESTIMATORS and "task" in weights and others:
        logging.warning("advantage.estimator=%r divides by each group's reward std: in a group whose samples "
                        "are all correct or all wrong, the reward's other terms (%s) are scaled to unit size, "
                        "undoing their weights, and the update no longer follows grad E_pi[R] "
                        "(rl/advantages.py); rloo and dr_grpo do", exp.advantage.estimator, others)
    return RLRun(model_cfg=model_cfg, policy_params=params, ref_params=ref_params, task=task,
                 train_problems=train_problems, sampling_cfg=sampling_cfg,
                 reward_cfg=reward_cfg, adv_cfg=exp.advantage, loss_cfg=exp.loss,
                 optim_cfg=exp.optim, rl_cfg=exp.rl, train_cfg=exp.train, workdir=workdir, seed=exp.seed,
                 config_record={**to_record(exp), "reward": to_record(reward_cfg)}, evaluate=evaluate,
                 mesh=mesh, name=name, calibration_cfg=exp.calibration, stops=stops)


def save_policy(params, model_cfg: models.ModelConfig, exp: ExperimentConfig, task, path: str) -> None:
    """The trained policy as a Hugging Face folder with its tokenizer and the base checkpoint's
    generation config: `--config.model.checkpoint=<path>` evaluates it (mode "eval") on any dataset."""
    tokenizer = task.tokenizer if hasattr(task.tokenizer, "save_pretrained") else None  # not the toy one
    source = checkpoint_folder(exp.model.checkpoint) if exp.model.checkpoint else None
    models.save_hf(params, model_cfg, path, tokenizer=tokenizer, copy_from=source)
    logging.info("saved the final policy to %s", path)


def run(config, workdir: str) -> dict:
    exp = parse(config)
    main = jax.process_index() == 0
    out = workdir_path(workdir)  # local, or gs://... (etils.epath)
    check_shared_workdir(workdir)  # several hosts: one folder they all see
    if exp.mode == "eval":
        check_eval_workdir(exp, out)

    def record_config():  # once the config's model and data load (RL, SFT, demo: once their checkpoints accept it)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(to_record(exp), out / "config.json")

    if exp.mode == "binary_rewards":
        record_config()
        from rl_sharpen import binary_rewards

        result = binary_rewards.run_experiment(exp.binary_rewards, exp.seed, workdir)
        logging.info("binary rewards on an enumerable toy model:\n%s", binary_rewards.table(result))
        return result
    mesh = build_mesh(exp)
    task = build_task(exp.data, exp.model, exp.seed, exp.eval.verify_timeout)
    if exp.mode == "demo":
        from rl_sharpen.demo import run_demo

        return run_demo(exp, workdir, task, mesh)
    for split in {"rl": ("train", "validation"), "eval": ("validation",)}.get(exp.mode, ()):
        task.problems(split)  # a data error shows before a checkpoint's weights load, not minutes after
    model_cfg, params = build_model(exp, mesh, task.tokenizer)
    if exp.mode == "rl":
        rl_run = make_rl_run(exp, workdir, model_cfg, params, task, mesh)
        result = rl_run.run()
        if exp.train.save_policy:
            save_policy(rl_run.final_state["params"], model_cfg, exp, task, os.path.join(workdir, "policy_model"))
    elif exp.mode == "sft":
        from rl_sharpen.sft import train_sft

        params = train_sft(params, model_cfg, task.sft_pairs, exp.sft, exp.optim, task.pad_id, workdir, exp.seed,
                           config_record=to_record(exp), on_start=record_config)
        models.save_hf(params, model_cfg, os.path.join(workdir, "sft_model"))
        result = make_evaluator(exp.eval, task, model_cfg, exp.sampling, mesh, seed=exp.seed)(params, 0)
    else:
        evaluate = make_evaluator(exp.eval, task, model_cfg, exp.sampling, mesh, seed=exp.seed, workdir=workdir)
        record_config()  # the validation problems loaded
        result = evaluate(params, 0)
    if main:
        write_json(result, out / "result.json")
    logging.info("result: %s", result)
    return result


def check_eval_workdir(exp: ExperimentConfig, out) -> None:
    """Refuses an evaluation into a workdir holding another run's files (its config.json, result.json
    and eval_step0.json would be replaced): another mode's run, or an evaluation with other settings.
    The same evaluation again is allowed (its files come out the same)."""
    record = out / "config.json"
    if not record.exists():
        return
    old = json.loads(record.read_text())
    if old.get("mode") != "eval":
        raise ConfigError(f"--workdir={os.fspath(out)} holds a {old.get('mode')!r} run (its config.json), whose "
                          "config.json and result.json an evaluation would replace; allowed: a new --workdir "
                          "(e.g. a subfolder of this one)")
    if changes := config_changes(old, to_record(exp)):
        raise ConfigError(f"--workdir={os.fspath(out)} holds an evaluation with other settings ({changes}), whose "
                          "files this one would replace; allowed: a new --workdir, or the same settings")


def default_config() -> ml_collections.ConfigDict:
    """Every field of ExperimentConfig at its default, for configs/ files to edit."""
    return to_config_dict(ExperimentConfig())


def paper_config(checkpoint: str, family: str, arg: str = "", small_checkpoint: str = "",
                 small_prompt: Mapping[str, object] | None = None) -> ml_collections.ConfigDict:
    """The setting of Mittal, Gagnon, Lajoie 2026: MATH-lighteval train, MATH-500 validation, 32 prompts
    x 8 samples, lr 1e-6, 2048 new tokens, RLOO advantages, REINFORCE with truncated importance weights,
    and the loss summed over tokens / max_new_tokens, so that the update follows the objective's gradient.
    Weights are float32 and matmuls bfloat16 (model.compute_dtype), so the sampler and the trainer
    differ by bfloat16 rounding, which the truncated importance weights correct.

    `arg` is a comma list: a reward preset name (rl/rewards.py, default task_reward) and at most one size
    switch:
      tiny   keeps the algorithm but swaps in a random 2-layer model of the same family and the synthetic
             task, so the config runs on a CPU with no downloads;
      small  keeps the algorithm and the data but swaps in the family's small instruct model
             (`small_checkpoint`, its prompt settings `small_prompt`) at one-GPU sizes: 16 prompts x 8
             samples, 1024 new tokens, training prompts of at most 512 tokens, 200 steps, a validation
             on 100 MATH-500 problems every 25 (BENCHMARKS.md, "Memory per device", gives each phase's
             memory).
    """
    parts = [p for p in arg.split(",") if p]
    sizes = [p for p in parts if p in ("tiny", "small")]
    regimes = [p for p in parts if p not in sizes]
    if len(regimes) > 1 or len(sizes) > 1:
        raise ValueError(f"config argument {arg!r}: one reward preset at most (an RL run has one reward) and one "
                         f"size at most; allowed: {list(rw.PRESET_NAMES)}, optionally with 'tiny' or 'small'")
    tiny, small = sizes == ["tiny"], sizes == ["small"]
    if small and not small_checkpoint:
        raise ValueError(f"config argument {arg!r}: this config names no small checkpoint; allowed: 'tiny'")
    c = default_config()
    c.mode = "rl"
    c.model.checkpoint = checkpoint
    c.model.param_dtype, c.model.compute_dtype = "float32", "bfloat16"
    # Parameters over every device: the float32 policy, reference, Adam moments and gradients of a 3-4B
    # model (58-75 GiB) fit on no single accelerator. Rollout and update rows split over fsdp too.
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.data.train, c.data.train_split = "math", "train"
    c.data.validation, c.data.validation_split = "math500", "test"
    reward = rw.regime_preset(regimes[0] if regimes else "task_reward")
    c.reward = ml_collections.ConfigDict(dataclasses.asdict(reward))
    c.sampling.max_new_tokens = 2048
    c.sampling.num_samples = 8
    c.sampling.temperature = 1.0
    c.rl.prompts_per_step = 32
    c.rl.micro_batch = 16
    c.advantage.estimator = "rloo"
    c.loss.name = "reinforce"
    c.loss.is_cap = 20.0
    c.loss.aggregation = "seq-mean-token-sum"  # a constant normalizer: the update follows grad E_pi[R]
    c.loss.max_len = 0  # the normalizer: sampling.max_new_tokens, as finally set (`parse`)
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 10
    c.train.steps = 500
    c.train.eval_every = 50
    c.train.checkpoint_every = 25
    c.eval.num_samples = 16
    c.eval.k_list = tuple(range(1, 17))  # pass@k and maj@k at every k = 1..16, as the paper reports them
    c.eval.max_new_tokens = 2048
    if small:
        c.model.checkpoint = small_checkpoint
        for name, value in (small_prompt or {}).items():
            c.data[name] = value
        c.sampling.max_new_tokens = c.eval.max_new_tokens = 1024
        c.rl.prompts_per_step, c.rl.micro_batch = 16, 8
        c.rl.prompt_padding = "batch"  # MATH prompts: a median of ~100 tokens, up to ~1,600; pad each batch to its own
        c.data.max_prompt_tokens = 512  # bounds a step's memory; leaves out about 1% of MATH's problems
        c.train.steps, c.train.eval_every = 200, 25
        c.data.validation_limit = 100
        c.eval.batch_size = 8  # 8 x 16 samples: the rollouts' 128 rows, whose KV cache bounds sampling's memory
    if tiny:
        c.model.checkpoint = ""
        c.model.arch = "custom"
        c.model.compute_dtype = "float32"
        c.model.custom = dict(family=family, vocab_size=52, hidden_size=64, intermediate_size=128, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512)
        c.data.train = c.data.validation = "synthetic"
        c.sampling.max_new_tokens = c.eval.max_new_tokens = 32
        c.sampling.num_samples = 4
        c.rl.prompts_per_step, c.rl.micro_batch = 4, 8
        c.optim.learning_rate = 1e-4
        c.train.steps, c.train.eval_every, c.train.checkpoint_every = 4, 2, 2
        c.eval.num_samples, c.data.validation_limit, c.eval.batch_size = 4, 8, 8
        c.eval.k_list = ()  # 1, 2, 4: follows eval.num_samples when a test overrides it
    return c
