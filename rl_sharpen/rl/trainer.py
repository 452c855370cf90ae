"""The RL training loop: rollout -> rewards -> advantages -> sharded update, with periodic
validation, metrics and resumable checkpoints.

Every step is a pure function of (checkpointed state, step index): the rollout key is
fold_in(seed key, step) and the prompts are the step-th slice of a seeded permutation, so a run
killed and restarted from its last checkpoint reproduces the metrics of an uninterrupted run. It
drops the killed run's metric rows and validation files of the steps after that checkpoint, then
writes them again.

Metric rows (`train.jsonl`, TensorBoard) are numbered by updates done. Row s holds the rollout
metrics of the samples update s learned from, which were drawn from the policy after s - 1 updates
(`rollout.rollout` documents them), the `update_*` metrics averaged over update s's
epochs x minibatches optimizer steps, and `learning_rate` of its last optimizer step. The validation
row s (`<name>_eval.jsonl`; per problem in `eval/eval_step<s>.json` for `rl_sharpen.compare`) and
checkpoint s are of the policy after s updates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from rl_sharpen import sampling
from rl_sharpen import sharding as shd
from rl_sharpen.checkpoint import CheckpointMismatch, Checkpointer, buffers, flatten_config, release
from rl_sharpen.metrics import MetricWriter, format_row, workdir_path, write_json
from rl_sharpen.models import weight_decay_mask
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.optim import OptimConfig, init_state, make_optimizer, schedule
from rl_sharpen.rl import advantages as adv
from rl_sharpen.rl import losses
from rl_sharpen.rl.calibration import CalibrationConfig, Memory
from rl_sharpen.rl import rewards as rw
from rl_sharpen.rl.rollout import Scorer, Task, rollout
from rl_sharpen.rl.update import TrainBatch, make_train_step
from rl_sharpen.sampling.prompts import check_fields
from rl_sharpen.task_setup import task_stops


@dataclasses.dataclass(frozen=True)
class RLConfig:
    prompts_per_step: int = 32  # B: prompts per rollout batch
    micro_batch: int = 0  # sequences per gradient micro-batch (0: the whole minibatch at once)
    epochs: int = 1  # passes over each rollout batch (ppo_clip may use > 1)
    minibatches: int = 1  # optimizer steps per epoch
    logprob_chunk: int = 512  # positions per vocabulary-projection chunk in the teacher-forced passes
    remat: bool = True  # rematerialize decoder layers in the backward pass
    # prompt padding: "dataset" = one width for the whole problem set (one compile of sampler, scorer
    # and update); "batch" = each batch's bucket width (fewer padded tokens, a compile per bucket)
    prompt_padding: Literal["dataset", "batch"] = "dataset"

    def __post_init__(self):
        check_fields(self, [
            ("prompts_per_step", self.prompts_per_step >= 1, "an integer >= 1"),
            ("micro_batch", self.micro_batch >= 0, "an integer >= 0 (0: the whole minibatch)"),
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("minibatches", self.minibatches >= 1 and self.prompts_per_step % self.minibatches == 0,
             f"an integer >= 1 dividing prompts_per_step={self.prompts_per_step}"),
            ("logprob_chunk", self.logprob_chunk >= 1, "an integer >= 1"),
            ("prompt_padding", self.prompt_padding in ("dataset", "batch"), "'dataset' or 'batch'"),
        ])


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # RL steps (each a rollout batch and rl.epochs x rl.minibatches optimizer updates)
    log_every: int = 1  # write metrics every N steps
    eval_every: int = 0  # validation every N steps (0: only at the start and the end)
    checkpoint_every: int = 25  # save every N steps
    keep_checkpoints: int = 2  # newest checkpoints kept
    save_policy: bool = True  # write the final policy to <workdir>/policy_model as an HF folder (with the tokenizer)

    def __post_init__(self):
        check_fields(self, [
            ("steps", self.steps >= 0, "an integer >= 0"),
            ("log_every", self.log_every >= 1, "an integer >= 1"),
            ("eval_every", self.eval_every >= 0, "an integer >= 0 (0: only at the start and the end)"),
            ("checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "an integer >= 1"),
        ])


def batch_layout(rl_cfg: RLConfig, group_size: int) -> tuple[int, int]:
    """(sequences per optimizer minibatch, per gradient micro-batch) of a step of
    rl.prompts_per_step x G samples; raises naming rl.micro_batch where a micro-batch would split a group."""
    minibatch = rl_cfg.prompts_per_step * group_size // rl_cfg.minibatches
    micro = rl_cfg.micro_batch or minibatch
    if minibatch % micro or micro % group_size:
        raise ValueError(f"rl.micro_batch={rl_cfg.micro_batch}; allowed: 0 or a multiple of the {group_size} samples "
                         f"per prompt (sampling.num_samples) that divides the minibatch of {minibatch} sequences "
                         "(rl.prompts_per_step x sampling.num_samples / rl.minibatches)")
    return minibatch, micro


_MEMORY_STREAM = 0x6D656D  # folded into the seed key for the memory network's initialization
# numpy streams of a run are seeded [seed, <tag>, ...] with a tag of their own, so that no two of them
# (nor the synthetic problem draws, [seed, 0] and [validation seed, 1]) share random numbers: numpy
# reads [s], [s, 0] and [s, 0, 0] as the same seed.
ORDER_STREAM = 0x6F72646572  # epoch permutations of the training problems
_SHUFFLE_STREAM = 0x73687566  # a step's minibatch split


def prompt_order(num_problems: int, seed: int, position: int, count: int) -> np.ndarray:
    """Indices [position, position + count) of an endless stream of seeded epoch permutations."""
    out = []
    while len(out) < count:
        epoch, offset = divmod(position + len(out), num_problems)
        perm = np.random.default_rng([seed, ORDER_STREAM, epoch]).permutation(num_problems)
        out.extend(perm[offset:offset + count - len(out)].tolist())
    return np.asarray(out)


def _place(batch: TrainBatch, mesh) -> TrainBatch:
    if mesh is None:
        return batch
    return jax.tree.map(lambda x: jax.device_put(x, shd.batch_sharding(mesh, x.ndim, x.shape)), batch)


def _minibatches(batch: TrainBatch, count: int, group_size: int, rng: np.random.Generator) -> list[TrainBatch]:
    """`count` minibatches of whole groups, groups shuffled."""
    groups = batch.tokens.shape[0] // group_size
    if groups % count:
        raise ValueError(f"RLConfig.minibatches={count} must divide the {groups} prompts of a step")
    order = rng.permutation(groups)
    rows = (order[:, None] * group_size + np.arange(group_size)).reshape(count, -1)
    return [jax.tree.map(lambda x, r=r: x[r], batch) for r in rows]


@functools.lru_cache(maxsize=8)
def _jitted_train_step(model_cfg, loss_cfg, optim_cfg, num_micro, group_size, chunk, remat, mesh):
    """One compiled update per distinct setting, shared by runs in a process (e.g. demo regimes)."""
    step = make_train_step(model_cfg, loss_cfg, make_optimizer(optim_cfg, weight_decay_mask(model_cfg)),
                           num_micro=num_micro, group_size=group_size, chunk=chunk, remat=remat, mesh=mesh)
    return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _scorer(model_cfg, chunk, rows, mesh) -> Scorer:
    return Scorer(model_cfg, chunk, rows, mesh)


def validation_settings(config_record: dict) -> str:
    """A fingerprint of the settings a validation depends on that may change on resume (eval.*,
    data.validation*), logged with each validation row: a row is reused only under the same ones."""
    fields = {k: v for k, v in flatten_config(json.loads(json.dumps(config_record))).items()
              if k.startswith(("eval.", "data.validation"))}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass
class RLRun:
    """Everything one RL run needs; `run()` trains and returns the final validation record. It consumes
    `policy_params` (pass a copy to keep them): the first update donates their buffers, and a resumed
    run deletes them once the checkpoint is restored. A policy that is the reference itself is copied."""

    model_cfg: ModelConfig
    policy_params: Any
    ref_params: Any
    task: Task
    train_problems: Sequence
    sampling_cfg: sampling.SamplingConfig
    reward_cfg: rw.RewardConfig
    adv_cfg: adv.AdvantageConfig
    loss_cfg: losses.LossConfig
    optim_cfg: OptimConfig
    rl_cfg: RLConfig
    train_cfg: TrainConfig
    workdir: str
    seed: int = 0
    config_record: dict = dataclasses.field(default_factory=dict)
    evaluate: Callable[[Any, int], dict] | None = None  # (params, step) -> validation metrics
    mesh: Any = None
    name: str = "train"
    calibration_cfg: CalibrationConfig = CalibrationConfig()  # distribution-level calibration (off at mu = 0)
    stops: Any = None  # sampling.StopStrings of sampling_cfg.stop_strings; None builds them when there are some

    def __post_init__(self):
        G = self.sampling_cfg.num_samples
        minibatch, micro = batch_layout(self.rl_cfg, G)
        self.optimizer = make_optimizer(self.optim_cfg, weight_decay_mask(self.model_cfg))
        self.train_step = _jitted_train_step(self.model_cfg, self.loss_cfg, self.optim_cfg, minibatch // micro, G,
                                             self.rl_cfg.logprob_chunk, self.rl_cfg.remat, self.mesh)
        # the scorer and the memory pass over micro-batches of the update's rows
        self.scorer = _scorer(self.model_cfg, self.rl_cfg.logprob_chunk, micro, self.mesh)
        if self.stops is None:
            self.stops = task_stops(self.task, self.sampling_cfg.stop_strings, self.model_cfg, self.mesh)
        self.memory = (Memory(self.model_cfg, self.calibration_cfg, self.mesh, micro_rows=micro,
                              remat=self.rl_cfg.remat) if self.calibration_cfg.enabled else None)

    def initial_state(self) -> dict:
        step = jnp.zeros((), jnp.int32)
        if self.mesh is not None:
            step = jax.device_put(step, shd.named_sharding(self.mesh, ()))
        params = self.policy_params
        if not buffers(params).isdisjoint(buffers(self.ref_params)):  # the update donates the policy's buffers
            params = jax.tree.map(jnp.copy, params)
        state = {"params": params, "opt_state": init_state(self.optimizer, params), "step": step}
        if self.memory is not None:
            key = jax.random.fold_in(jax.random.key(self.seed), _MEMORY_STREAM)
            state["memory"] = self.memory.initial_state(self.ref_params, key)
        return state

    def run(self) -> dict:
        ckpt = Checkpointer(f"{self.workdir}/checkpoints", self.train_cfg.checkpoint_every,
                            self.train_cfg.keep_checkpoints)
        state = self.initial_state()
        restored = -1  # the checkpoint's step; -1: a fresh run, whose metric files start empty
        if ckpt.latest_step() is not None:
            initial, (state, record) = state, ckpt.restore(state, self.config_record)
            release(initial, keep=(self.ref_params, state))
            del initial
            restored = int(record["step"])
            if restored > self.train_cfg.steps:  # the loop would not run, and the results would be the checkpoint's
                raise CheckpointMismatch(
                    f"{self.workdir}/checkpoints/{restored} is past train.steps={self.train_cfg.steps}: the run "
                    f"would report a model trained for {restored} steps; set --config.train.steps={restored} "
                    "or more, or use a new --workdir")
            logging.info("resumed %s from step %d", self.workdir, restored)
        if jax.process_index() == 0:  # after the checkpoint accepted it: a refused config leaves the old file
            workdir_path(self.workdir).mkdir(parents=True, exist_ok=True)
            write_json(self.config_record, f"{self.workdir}/config.json")
            discard = getattr(self.evaluate, "discard_after", None)  # `task_setup.make_evaluator`'s files
            for name in discard(restored) if discard is not None else ():  # as the metric rows after `restored`
                logging.info("removed %s: this run validates the steps after %d again", name, restored)
        writer = MetricWriter(self.workdir, self.name, resume_step=restored)  # keeps rows up to `restored`
        eval_writer = None if self.evaluate is None else MetricWriter(self.workdir, f"{self.name}_eval",
                                                                       resume_step=restored)
        start = max(restored, 0)
        base_key = jax.random.key(self.seed)
        B, G = self.rl_cfg.prompts_per_step, self.sampling_cfg.num_samples
        last_eval = None
        settings = validation_settings(self.config_record)
        if self.evaluate is not None and (start == 0 or start >= self.train_cfg.steps):  # the start, or the end
            last_eval = eval_writer.last_row()  # a finished run's result, if it validated this step
            validated = last_eval is not None and last_eval["step"] == start  # not with train.steps lowered to it
            if validated and last_eval.get("validation_settings") != settings:  # eval.* or data.validation* changed
                logging.info("validating step %d again: its logged validation was made with other eval.* / "
                             "data.validation* settings", start)
                validated = False
                eval_writer.close()  # its row of this step is replaced, not followed by a second one
                eval_writer = MetricWriter(self.workdir, f"{self.name}_eval", resume_step=start - 1)
            if not multihost_utils.broadcast_one_to_all(np.int32(validated)):
                last_eval = eval_writer.write(start, {**self.evaluate(state["params"], start),
                                                      "validation_settings": settings})
        bar = tqdm(range(start, self.train_cfg.steps), initial=start, total=self.train_cfg.steps,
                   desc=self.name, disable=jax.process_index() != 0, dynamic_ncols=True)
        for step in bar:
            t_step = time.perf_counter()
            idx = prompt_order(len(self.train_problems), self.seed, step * B, B)
            problems = [self.train_problems[i] for i in idx]
            contrast = self.memory.contrast(state["memory"]) if self.memory is not None else None
            batch, metrics = rollout(state["params"], self.ref_params, self.model_cfg, self.task, problems,
                                     jax.random.fold_in(base_key, step), self.sampling_cfg, self.reward_cfg,
                                     self.adv_cfg, self.scorer, self.mesh, contrast=contrast, stops=self.stops)
            t0 = time.perf_counter()
            memory = state.pop("memory", None)  # the jitted policy update donates and returns the rest
            shuffle = np.random.default_rng([self.seed, _SHUFFLE_STREAM, step])
            per_update = []
            for _ in range(self.rl_cfg.epochs):
                for mb in _minibatches(batch, self.rl_cfg.minibatches, G, shuffle):
                    state, update_metrics = self.train_step(state, _place(mb, self.mesh))
                    per_update.append(update_metrics)
            update_metrics = jax.tree.map(lambda *v: float(np.mean(v)), *jax.device_get(per_update))
            metrics["time_update"] = time.perf_counter() - t0
            if memory is not None:  # learns this step's rollouts, which the next step's sampling avoids
                t0 = time.perf_counter()
                rows = _place((batch.tokens, batch.segments, batch.completion_mask), self.mesh)
                state["memory"], memory_metrics = jax.block_until_ready(self.memory.update(memory, *rows))
                metrics.update(jax.device_get(memory_metrics), time_memory=time.perf_counter() - t0)
            metrics["time_step"] = time.perf_counter() - t_step
            metrics.update({f"update_{k}": v for k, v in update_metrics.items()})
            metrics["learning_rate"] = float(self._lr(step))  # of the step's last optimizer update
            done = step + 1
            if done % self.train_cfg.log_every == 0 or done == self.train_cfg.steps:
                row = writer.write(done, metrics)
                bar.set_postfix_str(format_row(row, ("reward", "accuracy", "kl_k1", "response_length")))
            if self.evaluate is not None and (
                    (self.train_cfg.eval_every and done % self.train_cfg.eval_every == 0)
                    or done == self.train_cfg.steps):
                last_eval = eval_writer.write(done, {**self.evaluate(state["params"], done),
                                                     "validation_settings": settings})
            ckpt.save(done, state, {"step": done, "config": self.config_record},
                      force=done == self.train_cfg.steps)
        bar.close()
        ckpt.close()
        writer.close()
        if eval_writer is not None:
            eval_writer.close()
        self.final_state = state
        return {k: v for k, v in (last_eval or {}).items() if k != "validation_settings"}

    def _lr(self, step: int) -> float:
        """The learning rate of RL step `step`'s last update; the schedule counts optimizer updates."""
        updates = self.rl_cfg.epochs * self.rl_cfg.minibatches
        return schedule(self.optim_cfg)((step + 1) * updates - 1)
