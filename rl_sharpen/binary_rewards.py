"""Binary rewards on an exactly enumerable autoregressive model (Dymetman 2026, "Binary Rewards and
RL"; Kruszewski et al. 2026, "Whatever Remains Must Be True").

Sequences are all V^T strings y of T tokens from {0 .. V-1}, so every expectation below is an exact
sum. The base model a is autoregressive (one random softmax per prefix); y is valid, v(y) = 1, when
sum_t y_t <= `max_token_sum`, a constraint that couples every position. With mu = a(v = 1):

  filtered model    p*(y)     = a(y) v(y) / mu
  tilted model      p_beta(y) = a(y) e^{v(y)/beta} / Z_beta,      Z_beta = mu e^{1/beta} + 1 - mu
  validity rate     nu(beta)  = p_beta(v = 1) = mu e^{1/beta} / Z_beta
  inverse           1/beta    = log(nu (1 - mu) / (mu (1 - nu)))
  divergences       KL(p* || p_beta) = -log nu,   KL(p_beta || a) = nu / beta - log Z_beta,   KL(p* || a) = -log mu

KL-controlled RL maximizes E_pi[v] - beta KL(pi || a) = beta (log Z_beta - KL(pi || p_beta)): over all
distributions its optimum is p_beta, which tends to p* as beta -> 0 (binary rewards alone have
infinitely many maximizers; the KL term selects one). Two policy families:

  autoregressive   one softmax per prefix: represents every distribution, p_beta included;
  factorized       pi(y) = prod_t pi_t(y_t): cannot represent p* (misspecified).

In the factorized family min KL(pi || p_beta) is mode seeking: as beta -> 0 the invalid mass costs
1/beta, and the only factorized distributions with no invalid mass live on product sets
S_1 x ... x S_T inside the valid set, so the policy concentrates on fewer and fewer valid outputs
(diversity collapse). alpha-DPG minimizes the Amari alpha-divergence toward p* instead,

  D_alpha(p* || pi) = (sum_y p*(y)^alpha pi(y)^(1 - alpha) - 1) / (alpha (alpha - 1)),  alpha = 1: KL(p* || pi),

which is mass covering: at alpha = 1 the factorized optimum is the product of p*'s marginals.
Every fit here is gradient descent on the exact objective (no sampling); the sampled estimators
the trainer uses (`rl.losses`) estimate these same gradients.

Diagnostics of a policy pi: validity pi(v = 1); effective number of valid outputs
exp(H(pi(. | v = 1))) (p*: exp(H(p*))); coverage@k = sum_y p*(y) (1 - (1 - pi(y))^k), the chance
that k samples of pi contain an output drawn from p*.

    python -m rl_sharpen.main --config=configs/binary_rewards.py --workdir=/tmp/binary_rewards
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_sharpen.evaluation import text_table
from rl_sharpen.metrics import save_png, workdir_path, write_json
from rl_sharpen.sampling.prompts import check_fields

Family = Literal["autoregressive", "factorized"]


@dataclasses.dataclass(frozen=True)
class BinaryRewardsConfig:
    vocab_size: int = 3  # V: tokens 0 .. V-1
    length: int = 5  # T: every sequence has T tokens, V^T sequences in all
    max_token_sum: int = 4  # y is valid when sum_t y_t <= max_token_sum
    base_scale: float = 0.7  # std of the base model's random logits (one row per prefix)
    betas: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01)  # KL-control coefficients, largest first
    alphas: tuple[float, ...] = (0.5, 1.0)  # alpha-DPG divergences D_alpha(p* || pi), alpha in (0, 1]
    steps: int = 4000  # Adam steps of each exact-gradient fit
    learning_rate: float = 0.05  # Adam step size of the fits
    restarts: int = 8  # factorized fits also run from this many perturbed starts (the best is reported beside)
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)  # coverage@k reported

    def __post_init__(self):
        checks = [("vocab_size", self.vocab_size >= 2, "an integer >= 2"),
                  ("length", self.length >= 2 and self.vocab_size ** self.length <= 1 << 16,
                   "an integer >= 2 with vocab_size ** length <= 65536"),
                  ("max_token_sum", 0 <= self.max_token_sum < (self.vocab_size - 1) * self.length,
                   "an integer in [0, (vocab_size - 1) * length): some sequences valid, some not"),
                  ("betas", len(self.betas) > 0 and all(0 < b < math.inf for b in self.betas), "finite floats > 0"),
                  ("alphas", all(0 < a <= 1 for a in self.alphas), "floats in (0, 1]"),
                  ("steps", self.steps >= 1, "an integer >= 1"),
                  ("learning_rate", 0 < self.learning_rate < math.inf, "a finite float > 0"),
                  ("restarts", self.restarts >= 0, "an integer >= 0"),
                  ("base_scale", 0 <= self.base_scale < math.inf, "a finite float >= 0 (0: a uniform base model)"),
                  ("ks", len(self.ks) > 0 and all(k >= 1 for k in self.ks), "integers >= 1")]
        check_fields(self, checks)


@dataclasses.dataclass(frozen=True)
class SequenceSpace:
    """All V^T sequences [N, T] in lexicographic order and, for each token, the id of its prefix
    y_{<t} among the (V^T - 1) / (V - 1) prefixes of length < T."""

    vocab_size: int
    length: int
    sequences: np.ndarray
    prefix_ids: np.ndarray

    @classmethod
    def build(cls, vocab_size: int, length: int) -> "SequenceSpace":
        V, T = vocab_size, length
        seqs = np.stack(np.unravel_index(np.arange(V ** T), (V,) * T), axis=1).astype(np.int32)
        ids = np.zeros_like(seqs)
        for t in range(1, T):
            offset = (V ** t - 1) // (V - 1)  # prefixes shorter than t come first
            ids[:, t] = offset + np.ravel_multi_index(tuple(seqs[:, :t].T), (V,) * t)
        return cls(V, T, seqs, ids)

    @property
    def num_prefixes(self) -> int:
        return (self.vocab_size ** self.length - 1) // (self.vocab_size - 1)

    def param_shape(self, family: Family) -> tuple[int, int]:
        return (self.num_prefixes if family == "autoregressive" else self.length, self.vocab_size)

    def log_probs(self, logits: jax.Array, family: Family) -> jax.Array:
        """log pi(y) [N] of every sequence: sum_t log softmax(logits[row_t(y)])[y_t], where row_t(y)
        is the prefix id (autoregressive) or the position t (factorized)."""
        rows = self.prefix_ids if family == "autoregressive" else np.arange(self.length)[None, :]
        token_lp = jax.nn.log_softmax(logits, axis=-1)[rows, self.sequences]
        return token_lp.sum(axis=-1)


def validity(space: SequenceSpace, max_token_sum: int) -> np.ndarray:
    """v(y) [N] bool: sum_t y_t <= max_token_sum."""
    return space.sequences.sum(axis=1) <= max_token_sum


def _masked_log(log_p: jax.Array, keep) -> jax.Array:
    return jnp.where(keep, log_p, -jnp.inf)


def filtered(log_a: jax.Array, valid) -> jax.Array:
    """log p*(y) = log a(y) - log mu on valid y, -inf elsewhere."""
    log_valid = _masked_log(log_a, valid)
    return log_valid - jax.nn.logsumexp(log_valid)


def tilted(log_a: jax.Array, valid, beta: float) -> jax.Array:
    """log p_beta(y) = log a(y) + v(y) / beta - log Z_beta."""
    log_q = log_a + jnp.where(valid, 1.0 / beta, 0.0)
    return log_q - jax.nn.logsumexp(log_q)


def _check_base_validity(mu: float) -> None:
    if not 0 < mu < 1:
        raise ValueError(f"base validity mu={mu}; allowed: 0 < mu < 1")


def validity_rate(mu: float, beta: float) -> float:
    """nu(beta) = mu e^{1/beta} / (mu e^{1/beta} + 1 - mu), in a form that does not overflow."""
    _check_base_validity(mu)
    return 1.0 / (1.0 + (1.0 - mu) / mu * math.exp(-1.0 / beta))


def beta_for_validity(mu: float, nu: float) -> float:
    """The beta whose tilted model has validity rate nu (mu < nu < 1): 1 / log(nu (1 - mu) / (mu (1 - nu)))."""
    _check_base_validity(mu)
    if not mu < nu < 1:
        raise ValueError(f"target validity nu={nu}; allowed: mu={mu} < nu < 1")
    return 1.0 / math.log(nu * (1 - mu) / (mu * (1 - nu)))


def kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) = sum_y p(y) (log p(y) - log q(y)), with 0 log 0 = 0."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0))


def kl_control_loss(log_pi: jax.Array, log_a: jax.Array, valid, beta: float) -> jax.Array:
    """-(E_pi[v] - beta KL(pi || a)): the negated KL-controlled RL objective."""
    return -jnp.sum(jnp.exp(log_pi) * valid) + beta * kl(log_pi, log_a)


def alpha_divergence(log_target: jax.Array, log_pi: jax.Array, alpha: float) -> jax.Array:
    """D_alpha(p || pi) = (sum_y p^alpha pi^(1-alpha) - 1) / (alpha (alpha - 1)); KL(p || pi) at alpha = 1."""
    if alpha == 1:
        return kl(log_target, log_pi)
    mixed = jnp.exp(jax.nn.logsumexp(alpha * log_target + (1 - alpha) * log_pi))
    return (mixed - 1) / (alpha * (alpha - 1))


def fit(space: SequenceSpace, family: Family, init_logits, loss_of_log_pi, steps: int,
        learning_rate: float) -> jax.Array:
    """Logits of `family` minimizing loss_of_log_pi(log pi) by Adam on the exact gradient. Adam's
    second-moment decay is 0.99 rather than 0.999 so that it forgets the large early gradients of
    the validity term: at small beta the KL gradients that then shape the fit are 1/beta smaller."""
    opt = optax.adam(learning_rate, b2=0.99)

    @jax.jit
    def run(logits):
        def step(carry, _):
            logits, state = carry
            grads = jax.grad(lambda p: loss_of_log_pi(space.log_probs(p, family)))(logits)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(logits, updates), state), None

        return jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)[0][0]

    return run(jnp.asarray(init_logits, jnp.float32))


def factorized_projection(log_p: jax.Array, space: SequenceSpace) -> jax.Array:
    """Factorized logits [T, V] minimizing KL(p || pi): log of p's marginals at each position."""
    p = jnp.exp(log_p)
    marginals = jnp.stack([jnp.zeros(space.vocab_size).at[space.sequences[:, t]].add(p) for t in range(space.length)])
    return jnp.log(marginals)


def diagnostics(log_pi: jax.Array, log_star: jax.Array, valid, ks) -> dict:
    """Validity, effective number of valid outputs, KL(p* || pi) and coverage@k of a policy."""
    pi = jnp.exp(log_pi)
    p_star = jnp.exp(log_star)
    nu = jnp.sum(jnp.where(valid, pi, 0.0))
    log_cond = _masked_log(log_pi, valid) - jnp.log(nu)
    out = {"validity": float(nu),
           "effective_valid_outputs": float(jnp.exp(-kl(log_cond, jnp.zeros_like(log_cond)))),
           "kl_filtered_to_policy": float(kl(log_star, log_pi))}
    for k in ks:
        out[f"coverage@{k}"] = float(jnp.sum(p_star * -jnp.expm1(k * jnp.log1p(-pi))))  # 1 - (1 - pi)^k
    return out


def run_experiment(cfg: BinaryRewardsConfig, seed: int = 0, workdir: str | None = None) -> dict:
    """KL control at every beta and alpha-DPG at every alpha, in both policy families, from the
    policy closest to the base model (a itself; its marginals for the factorized family): the fit
    that gradient flow from the base reaches. Each run records its final objective (the loss fitted).
    The factorized objectives have several local minima, so each factorized fit also runs from
    `cfg.restarts` perturbed starts (its start + 2 N(0, 1) per logit), and the run records the lowest
    objective found and its diagnostics under "best_of_restarts" (the start from the base included).
    Returns (and writes to workdir/binary_rewards.json, with a PNG) the closed forms and every fit's
    diagnostics."""
    space = SequenceSpace.build(cfg.vocab_size, cfg.length)
    valid = validity(space, cfg.max_token_sum)
    base_logits = cfg.base_scale * jax.random.normal(jax.random.key(seed), space.param_shape("autoregressive"))
    log_a = space.log_probs(base_logits, "autoregressive")
    log_star = filtered(log_a, valid)
    mu = float(jnp.sum(jnp.exp(log_a) * valid))
    starts = {"autoregressive": base_logits, "factorized": factorized_projection(log_a, space)}
    restart_keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), cfg.restarts)

    def record(name, family, logits, **extra):
        return dict(name=name, family=family, **extra,
                    **diagnostics(space.log_probs(logits, family), log_star, valid, cfg.ks))

    def fitted(name, family, loss_of_log_pi, **extra):
        def run(start):
            logits = fit(space, family, start, loss_of_log_pi, cfg.steps, cfg.learning_rate)
            return float(loss_of_log_pi(space.log_probs(logits, family))), logits

        objective, logits = run(starts[family])
        out = record(name, family, logits, **extra, objective=objective)
        if family == "factorized" and cfg.restarts:
            start = starts[family]
            perturbed = [run(start + 2.0 * jax.random.normal(k, start.shape)) for k in restart_keys]
            best, best_logits = min([(objective, logits)] + perturbed, key=lambda fit_: fit_[0])
            out["best_of_restarts"] = {"objective": best, **diagnostics(space.log_probs(best_logits, family),
                                                                          log_star, valid, cfg.ks)}
        return out

    runs = [record("base model", "autoregressive", base_logits),
            dict(name="filtered p*", family="exact", **diagnostics(log_star, log_star, valid, cfg.ks))]
    for family in starts:
        for beta in cfg.betas:
            runs.append(fitted(f"KL control beta={beta:g}", family,
                               lambda lp, b=beta: kl_control_loss(lp, log_a, valid, b),
                               beta=beta, tilted_validity=validity_rate(mu, beta)))
        for alpha in cfg.alphas:
            runs.append(fitted(f"alpha-DPG alpha={alpha:g}", family,
                               lambda lp, a=alpha: alpha_divergence(log_star, lp, a), alpha=alpha))
    result = {"config": dataclasses.asdict(cfg), "seed": seed, "num_sequences": len(valid),
              "num_valid": int(valid.sum()), "mu": mu, "runs": runs}
    if workdir and jax.process_index() == 0:
        workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        write_json(result, os.path.join(workdir, "binary_rewards.json"))
        plot(result, os.path.join(workdir, "binary_rewards.png"))
    return result


def table(result: dict) -> str:
    """One line per fit: validity, effective valid outputs and coverage@k (percent), and the fitted
    objective; a factorized fit whose restarts found an objective lower by 1e-4 gets a second line,
    "best of restarts", with that fit's values."""
    ks = result["config"]["ks"]
    header = ["policy", "family", "validity", "eff. valid outputs"] + [f"cov@{k}" for k in ks] + ["objective"]

    def row(name, family, r):
        objective = f"{r['objective']:.5f}" if "objective" in r else "-"
        return ([name, family, f"{100 * r['validity']:.1f}", f"{r['effective_valid_outputs']:.1f}"]
                + [f"{100 * r[f'coverage@{k}']:.1f}" for k in ks] + [objective])

    rows = []
    for r in result["runs"]:
        rows.append(row(r["name"], r["family"], r))
        best = r.get("best_of_restarts")
        if best is not None and best["objective"] < r["objective"] - 1e-4:  # beyond the fits' own spread
            rows.append(row("  best of restarts", r["family"], best))
    title = (f"{result['num_sequences']} sequences, {result['num_valid']} valid, base validity mu = "
             f"{100 * result['mu']:.1f}%; fits from the base model, and where {result['config']['restarts']} "
             f"perturbed restarts found a lower objective, the best of them")
    return title + "\n" + text_table(header, rows)


def plot(result: dict, path: str) -> None:
    """Validity, effective valid outputs and coverage@(largest k) of KL control against beta in both
    families (factorized: also the best of the restarts, hollow), with the base model, p* and
    alpha-DPG (factorized) as horizontal lines (PNG)."""
    from matplotlib.figure import Figure

    k = max(result["config"]["ks"])
    panels = (("validity", "validity"), ("effective_valid_outputs", "effective valid outputs"),
              (f"coverage@{k}", f"coverage@{k}"))
    references = [r for r in result["runs"]
                  if r["name"] == "base model" or (r["family"] in ("exact", "factorized") and "beta" not in r)]
    betas = result["config"]["betas"]
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, panels):
        for i, family in enumerate(("autoregressive", "factorized")):
            fits = [r for r in result["runs"] if r["family"] == family and "beta" in r]
            ax.plot(betas, [r[key] for r in fits], "o-", color=f"C{i}", label=f"KL control, {family}")
            if fits and "best_of_restarts" in fits[0]:
                ax.plot(betas, [r["best_of_restarts"][key] for r in fits], "o:", color=f"C{i}", mfc="none",
                        label=f"KL control, {family}, best of restarts")
        if key == "validity":
            ax.plot(betas, [validity_rate(result["mu"], b) for b in betas], "k:", label="nu(beta), closed form")
        for j, r in enumerate(references):
            label = r["name"] + (" (factorized)" if r["family"] == "factorized" else "")
            ax.axhline(r[key], color=f"C{j + 2}", ls="--", lw=1, label=label)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("beta")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)
