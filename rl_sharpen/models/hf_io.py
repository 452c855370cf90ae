"""Hugging Face checkpoint folders in and out.

`load_hf` reads `config.json` and `model.safetensors` (else the shards of
`model.safetensors.index.json`, as transformers does) one tensor at a time and places each parameter
straight into its target sharding, so the whole model never sits on one device. Every tensor of the
checkpoint must be one the model of its config.json uses (a stored tied `lm_head.weight` and old
`rotary_emb.inv_freq` buffers, which rope recomputes, excepted): a leftover tensor means config.json
describes another model, and raises CheckpointError before anything is read. `save_hf` writes a folder that
`transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rl_sharpen import sharding as shd
from rl_sharpen.config import SourceError
from rl_sharpen.models import registry
from rl_sharpen.models.config import DTYPES, ModelConfig, from_hf_config, to_hf_config

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"


class CheckpointError(ValueError):
    """A checkpoint folder that does not match what its config.json promises."""


def from_hub(name: str, field: str, fetch):
    """`fetch(name)` for a name that is not a local folder: a Hugging Face hub id ('org/name' or 'name').
    A path that does not exist, or a hub that does not provide the id (offline, unknown, gated), is a
    SourceError naming the config `field`."""
    if not name or name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.path.exists(name):
        raise SourceError(f"{field}={name!r}: no such folder (expected a local Hugging Face folder or a hub id "
                          "such as 'Qwen/Qwen2.5-3B-Instruct')")
    try:
        return fetch(name)
    except Exception as e:  # offline, unknown or gated repository, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise SourceError(f"{field}={name!r} is not a local folder, and the Hugging Face hub did not provide it "
                          f"({type(e).__name__}: {detail}); pass a local Hugging Face folder: --config.{field}=/path"
                          ) from e


def checkpoint_folder(name_or_path: str, field: str = "model.checkpoint") -> str:
    """A local checkpoint folder as it is; a hub id downloaded (config, tokenizer, safetensors) to the cache."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    # config, weights and every tokenizer / chat-template file (tokenizer.model, merges.txt, *.jinja)
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja"]
    return from_hub(name_or_path, field, lambda name: snapshot_download(name, allow_patterns=patterns))


def _tensor_files(path: str) -> dict[str, str]:
    """HF tensor name -> safetensors file holding it."""
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, SINGLE_FILE)
    if os.path.exists(single):  # before the index, as transformers reads a folder holding both
        with safe_open(single, "np") as f:
            return {name: single for name in f.keys()}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


class _Reader:
    """Keeps safetensors files open while a checkpoint is read."""

    def __init__(self, files: dict[str, str]):
        self.files, self.handles = files, {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint "
                                  f"({len(self.files)} tensors in {sorted(set(self.files.values()))})")
        file = self.files[name]
        if file not in self.handles:
            self.handles[file] = safe_open(file, "np")
        return self.handles[file].get_tensor(name)


def _flat_specs(cfg: ModelConfig) -> Iterator[tuple[str, object]]:
    specs = registry.param_specs(cfg)
    for key, spec in specs.items():
        if key == "layers":
            for sub, s in spec.items():
                yield f"layers/{sub}", s
        else:
            yield key, spec


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _check_no_leftovers(path: str, cfg: ModelConfig, names) -> None:
    """CheckpointError naming the checkpoint tensors that `cfg` has no parameter for."""
    table = registry.hf_names(cfg)
    used = set()
    for p, _ in _flat_specs(cfg):
        hf_name = table[p][0]
        used.update([hf_name.format(i) for i in range(cfg.num_layers)] if p.startswith("layers/") else [hf_name])
    leftover = sorted(n for n in set(names) - used
                      if not n.endswith("rotary_emb.inv_freq") and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if leftover:
        shown = ", ".join(leftover[:8]) + (f", ... ({len(leftover)} in all)" if len(leftover) > 8 else "")
        raise CheckpointError(f"{path}: the checkpoint has tensors that the {cfg.family} model of its config.json "
                              f"does not use: {shown}")


def _check_tied_head(reader: _Reader, cfg: ModelConfig, embed_name: str) -> None:
    """A tied config whose checkpoint also stores a different lm_head.weight is an error: ours would
    tie the head to the embedding, transformers would use the stored head, and logits would differ."""
    if not (cfg.tie_embeddings and "lm_head.weight" in reader.files):
        return
    head, embed = reader.get("lm_head.weight"), reader.get(embed_name)
    if head.shape != embed.shape or not np.array_equal(head, embed):
        raise CheckpointError(f"{reader.files['lm_head.weight']}: config.json says tie_word_embeddings: true, "
                              f"but the stored lm_head.weight differs from {embed_name}; set "
                              f"tie_word_embeddings to false to use the stored head")


def _read_param(reader: _Reader, cfg: ModelConfig, path: str, spec, hf_name: str, transform) -> np.ndarray:
    layered = path.startswith("layers/")
    shape = spec.shape[1:] if layered else spec.shape
    names = [hf_name.format(i) for i in range(cfg.num_layers)] if layered else [hf_name]
    out = []
    for name in names:
        t = reader.get(name)
        want = transform.hf_shape(shape)
        if tuple(t.shape) != tuple(want):
            raise CheckpointError(f"{reader.files[name]}: tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(want)}")
        out.append(transform.to_ours(t, shape))
    return np.stack(out) if layered else out[0]


def load_hf(path: str, dtype: str = "float32", mesh=None, compute_dtype: str | None = None,
            rules=shd.LOGICAL_RULES) -> tuple[ModelConfig, dict]:
    """(cfg, params) from a local Hugging Face folder, params placed over `mesh` when given."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory (expected a Hugging Face checkpoint folder)")
    cfg = from_hf_config(path, param_dtype=dtype, compute_dtype=compute_dtype)
    reader = _Reader(_tensor_files(path))
    _check_no_leftovers(path, cfg, reader.files)
    table = registry.hf_names(cfg)
    _check_tied_head(reader, cfg, table["embed"][0])
    params: dict = {}
    np_dtype = np.dtype(DTYPES[dtype])
    for p, spec in _flat_specs(cfg):
        hf_name, transform = table[p]
        host = _read_param(reader, cfg, p, spec, hf_name, transform).astype(np_dtype)
        if mesh is None:
            value = jnp.asarray(host)
        else:
            sharding = shd.named_sharding(mesh, spec.axes, spec.shape, rules)
            value = jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx])
        _set(params, p, value)
    return cfg, params


def save_hf(params: dict, cfg: ModelConfig, path: str, max_shard_bytes: int = 4 << 30, *, tokenizer=None,
            copy_from: str | None = None) -> None:
    """Writes `config.json` and safetensors shards (with an index when there is more than one) to a
    local folder or a gs:// / s3:// URL (written locally first, then copied). With a transformers
    `tokenizer` (its `save_pretrained` files) and the `generation_config.json` of a local folder
    `copy_from` (the checkpoint the params came from), the folder is a complete model that
    transformers, vLLM or `--config.model.checkpoint` load on their own.

    Under multi-process JAX every process must call it (sharded params are all-gathered); process 0
    writes."""
    table = registry.hf_names(cfg)
    tensors: dict[str, np.ndarray] = {}
    for p, spec in _flat_specs(cfg):
        hf_name, transform = table[p]
        value = shd.host_array(_get(params, p))
        if p.startswith("layers/"):
            for i in range(cfg.num_layers):
                tensors[hf_name.format(i)] = transform.to_hf(value[i])
        else:
            tensors[hf_name] = transform.to_hf(value)
    if jax.process_index() != 0:
        return
    if "://" not in path:
        _write(tensors, cfg, path, max_shard_bytes, tokenizer, copy_from)
        return
    from etils import epath

    with tempfile.TemporaryDirectory() as local:
        _write(tensors, cfg, local, max_shard_bytes, tokenizer, copy_from)
        remote = epath.Path(path)
        remote.mkdir(parents=True, exist_ok=True)
        written = sorted(os.listdir(local))
        for name in written:
            epath.Path(local, name).copy(remote / name, overwrite=True)
        for stale in remote.iterdir():
            if _is_weight_file(stale.name) and stale.name not in written:
                stale.unlink()


_SHARD_FILE = re.compile(r"model-\d+-of-\d+\.safetensors")


def _is_weight_file(name: str) -> bool:
    return name in (SINGLE_FILE, INDEX_FILE) or bool(_SHARD_FILE.fullmatch(name))


def _write(tensors: dict[str, np.ndarray], cfg: ModelConfig, path: str, max_shard_bytes: int, tokenizer=None,
           copy_from: str | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):  # an earlier save's weights, split otherwise, would shadow these
        if _is_weight_file(name):
            os.remove(os.path.join(path, name))
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = np.ascontiguousarray(t)
        size += t.nbytes
    shards.append(current)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, SINGLE_FILE), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, file), metadata=meta)
            weight_map.update({name: file for name in shard})
        total = sum(t.nbytes for t in tensors.values())
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(to_hf_config(cfg), f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    source, target = os.path.join(copy_from or "", GENERATION_CONFIG), os.path.join(path, GENERATION_CONFIG)
    if copy_from and os.path.isfile(source) and not (os.path.isfile(target) and os.path.samefile(source, target)):
        shutil.copyfile(source, target)
