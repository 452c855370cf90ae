"""One rollout: sample G completions per prompt, verify them, score them under the reference,
and turn everything into rewards, advantages and a `TrainBatch`.

The sampler returns, for every generated token, its exact temperature-1 log-prob under the policy
that sampled it, so these serve as the "old" log-probs with no extra forward pass; the reference
model adds one teacher-forced pass.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rl_sharpen import sampling
from rl_sharpen import sharding as shd
from rl_sharpen.models import next_token_map
from rl_sharpen.models.config import ModelConfig
from rl_sharpen.rl import advantages as adv
from rl_sharpen.rl import rewards as rw
from rl_sharpen.rl.update import TrainBatch, completion_logprobs
from rl_sharpen.sharding import host_array


class Task(Protocol):
    """What a rollout needs from a task: prompts as token ids, text back, and its grader's verdicts
    (`task_setup.register_task` lists what a whole run needs)."""

    def prompt_ids(self, problem) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str:
        """A completion's text, up to its first stop token."""
        ...

    def score(self, completions: Sequence[str], problems: Sequence) -> tuple[np.ndarray, list[str | None], dict]:
        """(correct [N] float32, answer keys (None: no answer), grader counters such as timeouts)."""
        ...


def answer_ids(answers: Sequence[str | None], group_size: int) -> np.ndarray:
    """Integer id per answer, equal ids for equal answers within a group, -1 for no answer."""
    ids = np.full(len(answers), -1, np.int32)
    for start in range(0, len(answers), group_size):
        seen: dict[str, int] = {}
        for i in range(start, start + group_size):
            if answers[i] is not None:
                ids[i] = seen.setdefault(answers[i], len(seen))
    return ids


def map_rows(fn, arrays: Sequence[jax.Array], rows: int, mesh=None):
    """fn(*arrays) computed `rows` rows at a time (a `lax.map` over consecutive groups of rows, each
    group spread over the mesh's batch axes), so that a pass holds the activations of `rows` rows, not
    of the whole batch; fn returns a pytree of [group rows, ...] arrays. rows = 0, or rows that do not
    divide the batch: one call over every row."""
    n = arrays[0].shape[0]
    if (groups := shd.row_groups(n, rows)) == 1:
        return fn(*arrays)

    out = jax.lax.map(lambda xs: fn(*xs), [shd.split_rows(x, groups, mesh) for x in arrays])
    return jax.tree.map(lambda y: shd.constrain_rows(y.reshape(n, *y.shape[2:]), mesh), out)


@dataclasses.dataclass
class Scorer:
    """Jitted teacher-forced passes over `prompt ++ completion` batches, `rows` rows at a time (0: all
    at once; the trainer passes its update's micro-batch), rows kept over the mesh's batch axes."""

    cfg: ModelConfig
    chunk: int = 512
    rows: int = 0
    mesh: Any = None

    def __post_init__(self):
        self.logprobs = jax.jit(self._logprobs, static_argnums=3)
        self.token_stats = jax.jit(self._token_stats, static_argnums=3)

    def _logprobs(self, params, tokens, segments, width):
        return map_rows(lambda t, s: completion_logprobs(params, self.cfg, t, s, width, chunk=self.chunk,
                                                         mesh=self.mesh), (tokens, segments), self.rows, self.mesh)

    def _token_stats(self, params, tokens, segments, width):
        """`rw.token_statistics` at the `width` completion positions, over `chunk` positions at a time."""
        def stats(logits, _):
            return rw.token_statistics(logits)

        return map_rows(lambda t, s: next_token_map(params, self.cfg, t, s, stats, chunk=self.chunk, last=width,
                                                    mesh=self.mesh), (tokens, segments), self.rows, self.mesh)


def rollout(policy_params, ref_params, cfg: ModelConfig, task: Task, problems: Sequence, rng: jax.Array,
            sampling_cfg: "sampling.SamplingConfig", reward_cfg: rw.RewardConfig, adv_cfg: adv.AdvantageConfig,
            scorer: Scorer, mesh=None, contrast: "sampling.Contrast | None" = None,
            stops: "sampling.StopStrings | None" = None
            ) -> tuple[TrainBatch, dict[str, Any]]:
    """(TrainBatch of B*G rows, metrics) for prompts `problems` (B of them); a `contrast` samples
    from the calibrated law (rl/calibration.py); `stops` is the automaton of `sampling_cfg.stop_strings`.

    The metrics are means over the B*G samples y ~ q, where q is the law sampled: the policy pi itself
    at temperature 1 without top-k / top-p or calibration, else a tempered, truncated or calibrated
    law. S_pi = sum_t log pi(y_t | .) and S_ref (the same under p_ref) are in nats per sequence.

      reward, reward_<c>     the total reward R and each mixture component before its weight
      accuracy, answered     the task reward's mean, and the share of samples with an extracted answer
      s_pi, s_ref            E_q[S_pi], E_q[S_ref]
      kl_k1                  E_q[S_pi - S_ref]: KL(pi || p_ref) when q = pi, otherwise only a q-average
      entropy_estimate       E_q[-S_pi]: the sequence entropy H(pi) when q = pi, otherwise the
                             cross-entropy of pi under q (neither H(pi) nor H(q))
      kl_sampler_policy      E_q[log q(y) - S_pi] = KL(q || pi) per sequence (not logged when greedy)
    """
    G = sampling_cfg.num_samples
    timings = {}
    t0 = time.perf_counter()
    prompts = [task.prompt_ids(p) for p in problems]
    out = sampling.generate(policy_params, cfg, prompts, rng, sampling_cfg, mesh=mesh, contrast=contrast, stops=stops)
    tokens, lengths, finished = host_array(out.tokens), host_array(out.lengths), host_array(out.finished)
    timings["time_sample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [task.decode(tokens[i, :lengths[i]]) for i in range(len(tokens))]
    expanded = [p for p in problems for _ in range(G)]
    if jax.process_index() == 0:  # process 0 grades (its own timeouts); the other hosts take its verdicts
        correct, answers, verify_stats = task.score(texts, expanded)
    else:
        correct, answers, verify_stats = np.zeros(len(texts), np.float32), [None] * len(texts), {}
    ids = answer_ids(answers, G)
    if jax.process_count() > 1:
        correct, ids = multihost_utils.broadcast_one_to_all((np.asarray(correct, np.float32), ids))
    T = tokens.shape[1]
    full_tokens, full_segments = out.sequences()
    mask_j = out.completion_mask.astype(jnp.float32)  # placed like the samples (rows over the data axes)
    # 0 after the completion, as the sampler's own log-probs are (the scorer reads pad tokens there)
    ref_lp = jnp.where(mask_j > 0, scorer.logprobs(ref_params, full_tokens, full_segments, T), 0.0)
    policy_lp = jnp.asarray(out.logprobs, jnp.float32)
    stats = {}
    if rw.needs_token_statistics(reward_cfg):
        stats = scorer.token_stats(policy_params, full_tokens, full_segments, T)
    inputs = rw.RewardInputs(completion_mask=mask_j, correct=jnp.asarray(correct, jnp.float32),
                             answer_ids=jnp.asarray(ids), ref_logprobs=ref_lp,
                             policy_logprobs=policy_lp, group_size=G, vocab_size=cfg.vocab_size, **stats)
    rewards, components = rw.compute_rewards(inputs, reward_cfg)
    advantages = jax.block_until_ready(adv.compute_advantages(rewards, G, adv_cfg, correct=inputs.correct))
    timings["time_score"] = time.perf_counter() - t0  # waited for: async dispatch would bill it to the update

    batch = TrainBatch(tokens=full_tokens, segments=full_segments, completion_mask=mask_j,
                       behaviour_logprobs=jnp.asarray(out.sampled_logprobs, jnp.float32), old_logprobs=policy_lp,
                       ref_logprobs=ref_lp, advantages=advantages, correct=inputs.correct)
    seq_ref = jnp.sum(ref_lp * mask_j, axis=1)
    seq_pi = jnp.sum(policy_lp * mask_j, axis=1)
    metrics = {
        "reward": rewards.mean(), "accuracy": float(correct.mean()),
        "response_length": float(lengths.mean()), "finished": float(finished.mean()),
        "s_ref": seq_ref.mean(), "s_pi": seq_pi.mean(),
        "kl_k1": (seq_pi - seq_ref).mean(),  # E_q[S_pi - S_ref] (KL(pi || p_ref) if q = pi)
        "entropy_estimate": -seq_pi.mean(),  # E_q[-S_pi] (H(pi) if q = pi)
        "advantage_abs": jnp.abs(advantages).mean(),
        "answered": float(np.mean(ids >= 0)),  # from the shared answer ids: the same on every host
        **{f"reward_{k}": v.mean() for k, v in components.items()},
        **{f"verify_{k}": v for k, v in verify_stats.items()},
        **timings,
    }
    if not sampling_cfg.is_greedy:  # E_q[log q/pi] per sequence, q the law sampled (temperature, top-k/p, calibration)
        metrics["kl_sampler_policy"] = (jnp.sum(batch.behaviour_logprobs * mask_j, axis=1) - seq_pi).mean()
    return batch, metrics
