"""Supervised warm start: maximize log p(completion | prompt) on worked solutions.

Gives a tiny model the base distribution that RL then sharpens or teaches; the loss is the
token-mean negative log-likelihood of completion tokens (prompt tokens are not trained on).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from rl_sharpen.checkpoint import Checkpointer, release, resumable_change
from rl_sharpen.metrics import MetricWriter
from rl_sharpen.models import param_shardings, weight_decay_mask
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.optim import OptimConfig, init_state, make_optimizer, place
from rl_sharpen.rl.update import completion_logprobs
from rl_sharpen.sampling.prompts import bucket_width, check_fields, left_pad
from rl_sharpen.sharding import batch_sharding, mesh_of, row_groups, split_rows

SFT_STREAM = 0x736674  # tags the numpy stream of warm-start batches (see rl/trainer.py ORDER_STREAM)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 500  # optimizer steps
    batch_size: int = 64  # (prompt, completion) pairs per step
    max_completion_tokens: int = 128  # completions are cut (and their EOS lost) beyond this
    log_every: int = 50  # write metrics every N steps
    checkpoint_every: int = 100  # save params, optimizer state, batch stream every N steps and the last (0: never)

    def __post_init__(self):
        check_fields(self, [
            ("steps", self.steps >= 0, "an integer >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("max_completion_tokens", self.max_completion_tokens >= 1, "an integer >= 1"),
            ("log_every", self.log_every >= 1, "an integer >= 1"),
            ("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0 (0: no checkpoints)"),
        ])


def make_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, prompt_width: int,
               completion_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [N, P + T], segments [N, P + T], completion mask [N, T]) for (prompt, completion) pairs."""
    prompts = left_pad([p for p, _ in pairs], pad_id, prompt_width)
    comp = np.full((len(pairs), completion_width), pad_id, np.int32)
    mask = np.zeros((len(pairs), completion_width), np.float32)
    for i, (_, c) in enumerate(pairs):
        c = list(c)[:completion_width]
        comp[i, :len(c)] = c
        mask[i, :len(c)] = 1
    return (np.concatenate([prompts.tokens, comp], 1),
            np.concatenate([prompts.segment_ids, mask.astype(np.int32)], 1), mask)


def make_sft_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh=None, *, micro_rows: int = 0,
                  remat: bool = False):
    """step(params, opt_state, tokens, segments, mask) -> (params, opt_state, NLL, grad norm); with a
    `mesh`, params and state keep the rules' placement (`optim.place`).

    NLL = -sum(m log p) / sum(m) over the whole batch. With `micro_rows` dividing the batch, its
    gradient is summed in float32 over micro-batches of that many rows (one `lax.scan`, each term
    divided by the whole batch's sum(m)), so a pass holds one micro-batch's activations."""
    placement = None if mesh is None else param_shardings(cfg, mesh)

    def loss_fn(params, tokens, segments, mask, denominator):
        lp = completion_logprobs(params, cfg, tokens, segments, mask.shape[1], remat=remat, mesh=mesh)
        return -jnp.sum(lp * mask) / denominator

    grad_fn = jax.value_and_grad(loss_fn)

    def gradients(params, tokens, segments, mask):
        denominator = jnp.maximum(mask.sum(), 1.0)
        if (groups := row_groups(tokens.shape[0], micro_rows)) == 1:
            return grad_fn(params, tokens, segments, mask, denominator)

        def accumulate(total, micro):
            loss, g = grad_fn(params, *micro, denominator)
            return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), total, g), loss

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        micro_batches = tuple(split_rows(x, groups, mesh) for x in (tokens, segments, mask))
        grads, losses = jax.lax.scan(accumulate, zeros, micro_batches)
        return losses.sum(), jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    def step(params, opt_state, tokens, segments, mask):
        loss, grads = gradients(params, tokens, segments, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if placement is not None:
            params, opt_state = place(optimizer, params, opt_state, placement)
        return params, opt_state, loss, optax.tree.norm(grads)

    return jax.jit(step, donate_argnums=(0, 1))


def train_sft(params, cfg: ModelConfig, sample_pairs: Callable[[np.random.Generator, int], list],
              sft_cfg: SFTConfig, optim_cfg: OptimConfig, pad_id: int, workdir: str, seed: int = 0,
              prompt_width: int | None = None, config_record: dict | None = None,
              on_start: Callable[[], None] | None = None, config_allows: Callable[[str], bool] = resumable_change):
    """Trains on batches from `sample_pairs(rng, n) -> [(prompt ids, completion ids)]`; returns params
    (`params` are consumed: donated to the first step, or deleted once a checkpoint is restored).

    Every `sft_cfg.checkpoint_every` steps (0: never) and at the last one it saves params, optimizer
    state, the batch stream's numpy state and the padded width under `<workdir>/sft_checkpoints`, with
    `config_record` (default: the SFT and optimizer settings and the seed), so a killed run started
    again resumes where it was and draws the same batches as an uninterrupted one; a record that
    differs in a field that changes the math is refused (`Checkpointer.restore`; `config_allows(field)`
    names the fields that may differ). `on_start()` runs once
    the checkpoint, if any, has accepted the record, before the first step."""
    optimizer = make_optimizer(optim_cfg, weight_decay_mask(cfg))
    state = {"params": params, "opt_state": init_state(optimizer, params)}
    mesh = mesh_of(params)
    step_fn = make_sft_step(cfg, optimizer, mesh)
    rng = np.random.default_rng([seed, SFT_STREAM])  # default_rng(seed) would be the synthetic draw's [seed, 0]
    width = prompt_width or 0
    record = config_record or {"sft": dataclasses.asdict(sft_cfg), "optim": dataclasses.asdict(optim_cfg),
                               "seed": seed}
    ckpt = None
    if sft_cfg.checkpoint_every:
        ckpt = Checkpointer(f"{workdir}/sft_checkpoints", sft_cfg.checkpoint_every, keep=1)
    start = 0
    if ckpt is not None and ckpt.latest_step() is not None:
        initial, (state, saved) = state, ckpt.restore(state, record, allowed=config_allows)
        release(initial, keep=state)  # the caller's params: consumed, as the first step's donation would
        del initial
        start, width = int(saved["step"]), int(saved["width"])
        rng.bit_generator.state = saved["rng"]
        logging.info("resumed the warm start in %s/sft_checkpoints from step %d", workdir, start)
    if on_start is not None:
        on_start()
    writer = MetricWriter(workdir, "sft", resume_step=start)  # keeps the rows up to the checkpoint
    bar = tqdm(range(start, sft_cfg.steps), initial=start, total=sft_cfg.steps, desc="sft", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    for step in bar:
        pairs = sample_pairs(rng, sft_cfg.batch_size)
        # the padded width only grows (by bucket widths), so a run compiles the step a few times at most
        width = max(width, bucket_width(max(len(p) for p, _ in pairs)))
        batch = make_batch(pairs, pad_id, width, sft_cfg.max_completion_tokens)  # the same on every host
        if mesh is not None:  # rows over the data axes (replicated where they do not divide the batch)
            batch = [jax.device_put(x, batch_sharding(mesh, x.ndim, x.shape)) for x in batch]
        state["params"], state["opt_state"], loss, gnorm = step_fn(state["params"], state["opt_state"], *batch)
        if (step + 1) % sft_cfg.log_every == 0 or step + 1 == sft_cfg.steps:
            row = writer.write(step + 1, {"nll": loss, "grad_norm": gnorm})
            bar.set_postfix(nll=f"{row['nll']:.3f}")
        if ckpt is not None:
            ckpt.save(step + 1, state, {"step": step + 1, "width": width, "rng": rng.bit_generator.state,
                                        "config": record}, force=step + 1 == sft_cfg.steps)
    writer.close()
    if ckpt is not None:
        ckpt.close()
    return state["params"]
