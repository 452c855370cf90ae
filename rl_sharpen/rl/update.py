"""The jitted, sharded policy update: teacher-forced log-probs, the policy loss, gradient
accumulation over micro-batches, and one optax step, with the train state donated.

A rollout batch holds N = prompts x G sequences, each `prompt ++ completion` of width P + T:
completion token j sits at column P + j, and its log-prob is column P + j - 1 of the shifted
teacher-forced log-probs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rl_sharpen import sharding as shd
from rl_sharpen.models import param_shardings, token_logprobs
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.optim import place
from rl_sharpen.rl import losses


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainBatch:
    tokens: jax.Array  # [N, P + T] int32: left-padded prompt, then the completion (pad after EOS)
    segments: jax.Array  # [N, P + T] int32: 1 on real tokens, 0 on padding
    completion_mask: jax.Array  # [N, T] f32: 1 on generated tokens (EOS included)
    behaviour_logprobs: jax.Array  # [N, T] f32: log mu, the distribution actually sampled
    old_logprobs: jax.Array  # [N, T] f32: log pi_old at temperature 1 (exact, from the sampler)
    ref_logprobs: jax.Array  # [N, T] f32: log p_ref
    advantages: jax.Array  # [N] f32
    correct: jax.Array  # [N] f32


def completion_logprobs(params, cfg: ModelConfig, tokens, segments, completion_width: int, *,
                        chunk: int = 512, remat: bool = False, mesh=None) -> jax.Array:
    """log pi(y_j | x, y_<j) for the T completion columns, float32 [N, T]."""
    return token_logprobs(params, cfg, tokens, segments, chunk=chunk, remat=remat, last=completion_width, mesh=mesh)


def loss_denominator(mask: jax.Array, aggregation: str) -> jax.Array:
    """The count a whole-batch loss divides by: its tokens (token-mean) or its non-empty sequences.

    Every micro-batch divides by this global count, so the micro-batch losses sum to the exact loss
    of the whole batch however the tokens fall between micro-batches.
    """
    if aggregation == "token-mean":
        return jnp.maximum(mask.sum(), 1.0)
    return jnp.maximum((mask.sum(axis=-1) > 0).sum(), 1).astype(jnp.float32)


def make_train_step(cfg: ModelConfig, loss_cfg: losses.LossConfig, optimizer: optax.GradientTransformation, *,
                    num_micro: int, group_size: int, chunk: int = 512, remat: bool = True, mesh=None):
    """train_step(state, batch) -> (state, metrics); state = {"params", "opt_state", "step"}.

    The batch is cut into `num_micro` micro-batches of whole groups; their gradients are summed in
    float32 inside one `lax.scan`, each micro-batch loss divided by the global `loss_denominator`,
    so the step equals one step on the whole batch. With a `mesh`, every micro-batch is spread over
    its data axes and the new state keeps the rules' placement (`optim.place`).

    Metrics: `loss` (the KL penalty included), `grad_norm` (global norm before the optimizer's
    clipping), and the loss's own metrics as means over the whole batch's completion tokens, or over
    its groups for `losses.Ratio` ones, whatever `num_micro` is.
    """
    placement = None if mesh is None else param_shardings(cfg, mesh)

    def loss_fn(params, mb: TrainBatch, denominator):
        width = mb.completion_mask.shape[1]
        lp = completion_logprobs(params, cfg, mb.tokens, mb.segments, width, chunk=chunk, remat=remat, mesh=mesh)
        inputs = losses.LossInputs(mask=mb.completion_mask, behaviour_logprobs=mb.behaviour_logprobs,
                                   advantages=mb.advantages, old_logprobs=mb.old_logprobs,
                                   ref_logprobs=mb.ref_logprobs, correct=mb.correct, group_size=group_size)
        return losses.policy_loss(lp, inputs, loss_cfg, denominator=denominator, ratio_parts=True)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict[str, Any], batch: TrainBatch):
        n = batch.tokens.shape[0]
        if n % num_micro or (n // num_micro) % group_size:
            raise ValueError(f"batch of {n} sequences cannot be split into {num_micro} micro-batches of whole "
                             f"groups of {group_size}")
        denominator = loss_denominator(batch.completion_mask, loss_cfg.aggregation)
        token_share = batch.completion_mask.reshape(num_micro, -1).sum(1) / jnp.maximum(batch.completion_mask.sum(), 1)
        micro = jax.tree.map(lambda x: shd.split_rows(x, num_micro, mesh), batch)

        def accumulate(grads, xs):
            mb, share = xs
            (loss, metrics), g = grad_fn(state["params"], mb, denominator)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            # token means weighted by the micro-batch's token share; group means (Ratio) add their parts
            weighted = {k: m if isinstance(m, losses.Ratio) else share * m for k, m in metrics.items()}
            return grads, (loss, weighted)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
        grads, (micro_losses, metrics) = jax.lax.scan(accumulate, zeros, (micro, token_share))
        metrics = losses.metric_values(jax.tree.map(lambda m: m.sum(0), metrics))
        metrics.pop("policy_loss", None)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: (p.astype(jnp.float32) + u).astype(p.dtype), state["params"], updates)
        if placement is not None:
            params, opt_state = place(optimizer, params, opt_state, placement)
        metrics.update(loss=micro_losses.sum(), grad_norm=grad_norm)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return train_step
