"""Distribution-level calibration (Fan et al. 2026, "When Sharpening Becomes Collapse").

A memory network m, a small language model over the policy's vocabulary, is trained on past
rollouts, so it learns what has been produced. With mu > 0 those rollouts are samples of the
calibrated law q below, not of pi itself: the memory sees the rollouts the trainer sees. Rollouts
are then drawn from

    q(y_t | x, y_<t) ∝ exp((z_pi - mu z_m) / T)          (then top-k / top-p as usual)

where z_pi and z_m are the policy's and the memory's next-token logits: tokens the policy keeps
producing are down-weighted, which pushes exploration away from the modes the policy is collapsing
onto. At mu = 0 this is plain sampling. The trainer still optimises pi: the tokens carry their exact
log q as behaviour log-probs, so REINFORCE's importance weight pi / q (rl/losses.py) corrects for
sampling from q instead of pi: exactly with `LossConfig.is_level="sequence"` and a cap that does not
bind; the default per-token weights and the cap trade that for variance (on a 3-token toy, per-token
weights gave the expected gradient a 12-20% error, cosine 0.98-0.99 to the exact one).

After each rollout the memory takes `updates_per_step` steps of AdamW (global-norm clip 1) on

    L_m = -(1 / sum_t m_t) sum_{i,t} m_it log p_m(y_it | x_i, y_i,<t)       (completion tokens only)

Its value before the update, `memory_nll`, measures how predictable the new rollouts were from the
old ones: it falls as the policy collapses. With calibration on, the rollout metrics (accuracy,
s_pi, kl_k1) average over samples of q, not of pi; `kl_sampler_policy` = E_q[log q/pi] per sequence
says how far apart the two are, and validation samples pi itself.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from rl_sharpen import models, sampling
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.optim import OptimConfig, init_state, make_optimizer
from rl_sharpen.sampling.prompts import check_fields
from rl_sharpen.sft import make_sft_step


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    mu: float = 0.0  # weight of the memory logits subtracted before sampling, z_pi - mu z_m; 0 disables
    memory_layers: int = 0  # decoder layers of the memory network (0: as many as the policy)
    memory_init: Literal["random", "reference"] = "random"  # random: random layers, a zero (untied)
    # unembedding, so z_m = 0 (an empty memory); reference: the first `memory_layers` layers of p_ref
    learning_rate: float = 1e-4  # Adam step size of the memory network
    updates_per_step: int = 1  # memory steps on each rollout batch

    def __post_init__(self):
        check_fields(self, [
            ("mu", self.mu >= 0, "a float >= 0 (0 disables calibration)"),
            ("memory_layers", self.memory_layers >= 0, "an integer >= 0 (0: the policy's depth)"),
            ("memory_init", self.memory_init in ("random", "reference"), "'random' or 'reference'"),
            ("learning_rate", self.learning_rate > 0, "a float > 0"),
            ("updates_per_step", self.updates_per_step >= 1, "an integer >= 1"),
        ])

    @property
    def enabled(self) -> bool:
        return self.mu > 0


def memory_config(policy_cfg: ModelConfig, cal: CalibrationConfig) -> ModelConfig:
    layers = cal.memory_layers or policy_cfg.num_layers
    if layers > policy_cfg.num_layers and cal.memory_init == "reference":
        raise ValueError(f"CalibrationConfig.memory_layers={layers}; memory_init='reference' takes at most the "
                         f"reference's {policy_cfg.num_layers} layers")
    tied = policy_cfg.tie_embeddings and cal.memory_init == "reference"  # a random memory: its own zero unembedding
    return policy_cfg.replace(num_layers=layers, tie_embeddings=tied)


def init_memory(policy_cfg: ModelConfig, ref_params: dict, cal: CalibrationConfig, key: jax.Array,
                mesh=None) -> tuple[ModelConfig, dict]:
    """(memory ModelConfig, memory params): random layers under a zero unembedding (every logit 0:
    q = pi until the memory has learned something), or the reference truncated to its first layers."""
    cfg = memory_config(policy_cfg, cal)
    if cal.memory_init == "random":
        params = models.init_params(cfg, key, mesh=mesh)
        return cfg, dict(params, lm_head=jnp.zeros_like(params["lm_head"]))
    n = cfg.num_layers
    params = dict(ref_params, layers={name: w[:n] for name, w in ref_params["layers"].items()})
    return cfg, jax.tree.map(lambda x: x.copy(), params)


class Memory:
    """The memory network's config, optimizer and jitted update; its params and optimizer state
    live in the trainer's state (and so in its checkpoints)."""

    def __init__(self, policy_cfg: ModelConfig, cal: CalibrationConfig, mesh=None, *, micro_rows: int = 0,
                 remat: bool = False):
        self.cal = cal
        self.policy_cfg = policy_cfg
        self.mesh = mesh
        self.cfg = memory_config(policy_cfg, cal)
        self.optimizer = make_optimizer(OptimConfig(learning_rate=cal.learning_rate))
        # micro-batches of the policy update's rows: the whole rollout at once would not fit a device
        self._step = make_sft_step(self.cfg, self.optimizer, mesh, micro_rows=micro_rows, remat=remat)

    def initial_state(self, ref_params: dict, key: jax.Array) -> dict:
        _, params = init_memory(self.policy_cfg, ref_params, self.cal, key, self.mesh)
        return {"params": params, "opt_state": init_state(self.optimizer, params)}

    def contrast(self, state: dict) -> sampling.Contrast:
        return sampling.Contrast(state["params"], self.cfg, self.cal.mu)

    def update(self, state: dict, tokens, segments, completion_mask) -> tuple[dict, dict]:
        """`updates_per_step` NLL steps on one rollout batch; (state, {"memory_nll": L_m before them})."""
        params, opt_state = state["params"], state["opt_state"]
        nlls = []
        for _ in range(self.cal.updates_per_step):
            params, opt_state, nll, _ = self._step(params, opt_state, tokens, segments, completion_mask)
            nlls.append(nll)
        return {"params": params, "opt_state": opt_state}, {"memory_nll": nlls[0]}
