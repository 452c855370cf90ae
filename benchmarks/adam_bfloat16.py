"""How far Adam's updates for bfloat16 parameters drift from those for float32 parameters.

    python benchmarks/adam_bfloat16.py --steps 1000

Runs `--steps` updates of constant float32 gradients (learning rate 1, no clipping) through the
project's optimizer and through optax's AdamW with its second moment in the parameters' dtype (what
the project used before), and prints the largest |update(bfloat16 params) - update(float32 params)|.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from rl_sharpen.optim import OptimConfig, make_optimizer, schedule


def drift(opt, steps: int) -> tuple[float, float]:
    """(largest, last) |update(bfloat16 params) - update(float32 params)| over `steps` updates."""
    grads = {"w": jnp.array([1.0, 0.5, 2.0, 1e-3], jnp.float32)}
    params = {dtype: {"w": jnp.zeros((4,), dtype)} for dtype in (jnp.bfloat16, jnp.float32)}
    states = {dtype: opt.init(p) for dtype, p in params.items()}
    update = jax.jit(opt.update)
    gaps = []
    for _ in range(steps):
        step = {}
        for dtype in params:
            step[dtype], states[dtype] = update(grads, states[dtype], params[dtype])
        gaps.append(float(jnp.abs(step[jnp.bfloat16]["w"] - step[jnp.float32]["w"]).max()))
    return max(gaps), gaps[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    cfg = OptimConfig(learning_rate=1.0, clip_norm=0.0)
    second_moment_in_param_dtype = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                               weight_decay=cfg.weight_decay, mu_dtype=jnp.float32)
    for name, opt in (("second moment in the parameters' dtype", second_moment_in_param_dtype),
                      ("rl_sharpen.optim (moments in float32)", make_optimizer(cfg))):
        worst, last = drift(opt, args.steps)
        print(f"{name:40}  max |bf16 - f32 update| over {args.steps} steps {worst:.4f}, at the last {last:.4f}")


if __name__ == "__main__":
    main()
