"""Resumable training checkpoints with orbax.

A checkpoint holds the train state pytree (params, optimizer state, step, and the calibration memory
when there is one) and a JSON record (step, the config it was made with); rollout keys and prompt
order are functions of (seed, step), so nothing else is needed to resume. Orbax writes each step
to a temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact. Restoring into a run whose config differs in a field that changes the math raises an
error naming the fields.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from rl_sharpen.metrics import workdir_path

# Fields that may change between a run and its resumption without changing its results: the
# schedule of the loop, how an update is computed (micro-batches, chunks, rematerialization give
# the same math up to float summation order), e.g. a smaller rl.micro_batch after running out of
# memory; the device mesh (a preempted job resumed on another slice: the state is resharded on
# restore, and sampling draws the same tokens on any mesh); and validation, which has its own keys
# and does not feed training (its verifier timeout does: it also grades the rollouts).
RESUMABLE_CHANGES = ("train.steps", "train.checkpoint_every", "train.log_every", "train.eval_every",
                     "train.keep_checkpoints", "train.save_policy", "rl.micro_batch", "rl.logprob_chunk", "rl.remat",
                     "rl.prompt_padding", "sampling.fast_decode",  # padded widths; the sampler's decode program
                     "demo.regimes",  # a demo's regime runs each record their own reward
                     "sft.checkpoint_every", "sft.log_every")
RESUMABLE_GROUPS = ("mesh.", "eval.", "data.validation", "binary_rewards.")  # the last: a mode without checkpoints
NOT_RESUMABLE = ("eval.verify_timeout",)
# Fields added to the config after runs were checkpointed, with the value that does what those runs
# did: a record without the field resumes as if it held that value (any other value is a change).
# (Before `synthetic_validation_seed`, the synthetic validation set was drawn with the run's seed: a
# resumed older seed-s run validates on seed 0's set instead, a change of validation only, since
# nothing was held out of its training problems.)
# A callable value computes it from the old record (flattened): runs with weight decay decayed every
# parameter; without it, norms and biases were not decayed either.
ADDED_FIELDS = {"loss.is_level": "token", "data.synthetic_hold_out": False, "data.synthetic_validation_seed": 0,
                "data.synthetic_hold_out_openings": False, "data.task": "", "sampling.stop_strings": [],
                "data.thinking": "", "data.max_prompt_tokens": 0,
                "optim.decay_norms_and_biases": lambda old: old.get("optim.weight_decay", 0) > 0}


def resumable_change(field: str) -> bool:
    """Whether the flattened config `field` ("optim.learning_rate") may differ on resumption."""
    return field in RESUMABLE_CHANGES or (field.startswith(RESUMABLE_GROUPS) and field not in NOT_RESUMABLE)


class CheckpointMismatch(ValueError):
    pass


def config_changes(old: dict, new: dict, allowed=lambda field: False) -> str:
    """"field: old -> new, ..." for the flattened fields of two config records that differ (at most
    8 named, then how many more), leaving out the `allowed` ones; "" when none. A field missing from
    `old` that is in `ADDED_FIELDS` counts as the value given there."""
    old, new = flatten_config(old), flatten_config(new)
    old.update({k: v(old) if callable(v) else v for k, v in ADDED_FIELDS.items() if k in new and k not in old})
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not allowed(k))
    detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
    return detail + (f", and {len(changed) - 8} more" if len(changed) > 8 else "")


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def buffers(tree) -> set[int]:
    """The device buffers of the arrays of `tree` (of this process's shards)."""
    return {shard.data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)
            and not x.is_deleted() for shard in x.addressable_shards}


def release(tree, keep=None) -> None:
    """Deletes the arrays of `tree` that share no buffer with `keep`: a resumed run's initial state,
    which its callers still reference, would otherwise stay on the devices beside the restored one."""
    kept = buffers(keep)
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and not x.is_deleted() and buffers(x).isdisjoint(kept):
            x.delete()


class Preempted(Exception):
    """A multi-process run stopped at a preemption notice (SIGTERM to a process), its step saved."""


class Checkpointer:
    """Saves every `every` steps into `directory` (local, or a gs:// / s3:// URL), keeping the newest `keep`."""

    def __init__(self, directory: str, every: int, keep: int = 2):
        self.directory = workdir_path(directory)
        policies = ocp.checkpoint_managers  # orbax's default also saves a run's first step: not wanted
        save_when = policies.AnySavePolicy([policies.FixedIntervalPolicy(max(1, every)),
                                            policies.PreemptionCheckpointingPolicy()])
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_decision_policy=save_when,
                                                 create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, record: dict, force: bool = False) -> bool:
        """Saves `step` if it is due. Raises Preempted once every process of a `jax.distributed` run
        has reached the step agreed after a SIGTERM (JAX's preemption notifier catches the signal,
        so the run would otherwise go on to its end); that step is saved first."""
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=force)
        self.manager.wait_until_finished()
        if self.manager.reached_preemption(step):
            self.manager.close()
            raise Preempted(f"{self.directory}: stopped at step {step} on a preemption notice (SIGTERM), "
                            "its checkpoint saved; the same command resumes from it")
        return saved

    def restore(self, abstract_state, config: dict, step: int | None = None, allowed=resumable_change):
        """(state, record) of `step` (default: latest), placed like `abstract_state`; refused when its
        recorded config differs from `config` in a field that `allowed` does not accept."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        try:
            record = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        except Exception as e:  # orbax raises several types for unreadable steps
            raise CheckpointMismatch(self._unreadable(step, "unreadable checkpoint record", e)) from e
        detail = config_changes(record.get("config", {}), json.loads(json.dumps(config)), allowed)
        if detail:
            raise CheckpointMismatch(f"{self.directory}/{step} was made with another config ({detail}); "
                                     "use a new --workdir or restore the original config")
        target = jax.tree.map(lambda a: ocp.utils.to_shape_dtype_struct(a) if hasattr(a, "shape") else a,
                              abstract_state)
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
        except Exception as e:
            raise CheckpointMismatch(self._unreadable(step, "cannot restore the train state", e)) from e
        return state, record

    def _unreadable(self, step: int, what: str, error: Exception) -> str:
        """The error of an unreadable step: orbax's reason (TensorStore's can run to kilobytes, cut at
        400 characters) and, where earlier steps are kept, how to resume from the newest of them."""
        reason = " ".join(str(error).split())  # on one line
        reason = reason if len(reason) <= 400 else reason[:400] + " ..."
        message = f"{self.directory}/{step}: {what} ({type(error).__name__}: {reason})"
        if earlier := [s for s in self.manager.all_steps() if s < step]:
            message += (f"; the steps kept before it are {sorted(earlier)}: move {self.directory}/{step} out of the "
                        f"directory to resume from step {max(earlier)}")
        return message

    def close(self):
        self.manager.close()
