"""Per-device memory of each phase of an RL step of the paper configs, at their full shapes, from XLA's
compiled programs (no weights are made: every input is abstract).

    python benchmarks/paper_memory.py --out paper_memory.json
    python benchmarks/paper_memory.py --configs qwen3_4b_math --devices 16 --prompt-width 2048
    python benchmarks/paper_memory.py --arg task_reward,small --devices 1 --prompt-width 512   # one GPU

Each config (`configs/<name>.py:<--arg>`, its mesh, batch, lengths, dtypes, micro-batch, remat and
log-prob chunk) is compiled ahead of time on --devices fake CPU devices for the phases a step runs:

    prefill   the sampler's prefill of prompts x G rows, writing the KV cache (`kv.prefill`)
    decode    the sampler's decode loop over that cache (`ancestral._decode`)
    scorer    the reference's teacher-forced log-probs of every rollout row (`rollout.Scorer`)
    update    one policy update: micro-batched gradients and the Adam step (`update.make_train_step`)
    memory    one update of the calibration memory network on the rollout (`calibration.Memory`),
              run only with calibration.mu > 0
    eval_prefill, eval_decode   the same for validation: eval.batch_size problems x eval.num_samples
              rows, eval.max_new_tokens, prompts padded to --eval-prompt-width

peak = arguments + outputs - donated (aliased) + temporaries, per device, from `memory_analysis()`.
Rollout rows are prompt width P (--prompt-width; the MATH prompts' bucket) + the new tokens. The
train state of the whole step (policy, reference, Adam's moments) is in the arguments of the update;
the other phases count only their own inputs; "with the resident state" adds what of policy,
reference and optimizer state stays on the device outside the phase.
XLA's CPU programs stand in for a GPU's or TPU's: layouts and fusion differ, the large buffers
(KV cache, logits chunks, attention scores, weights) do not.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("qwen25_3b_math", "llama32_3b_math", "qwen3_4b_math")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--phases", default="prefill,decode,scorer,update,memory")
    p.add_argument("--arg", default="task_reward", help="the configs' argument (a regime, and 'small' for their "
                   "one-GPU size)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config override, e.g. rl.micro_batch=4 (repeatable)")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices (the config's mesh fills them)")
    p.add_argument("--prompt-width", type=int, default=1536, help="padded prompt width P")
    p.add_argument("--eval-prompt-width", type=int, default=0, help="validation prompt width (0: --prompt-width)")
    p.add_argument("--layers", type=int, default=0, help="decoder layers kept (0: the model's own)")
    p.add_argument("--out", default="", help="JSON file for the results")
    return p.parse_args()


def main():
    args = parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    from rl_sharpen import experiment, models
    from rl_sharpen import sharding as shd
    from rl_sharpen.optim import make_optimizer
    from rl_sharpen.rl.calibration import CalibrationConfig, Memory
    from rl_sharpen.rl.rollout import Scorer
    from rl_sharpen.rl.trainer import batch_layout
    from rl_sharpen.rl.update import TrainBatch, make_train_step
    from rl_sharpen.sampling import ancestral, kv

    results = []
    for name in args.configs.split(","):
        spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        c = module.get_config(args.arg)
        for item in args.set:
            field, value = item.split("=", 1)
            *groups, last = field.split(".")
            node = c
            for group in groups:
                node = node[group]
            node[last] = ast.literal_eval(value)
        exp = experiment.parse(c)
        preset = exp.model.arch or exp.model.checkpoint.split("/")[-1].lower()  # "Qwen/Qwen2.5-3B-Instruct"
        cfg = models.preset(preset, param_dtype=exp.model.param_dtype, compute_dtype=exp.model.compute_dtype)
        if args.layers:
            cfg = cfg.replace(num_layers=args.layers)
        experiment.build_mesh(exp)  # the config's mesh fits the devices
        mesh = shd.make_mesh(exp.mesh)  # on one device too (a run leaves it unsharded: the same buffers)
        shardings = models.param_shardings(cfg, mesh)
        params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              models.abstract_params(cfg), shardings)
        replicated = NamedSharding(mesh, PartitionSpec())
        B, G, N, P = exp.rl.prompts_per_step, exp.sampling.num_samples, exp.sampling.max_new_tokens, args.prompt_width
        minibatch, micro = batch_layout(exp.rl, G)

        def rows(shape, dtype=jnp.int32):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape), shape))

        def optimizer_state(optimizer, params, shardings):
            abstract = jax.eval_shape(optimizer.init, params)
            return optax.tree_map_params(
                optimizer, lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings,
                transform_non_params=lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated))

        def shapes(phase):
            """(problems, samples each, new tokens, prompt width) of the phase's sampler call."""
            if phase.startswith("eval_"):  # validation: eval.batch_size problems x eval.num_samples
                return exp.eval.batch_size, exp.eval.num_samples, exp.eval.max_new_tokens, args.eval_prompt_width or P
            return B, G, N, P

        def lowered(phase):
            B_, G_, N_, P_ = shapes(phase)
            phase = phase.removeprefix("eval_")
            prefill_args = dict(cfg=cfg, copies=G_, cache_len=P_ + N_, per_layer=exp.sampling.fast_decode, mesh=mesh)
            if phase == "prefill":
                return kv.prefill.lower(params, rows((B_, P_)), rows((B_, P_)), **prefill_args)
            if phase == "decode":
                cache, logits, positions, segments = kv.prefill.eval_shape(params, rows((B_, P_)), rows((B_, P_)),
                                                                            **prefill_args)[:4]
                sc = ancestral.SamplingConfig(max_new_tokens=N_, num_samples=G_, eos_ids=(0,), prompt_width=P_,
                                              fast_decode=exp.sampling.fast_decode)
                key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
                return ancestral._decode.lower(params, cache, logits, positions, segments, key, cfg=cfg, sc=sc,
                                               mesh=mesh)
            if phase == "scorer":
                scorer = Scorer(cfg, exp.rl.logprob_chunk, micro, mesh)
                return scorer.logprobs.lower(params, rows((B * G, P + N)), rows((B * G, P + N)), N)
            if phase == "update":
                optimizer = make_optimizer(exp.optim, models.weight_decay_mask(cfg))
                state = {"params": params, "opt_state": optimizer_state(optimizer, params, shardings),
                         "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
                n = minibatch
                per_token = rows((n, N), jnp.float32)
                batch = TrainBatch(tokens=rows((n, P + N)), segments=rows((n, P + N)), completion_mask=per_token,
                                   behaviour_logprobs=per_token, old_logprobs=per_token, ref_logprobs=per_token,
                                   advantages=rows((n,), jnp.float32), correct=rows((n,), jnp.float32))
                step = make_train_step(cfg, exp.loss, optimizer, num_micro=minibatch // micro, group_size=G,
                                       chunk=exp.rl.logprob_chunk, remat=exp.rl.remat, mesh=mesh)
                return jax.jit(step, donate_argnums=0).lower(state, batch)
            if phase == "memory":
                memory = Memory(cfg, CalibrationConfig(mu=1.0), mesh, micro_rows=micro, remat=exp.rl.remat)
                memory_shardings = models.param_shardings(memory.cfg, mesh)
                memory_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                             models.abstract_params(memory.cfg), memory_shardings)
                state = optimizer_state(memory.optimizer, memory_params, memory_shardings)
                return memory._step.lower(memory_params, state, rows((B * G, P + N)), rows((B * G, P + N)),
                                          rows((B * G, N), jnp.float32))
            raise ValueError(f"--phases: {phase!r}; allowed: prefill, decode, scorer, update, memory, eval_prefill, "
                             "eval_decode")

        def device_bytes(tree):
            return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))

        # what stays on a device all step: policy, reference (each one parameter copy) and the optimizer's
        # state (Adam's moments, float32 whatever the parameters' dtype); a phase's arguments hold some of it
        copy_bytes = device_bytes(params)
        opt_bytes = device_bytes(optimizer_state(make_optimizer(exp.optim, models.weight_decay_mask(cfg)), params,
                                                 shardings))
        outside = {"update": copy_bytes,  # its arguments: the policy and the optimizer's state
                   "memory": 2 * copy_bytes + opt_bytes}  # its own network's; else the policy or the reference
        for phase in args.phases.split(","):
            m = lowered(phase).compile().memory_analysis()
            b, g, n, p = shapes(phase)
            row = {"config": f"{name}:{args.arg}", "overrides": args.set, "checkpoint": exp.model.checkpoint,
                   "phase": phase, "devices": args.devices, "mesh": dict(mesh.shape),
                   "layers": cfg.num_layers, "rows": b * g, "prompt_width": p, "new_tokens": n,
                   "micro_batch": micro, "argument_bytes": m.argument_size_in_bytes,
                   "output_bytes": m.output_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
                   "temp_bytes": m.temp_size_in_bytes, "param_copy_bytes": copy_bytes,
                   "optimizer_state_bytes": opt_bytes}
            row["peak_bytes"] = row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
            row["with_resident_bytes"] = row["peak_bytes"] + outside.get(phase, copy_bytes + opt_bytes)
            results.append(row)
            print(f"{name:<16} {phase:<12} peak {row['peak_bytes'] / 1e9:7.2f} GB, with the resident state "
                  f"{row['with_resident_bytes'] / 1e9:7.2f} GB  (arguments {row['argument_bytes'] / 1e9:.2f}, "
                  f"temporaries {row['temp_bytes'] / 1e9:.2f})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
