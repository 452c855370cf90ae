"""Named device meshes and the one table that maps logical axes to mesh axes.

Every parameter and activation names its dimensions with logical axes ("embed", "heads", "batch",
...). `LOGICAL_RULES` maps each logical axis to mesh axes; `logical_to_spec` applies it and refuses
a tensor in which two dimensions would land on the same mesh axis. Parameters declare their shapes
and axes once (`models.param_specs`), so their shardings are known before anything is materialised.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical axis -> mesh axes (a tuple shards over their product; None replicates).
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "cache_sequence": None,
}
MESH_AXES = ("data", "fsdp", "tensor")  # the mesh axes the rules use


def make_mesh(shape: Mapping[str, int] | Sequence[tuple[str, int]], devices=None) -> Mesh:
    """A mesh with named axes; one size may be -1 ("the rest of the devices").

    make_mesh({"data": -1, "fsdp": 2, "tensor": 2}) on 8 devices gives data=2.
    """
    items = list(shape.items()) if isinstance(shape, Mapping) else list(shape)
    devices = np.asarray(jax.devices() if devices is None else devices)
    names = [n for n, _ in items]
    sizes = [int(s) for _, s in items]
    if len(set(names)) != len(names):
        raise ValueError(f"mesh axes {names} repeat a name")
    if any(s < 1 and s != -1 for s in sizes):
        raise ValueError(f"mesh {dict(items)}: axis sizes must be integers >= 1, or -1 for the rest of the devices")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(items)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if devices.size % known:
            raise ValueError(f"mesh {dict(items)}: {devices.size} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = devices.size // known
    if math.prod(sizes) != devices.size:
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices; "
                         f"{devices.size} are available")
    if devices.flat[0].platform in ("tpu", "gpu", "cuda", "rocm"):
        grid = mesh_utils.create_device_mesh(sizes, devices=list(devices.flat))  # topology-aware order
    else:
        grid = devices.reshape(sizes)
    return Mesh(grid, tuple(names))


def logical_to_spec(axes: Sequence[str | None], mesh: Mesh | None = None,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> P:
    """PartitionSpec for a tensor whose dimensions carry `axes`.

    Mesh axes the mesh does not have (of MESH_AXES), or of size 1, are dropped. Raises if two
    dimensions of one tensor would be sharded over the same mesh axis, if a rule names a mesh axis
    that is neither the mesh's nor one of MESH_AXES (a typo), or if the mesh has an axis of size > 1
    that no rule uses (everything would be replicated over it).
    """
    if mesh is not None:
        _check_rules_fit(mesh, rules)
    spec, used = [], {}
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        targets = _targets(rules[name])  # "fsdp" means ("fsdp",)
        if mesh is not None:
            targets = tuple(t for t in targets if t in mesh.shape and mesh.shape[t] > 1)
        for t in targets:
            if t in used:
                raise ValueError(f"logical axes {tuple(axes)}: {name!r} (dim {dim}) and {used[t][0]!r} "
                                 f"(dim {used[t][1]}) both map to mesh axis {t!r}")
            used[t] = (name, dim)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else tuple(targets))
    return P(*spec)


def _targets(rule) -> tuple[str, ...]:
    return () if not rule else (rule,) if isinstance(rule, str) else tuple(rule)


def _check_rules_fit(mesh: Mesh, rules: Mapping[str, Any]) -> None:
    named = {t for rule in rules.values() for t in _targets(rule)}
    if unknown := sorted(named - set(mesh.axis_names) - set(MESH_AXES)):
        raise ValueError(f"sharding rules name mesh axis {unknown[0]!r}, which is neither one of the mesh's axes "
                         f"{tuple(mesh.axis_names)} nor one of {MESH_AXES}")
    if unused := [a for a in mesh.axis_names if mesh.shape[a] > 1 and a not in named]:
        raise ValueError(f"mesh axis {unused[0]!r} (size {mesh.shape[unused[0]]}) is used by no sharding rule: "
                         f"every array would be replicated over it; the rules use {sorted(named)}")


_REPLICATED_LOGGED: set[tuple[int, str, int]] = set()  # (dim size, mesh axis, its size) already logged


def _fits(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
    """Drops mesh axes from dims they do not divide (e.g. 3 kv heads over 2 tensor shards).

    JAX cannot place an array whose dimension is not a multiple of its shard count, so such a
    dimension is replicated over that mesh axis instead, and this is logged (once per size and axis).
    """
    out = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept = []
        for n in names:
            if size % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[n]) == 0:
                kept.append(n)
            elif (size, n, mesh.shape[n]) not in _REPLICATED_LOGGED:
                _REPLICATED_LOGGED.add((size, n, mesh.shape[n]))
                logging.info("dim of size %d not divisible by mesh axis %r (%d): replicated over it",
                             size, n, mesh.shape[n])
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None,
                   rules: Mapping[str, Any] = LOGICAL_RULES) -> NamedSharding:
    spec = logical_to_spec(axes, mesh, rules)
    if shape is not None:
        spec = _fits(shape, spec, mesh)
    return NamedSharding(mesh, spec)


def mesh_of(tree) -> Mesh | None:
    """The mesh every array of `tree` is sharded over; None when they are not all NamedSharding."""
    shardings = [x.sharding for x in jax.tree.leaves(tree)]
    if shardings and all(isinstance(s, NamedSharding) for s in shardings):
        return shardings[0].mesh
    return None


def batch_sharding(mesh: Mesh, ndim: int, shape: Sequence[int] | None = None) -> NamedSharding:
    """Shards dim 0 over the data axes (those that divide `shape[0]`, when given), replicates the rest."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), shape)


def constrain(x: jax.Array, mesh: Mesh | None, axes: Sequence[str | None]) -> jax.Array:
    """`x` laid out by logical `axes` over `mesh` inside jit (dims a mesh axis does not divide are
    replicated over it); no-op without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, x.shape))


def constrain_rows(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """`x` with dim 0 (one row per sequence) over the batch axes, its other dims replicated."""
    return constrain(x, mesh, ("batch",) + (None,) * (x.ndim - 1))


def row_groups(n: int, rows: int) -> int:
    """How many groups of `rows` consecutive rows a pass over n rows takes: 1 (the whole batch at once)
    when rows is 0, reaches n, or does not divide n."""
    return 1 if not rows or rows >= n or n % rows else n // rows


def split_rows(x: jax.Array, groups: int, mesh: Mesh | None = None) -> jax.Array:
    """x [n, ...] as [groups, n / groups, ...] (groups of consecutive rows, e.g. micro-batches), the rows
    of each group over the mesh's batch axes (the reshape alone would put the row split on the groups)."""
    x = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    return constrain(x, mesh, (None, "batch") + (None,) * (x.ndim - 2))


def host_array(x) -> np.ndarray:
    """The whole global value of `x` as a numpy array, on every process.

    Under multi-process JAX (a pod, several GPU hosts) an array sharded over devices of other
    processes cannot be read with np.asarray; it is all-gathered instead. That is a collective:
    every process must call this on the same array.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
